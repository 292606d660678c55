"""Files that appear whole or not at all: a crash mid-write never leaves half a JSON file behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def write_json(data: dict, path: str | Path) -> Path:
    """Write ``data`` as JSON atomically (temp file, then rename), creating its folder; NaN becomes null.

    The temp file's name is unique to this process, so two writers of one file never rename each other's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(finite(data), indent=2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_json_object(path: str | Path, fix: str) -> dict:
    """The JSON object in ``path``; a ``ValueError`` naming the file, what is wrong with it and ``fix`` otherwise.

    For the kit's own run files (the run manifest, ``metrics.json``, an adapter's
    config): a damaged one must say which file and what to do, not give a bare
    JSON message or a ``TypeError`` later.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot be read ({type(err).__name__}: {err}). {fix}") from err
    except ValueError as err:  # json.JSONDecodeError
        raise ValueError(f"{path}: is damaged, not JSON ({err}). {fix}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: is damaged: it holds a JSON {type(data).__name__}, not an object. {fix}")
    return data


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, the JSON-safe ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
