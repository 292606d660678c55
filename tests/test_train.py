import json
import math

import pytest
import torch

from rslora_colab import FinetuneConfig, adapter_scales, demo_dataset, quick_finetune
from rslora_colab.demo import build_demo_model


def test_quick_finetune_lowers_the_loss_and_saves_everything(demo_path, tmp_path, cpu_backend):
    result = quick_finetune(demo_path, demo_dataset(), r=64, max_steps=80, batch_size=8, grad_accum=1,
                            max_seq_length=256, output_dir=str(tmp_path))
    assert len(result.history) == 80
    assert all(math.isfinite(h["loss"]) and "grad_norm" in h and "lr" in h for h in result.history)
    assert result.final_loss < result.first_loss - 0.15
    s = result.settings
    assert (s["backend"], s["precision"], s["alpha"], s["lr"]) == (cpu_backend, "fp32", 64.0, 1e-4)
    assert s["scale"] == 8.0 and all(v == 8.0 for v in adapter_scales(result.model).values())
    assert result.tokens_per_s > 0 and result.peak_gpu_memory_gib is None
    config = json.loads((result.adapter_path / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 64
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]) == 80 and metrics["settings"]["scale"] == 8.0
    assert (tmp_path / "loss.png").stat().st_size > 5000
    assert result.report() == (f"loss {result.first_loss:.3f} -> {result.final_loss:.3f} (mean of first/last 5 "
                               f"steps) in {result.wall_time_s:.1f} s, {result.tokens_per_s:,.0f} tokens/s")


def test_training_moves_the_adapter_and_not_the_base(demo_pair, tmp_path):
    model, tokenizer = demo_pair
    from rslora_colab import add_rslora

    model = add_rslora(model, r=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = quick_finetune((model, tokenizer), demo_dataset(n=16), r=8, max_steps=4, batch_size=4, grad_accum=1,
                            max_seq_length=128, output_dir=str(tmp_path))
    after = dict(result.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(not torch.equal(before[n], after[n]) for n in lora)  # A and B both train ...
    assert all(after[n].dtype == torch.float32 for n in lora)  # ... in fp32, not TRL's bf16 (lost small steps)
    assert all(torch.equal(before[n], after[n]) for n in base)
    assert all(not after[n].requires_grad for n in base)


def test_settings_problems_are_collected_into_one_error():
    with pytest.raises(ValueError) as err:
        FinetuneConfig(r=0, lr=5, batch_size=0, lr_scheduler="zigzag")
    message = str(err.value)
    for field in ("r=0", "lr=5", "batch_size=0", "lr_scheduler='zigzag'"):
        assert field in message


def test_unknown_override_suggests_the_right_name():
    with pytest.raises(ValueError, match="'learning_rate'.*did you mean 'lr'|'max_step' \\(did you mean 'max_steps'"):
        quick_finetune("demo", demo_dataset(n=4), r=16, max_step=3)


@pytest.mark.parametrize("typed, meant", [
    ("learning_rate", "lr"), ("num_train_epochs", "epochs"), ("per_device_train_batch_size", "batch_size"),
    ("gradient_accumulation_steps", "grad_accum"), ("lora_r", "r"), ("rank", "r"), ("lora_alpha", "alpha"),
    ("lora_dropout", "dropout"), ("max_length", "max_seq_length"),
])
def test_transformers_and_peft_names_suggest_the_kit_s_own(typed, meant):
    with pytest.raises(ValueError, match=f"Unknown setting\\(s\\) '{typed}' \\(did you mean '{meant}'\\?\\)"):
        FinetuneConfig.from_overrides(**{typed: 1})


def test_one_target_module_name_is_not_split_into_letters():
    assert FinetuneConfig(target_modules="q_proj").target_modules == ("q_proj",)
    assert FinetuneConfig(target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")
    assert FinetuneConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)


@pytest.mark.parametrize("field, value", [("alpha", math.inf), ("lr", math.nan), ("epochs", math.inf),
                                          ("max_grad_norm", math.inf), ("weight_decay", math.inf),
                                          ("beta", math.nan), ("gpu", math.inf), ("checkpoint_minutes", math.inf)])
def test_numbers_that_are_not_finite_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}: expected"):
        FinetuneConfig(**{field: value})


def test_the_demo_model_is_the_same_whatever_the_thread_count(tmp_path):
    """The README's transcript and docs/results.md are measured on the demo model: a build on 2 threads (the CLI's
    default on 2 cores) and one on 1 thread (the tests') must give the same weights, and the caller's threads stay."""
    before = torch.get_num_threads()
    built = {}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            path = build_demo_model(tmp_path / f"t{threads}", pretrain_steps=20)
            assert torch.get_num_threads() == threads
            built[threads] = (path / "model.safetensors").read_bytes()
    finally:
        torch.set_num_threads(before)
    assert built[2] == built[1]


def test_a_short_run_reports_the_steps_it_averaged(demo_path, tmp_path):
    result = quick_finetune(demo_path, demo_dataset(n=8), r=8, max_steps=3, batch_size=4, grad_accum=1,
                            max_seq_length=64, eval_fraction=0, output_dir=str(tmp_path))
    assert "(mean of first/last 3 steps)" in result.report()


@pytest.mark.parametrize("settings, expected", [
    ({"max_steps": 3, "logging_steps": 5}, "logging_steps=5: expected at most max_steps=3"),
    ({"output_dir": "/"}, "output_dir='/': expected a folder of the run's own, not a filesystem root"),
    ({"seed": 2**70}, r"seed=1180591620717411303424: expected an integer from 0 to 2\*\*32 - 1"),
], ids=["logging-past-the-end", "filesystem-root", "huge-seed"])
def test_settings_that_would_be_ignored_or_crash_later_are_refused(settings, expected):
    with pytest.raises(ValueError, match=expected):
        FinetuneConfig(r=16, **settings)
