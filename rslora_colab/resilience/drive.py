"""Colab: keep outputs on Google Drive, where a disconnect cannot take them.

A Colab runtime's disk is wiped when the runtime disconnects. When Drive is
mounted, :func:`default_output_dir` puts runs there; :func:`mount_drive` is
the one-line way to mount it:

>>> from rslora_colab import mount_drive       # doctest: +SKIP
>>> mount_drive()                               # doctest: +SKIP
'/content/drive/MyDrive/rslora-colab/outputs/rslora'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

COLAB_ROOT = Path("/content")
"""Colab's working folder (wiped when the runtime goes away)."""
DRIVE_MOUNT = COLAB_ROOT / "drive"
"""Where :func:`mount_drive` mounts Google Drive."""
DRIVE_HOME = DRIVE_MOUNT / "MyDrive"
"""The user's Drive folder once Drive is mounted."""
LOCAL_OUTPUT_DIR = "outputs/rslora"
"""Default output folder off Colab, or on Colab without Drive (then under ``DRIVE_HOME/rslora-colab/``)."""


def on_colab() -> bool:
    """True inside a Colab runtime: its notebook kernel (``huggingface_hub``'s ``is_google_colab``), or a process
    Colab started (its ``COLAB_*`` environment variables, e.g. ``!python -m rslora_colab train``)."""
    from huggingface_hub.utils import is_google_colab

    return is_google_colab() or any(name.startswith("COLAB_") for name in os.environ)


def drive_mounted() -> bool:
    """True when Google Drive is mounted at ``/content/drive/MyDrive``."""
    return DRIVE_HOME.is_dir()


def default_output_dir(name: str | None = None) -> str:
    """Drive (``MyDrive/rslora-colab/outputs/rslora``) when mounted, else ``outputs/rslora``; ``name`` replaces
    ``rslora`` (each notebook has its own folder, e.g. ``outputs/01_quickstart``)."""
    local = LOCAL_OUTPUT_DIR if name is None else str(Path(LOCAL_OUTPUT_DIR).with_name(name))
    return str(DRIVE_HOME / "rslora-colab" / local) if drive_mounted() else local


def mount_drive() -> str:
    """Mount Google Drive at ``/content/drive`` (Colab asks for permission); returns the folder runs now default to."""
    from google.colab import drive  # only exists on Colab

    drive.mount(str(DRIVE_MOUNT))
    return default_output_dir()


def warn_if_volatile(output_dir: str | Path) -> bool:
    """On Colab, print a warning when ``output_dir`` is not on Drive; returns True if it warned."""
    if not on_colab() or Path(output_dir).resolve().is_relative_to(DRIVE_MOUNT):
        return False
    logger.warning(f"{output_dir} is on the Colab runtime's disk; a disconnect will lose it and its "
                   "checkpoints. Run `from rslora_colab import mount_drive; mount_drive()` first to keep runs on Google Drive.")
    return True


def keep_on_drive(wanted: bool) -> bool:
    """The notebooks' ``USE_DRIVE`` switch: on Colab and ``wanted``, mount Google Drive so runs default to it;
    True when Drive holds the runs. Off Colab it says Drive is Colab's and does nothing."""
    if not wanted:
        if on_colab():
            logger.info("runs stay on this runtime's disk (set USE_DRIVE = True to keep them on Google Drive)")
        return drive_mounted()
    if not on_colab():
        logger.info("USE_DRIVE: Google Drive is mounted only on Colab; runs stay in ./outputs here")
        return False
    logger.info(f"runs go to {mount_drive()} and beside it")
    return True
