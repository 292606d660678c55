"""Read a dataset from wherever the user has it: a ``datasets.Dataset``, a list of dicts, a file or a hub id.

Every failure is one ``ValueError`` that names the file (and the line, for a
``.jsonl``) or the hub id, and says what to do; nothing surfaces as a bare
decoder or network error. A string that looks like a path is never sent to
the Hub, so a typo gets "no such file", not a network error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File suffixes the kit reads, and the ``datasets`` builder for each."""
MAX_REPORTED = 5
"""Problems (or rows) an error message lists before "... and N more"."""


def read_dataset(source: Any, split: str = "train"):
    """A ``datasets.Dataset`` from a Dataset, a list of dicts, a local file, or a hub id.

    A string that looks like a path (``./data``, ``../x``, ``/abs``, ``~/x``, a
    known file suffix, or more than one ``/``) is never sent to the Hub: a typo
    there gets "no such file", not a network error.
    """
    from datasets import Dataset

    if isinstance(source, Dataset):
        return source
    if isinstance(source, list):
        if not source or not all(isinstance(row, dict) for row in source):
            raise ValueError("dataset: a list must hold one dict per row, e.g. [{'text': '...'}].")
        return Dataset.from_list(source)
    if not isinstance(source, (str, Path)):
        raise ValueError(f"dataset: got a {type(source).__name__}; pass a Dataset, a list of dicts, a file or a hub id.")
    path = Path(source).expanduser()
    if path.is_dir():
        raise ValueError(_folder_message(path))
    if path.suffix.lower() in FILE_BUILDERS or path.exists() or isinstance(source, Path) or looks_like_path(source):
        return _load_file(path)
    return _load_hub(str(source), split)


def looks_like_path(name: str) -> bool:
    """True for a string that can only be a local path, not a hub id (``name`` or ``namespace/name``)."""
    return name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1


def _folder_message(path: Path) -> str:
    found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in FILE_BUILDERS)
    inside = (f"it holds {', '.join(found[:MAX_REPORTED])}{' ...' if len(found) > MAX_REPORTED else ''}; pass one of "
              f"those, e.g. {path / found[0]}" if found else f"it holds no {'/'.join(FILE_BUILDERS)} file")
    return (f"{path}: is a folder; pass one data file ({', '.join(FILE_BUILDERS)}) instead: {inside}. Nothing was "
            "trained yet.")


def _load_hub(name: str, split: str):
    """``load_dataset(name, split=split)``; any failure becomes one ``ValueError`` saying what to check."""
    from datasets import load_dataset

    try:
        return load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 — not found, offline, no such split, gated: one message for all
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"dataset {name!r}: not a local file, and the Hugging Face Hub could not provide it "
            f"({type(err).__name__}: {reason}). If it is a file, check the path (e.g. ./my_data.jsonl); if it is a "
            "hub dataset id, check its spelling, the network, and the split "
            f"{split!r} (offline, HF_HUB_OFFLINE=1 reads only the local cache). Nothing was trained yet: fix it and "
            "run again.") from err


def _load_file(path: Path):
    from datasets import load_dataset

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder (current folder: {Path.cwd()}). Check the path; a hub "
                         "dataset id looks like 'namespace/name'.")
    if builder is None:
        raise ValueError(f"{path}: unsupported file type; use one of {sorted(FILE_BUILDERS)}.")
    if path.suffix.lower() == ".jsonl":
        _check_jsonl(path)
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps parser errors in many types
        raise ValueError(f"{path}: could not be read as {builder}: {err}") from err


def _check_jsonl(path: Path) -> None:
    """Name the first line of a .jsonl file that is not a JSON object (a UTF-8 byte-order mark is allowed)."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not valid JSON ({err.msg}); each line must be one object.")
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}.")


def row_label(source: str, index: int) -> str:
    """How messages name row ``index`` of ``source``: ``line N`` (from 1) in a .jsonl file, else ``row N`` (from 0)."""
    return f"line {index + 1}" if source.endswith(".jsonl") else f"row {index}"


def source_name(source: Any) -> str:
    """A short name for error messages: the path or hub id, else 'dataset'."""
    return str(source) if isinstance(source, (str, Path)) else "dataset"
