"""Ctrl-C: stop after the current step, save a checkpoint there, and say how to resume.

Without this a Ctrl-C (SIGINT, or a notebook's "interrupt kernel") raises
``KeyboardInterrupt`` in the middle of a step: the steps since the last timed
checkpoint (up to ``checkpoint_minutes``) are lost and a long traceback is
printed. While ``train_adapter`` trains, :func:`stop_on_interrupt` replaces the
SIGINT handler: the first Ctrl-C asks :class:`InterruptCallback` to end
training after the current step and to save a checkpoint there (the trainer's
own save, made atomic by :mod:`rslora_colab.resilience.checkpoints`); a second Ctrl-C
interrupts at once. ``train_adapter`` then raises :class:`TrainingInterrupted`
(a ``KeyboardInterrupt``, so scripts and notebook cells stop as asked) naming
the checkpoint and the resume command; the CLI prints it and exits with 130.

Signal handlers can only be set in the main thread: a run in another thread
(the control panel's) has its Stop button instead.

Under a launcher (torchrun, ``accelerate launch``) Ctrl-C reaches the
launcher, which passes it to every process; they stop after the same step
(the first one any of them saw the request at) and save one checkpoint.
The launcher gives them 30 s before it kills them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator

from transformers import TrainerCallback

from ..distributed import agree

logger = logging.getLogger(__name__)

INTERRUPTED_EXIT = 130
"""The CLI's exit status after Ctrl-C (128 + SIGINT, as shells report it)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C ended training after a step, and a checkpoint was saved there.

    ``result`` is the :class:`~rslora_colab.result.FinetuneResult` of the steps
    trained so far (the model in memory); ``checkpoint`` the folder to resume from.
    """

    def __init__(self, message: str, result: Any = None, checkpoint: Any = None) -> None:
        super().__init__(message)
        self.result, self.checkpoint = result, checkpoint


class InterruptCallback(TrainerCallback):
    """Once :meth:`request` is called, ends training after the current step and saves a checkpoint there."""

    def __init__(self) -> None:
        self.requested = False
        """True once an interrupt asked training to stop."""
        self.stopped_at: int | None = None
        """The step training stopped after (its checkpoint is ``checkpoint-<step>``)."""

    def request(self) -> None:
        """Ask training to stop (and save) at the end of the current step."""
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if agree(self.requested) and self.stopped_at is None:  # several processes stop after the same step
            control.should_training_stop = True
            control.should_save = True
            self.stopped_at = state.global_step
        return control


@contextlib.contextmanager
def stop_on_interrupt(callback: InterruptCallback) -> Iterator[None]:
    """While the block runs, the first Ctrl-C calls ``callback.request()``; a second one interrupts at once.

    The previous SIGINT handler is restored afterwards. Outside the main
    thread it does nothing (Python allows signal handlers only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if callback.requested:
            raise KeyboardInterrupt
        callback.request()
        logger.info("Ctrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to quit "
                    "at once, losing the steps since the last checkpoint)")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
