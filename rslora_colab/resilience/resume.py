"""Resume: continue an interrupted run from its newest valid checkpoint, with the same settings.

``quick_finetune(..., resume=True)`` (CLI: ``train --resume``) calls
:func:`prepare_run`, which reads the run manifest (``run_manifest.json``: the
model, a fingerprint of the data and every setting that shapes training) that
the first run wrote into ``output_dir``. A resume with a different model,
dataset, rank, learning rate, global batch or step count is refused with the
differences listed (the global batch may be split differently: another
micro-batch, or another number of processes, ``docs/scale-out.md``); the
checkpoint itself (adapter, optimizer, scheduler, RNG, data position) is
restored by transformers' ``trainer.train(resume_from_checkpoint=...)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..settings import RunSettings
from ..watch import history_record, is_history_log
from .atomic import read_json_object, write_json
from .checkpoints import (
    MODEL_CARD,
    TRAINER_STATE,
    checkpoint_progress,
    latest_valid_checkpoint,
    remove_checkpoints,
    remove_staging,
)

logger = logging.getLogger(__name__)

MANIFEST_FILE = "run_manifest.json"
"""The run manifest, in ``output_dir``."""
MANIFEST_FIX = ("It records the run's settings: delete it to start over in this folder (a resume then cannot check "
                "that the settings match), or choose another output_dir.")
"""What to do about a damaged manifest."""
FINAL_SAVE = "final_save"
"""Manifest key of a run whose caller saves final outputs (``quick_finetune``): ``"pending"`` from the start of
the run until the adapter and metrics are written, then ``"done"``. Not compared on resume."""
FINGERPRINT_BATCH = 4096
"""Rows read at a time while hashing a dataset (every row is hashed)."""


def dataset_fingerprint(dataset: Any) -> str:
    """A content hash of ``dataset``: its row count, its columns and every row, read in batches.

    Every row, so that an edit anywhere (row 1 of 5,000 included) stops a
    resume; one pass over the data is cheap next to training (0.07 s for
    100,000 two-field rows of about 150 characters on a 2-core CPU). ``datasets``' own ``_fingerprint``
    is not used: for files it hashes cache files' modification times, which
    change when a new Colab runtime re-reads the same file.
    """
    digest = hashlib.sha256(json.dumps([len(dataset), sorted(dataset.column_names)]).encode())
    for batch in dataset.iter(batch_size=FINGERPRINT_BATCH):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def model_identity(model: Any) -> str:
    """The name or path a loaded model came from (``config._name_or_path``)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__)


def run_manifest(model: Any, dataset: Any, fmt: str, run: RunSettings, eval_dataset: Any = None) -> dict:
    """What defines a run: model, data fingerprint, and the resolved settings that shape training (and, with eval
    rows, their fingerprint: the best adapter so far was chosen on them)."""
    held = {} if eval_dataset is None else {"eval_dataset": dataset_fingerprint(eval_dataset),
                                            "eval_rows": len(eval_dataset)}
    return {"model": model_identity(model), "dataset": dataset_fingerprint(dataset), "rows": len(dataset),
            "format": fmt, **held, **run.manifest()}


def manifest_differences(saved: dict, current: dict) -> list[str]:
    """One line per setting that differs between the saved run and this call (the run's state is not a setting)."""
    keys = [k for k in {**saved, **current} if k != FINAL_SAVE and _norm(saved.get(k)) != _norm(current.get(k))]
    return [f"{k}: {saved.get(k)!r} in the saved run, {current.get(k)!r} now" for k in keys]


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as after a JSON round trip


def prepare_run(output_dir: str | Path, manifest: dict, resume: bool) -> Path | None:
    """Check ``output_dir`` for an earlier run; returns the checkpoint to resume from, or None to start fresh.

    * ``resume=True``: the newest valid checkpoint, after checking that its
      manifest matches (a ``ValueError`` lists every difference); None, with a
      notice, when there is no checkpoint yet.
    * ``resume=False``: refuses (``ValueError``) to start over an unfinished
      run's checkpoints, or over a finished run whose final save never
      completed (its manifest still says ``final_save: pending``; a resume saves
      it without training again); a finished run's checkpoints are removed.

    The caller holds the folder's :func:`~rslora_colab.resilience.lock.run_lock`, so any
    run found here is not live. Writes this run's manifest, then returns.
    """
    out = Path(output_dir)
    path = out / MANIFEST_FILE
    saved = read_json_object(path, MANIFEST_FIX) if path.is_file() else None
    latest = latest_valid_checkpoint(out)
    remove_staging(out)
    if latest is not None:
        step, total = checkpoint_progress(latest)
        if resume:
            _check_same_run(out, saved, manifest)
            relocate_best(latest, out)
            logger.info(f"resuming from {latest} (step {step} of {total})")
        elif step < total:
            raise ValueError(
                f"output_dir={str(out)!r} holds an unfinished run (newest checkpoint: step {step} of {total}). "
                "Pass resume=True (CLI: --resume) to continue it, or choose another output_dir to start over.")
        elif (saved or {}).get(FINAL_SAVE) == "pending":
            raise ValueError(
                f"output_dir={str(out)!r} holds a run that finished training (step {step} of {total}) but whose "
                "adapter and metrics were never saved (the final save failed or was cut short). Pass resume=True "
                "(CLI: --resume) to save them from its last checkpoint without training again, or choose another "
                "output_dir to start over.")
        else:
            removed = remove_checkpoints(out)
            logger.info(f"starting a new run in {out}; removed {len(removed)} checkpoint(s) of the finished "
                        "run there")
            latest = None
    elif resume:
        logger.info(f"no checkpoint in {out} yet: starting from step 0")
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest, path)
    return latest if resume else None


def run_file_names() -> tuple[str, ...]:
    """The names a run writes in ``output_dir`` (besides ``checkpoint-<step>`` folders and staging folders)."""
    from ..save import ADAPTER_DIR, LAST_GOOD_DIR, LOSS_PLOT_FILE, METRICS_FILE

    return (MODEL_CARD, ADAPTER_DIR, LAST_GOOD_DIR, METRICS_FILE, LOSS_PLOT_FILE, MANIFEST_FILE)


def check_no_foreign_files(output_dir: str | Path) -> None:
    """Refuse to run where the run's files would replace ones this kit did not write.

    A folder with a run manifest is a run's folder: its files are the kit's. In
    any other folder, a file or folder named like one a run writes (README.md,
    adapter/, metrics.json, loss.png, ...) is someone else's, and a run would
    overwrite it: ``ValueError`` naming them. Other files are never touched.
    """
    out = Path(output_dir)
    if not out.is_dir() or (out / MANIFEST_FILE).is_file():
        return
    names = set(run_file_names())
    theirs = sorted(p.name for p in out.iterdir() if p.name in names or p.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"))
    if theirs:
        raise ValueError(f"output_dir={str(out)!r} holds {', '.join(theirs)}, which this kit did not write (the "
                         "folder has no run manifest) and a run would overwrite. Choose a new or empty folder, e.g. "
                         f"{str(out / 'rslora-run')!r}. Nothing was trained yet.")


def relocate_best(checkpoint: Path, out: Path) -> None:
    """Point the checkpoint's ``best_model_checkpoint`` at the best checkpoint in ``out``, as reached now.

    transformers stores that folder as the path it was saved under: relative
    when ``output_dir`` is (the default ``outputs/rslora``), and the old place
    after the run's folder moved (Drive to local disk and back). Resumed from
    another working directory or after a move, it would not be found
    ("does not exist anymore. Ignoring it"): the rotation would then delete the
    best checkpoint and the saved adapter would be the last step's, not the best.
    """
    state_file = checkpoint / TRAINER_STATE
    state = json.loads(state_file.read_text())
    best = state.get("best_model_checkpoint")
    if not best:
        return
    here = (out / Path(best).name).resolve()
    if str(here) == best:
        return
    if not here.is_dir():
        logger.warning(f"the best checkpoint of this run, {Path(best).name}, is not in {out} any more: the adapter "
                       "saved at the end is the last step's unless a later evaluation beats that best")
        return
    write_json({**state, "best_model_checkpoint": str(here)}, state_file)
    logger.info(f"the best checkpoint so far is {here} (recorded as {best})")


def mark_final_save(output_dir: str | Path, state: str) -> None:
    """Record in the run manifest how far the final save got: ``"pending"`` or ``"done"``."""
    path = Path(output_dir) / MANIFEST_FILE
    if path.is_file():
        write_json({**read_json_object(path, MANIFEST_FIX), FINAL_SAVE: state}, path)


def _check_same_run(out: Path, saved: dict | None, manifest: dict) -> None:
    if saved is None:
        logger.warning(f"no {MANIFEST_FILE} in {out}; cannot check that the settings match")
        return
    if "global_batch" not in saved and "batch_size" in saved:  # a manifest from before the global batch was stored
        saved = {k: v for k, v in saved.items() if k not in ("batch_size", "grad_accum")} | {
            "global_batch": saved["batch_size"] * saved.get("grad_accum", 1)}
    differences = manifest_differences(saved, manifest)
    if differences:
        raise ValueError(f"Cannot resume the run in {str(out)!r}: these settings differ from the saved run:\n  "
                         + "\n  ".join(differences)
                         + "\nResume with the same settings, or pass another output_dir to start a new run.")


def history_until(checkpoint: str | Path | None) -> list[dict]:
    """The history records (steps, evaluations and guard events) a checkpoint's ``trainer_state.json`` holds."""
    if checkpoint is None:
        return []
    log = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE)).log_history
    return [dict(h) if "event" in h else history_record(h["step"], h) for h in log
            if "event" in h or is_history_log(h)]
