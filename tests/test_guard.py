"""Divergence guard: a real NaN flows through real training; the guard rolls back, or gives up clearly."""

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from rslora_colab import DivergenceError, demo_dataset, quick_finetune
from rslora_colab.resilience.guard import judge_step

TINY = {"max_steps": 24, "batch_size": 2, "grad_accum": 1, "max_seq_length": 128}


class PoisonSteps(TrainerCallback):
    """Multiplies the input embeddings by NaN during the chosen optimizer steps (1-based)."""

    def __init__(self, steps):
        self.steps, self.active = set(steps), False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.get_input_embeddings().register_forward_hook(lambda m, i, out: out * math.nan if self.active else None)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 in self.steps


def test_nan_step_is_rolled_back_and_training_finishes_finite(demo_path, tmp_path):
    result = quick_finetune(demo_path, demo_dataset(n=32), r=8, output_dir=str(tmp_path), callbacks=[PoisonSteps({15})],
                            checkpoint_minutes=0.001, keep_checkpoints=2, **TINY)
    steps = [h for h in result.history if "loss" in h]
    events = [h for h in result.history if "event" in h]
    assert [h["step"] for h in steps] == list(range(1, 25))
    assert math.isnan(steps[14]["loss"])  # the NaN really happened at step 15 ...
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in steps[15:])  # ... and not after
    assert len(events) == 1 and events[0]["event"] == "rollback" and events[0]["step"] == 15
    assert events[0]["reason"] == "loss is nan" and events[0]["restored_step"] == 10
    assert events[0]["lr"] == pytest.approx(steps[15]["lr"])  # the halved lr is the one step 16 used
    lora = [p for n, p in result.model.named_parameters() if "lora_" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora)
    assert json.loads((tmp_path / "metrics.json").read_text())["history"][15]["event"] == "rollback"
    # the timer saved checkpoints every few ms; only the newest 2 are kept, the last at the final step
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*"))[-1] == "checkpoint-24"
    assert len(list(tmp_path.glob("checkpoint-*"))) == 2


def test_guard_gives_up_with_a_clear_message(demo_path, tmp_path):
    with pytest.raises(DivergenceError) as err:
        quick_finetune(demo_path, demo_dataset(n=32), r=8, output_dir=str(tmp_path), max_rollbacks=1,
                       callbacks=[PoisonSteps(range(12, 30))], **TINY)
    message = str(err.value)
    assert "diverged at step 13" in message and "after 1 rollback" in message
    assert "lower lr" in message and "check the data" in message
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["event"] for h in history if "event" in h] == ["rollback", "gave_up"]
    assert not (tmp_path / "adapter").exists()  # no NaN adapter is handed back as the run's result ...
    saved = tmp_path / "last_good_adapter"  # ... but the last good one is kept, and the message says where
    assert f"The last good adapter (step 10) is saved in {saved}." in message
    assert "fp16" not in message  # an fp32 run gets no advice about fp16 overflow
    from safetensors.torch import load_file

    weights = load_file(saved / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert any(w.abs().sum() > 0 for n, w in weights.items() if "lora_B" in n)  # trained for 10 steps, not fresh


def test_an_early_blow_up_is_judged_against_the_starting_loss(demo_path, tmp_path):
    """lr=0.9 at r=256: 3.5 -> 10.0 at step 3, before 10 healthy steps exist to take a median of."""
    with pytest.raises(DivergenceError, match="last good adapter"):
        quick_finetune(demo_path, demo_dataset(), r=256, lr=0.9, max_steps=6, batch_size=8, grad_accum=1,
                       max_seq_length=128, output_dir=str(tmp_path), max_rollbacks=1)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    events = [h for h in history if "event" in h]
    assert [(e["step"], e["event"]) for e in events] == [(3, "rollback"), (5, "gave_up")]
    assert "in the first steps, over 2x the starting loss 3.4" in events[0]["reason"]
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    assert events[0]["restored_step"] == 0 and losses[4] < 4  # step 4 trains from the good weights again


@pytest.mark.parametrize("loss, grad_norm, weights_ok, expected", [
    (2.0, 1.0, True, "ok"),
    (math.nan, math.nan, False, "diverged"),
    (2.0, math.inf, True, "skip"),       # fp16 loss-scaler skip: finite loss, no update
    (2.0, math.nan, False, "diverged"),  # the update went through and broke the weights
    (7.0, 1.0, True, "diverged"),        # > 3x the median 2.0 and > 1 nat above it
    (5.9, 1.0, True, "ok"),
])
def test_judge_step_rules(loss, grad_norm, weights_ok, expected):
    assert judge_step(loss, grad_norm, [2.0] * 20, lambda: weights_ok)[0] == expected


@pytest.mark.parametrize("loss, recent, expected", [
    (10.0, [3.4, 3.3], "diverged"),        # the lr=0.9, r=256 blow-up at step 3
    (6.5, [3.4], "ok"),                    # 1.9x the start: not yet 2x
    (2.5, [1.0], "ok"),                    # 2.5x an easy first batch, but only 1.5 nats above it
    (3.5, [1.0] + [1.5] * 8, "diverged"),  # 9 healthy steps: still judged against the start ...
    (3.5, [1.0] + [1.5] * 9, "ok"),        # ... from 10 on, the median rule: 3.5 is under 3x the median 1.5
])
def test_first_steps_are_judged_against_the_starting_loss(loss, recent, expected):
    assert judge_step(loss, 1.0, recent, lambda: True, start=recent[0])[0] == expected


@pytest.mark.parametrize("precision, weights_ok, expected, words", [
    ("fp16", True, "skip", "the fp16 loss scaler skipped this update"),
    ("fp16", False, "diverged", "adapter weights are no longer finite"),
    ("fp32", True, "diverged", "in fp32, which has no loss scaler"),
    ("bf16", True, "diverged", "in bf16, which has no loss scaler"),
])
def test_a_non_finite_grad_norm_is_worded_by_the_real_precision(precision, weights_ok, expected, words):
    verdict, reason = judge_step(2.0, math.inf, [2.0] * 20, lambda: weights_ok, precision=precision)
    assert verdict == expected and words in reason
    assert precision == "fp16" or "fp16" not in reason


def test_spikes_need_history_and_a_real_margin():
    assert judge_step(50.0, 1.0, [2.0] * 9, lambda: True)[0] == "ok"       # fewer than 10 healthy steps
    assert judge_step(0.5, 1.0, [0.05] * 20, lambda: True)[0] == "ok"      # 10x, but only 0.45 nat above
    assert judge_step(1.2, 1.0, [0.05] * 20, lambda: True)[0] == "diverged"
