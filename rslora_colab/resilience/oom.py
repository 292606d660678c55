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

An out-of-memory error in an evaluation (eval rows, :mod:`rslora_colab.train.evaluation`)
is handled the same way in one process, the evaluation batch halved with the
training one; that evaluation is skipped (training resumes after its step).
Under several processes it is not coordinated (only a training forward pass
is, below): the run stops and ``--resume`` continues.

It says so each time and records the change in the history. At micro-batch 1
it gives up with an error saying what to change, keeping a checkpoint of the
completed steps that ``--resume`` continues from.

Under several processes (``docs/scale-out.md``) the micro-batch must change
on every process at once, from the same step. An out-of-memory error in the
model's forward pass can be coordinated: :func:`coordinate_out_of_memory` has
every process tell the others, right after its forward pass, whether it ran
out of memory; if any did, all raise an out-of-memory error at the
same micro-step, before any other collective, and recover together. One in
the backward pass cannot: the other processes are already waiting in DDP's
gradient all-reduce, which the failed process will never join. There the
error is not caught: the process exits, the launcher stops the others within
about a second, and ``--resume`` continues from the last checkpoint (with a
smaller ``batch_size``; the global batch may be split differently).

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

from ..distributed import agree, world_size
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


class CoordinatedOutOfMemory(torch.OutOfMemoryError):
    """Raised on every process when any process ran out of memory in the forward pass of the same micro-step."""


COORDINATED_ATTR = "rslora_colab_coordinated_forward"
"""Set on a model whose forward passes are coordinated: the dict in which :func:`coordinate_out_of_memory` records
that this process's forward failed and told the others."""


def coordinate_out_of_memory(model: Any) -> Any:
    """Have ``model`` (what DDP wraps) tell every process after each training forward pass whether it ran out of
    memory; when any did, every process raises an out-of-memory error at that micro-step. Returns ``model``.

    The flag is one all-reduce right after the forward pass, before any other
    collective of that micro-step: TRL's ``compute_loss`` gathers metrics
    across processes after the forward pass, and a process that left for its
    recovery there would leave the others waiting in that gather. Only in
    training with gradients on, so generation or an evaluation on one process
    never waits for the others. Installed once; nothing changes with one process.

    A public hook, not a patch: ``register_forward_hook(always_call=True)`` runs
    after the forward pass whether it returned or raised (then with no output).
    The process whose forward raised lets its own error go on and records that
    it told the others (:func:`shared_failure`); the others raise
    :class:`CoordinatedOutOfMemory` from the hook.
    """
    if world_size() == 1 or getattr(model, COORDINATED_ATTR, None) is not None:
        return model
    told = {"failed": False}

    def after_forward(module, args, kwargs, output):
        if not (module.training and torch.is_grad_enabled()):
            return None
        failed = output is None  # always_call: the forward raised, here typically out of memory
        if agree(failed):
            if failed:
                told["failed"] = True  # its own error goes on; train_with_oom_recovery knows it was shared
                return None
            raise CoordinatedOutOfMemory("out of memory in the forward pass on another process")
        return None

    model.register_forward_hook(after_forward, with_kwargs=True, always_call=True)
    setattr(model, COORDINATED_ATTR, told)
    return model


def shared_failure(model: Any) -> bool:
    """True once, after this process's forward pass failed and :func:`coordinate_out_of_memory` told the others."""
    told = getattr(model, COORDINATED_ATTR, None) or {}
    failed = bool(told.get("failed"))
    if failed:
        told["failed"] = False
    return failed


def free_memory(trainer: Any) -> None:
    """Drop the unfinished step's gradients, collect garbage and empty the CUDA cache."""
    trainer.model.zero_grad(set_to_none=True)
    if trainer.optimizer is not None:
        trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_micro_batch(trainer: Any, micro_batch: int, grad_accum: int) -> None:
    """Make the next ``trainer.train()`` use this micro-batch and gradient accumulation (evaluation too)."""
    trainer.args.per_device_train_batch_size = micro_batch
    trainer.args.per_device_eval_batch_size = micro_batch  # an evaluation that ran out of memory is halved too
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


def _uncoordinated(error: BaseException) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        f"rslora-colab: out of GPU memory outside the forward pass ({error}); with several processes only an "
        "out-of-memory error in the forward pass can be recovered in step with the others, so this run stops here. "
        "Run the same command with --resume (Python: resume=True) and a smaller batch_size (the global batch "
        "batch_size x grad_accum is what must stay the same): it continues from the last checkpoint.")


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
    coordinate_out_of_memory(trainer.model)
    while True:
        try:
            trainer.train(resume_from_checkpoint=resume)
            return run
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled
            if not is_out_of_memory(error):
                raise
            if world_size() > 1 and not (isinstance(error, CoordinatedOutOfMemory) or shared_failure(trainer.model)):
                raise _uncoordinated(error) from error
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
        kept = f"global batch {run.global_batch}" if run.world_size > 1 else f"effective batch {old[0] * old[1]}"
        logger.info(f"out of GPU memory in step {step + 1}: micro-batch {old[0]} -> {smaller[0]}, grad_accum "
                    f"{old[1]} -> {smaller[1]} ({kept} unchanged); resuming after step {step}")
        if history is not None:
            history.append({"step": step, "event": "oom", "micro_batch": smaller[0], "grad_accum": smaller[1]})
