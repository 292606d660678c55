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

SIGTERM (what Docker, Kubernetes, preemptible VMs and runtime shutdowns send
before they kill a process) is handled the same way: training ends after the
current step, a checkpoint is saved there, and the CLI exits with 143
(128 + SIGTERM) after saying how to resume. The time that takes is the rest of
the current step plus writing one adapter checkpoint (seconds for a LoRA
adapter), which fits Kubernetes' default grace period of 30 s, and Docker's
10 s when a step is shorter than that (``docs/resilience.md``).

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
TERMINATED_EXIT = 143
"""The CLI's exit status after SIGTERM (128 + SIGTERM)."""
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
"""The signals that stop training after the current step, as messages name them."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C ended training after a step, and a checkpoint was saved there.

    ``result`` is the :class:`~rslora_colab.result.FinetuneResult` of the steps
    trained so far (the model in memory); ``checkpoint`` the folder to resume from.
    """

    def __init__(self, message: str, result: Any = None, checkpoint: Any = None,
                 signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.result, self.checkpoint, self.signum = result, checkpoint, signum

    @property
    def exit_status(self) -> int:
        """130 after Ctrl-C, 143 after SIGTERM."""
        return TERMINATED_EXIT if self.signum == signal.SIGTERM else INTERRUPTED_EXIT


class InterruptCallback(TrainerCallback):
    """Once :meth:`request` is called, ends training after the current step and saves a checkpoint there."""

    def __init__(self) -> None:
        self.requested = False
        """True once an interrupt asked training to stop."""
        self.signum: int = signal.SIGINT
        """The signal that asked (SIGINT: Ctrl-C, or SIGTERM)."""
        self.stopped_at: int | None = None
        """The step training stopped after (its checkpoint is ``checkpoint-<step>``)."""

    @property
    def by(self) -> str:
        """What asked, as messages say it: ``"Ctrl-C"`` or ``"SIGTERM"``."""
        return SIGNAL_NAMES.get(self.signum, "a signal")

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask training to stop (and save) at the end of the current step."""
        self.requested, self.signum = True, signum

    def on_step_end(self, args, state, control, **kwargs):
        if agree(self.requested) and self.stopped_at is None:  # several processes stop after the same step
            control.should_training_stop = True
            control.should_save = True
            self.stopped_at = state.global_step
        return control


@contextlib.contextmanager
def stop_on_interrupt(callback: InterruptCallback) -> Iterator[None]:
    """While the block runs, the first Ctrl-C or SIGTERM calls ``callback.request()``; a second one stops at once.

    The previous handlers are restored afterwards. Outside the main thread it
    does nothing (Python allows signal handlers only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNAL_NAMES}

    def on_signal(signum: int, frame: Any) -> None:
        if callback.requested:
            raise KeyboardInterrupt
        callback.request(signum)
        again = ("press Ctrl-C again to quit at once" if signum == signal.SIGINT else
                 "the system is shutting this process down; a second SIGTERM quits at once")
        logger.info(f"{callback.by}: stopping after this step and saving a checkpoint ({again}, losing the "
                    "steps since the last checkpoint)")

    for signum in SIGNAL_NAMES:
        signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
