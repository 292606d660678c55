"""CPU tests of the GPU planner (pure arithmetic, no network)."""

from __future__ import annotations

import pytest

import rslora_colab.memory.plan as plan_mod
from rslora_colab.memory.catalog import CATALOG, resolve_spec
from rslora_colab.memory.estimate import estimate_vram
from rslora_colab.memory.plan import (
    MIN_SEQ_LENGTH,
    T4_GIB,
    catalog_table,
    format_plan,
    halve_micro_batch,
    plan_for_gpu,
    render_catalog_table,
    resolve_budget_gib,
)


@pytest.mark.parametrize("gpu", ["T4", 8.0, 24.0])
def test_plan_never_exceeds_budget(gpu):
    for spec in CATALOG:
        for r in (8, 16, 64, 256):
            for seq in (512, 2048, 4096):
                if seq > spec.max_position_embeddings:
                    continue
                plan = plan_for_gpu(spec, r=r, max_seq_length=seq, gpu=gpu, batch_size=2, grad_accum=4)
                assert plan.effective_batch == 8
                if plan.fits:
                    assert plan.estimate.total_gib <= plan.budget_gib
                    again = estimate_vram(spec, r=r, max_seq_length=plan.max_seq_length,
                                          batch_size=plan.micro_batch)
                    assert again.total_gib == pytest.approx(plan.estimate.total_gib)
                    assert MIN_SEQ_LENGTH <= plan.max_seq_length <= seq
                else:
                    assert plan.estimate.total_gib > plan.budget_gib
                    assert plan.message.startswith("does not fit: needs")


def test_largest_micro_batch_is_chosen():
    plan = plan_for_gpu("Llama-3.2-1B-Instruct", r=16, max_seq_length=1024, gpu="T4",
                        batch_size=2, grad_accum=4)
    assert plan.fits and plan.micro_batch == 8 and plan.grad_accum == 1
    plan = plan_for_gpu("llama-3.1-8b", r=64, max_seq_length=2048, gpu="T4", batch_size=2, grad_accum=4)
    assert plan.fits and plan.effective_batch == 8
    bigger = [d for d in (8, 4, 2, 1) if d > plan.micro_batch]
    for d in bigger:
        assert estimate_vram("llama-3.1-8b", r=64, batch_size=d).total_gib > T4_GIB


def test_max_micro_batch_caps_the_plan():
    plan = plan_for_gpu("Llama-3.2-1B-Instruct", r=16, max_seq_length=1024, gpu="T4",
                        batch_size=2, grad_accum=4, max_micro_batch=2)
    assert plan.fits and (plan.micro_batch, plan.grad_accum) == (2, 4) and plan.suggestion == ""
    with pytest.raises(ValueError, match="max_micro_batch=0"):
        plan_for_gpu("Llama-3.2-1B-Instruct", gpu="T4", max_micro_batch=0)


def test_micro_batch_shrinks_and_accum_grows():
    plan = plan_for_gpu("qwen3-8b", r=64, max_seq_length=8192, gpu="T4", batch_size=4, grad_accum=2)
    assert plan.fits and plan.micro_batch == 2 and plan.grad_accum == 4
    assert "micro-batch 4 -> 2" in plan.suggestion


def test_sequence_is_halved_when_batch_one_does_not_fit():
    assert estimate_vram("Qwen3-14B", r=32, max_seq_length=4096, batch_size=1).total_gib > T4_GIB
    plan = plan_for_gpu("Qwen3-14B", r=32, max_seq_length=4096, gpu="T4")
    assert plan.fits and plan.max_seq_length in (2048, 1024, 512, 256)
    assert plan.micro_batch >= 1 and plan.estimate.total_gib <= T4_GIB
    assert "max_seq_length 4096 ->" in plan.suggestion


def test_nothing_fits_message_and_suggestion():
    plan = plan_for_gpu("Qwen3-14B", r=256, max_seq_length=2048, gpu="T4")
    assert not plan.fits
    assert plan.message.startswith(f"does not fit: needs {plan.estimate.total_gib:.2f} GiB, you have 14.74 GiB")
    assert plan.max_seq_length == MIN_SEQ_LENGTH and plan.micro_batch == 1
    assert "r=" in plan.suggestion and "smaller model" in plan.suggestion
    tiny = plan_for_gpu("Qwen3-0.6B", r=16, gpu=1.0)
    assert not tiny.fits and "you have 1.00 GiB" in tiny.message
    assert "more memory" in tiny.suggestion


def test_suggests_4bit_and_offload_when_off():
    plan = plan_for_gpu("llama-3.1-8b", r=16, gpu=10.0, load_in_4bit=False, gradient_checkpointing=False)
    assert not plan.fits
    assert "load_in_4bit=True" in plan.suggestion
    assert 'gradient_checkpointing="unsloth"' in plan.suggestion


def test_gpu_budget_resolution(monkeypatch):
    assert resolve_budget_gib("T4") == T4_GIB == resolve_budget_gib("t4")
    assert resolve_budget_gib(20) == 20.0
    monkeypatch.setattr(plan_mod, "_cuda_total_gib", lambda: None)
    assert resolve_budget_gib("auto") == T4_GIB
    monkeypatch.setattr(plan_mod, "_cuda_total_gib", lambda: 79.1)
    assert resolve_budget_gib("auto") == 79.1
    for bad in ("A100", 0, -3, True, None):
        with pytest.raises(ValueError, match="gpu="):
            resolve_budget_gib(bad)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"r": 0}, "r=0"),
        ({"r": 4096}, "from 1 to 1024"),
        ({"grad_accum": 0}, "grad_accum=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"max_seq_length": 65536}, "pass at most 8192"),
        ({"gpu": "huge"}, "gpu='huge'"),
        ({"optimizer": "lion"}, "optimizer='lion'"),
    ],
)
def test_plan_validation(kwargs, text):
    with pytest.raises(ValueError, match=text.replace("(", r"\(")):
        plan_for_gpu("gemma-2-2b", **kwargs)


def test_plan_accepts_config_dict_and_formats():
    data = next(s for s in CATALOG if s.name == "Qwen3-4B").to_config_dict()
    plan = plan_for_gpu(data, r=16, gpu="T4")
    same = plan_for_gpu("qwen3-4b", r=16, gpu="T4")
    assert (plan.micro_batch, plan.grad_accum, plan.max_seq_length) == (
        same.micro_batch, same.grad_accum, same.max_seq_length)
    text = format_plan(same)
    assert "fits" in text and "not yet calibrated" in text and "total" in text
    assert same.as_dict()["estimate"]["r"] == 16


def test_out_of_memory_recovery_halves_the_planned_micro_batch_down_to_one():
    plan = plan_for_gpu("Llama-3.2-1B-Instruct", r=16, max_seq_length=512, gpu="T4")
    assert plan.micro_batch == 8
    shape, steps = (plan.micro_batch, plan.grad_accum), []
    while shape is not None:
        steps.append(shape)
        shape = halve_micro_batch(*shape)
    assert steps == [(8, 1), (4, 2), (2, 4), (1, 8)]


def test_catalog_table_rows_are_tight():
    rows = catalog_table(gpu="T4", ranks=(16, 64, 256))
    assert len(rows) == 3 * len(CATALOG)
    specs = {s.name: resolve_spec(s.bnb_4bit_id) for s in CATALOG}
    for row in rows:
        spec = specs[row.model]
        if row.max_seq_length is None:
            assert estimate_vram(spec, r=row.r, max_seq_length=512, batch_size=1).total_gib > T4_GIB
            continue
        est = estimate_vram(spec, r=row.r, max_seq_length=row.max_seq_length, batch_size=row.micro_batch)
        assert est.total_gib <= T4_GIB and est.total_gib == pytest.approx(row.total_gib)
        if row.micro_batch < 16:
            assert estimate_vram(spec, r=row.r, max_seq_length=row.max_seq_length,
                                 batch_size=row.micro_batch + 1).total_gib > T4_GIB
        longer = row.max_seq_length * 2
        if longer <= min(8192, spec.max_position_embeddings):
            assert estimate_vram(spec, r=row.r, max_seq_length=longer, batch_size=1).total_gib > T4_GIB
    md = render_catalog_table(rows)
    assert md.splitlines()[0].startswith("| model | r |") and len(md.splitlines()) == len(rows) + 2
    assert "Llama-3.1-8B-Instruct" in render_catalog_table(rows, markdown=False)
