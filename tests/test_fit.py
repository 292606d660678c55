"""The planner inside quick_finetune (an explicit gpu= budget plans on CPU too) and `python -m rslora_colab plan`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from rslora_colab import FinetuneConfig, demo_dataset, load_and_validate, quick_finetune
from rslora_colab.cli import main
from rslora_colab.memory.catalog import CATALOG
from rslora_colab.memory.estimate import estimate_vram
from rslora_colab.memory.plan import (
    catalog_table,
    render_catalog_table,
    training_estimate_kwargs,
)
from rslora_colab.runtime import Runtime, detect_runtime
from rslora_colab.load import load_tokenizer
from rslora_colab.train.setup import check_lengths, fit_to_gpu

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
"""Where the catalog table lives (the README links to it)."""


def _config_only(folder: Path, model: str, tokenizer_from: str) -> str:
    """A folder with ``model``'s config.json and a tokenizer but no weights: loading it would fail at once."""
    from transformers import AutoTokenizer

    from rslora_colab.memory.synthetic import config_for

    config_for(model).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return str(folder)


def test_too_small_gpu_raises_before_any_weights_load(demo_path, tmp_path, capsys):
    # Llama-3.1-8B's architecture and no weights: had it tried to load them, the error would be a missing file
    model = _config_only(tmp_path / "llama-8b", "Llama-3.1-8B-Instruct", demo_path)
    with pytest.raises(ValueError, match=r"does not fit: needs \d+\.\d\d GiB, you have 4\.00 GiB") as err:
        quick_finetune(model, demo_dataset(n=4), r=64, gpu=4, output_dir=str(tmp_path / "out"))
    assert "Suggestion: try" in str(err.value) and "plan=False" in str(err.value)
    assert "loading" not in capsys.readouterr().out


def test_short_rows_get_a_larger_micro_batch_than_max_seq_length_allows(demo_path, tmp_path, capsys):
    """Planned from the data: the demo's rows are ~110 tokens; max_seq_length 512 alone would allow micro-batch 1."""
    data, fmt = load_and_validate(demo_dataset(n=32))
    config = FinetuneConfig(r=8, batch_size=4, grad_accum=1, max_seq_length=512, output_dir=str(tmp_path))
    lengths = check_lengths(load_tokenizer(demo_path), data, fmt, config)
    longest = lengths.longest(512)
    assert longest == max(lengths.total) < 200
    kwargs = training_estimate_kwargs(detect_runtime(), config.target_modules)
    gib = lambda seq, batch: estimate_vram(demo_path, r=8, max_seq_length=seq, batch_size=batch, **kwargs).total_gib
    budget = (gib(512, 1) + gib(512, 2)) / 2
    assert gib(longest, 4) < budget  # the data's real batches fit 4 at a time
    blind, blind_plan = fit_to_gpu(demo_path, dataclasses.replace(config, gpu=budget))
    seen, seen_plan = fit_to_gpu(demo_path, dataclasses.replace(config, gpu=budget), lengths)
    assert blind_plan.micro_batch == 1 and (seen_plan.micro_batch, seen.batch_size) == (4, 4)
    assert seen.max_seq_length == 512  # max_seq_length stays the cap TRL truncates at
    out = capsys.readouterr().out
    assert f"your longest row is {longest} tokens; planning for {longest} (max_seq_length=512 stays the cap)" in out
    result = quick_finetune(demo_path, data, r=8, max_steps=1, batch_size=4, grad_accum=1, max_seq_length=512,
                            output_dir=str(tmp_path / "run"), gpu=budget)
    assert result.settings["batch_size"] == 4 and result.settings["max_seq_length"] == 512


def test_a_dpo_plan_counts_chosen_and_rejected(demo_path, capsys):
    """TRL's DPOTrainer puts a row's chosen and rejected sequences through the model in one batch."""
    config = FinetuneConfig(r=8, method="dpo", batch_size=4, grad_accum=1, max_seq_length=64)
    kwargs = training_estimate_kwargs(detect_runtime(), config.target_modules)  # one sequence per row (SFT)
    gib = lambda batch: estimate_vram(demo_path, r=8, max_seq_length=64, batch_size=batch, **kwargs).total_gib
    budget = (gib(4) + gib(5)) / 2  # four sequences fit, five do not
    sft, _ = fit_to_gpu(demo_path, dataclasses.replace(config, method="sft", gpu=budget))
    dpo, plan = fit_to_gpu(demo_path, dataclasses.replace(config, gpu=budget))
    assert sft.batch_size == 4 and (dpo.batch_size, dpo.grad_accum) == (2, 2)  # 2 pairs = 4 sequences
    assert plan.estimate.sequences_per_row == 2 and plan.estimate.total_gib == pytest.approx(gib(4))
    assert "micro-batch 2 (x2 sequences: chosen + rejected)" in plan.estimate.table()
    assert "DPO: 2 sequences per row" in capsys.readouterr().out


def test_tight_gpu_shrinks_the_micro_batch_and_keeps_the_effective_batch(demo_path, tmp_path, capsys):
    config = FinetuneConfig(r=8, max_seq_length=64)
    kwargs = training_estimate_kwargs(detect_runtime(), config.target_modules)  # how quick_finetune trains here
    one, two = (estimate_vram(demo_path, r=8, max_seq_length=64, batch_size=b, **kwargs).total_gib for b in (1, 2))
    result = quick_finetune(demo_path, demo_dataset(n=16), r=8, max_steps=1, batch_size=4, grad_accum=1,
                            max_seq_length=64, output_dir=str(tmp_path), gpu=(one + two) / 2)
    s = result.settings
    assert (s["batch_size"], s["grad_accum"]) == (1, 4)
    assert s["gpu_plan"].startswith("fits: micro-batch 1 x grad_accum 4")
    assert "memory plan" in capsys.readouterr().out and len(result.history) == 1


def test_plan_never_raises_the_micro_batch_and_caps_the_sequence(demo_path):
    config, plan = fit_to_gpu(demo_path, FinetuneConfig(r=8, batch_size=2, grad_accum=4, max_seq_length=4096,
                                                        gpu=80))
    assert plan.fits and (config.batch_size, config.grad_accum) == (2, 4)  # 8 x 1 would fit too
    assert config.max_seq_length == 512  # the demo model's max_position_embeddings


def test_no_plan_without_a_gpu_budget(demo_path):
    auto = FinetuneConfig(r=8)  # gpu="auto" on a machine without CUDA: nothing to plan for
    assert fit_to_gpu(demo_path, auto) == (auto, None)
    off = FinetuneConfig(r=8, gpu=1.0, plan=False)
    assert fit_to_gpu("Llama-3.1-8B-Instruct", off) == (off, None)


def test_backend_decides_what_is_estimated():
    config = FinetuneConfig()
    peft = training_estimate_kwargs(Runtime("transformers", "fp16", "Tesla T4", ""), config.target_modules)
    fast = training_estimate_kwargs(Runtime("unsloth", "fp16", "Tesla T4", ""), config.target_modules)
    assert (peft["dtype_bytes"], peft["gradient_checkpointing"], peft["optimizer"]) == (4, True, "adamw_8bit")
    assert (fast["dtype_bytes"], fast["gradient_checkpointing"]) == (2, "unsloth")


def test_transformers_backend_plans_a_hub_id_without_dynamic_16bit_layers():
    # Unsloth would load unsloth/Qwen3-8B-unsloth-bnb-4bit (some linears 16-bit); transformers quantizes them all.
    config = FinetuneConfig(r=16, gpu=80, backend="transformers")
    _, plan = fit_to_gpu("Qwen/Qwen3-8B", config)
    assert plan.fits and plan.estimate.dynamic_16bit_gib == 0.0
    assert estimate_vram("Qwen/Qwen3-8B", r=16).dynamic_16bit_gib > 0


def test_gpu_and_plan_settings_are_validated():
    with pytest.raises(ValueError) as err:
        FinetuneConfig(gpu="A100", plan="yes")
    assert "gpu='A100'" in str(err.value) and "plan='yes'" in str(err.value)
    assert FinetuneConfig(gpu="t4").gpu == "t4" and FinetuneConfig(gpu=14.74).gpu == 14.74


def test_cli_plan_prints_the_breakdown(capsys):
    assert main(["plan", "--model", "Llama-3.1-8B-Instruct", "--rank", "64", "--seq", "2048", "--gpu", "T4"]) == 0
    out = capsys.readouterr().out
    assert "fits: micro-batch 2 x grad_accum 4" in out and "of 14.74 GiB" in out
    assert "LoRA parameters: 167,772,160" in out and "not yet calibrated" in out
    for term in ("base weights", "activations", "logits + loss", "CUDA context", "total"):
        assert term in out


def test_cli_plan_exits_1_when_nothing_fits(capsys):
    assert main(["plan", "--model", "qwen3-14b", "--rank", "256", "--gpu", "T4"]) == 1
    out = capsys.readouterr().out
    assert "does not fit: needs" in out and "suggestion: try" in out


def test_cli_bad_gpu_exits_2(capsys):
    assert main(["plan", "--gpu", "A100"]) == 2
    assert "gpu='A100'" in capsys.readouterr().err


def test_cli_catalog_table(capsys):
    assert main(["plan", "--gpu", "T4"]) == 0
    out = capsys.readouterr().out
    for spec in CATALOG:
        rows = [line for line in out.splitlines() if line.startswith(spec.name + " ")]
        assert [line.split()[1] for line in rows] == ["16", "64", "256"], spec.name


def test_the_guides_table_is_what_the_code_prints():
    kwargs = training_estimate_kwargs(Runtime("unsloth", "fp16", "GPU", ""))
    table = render_catalog_table(catalog_table("T4", **kwargs))
    guide = GUIDE.read_text()
    found = re.search(r"(\| model \| r \|.*?)\n\n", guide, re.S)
    assert found and found.group(1).strip() == table, "regenerate: python -m rslora_colab plan --gpu T4 --markdown"
