"""Read a dataset from wherever the user has it: a ``datasets.Dataset``, a list of dicts, a file or a hub id.

Every failure is one ``ValueError`` that names the file (and the line, for
text that is not UTF-8, JSON that does not parse, or a CSV row with too many
fields or an unclosed quote) or the hub id, and says what to do; nothing
surfaces as a bare decoder, parser or network error. The text formats are
checked line by line before ``datasets`` parses them, since its own errors
name no line ("An error occurred while generating the dataset"). A string
that looks like a path is never sent to the Hub, so a typo gets "no such
file", not a network error.
"""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path
from typing import Any, Iterator

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
    CHECKS.get(path.suffix.lower(), lambda p: None)(path)
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 — datasets wraps parser errors in many types; name the file and the cause
        cause = root_cause(err)
        reason = (str(cause).strip().splitlines() or [""])[0][:300]
        kind = "a Parquet file (damaged, or another format renamed?)" if builder == "parquet" else builder.upper()
        raise ValueError(f"{path}: could not be read as {kind} ({type(cause).__name__}: {reason}). Nothing was "
                         "trained yet.") from err


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception behind ``err`` (``datasets`` wraps a parser's error in "An error occurred ...")."""
    seen = {id(err)}
    while (err.__cause__ or err.__context__) is not None and id(err.__cause__ or err.__context__) not in seen:
        err = err.__cause__ or err.__context__
        seen.add(id(err))
    return err


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file (a byte-order mark allowed); a line that is not UTF-8 is a
    ``ValueError`` naming it, never a bare ``UnicodeDecodeError``."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                byte = raw[err.start]
                raise ValueError(
                    f"{path} line {number}: not UTF-8 text (byte 0x{byte:02x} at column {err.start + 1}; the file "
                    "was probably saved as Latin-1 or Windows-1252). Save it as UTF-8, e.g. `iconv -f cp1252 -t "
                    f"utf-8 old{path.suffix} > new{path.suffix}`. Nothing was trained yet.") from None


class _JSONProblem(ValueError):
    """What is wrong in a JSON text that ``json`` itself accepts or reports without saying where."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise _JSONProblem(f"the key {twice!r} appears twice in one object (keep one)")
    return dict(pairs)


def _no_lone_surrogate(value: Any) -> None:
    """Raise for a string holding a lone surrogate escape (e.g. ``"\\ud800"``): valid JSON, but not a character."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise _JSONProblem(f"a \\u{ord(value[err.start]):04x} escape that is half of a character pair (a "
                               "lone surrogate): remove it, or write the whole pair") from None
    elif isinstance(value, dict):
        for item in value.values():
            _no_lone_surrogate(item)
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogate(item)


def _parse_json(text: str, path: Path, line: int | None) -> Any:
    """``json.loads`` that names the file (and line) for every problem, including those ``json`` lets through."""
    where = f"{path} line {line}" if line is not None else str(path)
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
        _no_lone_surrogate(value)
    except json.JSONDecodeError:
        raise
    except _JSONProblem as err:
        raise ValueError(f"{where}: {err}. Nothing was trained yet.") from None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ValueError(f"{where}: a value cannot be read ({err}); write very long numbers as strings. Nothing "
                         "was trained yet.") from None
    return value


def _check_jsonl(path: Path) -> None:
    """Name the first line of a .jsonl file that is not UTF-8 or not a JSON object; an empty file says so."""
    rows = 0
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            row = _parse_json(line, path, number)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno}); each line "
                             "must be one object.") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}.")
        rows += 1
    if rows == 0:
        raise ValueError(f"{path}: is empty (no rows): write one JSON object per line, e.g. {{\"text\": \"...\"}}. "
                         "Nothing was trained yet.")


def _check_json(path: Path) -> None:
    """A .json file must be UTF-8 JSON: a list of objects (one per row), an object, or JSON Lines (which
    ``datasets`` also reads from .json); the first problem names its line."""
    text = "".join(line for _, line in _text_lines(path))
    if not text.strip():
        raise ValueError(f"{path}: is empty (no rows): write a list of JSON objects, e.g. [{{\"text\": \"...\"}}]. "
                         "Nothing was trained yet.")
    try:
        content = _parse_json(text, path, None)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one value, then more: JSON Lines in a .json file
            return _check_jsonl(path)
        raise ValueError(f"{path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
    if isinstance(content, list):
        bad = next((i for i, row in enumerate(content) if not isinstance(row, dict)), None)
        if bad is not None:
            raise ValueError(f"{path}: item {bad} of the list is a {type(content[bad]).__name__}; expected one JSON "
                             "object per row, e.g. [{\"text\": \"...\"}].")
    elif not isinstance(content, dict):
        raise ValueError(f"{path}: holds a single {type(content).__name__}; expected a list of JSON objects, one "
                         "per row, e.g. [{\"text\": \"...\"}].")


def _check_csv(path: Path) -> None:
    """Name the first line of a .csv file that is not UTF-8, has more fields than the header, or opens a quote
    that never closes."""
    lines = _text_lines(path)
    reader = csv.reader((line for _, line in lines), strict=True)
    header, start = None, 1
    try:
        for row in reader:
            if header is None:
                header = row
            elif len(row) > len(header):
                raise ValueError(f"{path} line {start}: {len(row)} fields, but the header has {len(header)} "
                                 f"({', '.join(header)}); a value with a comma in it needs double quotes.")
            start = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path} line {start}: not valid CSV ({err}); a value that starts with a double quote "
                         "must end with one, and a quote inside it is written twice (\"\").") from None


CHECKS = {".jsonl": _check_jsonl, ".json": _check_json, ".csv": _check_csv}
"""Checks run before ``datasets`` parses a text file, so an error can name the line."""


def row_label(source: str, index: int) -> str:
    """How messages name row ``index`` of ``source``: ``line N`` (from 1) in a .jsonl file, else ``row N`` (from 0)."""
    return f"line {index + 1}" if source.endswith(".jsonl") else f"row {index}"


def source_name(source: Any, default: str = "dataset") -> str:
    """A short name for error messages: the path or hub id, else ``default``."""
    return str(source) if isinstance(source, (str, Path)) else default
