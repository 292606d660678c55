"""The package's messages: every line the kit prints goes through ``logging.getLogger("rslora_colab")``.

Each module logs to ``logging.getLogger(__name__)``, a child of that logger.
When the package is imported, :func:`show_messages` gives it one handler that
writes ``rslora-colab: ...`` to whatever ``sys.stdout`` is at that moment (a
terminal, a notebook cell, the control panel's log, pytest's capture), at
INFO, so notebooks and the command line show the kit's progress by default.

Silence or redirect it the usual way::

    import logging
    logging.getLogger("rslora_colab").setLevel(logging.WARNING)   # warnings and errors only

or ``rslora_colab.set_verbosity("warning")``. The command line's own report
(the sample answers, the final loss, ``error: ...``) is printed, not logged.

Library noise a user cannot act on is kept out of the way:

* :func:`hide_library_warnings` (on import): deprecation notices that
  transformers, TRL, PEFT, accelerate, datasets, bitsandbytes or Unsloth raise
  about their *own* APIs, which the kit calls (e.g. transformers 5.23's
  "``gradient_checkpointing`` is deprecated"). Warnings raised from your code,
  and every other kind of warning, still show. ``RSLORA_COLAB_SHOW_WARNINGS=1``
  shows them all.
* :func:`library_bars_off`: while the kit loads a model or prepares data, the
  progress bars of datasets' ``map`` (TRL tokenizes in ~5 of them per split)
  and of transformers' weight loading are off; the one bar a user watches is
  the training bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator

LOGGER_NAME = "rslora_colab"
"""The package logger's name; every module's logger is a child of it."""
PREFIX = "rslora-colab: "


class _CurrentStdout(logging.StreamHandler):
    """A stream handler bound to ``sys.stdout`` as it is when a record is written, not when the handler was made."""

    @property
    def stream(self):  # noqa: D102 - logging.StreamHandler's attribute
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stdout
        pass


class _Formatter(logging.Formatter):
    """``rslora-colab: message``, with ``WARNING:`` / ``ERROR:`` before the message above INFO."""

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"{PREFIX}{level}{record.getMessage()}"


def show_messages(level: int = logging.INFO) -> logging.Logger:
    """Give the package logger its stdout handler (once) at ``level``; returns the logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.propagate = False  # one line per message even when the root logger has handlers too
    logger.setLevel(level)
    return logger


def set_verbosity(level: int | str) -> None:
    """How much the kit says: ``"info"`` (the default), ``"warning"``, ``"error"``, or a ``logging`` level."""
    value = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(value, int):
        raise ValueError(f"level={level!r}: pass 'debug', 'info', 'warning', 'error' or a logging level.")
    logging.getLogger(LOGGER_NAME).setLevel(value)


NOISY_LIBRARIES = ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "unsloth", "unsloth_zoo",
                   "huggingface_hub")
"""Libraries whose own deprecation notices :func:`hide_library_warnings` hides."""
SHOW_WARNINGS_ENV = "RSLORA_COLAB_SHOW_WARNINGS"
"""Set to 1 to see every library warning."""


def hide_library_warnings() -> bool:
    """Hide ``FutureWarning`` / ``DeprecationWarning`` raised inside :data:`NOISY_LIBRARIES` (the filter matches the
    module that raises the warning, so the user's own code is untouched). Returns False when
    ``RSLORA_COLAB_SHOW_WARNINGS=1`` keeps them."""
    if os.environ.get(SHOW_WARNINGS_ENV, "") not in ("", "0"):
        return False
    pattern = rf"({'|'.join(NOISY_LIBRARIES)})(\.|$)"
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=pattern)
    return True


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """Turn off datasets' and transformers' own progress bars (``map``, weight loading) for the block, then put
    back whatever was set before."""
    import datasets
    import transformers

    tf_logging = transformers.utils.logging
    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), tf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            tf_logging.enable_progress_bar()
