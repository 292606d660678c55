"""A notebook's run folders: which one the next run writes to (never over a finished run), and getting them off
Colab.

Each notebook has its own folder (``outputs/01_quickstart``, on Google Drive
when it is mounted: :func:`notebook_output_dir`). What a run does with it
depends on what the folder already holds (:func:`folder_state`):

==============  ===================================  ========================================
state           *Run all* (``ControlPanel.run``)     the panel's **Train** button
==============  ===================================  ========================================
``empty``       trains there                         trains there
``unfinished``  continues it (``resume=True``): a    the next free folder (``name-2``, ...):
                disconnect or Ctrl-C loses nothing   a click is a new run
``taken``       the next free folder                 the next free folder
==============  ===================================  ========================================

``taken`` is a finished run, or any file the kit did not put there. The folder
chosen is always printed in full, and so is every path a run saves.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

from ..resilience.drive import on_colab

from ..resilience.checkpoints import checkpoint_progress, latest_valid_checkpoint
from ..resilience.drive import default_output_dir
from ..resilience.lock import LOCK_FILE
from ..resilience.resume import FINAL_SAVE, MANIFEST_FILE

logger = logging.getLogger(__name__)

STATES = ("empty", "unfinished", "taken")
"""What :func:`folder_state` can answer."""
UPLOADS = "uploads"
"""The folder, beside the notebooks' run folders, that the panel's *upload file* writes into."""


def notebook_output_dir(notebook: str) -> str:
    """A notebook's own folder: ``outputs/<notebook>``, or ``MyDrive/rslora-colab/outputs/<notebook>`` when Google
    Drive is mounted on Colab."""
    return default_output_dir(notebook)


def folder_state(folder: str | Path) -> str:
    """``"empty"`` (missing, or nothing in it), ``"unfinished"`` (a run whose training or final save did not end:
    ``resume=True`` continues it) or ``"taken"`` (a finished run, or files the kit did not write)."""
    path = Path(folder)
    if not path.is_dir() or all(entry.name == LOCK_FILE for entry in path.iterdir()):  # a lock alone: no run's files
        return "empty"
    latest = latest_valid_checkpoint(path)
    if latest is not None:
        step, total = checkpoint_progress(latest)
        if step < total:
            return "unfinished"
    manifest = path / MANIFEST_FILE
    try:
        pending = json.loads(manifest.read_text()).get(FINAL_SAVE) == "pending" if manifest.is_file() else False
    except (OSError, ValueError, AttributeError):  # a damaged manifest: leave the folder alone
        return "taken"
    return "unfinished" if pending and latest is not None else "taken"


def numbered(folder: str | Path, n: int) -> Path:
    """``folder`` itself for n = 1, else ``folder-n`` beside it."""
    path = Path(folder)
    return path if n == 1 else path.with_name(f"{path.name}-{n}")


def next_run_folder(folder: str | Path, resume_unfinished: bool) -> tuple[Path, bool]:
    """The folder the next run writes to and whether it resumes there: ``folder`` when it is empty (or unfinished
    and ``resume_unfinished``), else the first of ``folder-2``, ``folder-3``, ... that is empty."""
    for n in itertools.count(1):
        candidate = numbered(folder, n)
        state = folder_state(candidate)
        if state == "empty":
            return candidate, False
        if state == "unfinished" and resume_unfinished and n == 1:
            return candidate, True
    raise AssertionError("unreachable")  # itertools.count never ends


def notebook_run(notebook: str) -> dict:
    """``quick_finetune`` keywords for a notebook's run (*Run all*): ``output_dir``, its own folder (the next free
    ``name-N`` when that holds a finished run), and ``resume``, True when it holds an unfinished one, so running all
    again after a disconnect or Ctrl-C continues it."""
    folder, resume = next_run_folder(notebook_output_dir(notebook), resume_unfinished=True)
    logger.info(f"{'continuing the unfinished run in' if resume else 'this run writes to'} {folder.resolve()}")
    return {"output_dir": str(folder), "resume": resume}


def new_run_folder(notebook: str) -> Path:
    """A folder for a notebook's new run (e.g. notebook 02's sweep): its own folder, or the first free
    ``name-2``, ``name-3``, ... when that holds anything. Created; its full path is logged."""
    folder, _ = next_run_folder(notebook_output_dir(notebook), resume_unfinished=False)
    folder.mkdir(parents=True, exist_ok=True)
    logger.info(f"this run writes to {folder.resolve()}")
    return folder


def download(folder: str | Path) -> Path:
    """Zip ``folder`` (e.g. a run's ``adapter``) beside it and, on Colab, have the browser download the zip;
    returns the zip's path. Elsewhere the zip is only written (its path is logged)."""
    path = Path(folder).resolve()
    if not path.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a folder: pass a saved path, e.g. saved['adapter'].")
    archive = Path(shutil.make_archive(str(path), "zip", root_dir=path.parent, base_dir=path.name))
    logger.info(f"zipped {path} -> {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    if on_colab():
        try:
            from google.colab import files  # type: ignore[import-not-found]
        except ImportError:  # Colab's environment, not its kernel (e.g. !python)
            return archive
        files.download(str(archive))
    return archive
