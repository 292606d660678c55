"""Out-of-memory recovery: halve the micro-batch and carry on from the same step.

:func:`train_with_oom_recovery` runs ``trainer.train()``. When the GPU runs
out of memory in a training step it

1. drops the half-accumulated gradients of the unfinished step and empties
   PyTorch's cache;
2. halves the micro-batch and multiplies gradient accumulation to match
   (:func:`~rslora_colab.memory.plan.halve_micro_batch`), so the effective
   batch, the loss normalisation and the number of optimizer steps do not
   change, and records the new shape (:meth:`RunSettings.with_batch`);
3. saves the completed steps as an ordinary checkpoint through the kit's one
   save path (:func:`~rslora_colab.resilience.checkpoints.save_checkpoint_now`:
   atomic, rotated, what ``--resume`` reads too);
4. resumes with ``trainer.train(resume_from_checkpoint=...)``. transformers
   skips ``global_step * grad_accum`` micro-batches of the new size, which is
   exactly the ``global_step * effective batch`` samples already trained on
   (the sampler's order does not depend on the micro-batch).

It says so each time and records the change in the history. At micro-batch 1
it gives up with an error saying what to change, keeping a checkpoint of the
completed steps that ``--resume`` continues from.

Why not transformers' ``auto_find_batch_size``: accelerate's
``find_executable_batch_size`` multiplies the micro-batch by 0.9 on an
out-of-memory error and reruns the whole training loop from step 0 (or from
the checkpoint ``train()`` was first given), with the same
``gradient_accumulation_steps``: the effective batch shrinks and the
finished steps are trained again on top of the already-updated adapter.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import torch

from ..memory.plan import halve_micro_batch
from ..settings import RunSettings
from .checkpoints import save_checkpoint_now

logger = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a GPU (or CPU allocator) out-of-memory error.

    ``torch.OutOfMemoryError`` (what CUDA raises), plus what accelerate's
    ``should_reduce_batch_size`` recognises (the same message from other
    backends, cuDNN's "not supported" on huge batches, CPU allocation failures).
    """
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(error, torch.OutOfMemoryError) or should_reduce_batch_size(error)


def free_memory(trainer: Any) -> None:
    """Drop the unfinished step's gradients, collect garbage and empty the CUDA cache."""
    trainer.model.zero_grad(set_to_none=True)
    if trainer.optimizer is not None:
        trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_micro_batch(trainer: Any, micro_batch: int, grad_accum: int) -> None:
    """Make the next ``trainer.train()`` use this micro-batch and gradient accumulation."""
    trainer.args.per_device_train_batch_size = micro_batch
    trainer.args.gradient_accumulation_steps = grad_accum
    trainer._train_batch_size = trainer.args.train_batch_size  # what get_train_dataloader() batches by
    trainer.state.train_batch_size = trainer._train_batch_size  # saved with the checkpoint


def _close_progress_bars(trainer: Any) -> None:
    """Close the interrupted run's progress bar; the resumed run opens a new one."""
    for callback in trainer.callback_handler.callbacks:
        bar = getattr(callback, "training_bar", None)
        if bar is not None and hasattr(bar, "close"):
            bar.close()
            callback.training_bar = None


def _give_up(trainer: Any, step: int) -> torch.OutOfMemoryError:
    """The final error at micro-batch 1, after saving the completed steps (if any)."""
    args = trainer.args
    kept = ""
    if step > 0:
        saved = save_checkpoint_now(trainer)
        kept = (f" The {step} completed steps are saved in {saved}: with smaller settings in a new output_dir, or "
                "the same ones and --resume (Python: resume=True), training continues from there.")
    return torch.OutOfMemoryError(
        f"rslora-colab: out of GPU memory at step {step + 1} with micro-batch 1 "
        f"(grad_accum {args.gradient_accumulation_steps}, max_length {getattr(args, 'max_length', '?')}): "
        f"there is no smaller micro-batch to try. Lower max_seq_length, the rank r, or use a smaller "
        f"model; `python -m rslora_colab plan --model ID --rank R --seq N` shows what fits.{kept}"
    )


def train_with_oom_recovery(trainer: Any, run: RunSettings, history: list[dict] | None = None,
                            resume_from: str | None = None) -> RunSettings:
    """``trainer.train()``, halving the micro-batch after each out-of-memory error; returns the run as it ended.

    Each recovery logs one line and appends ``{"step", "event": "oom",
    "micro_batch", "grad_accum"}`` to ``history``; the returned
    :class:`~rslora_colab.settings.RunSettings` carries the last batch shape.
    Raises ``torch.OutOfMemoryError`` with a clear message once the
    micro-batch is already 1. Other errors pass through unchanged.
    ``resume_from`` is a checkpoint to start from.
    """
    resume: str | None = resume_from
    while True:
        try:
            trainer.train(resume_from_checkpoint=resume)
            return run
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled
            if not is_out_of_memory(error):
                raise
            step = trainer.state.global_step
            smaller = halve_micro_batch(trainer.args.per_device_train_batch_size,
                                        trainer.args.gradient_accumulation_steps)
            if smaller is None:
                _close_progress_bars(trainer)
                free_memory(trainer)
                raise _give_up(trainer, step) from error
        # outside the except block, so the traceback (and the step's activations) can be freed
        _close_progress_bars(trainer)
        free_memory(trainer)
        old = trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps
        set_micro_batch(trainer, *smaller)
        run = run.with_batch(*smaller)
        resume = str(save_checkpoint_now(trainer)) if step > 0 else None
        logger.info(f"out of GPU memory in step {step + 1}: micro-batch {old[0]} -> {smaller[0]}, grad_accum "
                    f"{old[1]} -> {smaller[1]} (effective batch {old[0] * old[1]} unchanged); resuming after step {step}")
        if history is not None:
            history.append({"step": step, "event": "oom", "micro_batch": smaller[0], "grad_accum": smaller[1]})
