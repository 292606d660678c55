"""Checkpoints that survive a kill: written atomically, saved on a timer, found again on resume.

transformers' Trainer already saves everything a resume needs into
``output_dir/checkpoint-<step>/`` (adapter, optimizer, scheduler, RNG states,
``trainer_state.json`` with the step and data position) and restores it with
``trainer.train(resume_from_checkpoint=...)``. What it does not do (5.23) is
write atomically: it creates ``checkpoint-<step>`` first and fills it file by
file, so a kill mid-save leaves a folder that looks like the newest checkpoint
but cannot be loaded. This module adds the missing pieces:

* :func:`make_checkpoints_atomic` — the trainer writes each checkpoint into a
  hidden staging folder; only a complete one is renamed to ``checkpoint-<step>``
  (and the best checkpoint, when evaluation keeps one, is recorded under
  that name, not the staging one).
* :class:`CheckpointTimer` — also save every ``checkpoint_minutes`` of wall
  time, so a disconnect loses minutes, whatever a step costs.
* :func:`latest_valid_checkpoint` — the newest checkpoint whose every file
  loads and whose weights are finite, skipping (and naming) any that is not.
* :class:`OutputWriteError` — a checkpoint that cannot be written (read-only
  folder, full disk) stops training with one message saying how to resume.

Under several processes (``docs/scale-out.md``) a checkpoint is still written
once: transformers saves the adapter, optimizer, scheduler and state from rank
0 and an RNG file (``rng_state_<rank>.pth``) from every process, so every
process saves into the staging folder, and rank 0 renames it only once every
process's file is there. The timer decides for all processes together.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    rotate_checkpoints,
    sort_checkpoints,
)

from ..distributed import agree, run_on_main, world_size

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
"""Checkpoints are written into ``output_dir/.staging-checkpoint-<step>/<run>/`` and renamed when complete."""
MODEL_CARD = "README.md"
"""TRL's model card, which its trainer writes into ``output_dir`` with each checkpoint."""
TRAINING_ARGS = "training_args.bin"
"""transformers' pickled ``TrainingArguments`` in each checkpoint."""
NEVER = 2**31 - 1
"""``save_steps`` when only the timer and the end of training should save."""
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE, RNG_FILE = "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"
REQUIRED_FILES = (TRAINER_STATE, OPTIMIZER_FILE, SCHEDULER_FILE)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


class OutputWriteError(OSError):
    """A checkpoint or the final outputs could not be written (read-only folder, full disk, a file in the way).

    The message names the folder, the cause, and how to go on (``--resume``).
    """


WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
"""What a failed write raises: ``OSError`` from Python, ``RuntimeError`` from ``torch.save`` ("Parent directory
... does not exist", "file write failed"), ``SafetensorError`` from safetensors."""


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
        if agree(time.monotonic() - self._last_save >= self.minutes * 60):  # every process's clock: one decision
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()


def make_checkpoints_atomic(trainer: Any) -> Any:
    """Make ``trainer`` write each checkpoint to a staging folder and rename it into place when complete.

    Wraps the trainer's own ``_save_checkpoint`` (so TRL's model cards and
    every file transformers writes stay as they are). While it runs, the
    trainer's public ``args.output_dir`` names a folder inside the staging
    one that carries the run folder's name, so the checkpoint is written there
    and TRL's model card names the run as it would in place; once complete,
    the checkpoint is renamed into the run folder, the card moved beside it,
    and ``save_total_limit`` applied there. The checkpoint's
    ``training_args.bin`` records the run folder. Returns ``trainer``.

    Under several processes every process saves its part into the staging
    folder (rank 0 everything but the other processes' RNG files); rank 0
    checks that the checkpoint is complete for every process, renames it and
    rotates, while the others wait; a failure on any process stops all of them
    with the same :class:`OutputWriteError`. A hyperparameter search's trial
    (which the kit never starts) saves as transformers does.
    """
    save = trainer._save_checkpoint

    def publish(src: Path, dst: Path, staging: Path) -> None:
        missing = [name for name in rng_files(world_size()) if not (src / name).is_file()] if world_size() > 1 else []
        if missing:
            raise OSError(f"the checkpoint is incomplete: {', '.join(missing)} missing in {src}")
        _publish(src, dst)
        if (src.parent / MODEL_CARD).is_file():
            os.replace(src.parent / MODEL_CARD, dst.parent / MODEL_CARD)
        shutil.rmtree(staging, ignore_errors=True)
        rotate_checkpoints(str(dst.parent), trainer.args.save_total_limit, trainer.state.best_model_checkpoint)

    def save_atomically(model, trial):
        if trial is not None:
            return save(model, trial)
        output_dir = trainer.args.output_dir
        run_dir, name = Path(output_dir), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        written = staging / (run_dir.name or "output")  # transformers writes written/checkpoint-N, TRL its card
        try:
            run_on_main(shutil.rmtree, staging, ignore_errors=True)
            failed: BaseException | None = None
            trainer.args.output_dir = str(written)
            try:
                save(model, trial)
            except WRITE_ERRORS as err:
                failed = err
            finally:
                trainer.args.output_dir = output_dir
            if agree(failed is not None):  # each process wrote its own files: all go on, or all stop
                raise failed or OSError("another process could not write its part of the checkpoint")
            if trainer.args.should_save and (written / name / TRAINING_ARGS).is_file():
                torch.save(trainer.args, written / name / TRAINING_ARGS)  # as transformers saved them, in place
            _best_in_published(trainer.state, written, run_dir, written / name / TRAINER_STATE,
                               write=trainer.args.should_save)  # every process's state; rank 0's file
            run_on_main(publish, written / name, run_dir / name, staging)  # the others wait: nobody looks first
        except WRITE_ERRORS as err:
            run_on_main(shutil.rmtree, staging, ignore_errors=True)
            raise OutputWriteError(checkpoint_write_failure(run_dir, name, trainer.state.global_step, err)) from err

    trainer._save_checkpoint = save_atomically
    return trainer


def save_checkpoint_now(trainer: Any) -> Path:
    """Save the completed steps now as ``checkpoint-<step>``, through the trainer's (atomic) save; returns it.

    ``trainer`` must have gone through :func:`make_checkpoints_atomic`. The
    checkpoint holds what ``trainer.train(resume_from_checkpoint=...)`` reads,
    like every other checkpoint, and counts towards ``save_total_limit``.
    """
    trainer._save_checkpoint(trainer.model, trial=None)
    return Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"


def checkpoint_write_failure(run_dir: Path, name: str, step: int, err: Exception) -> str:
    """The message for a checkpoint that could not be written: the cause, and where ``--resume`` will continue."""
    saved = sort_checkpoints(str(run_dir)) if run_dir.is_dir() else []
    since = f"from {saved[-1]}" if saved else "from step 0 (no checkpoint was saved yet)"
    return (f"could not write {name} to {run_dir} ({type(err).__name__}: {err}); training stopped at step {step}. "
            f"Make the folder writable again (or free some space), then run the same command with --resume "
            f"(Python: resume=True): it continues {since}.")


def _best_in_published(state: Any, staging: Path, run_dir: Path, state_file: Path, write: bool = True) -> None:
    """Point ``best_model_checkpoint`` at the published folder, in the trainer's state and (``write``: the process
    that saves the state, rank 0) in the checkpoint's ``trainer_state.json``.

    transformers names the best checkpoint inside the folder it was written
    to, here the staging folder, which is gone once published: a resume would
    drop that best ("does not exist anymore"), the rotation would delete it,
    and ``load_best_model_at_end`` would not find it.
    """
    best = state.best_model_checkpoint
    if best is None or Path(best).parent != staging:
        return
    state.best_model_checkpoint = str(run_dir / Path(best).name)
    if write and state_file.is_file():
        state.save_to_json(str(state_file))  # what was just written, with the published path


def _publish(src: Path, dst: Path) -> None:
    """Rename the complete checkpoint ``src`` to ``dst`` (an older ``dst`` is moved aside first)."""
    if dst.exists():
        old = src.parent / "replaced"
        os.replace(dst, old)
    os.replace(src, dst)


def rng_files(processes: int) -> list[str]:
    """The RNG files transformers writes into a checkpoint: one, or one per process (``rng_state_<rank>.pth``)."""
    return [RNG_FILE] if processes <= 1 else [f"rng_state_{rank}.pth" for rank in range(processes)]


def _load_torch(path: Path) -> Any:
    """``torch.load`` of a checkpoint file as the Trainer loads it: tensors and plain containers only, on the CPU."""
    from transformers.trainer_pt_utils import (
        safe_globals,  # numpy's RNG state, as transformers allows it
    )

    with safe_globals():
        return torch.load(path, weights_only=True, map_location="cpu")


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix or "tensor"] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in _non_finite(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, (list, tuple)):
        return [n for i, v in enumerate(tree) for n in _non_finite(v, f"{prefix}[{i}]")]
    return []


REASON_CHARS = 1000
"""How much of a loader's error a skipped checkpoint's line shows (torch's pickle errors name the cause late)."""


def _load_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return _load_torch(path)


def _file_problem(path: Path, load: Callable[[Path], Any], check_finite: bool) -> str | None:
    """Why one checkpoint file is unusable: it does not load, or (``check_finite``) holds NaN/inf."""
    try:
        content = load(path)
    except Exception as err:  # noqa: BLE001 — any failure to load makes the checkpoint unusable
        reason = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(line.strip() for line in str(err).splitlines()
                                                       if line.strip()))  # the cause may be on a later line
        if "WeightsUnpickler error:" in reason:  # torch: advice first, the cause (the object it refused) last
            reason = "Weights only load failed: " + reason.split("WeightsUnpickler error:", 1)[1].strip()
        reason = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + " ..."
        return f"{path.name} cannot be loaded ({type(err).__name__}: {reason})"
    bad = _non_finite(content) if check_finite else []
    if bad:
        return f"{path.name} holds NaN or inf values ({len(bad)} tensor(s), e.g. {bad[0]})"
    return None


def _state_problem(path: Path) -> str | None:
    try:
        state = TrainerState.load_from_json(str(path))  # unknown keys, not JSON: an error
        counts = {"global_step": state.global_step, "max_steps": state.max_steps}
        wrong = [f"{k}={v!r}" for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if wrong:  # a string "30" would pass int() here and crash the trainer later
            raise ValueError(f"it records no step count ({', '.join(wrong)}: expected integers >= 1)")
        if not isinstance(state.log_history, list):
            raise ValueError("log_history is not a list")
    except Exception as err:  # noqa: BLE001 — unreadable, not JSON, or missing the step
        return f"{path.name} is unreadable ({type(err).__name__}: {err})"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it can: a message naming the file.

    A checkpoint counts only if every file a resume reads loads, and its
    weights are finite: ``trainer_state.json`` parses and records the step;
    the adapter weights load and hold no NaN/inf; ``optimizer.pt`` loads and
    its state is finite; ``scheduler.pt`` and, when present, ``scaler.pt``
    and the RNG files (``rng_state.pth``, or ``rng_state_<rank>.pth`` from
    several processes) load. ``.pt`` files are read with
    ``torch.load(weights_only=True, map_location="cpu")``: tensors and plain
    containers, never arbitrary pickled objects. Cost: one read of the
    checkpoint (for a LoRA run the adapter and its optimizer state, a few MB
    to a few hundred MB), only for the checkpoint a resume is about to use.
    """
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file() or (path / f).stat().st_size == 0]
    if missing:
        return f"missing or empty {', '.join(missing)}"
    adapter = next((path / f for f in ADAPTER_FILES if (path / f).is_file()), None)
    if adapter is None:
        return "no adapter weights"
    checks = [(adapter, _load_weights, True), (path / OPTIMIZER_FILE, _load_torch, True),
              (path / SCHEDULER_FILE, _load_torch, False)]
    extra = [path / SCALER_FILE] + sorted(path.glob("rng_state*.pth"))  # rng_state_<rank>.pth: several processes
    checks += [(file, _load_torch, False) for file in extra if file.exists()]
    return _state_problem(path / TRAINER_STATE) or next(
        (problem for file, load, finite in checks if (problem := _file_problem(file, load, finite))), None)


def latest_valid_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` in ``output_dir`` that :func:`checkpoint_problem` accepts; the others
    are named (with the file and why) and skipped, so a resume falls back to the one before."""
    if not Path(output_dir).is_dir():
        return None
    for path in reversed(sort_checkpoints(str(output_dir))):
        problem = checkpoint_problem(path)
        if problem is None:
            return Path(path)
        logger.info(f"skipping {path}: {problem}; trying the one before")
    return None


def checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """``(global_step, max_steps)`` recorded in a checkpoint's ``trainer_state.json``."""
    state = TrainerState.load_from_json(str(Path(path) / TRAINER_STATE))
    return int(state.global_step), int(state.max_steps)


def load_checkpoint_adapter(trainer: Any, checkpoint: str | Path) -> None:
    """Load ``checkpoint``'s adapter weights into the trainer's model, trainable, with PEFT's public
    ``PeftModel.load_adapter``: what transformers' ``Trainer`` itself does for a PEFT model when it resumes or
    loads the best checkpoint. Raises ``ValueError`` naming the folder when adapter weights are missing there."""
    model = trainer.model
    adapter = model.active_adapters[0]
    result = model.load_adapter(str(checkpoint), adapter, is_trainable=True)
    if result is not None and result.missing_keys:
        raise ValueError(f"{checkpoint}: the checkpoint lacks {len(result.missing_keys)} of the adapter's weights "
                         f"(e.g. {result.missing_keys[0]}); it is not this run's adapter.")


def resume_training(trainer: Any, checkpoint: str | Path | None,
                    train: Callable[[str | None], Any] | None = None) -> tuple[Any, int]:
    """``train(checkpoint)`` (default ``trainer.train(resume_from_checkpoint=...)``): ``(what it returned, steps trained)``.

    A checkpoint taken at the last step only has its weights and its
    ``TrainerState`` loaded (and ``train`` is not called: ``(None, 0)``);
    transformers 5.23 would otherwise run one step past ``max_steps``.
    """
    train = train or (lambda resume: trainer.train(resume_from_checkpoint=resume))
    if checkpoint is None:
        outcome = train(None)
        return outcome, trainer.state.global_step
    step, total = checkpoint_progress(checkpoint)
    if step >= total:
        logger.info(f"{checkpoint} is the end of the run (step {step} of {total}); nothing left to train")
        load_checkpoint_adapter(trainer, checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))  # its step, its best
        return None, 0
    outcome = train(str(checkpoint))
    return outcome, trainer.state.global_step - step


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
