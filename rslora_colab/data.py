"""Step 3 — data: read a dataset, check every row, and shape it for TRL.

Formats are detected from the columns:

=============  ======================================  ==========================
format         columns                                 what is trained
=============  ======================================  ==========================
``text``       ``text``                                every token
``alpaca``     ``instruction``, ``output`` [, input]   the output only
``completion`` ``prompt``, ``completion``              the completion only
``chat``       ``messages`` (role/content)             the assistant turns only
``sharegpt``   ``conversations`` (from/value)          the assistant turns only
=============  ======================================  ==========================

Masking is TRL's: Alpaca rows become conversational prompt/completion pairs
(``completion_only_loss``), chat rows keep their messages and use
``assistant_only_loss`` with the chat template's ``{% generation %}`` markers
(TRL patches the templates of common model families). A chat template TRL
cannot mark falls back to prompt/completion on the last assistant turn.

Every row is checked before any model is loaded; problems raise one
``ValueError`` naming the source, the row, the field and what was expected.

Preference data (``chosen`` / ``rejected``, for ``method="dpo"``) has its own
formats, checks and shaping in :mod:`rslora_colab.prefer`; ``validate`` and
``load_and_validate`` take ``method`` and hand such data over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .demo import DEMO_NAME, demo_dataset, demo_preferences
from .presets import check_method

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool"}
MAX_REPORTED = 5


def load_any(source: Any, split: str = "train"):
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


def detect_format(columns: Iterable[str], source: str = "dataset") -> str:
    """The format of SFT data from its column names (see the module docstring)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        raise ValueError(f"{source}: has chosen/rejected columns, which are preference data for DPO, not SFT: pass "
                         "method='dpo' (command line: --method dpo), or keep only SFT columns such as 'messages'.")
    for fmt, needed in (("chat", {"messages"}), ("sharegpt", {"conversations"}), ("alpaca", {"instruction", "output"}),
                        ("completion", {"prompt", "completion"}), ("text", {"text"})):
        if needed <= cols:
            return fmt
    raise ValueError(
        f"{source}: columns {sorted(cols)} match no known format. Expected one of: 'text'; 'instruction' + 'output' "
        "(Alpaca); 'prompt' + 'completion'; 'messages' (role/content); 'conversations' (ShareGPT from/value)."
    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _turn_problems(turns: Any, field: str, role_key: str, text_key: str, roles: Iterable[str],
                   need_assistant: bool = True) -> list[str]:
    if not isinstance(turns, list) or not turns:
        return [f"field '{field}' must be a non-empty list of turns"]
    problems = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict):
            problems.append(f"{field}[{j}] must be a dict with '{role_key}' and '{text_key}'")
        elif turn.get(role_key) not in roles:
            problems.append(f"{field}[{j}].{role_key}={turn.get(role_key)!r}; expected one of {sorted(roles)}")
        elif not isinstance(turn.get(text_key), str):
            problems.append(f"{field}[{j}].{text_key} must be a string")
    assistant = {"assistant", "gpt"}
    if need_assistant and not problems and not any(turn[role_key] in assistant for turn in turns):
        problems.append(f"field '{field}' has no assistant turn to learn from")
    if need_assistant and not problems:  # the trained turns: an empty one teaches the model to say nothing
        problems += [f"{field}[{j}].{text_key} is empty: an assistant turn needs text to learn from (fill it in, or "
                     "drop the turn or the row)" for j, turn in enumerate(turns)
                     if turn[role_key] in assistant and not turn[text_key].strip()]
    return problems


def row_problems(row: dict, fmt: str) -> list[str]:
    """What is wrong with one row of format ``fmt`` (empty when it is usable)."""
    if fmt == "text":
        return [] if _is_text(row.get("text")) else ["field 'text' must be a non-empty string"]
    if fmt == "completion":
        return [f"field '{k}' must be a non-empty string" for k in ("prompt", "completion") if not _is_text(row.get(k))]
    if fmt == "alpaca":
        problems = [f"field '{k}' must be a non-empty string" for k in ("instruction", "output")
                    if not _is_text(row.get(k))]
        if row.get("input") is not None and not isinstance(row.get("input"), str):
            problems.append("field 'input' must be a string or empty")
        return problems
    if fmt == "chat":
        return _turn_problems(row.get("messages"), "messages", "role", "content", ROLES)
    return _turn_problems(row.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)


def validate(dataset, source: str = "dataset", method: str = "sft") -> str:
    """Check every row; return the format or raise one ``ValueError`` listing the problems.

    ``method="dpo"`` expects preference data (see :mod:`rslora_colab.prefer`).
    """
    check_method(method)
    if len(dataset) == 0:
        raise ValueError(f"{source}: is empty; it needs at least one row.")
    if method == "dpo":
        from .prefer import detect_preference_format, preference_row_problems

        fmt, check = detect_preference_format(dataset.column_names, dataset[0], source), preference_row_problems
    else:
        fmt, check = detect_format(dataset.column_names, source), row_problems
    problems = [f"{source} {row_label(source, i)}: {p}" for i, row in enumerate(dataset) for p in check(row, fmt)]
    if problems:
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ValueError(f"{source} ({fmt} format) has {len(problems)} problem(s):\n  "
                         + "\n  ".join(problems[:MAX_REPORTED]) + more)
    return fmt


def row_label(source: str, index: int) -> str:
    """How messages name row ``index`` of ``source``: ``line N`` (from 1) in a .jsonl file, else ``row N`` (from 0)."""
    return f"line {index + 1}" if source.endswith(".jsonl") else f"row {index}"


def source_name(source: Any) -> str:
    """A short name for error messages: the path or hub id, else 'dataset'."""
    return str(source) if isinstance(source, (str, Path)) else "dataset"


def load_and_validate(source: Any, method: str = "sft"):
    """Load ``source`` and check every row for ``method`` ('sft' or 'dpo'); returns ``(dataset, format)``.

    ``"demo"`` names the offline demo data: ``demo_dataset()``, or ``demo_preferences()`` for DPO.
    """
    if isinstance(source, str) and source == DEMO_NAME:
        source = demo_preferences() if method == "dpo" else demo_dataset()
    dataset = load_any(source)
    return dataset, validate(dataset, source_name(source), method)


# ---------------------------------------------------------------- shaping for TRL

def _alpaca_to_completion(row: dict) -> dict:
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return {"prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": row["output"]}]}


def _sharegpt_to_chat(row: dict) -> dict:
    return {"messages": [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]}


def _last_turn_to_completion(row: dict) -> dict:
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": messages[:last], "completion": [messages[last]]}


def can_mask_assistant_turns(tokenizer) -> bool:
    """True when TRL can train on assistant turns only with this chat template."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    try:
        from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    except ImportError:  # older TRL: only templates that carry the markers themselves
        return "{% generation %}" in str(template)
    if has_generation_markers(template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except Exception:
        return False


def check_chat_template(tokenizer, fmt: str) -> None:
    """Raise a clear ``ValueError`` when ``fmt`` data needs a chat template and the tokenizer has none."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"This tokenizer has no chat template, which {fmt} data needs: use an -Instruct/-it model, "
                         "or set tokenizer.chat_template.")


def to_trainer_dataset(dataset, fmt: str, tokenizer):
    """Shape a validated dataset for TRL's ``SFTTrainer``; returns ``(dataset, sft_config_kwargs)``."""
    if fmt in ("alpaca", "chat", "sharegpt"):
        check_chat_template(tokenizer, fmt)
    columns = dataset.column_names
    if fmt in ("text", "completion"):
        return dataset.select_columns(["text"] if fmt == "text" else ["prompt", "completion"]), {}
    if fmt == "alpaca":
        return dataset.map(_alpaca_to_completion, remove_columns=columns), {}
    if fmt == "sharegpt":
        dataset = dataset.map(_sharegpt_to_chat, remove_columns=columns)
    else:
        dataset = dataset.select_columns(["messages"])
    if can_mask_assistant_turns(tokenizer):
        return dataset, {"assistant_only_loss": True}
    print("rslora-colab: this chat template cannot mark assistant turns; training on each row's last assistant turn",
          flush=True)
    return dataset.map(_last_turn_to_completion, remove_columns=["messages"]), {}
