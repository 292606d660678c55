"""Out-of-memory recovery, exercised by a real ``torch.OutOfMemoryError`` raised inside a training step."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from transformers import TrainerCallback
from callbacks import batch_rows

from rslora_colab import demo_dataset, quick_finetune
from rslora_colab.memory.plan import halve_micro_batch
from rslora_colab.resilience.oom import is_out_of_memory

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.74 GiB total capacity)"


class OomInStep(TrainerCallback):
    """Raises ``torch.OutOfMemoryError`` from a forward pre-hook while optimizer step ``k`` is being built.

    ``at`` lists the completed-step counts at which to fail, one failure each
    (``(3, 3)`` fails twice while building step 4); ``min_micro`` keeps it
    from failing at smaller micro-batches. Also records which rows (without
    padding) went into each optimizer step, from runs that did not fail.
    """

    def __init__(self, at: tuple[int, ...] = (), min_micro: int = 2) -> None:
        self.at, self.min_micro = list(at), min_micro
        self.rows: dict[int, list[tuple[int, ...]]] = defaultdict(list)
        self.state = None
        self.hooked = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = state  # a new TrainerState on every train() call, resumed ones included
        if not self.hooked:
            model.register_forward_pre_hook(self._hook, with_kwargs=True)
            self.hooked = True

    def _hook(self, module, args, kwargs):
        if not module.training:
            return
        rows = batch_rows(kwargs)  # padded or padding-free alike
        step = self.state.global_step
        if self.at and step == self.at[0] and len(rows) >= self.min_micro:
            self.at.pop(0)
            self.rows.pop(step, None)  # this step's micro-batches so far are thrown away
            raise torch.OutOfMemoryError(CUDA_OOM)
        self.rows[step] += rows

    def by_step(self) -> dict[int, list[tuple[int, ...]]]:
        return {step: sorted(rows) for step, rows in self.rows.items()}


def _run(demo_path, out, callback, batch_size=4, grad_accum=1, max_steps=4):
    return quick_finetune(demo_path, demo_dataset(n=16), r=8, max_steps=max_steps, batch_size=batch_size,
                          grad_accum=grad_accum, max_seq_length=64, output_dir=str(out), callbacks=[callback])


def test_oom_halves_micro_batch_and_resumes_the_same_step(demo_path, tmp_path, capsys):
    baseline = OomInStep()
    plain = _run(demo_path, tmp_path / "plain", baseline)
    failing = OomInStep(at=(1, 1))  # step 2 fails at micro-batch 4, then again at 2
    result = _run(demo_path, tmp_path / "oom", failing)

    out = capsys.readouterr().out
    assert "out of GPU memory in step 2: micro-batch 4 -> 2, grad_accum 1 -> 2 (effective batch 4 unchanged)" in out
    assert "micro-batch 2 -> 1, grad_accum 2 -> 4" in out
    events = [h for h in result.history if h.get("event") == "oom"]
    assert events == [{"step": 1, "event": "oom", "micro_batch": 2, "grad_accum": 2},
                      {"step": 1, "event": "oom", "micro_batch": 1, "grad_accum": 4}]
    steps = [h["step"] for h in result.history if "loss" in h]
    assert steps == [1, 2, 3, 4]  # every step once, ending at max_steps
    s = result.settings
    assert (s["batch_size"], s["grad_accum"]) == (1, 4) and s["batch_size"] * s["grad_accum"] == 4
    # the resumed run skipped exactly the samples already trained on: each step saw the same rows
    assert failing.by_step() == baseline.by_step()
    assert all(len(rows) == 4 for rows in baseline.by_step().values()) and len(baseline.rows) == 4
    # same data, same optimizer state: the same losses up to float rounding of the smaller micro-batches
    assert [h["loss"] for h in result.history if "loss" in h] == pytest.approx(
        [h["loss"] for h in plain.history], rel=5e-3)
    metrics = json.loads((tmp_path / "oom" / "metrics.json").read_text())
    assert metrics["settings"]["batch_size"] == 1 and len([h for h in metrics["history"] if "event" in h]) == 2
    # the resume point is an ordinary checkpoint (the one save path), kept and rotated like every other
    assert sorted(p.name for p in (tmp_path / "oom").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-4"]


def test_gives_up_clearly_at_micro_batch_one(demo_path, tmp_path):
    with pytest.raises(torch.OutOfMemoryError) as err:
        _run(demo_path, tmp_path, OomInStep(at=(1,), min_micro=1), batch_size=1, grad_accum=2, max_steps=2)
    message = str(err.value)
    assert "out of GPU memory at step 2 with micro-batch 1" in message
    assert "no smaller micro-batch" in message and "max_seq_length" in message and "plan --model" in message
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    saved = tmp_path / "checkpoint-1"
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and str(saved) in message and "--resume" in message
    assert (saved / "adapter_model.safetensors").exists()


def test_only_out_of_memory_errors_are_recovered():
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_memory(RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory."))


def test_halving_keeps_the_effective_batch():
    assert halve_micro_batch(4, 2) == (2, 4)
    assert halve_micro_batch(6, 1) == (3, 2)
    assert halve_micro_batch(5, 2) == (2, 5)
    assert halve_micro_batch(1, 8) is None
    for micro in range(2, 17):
        for accum in range(1, 9):
            smaller, more = halve_micro_batch(micro, accum)
            assert smaller * more == micro * accum and 1 <= smaller <= micro // 2
