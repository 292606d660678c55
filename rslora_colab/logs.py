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
"""

from __future__ import annotations

import logging
import sys

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
