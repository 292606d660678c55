"""Checkpoints that survive a kill: written atomically, saved on a timer, found again on resume.

transformers' Trainer already saves everything a resume needs into
``output_dir/checkpoint-<step>/`` (adapter, optimizer, scheduler, RNG states,
``trainer_state.json`` with the step and data position) and restores it with
``trainer.train(resume_from_checkpoint=...)``. What it does not do (5.23) is
write atomically: it creates ``checkpoint-<step>`` first and fills it file by
file, so a kill mid-save leaves a folder that looks like the newest checkpoint
but cannot be loaded. This module adds the missing pieces:

* :func:`make_checkpoints_atomic` — the trainer writes each checkpoint into a
  hidden staging folder; only a complete one is renamed to ``checkpoint-<step>``.
* :class:`CheckpointTimer` — also save every ``checkpoint_minutes`` of wall
  time, so a disconnect loses minutes, whatever a step costs.
* :func:`latest_valid_checkpoint` — the newest checkpoint that is complete,
  skipping (and naming) any that is not.
* :func:`keep_dtypes_on_resume` — a resumed run trains its adapter in the
  same precision as the run it continues.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, sort_checkpoints

STAGING_PREFIX = ".staging-"
"""Checkpoints are written into ``output_dir/.staging-checkpoint-<step>/`` and renamed when complete."""
NEVER = 2**31 - 1
"""``save_steps`` when only the timer and the end of training should save."""
TRAINER_STATE = "trainer_state.json"
REQUIRED_FILES = (TRAINER_STATE, "optimizer.pt", "scheduler.pt")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def checkpoint_args(checkpoint_every: int | None, keep_checkpoints: int) -> dict:
    """``TrainingArguments`` fields for checkpointing: every ``checkpoint_every`` steps (or only
    by :class:`CheckpointTimer` when None), at the end of training, keeping the last ``keep_checkpoints``."""
    return {"save_strategy": "steps", "save_steps": checkpoint_every or NEVER, "save_total_limit": keep_checkpoints}


class CheckpointTimer(TrainerCallback):
    """Asks the trainer to save a checkpoint when ``minutes`` have passed since the last one.

    A step-count interval loses a different amount of work on every model and
    GPU; a time interval bounds it: a kill loses at most ``minutes`` plus one
    step and one save.
    """

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self._last_save = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self._last_save >= self.minutes * 60:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()


def make_checkpoints_atomic(trainer: Any) -> Any:
    """Make ``trainer`` write each checkpoint to a staging folder and rename it into place when complete.

    Wraps the trainer's own ``_save_checkpoint`` (so TRL's model cards and
    every file transformers writes stay as they are) and then applies
    ``save_total_limit`` in the real output folder. Returns ``trainer``.
    """
    save = trainer._save_checkpoint

    def save_atomically(model, trial):
        run_dir = Path(trainer._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        shutil.rmtree(staging, ignore_errors=True)
        trainer._get_output_dir = lambda trial=None: str(staging)  # transformers writes staging/checkpoint-N
        try:
            save(model, trial)
        finally:
            del trainer._get_output_dir  # back to the class's method
        _publish(staging / name, run_dir / name)
        shutil.rmtree(staging, ignore_errors=True)
        if trainer.args.should_save:
            rotate_checkpoints(str(run_dir), trainer.args.save_total_limit, trainer.state.best_model_checkpoint)

    trainer._save_checkpoint = save_atomically
    return trainer


def keep_dtypes_on_resume(trainer: Any) -> Any:
    """Make ``trainer`` keep each trainable parameter's dtype when it loads a checkpoint. Returns ``trainer``.

    TRL keeps QLoRA adapters in bf16, but transformers loads a checkpoint's
    adapter through PEFT's ``load_adapter``, which upcasts it to fp32: a
    resumed run would train in another precision, with twice the adapter
    memory, than the run it continues. This puts the dtypes back right after
    the load, before the optimizer state is loaded onto the parameters.
    """
    load = trainer._load_from_checkpoint

    def load_keeping_dtypes(resume_from_checkpoint, model=None):
        target = model if model is not None else trainer.model
        dtypes = {n: p.dtype for n, p in target.named_parameters() if p.requires_grad}
        load(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    trainer._load_from_checkpoint = load_keeping_dtypes
    return trainer


def _publish(src: Path, dst: Path) -> None:
    """Rename the complete checkpoint ``src`` to ``dst`` (an older ``dst`` is moved aside first)."""
    if dst.exists():
        old = src.parent / "replaced"
        os.replace(dst, old)
    os.replace(src, dst)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it is complete."""
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file() or (path / f).stat().st_size == 0]
    if missing:
        return f"missing or empty {', '.join(missing)}"
    adapter = next((path / f for f in ADAPTER_FILES if (path / f).is_file()), None)
    if adapter is None:
        return "no adapter weights"
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
        int(state["global_step"])
        if adapter.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(adapter), framework="pt") as weights:
                weights.keys()
    except Exception as err:  # noqa: BLE001 — any unreadable file makes the checkpoint unusable
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def latest_valid_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in ``output_dir``; incomplete ones are named and skipped."""
    if not Path(output_dir).is_dir():
        return None
    for path in reversed(sort_checkpoints(str(output_dir))):
        problem = checkpoint_problem(path)
        if problem is None:
            return Path(path)
        print(f"rslora-colab: skipping {path}: {problem}", flush=True)
    return None


def checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """``(global_step, max_steps)`` recorded in a checkpoint's ``trainer_state.json``."""
    state = json.loads((Path(path) / TRAINER_STATE).read_text())
    return int(state["global_step"]), int(state["max_steps"])


def resume_training(trainer: Any, checkpoint: str | Path | None,
                    train: Callable[[str | None], Any] | None = None) -> int:
    """``train(checkpoint)`` (default ``trainer.train(resume_from_checkpoint=...)``); returns the steps trained.

    A checkpoint taken at the last step only has its weights loaded:
    transformers 5.23 would otherwise run one step past ``max_steps``.
    """
    train = train or (lambda resume: trainer.train(resume_from_checkpoint=resume))
    if checkpoint is None:
        train(None)
        return trainer.state.global_step
    step, total = checkpoint_progress(checkpoint)
    if step >= total:
        print(f"rslora-colab: {checkpoint} is the end of the run (step {step} of {total}); nothing left to train",
              flush=True)
        trainer._load_from_checkpoint(str(checkpoint))
        return 0
    train(str(checkpoint))
    return trainer.state.global_step - step


def remove_staging(output_dir: str | Path) -> list[Path]:
    """Delete staging folders a killed save left in ``output_dir``; returns what was removed."""
    found = sorted(Path(output_dir).glob(f"{STAGING_PREFIX}*"))
    for path in found:
        shutil.rmtree(path)
    return found


def remove_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete every ``checkpoint-<step>`` (and staging) folder in ``output_dir``; returns what was removed."""
    found = [Path(p) for p in sort_checkpoints(str(output_dir))] if Path(output_dir).is_dir() else []
    for path in found:
        shutil.rmtree(path)
    return found + remove_staging(output_dir)
