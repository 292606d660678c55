"""Preference data (DPO): its formats, the checks of each pair, and its shape for TRL's ``DPOTrainer``.

``quick_finetune(..., method="dpo")`` reads its data here. Formats are
detected from the columns and the first row:

=======================  ===============================================================
format                   rows
=======================  ===============================================================
``preference``           ``prompt``, ``chosen``, ``rejected`` as strings
``preference_chat``      ``prompt``, ``chosen``, ``rejected`` as message lists
                         (role/content); the prompt ends with the user's turn
``ultrafeedback``        ``prompt`` as a string, ``chosen`` / ``rejected`` as whole
                         conversations that repeat the user's turn (the layout of
                         ``HuggingFaceH4/ultrafeedback_binarized``; other columns ignored)
``preference_implicit``  ``chosen`` / ``rejected`` only: whole conversations (or texts)
                         whose shared beginning is the prompt
=======================  ===============================================================

The last two are split into prompt / chosen / rejected by TRL's
``maybe_extract_prompt`` (the longest shared beginning is the prompt).
"""

from __future__ import annotations

from typing import Iterable

from .rows import ROLES, text_problems, turn_problems
from .sft import check_chat_template, detect_format


def detect_preference_format(columns: Iterable[str], first_row: dict, source: str = "dataset") -> str:
    """The preference format from the column names and the first row (see the module docstring)."""
    cols = set(columns)
    if not {"chosen", "rejected"} <= cols:
        try:
            hint = f" This looks like {detect_format(cols, source)} data: train on it with method='sft'."
        except ValueError:
            hint = ""
        raise ValueError(f"{source}: columns {sorted(cols)} are not preference data, which method='dpo' needs: "
                         f"each row needs 'chosen' and 'rejected' answers (and usually a 'prompt').{hint}")
    if "prompt" not in cols:
        return "preference_implicit"
    if isinstance(first_row.get("prompt"), list):
        return "preference_chat"
    return "ultrafeedback" if isinstance(first_row.get("chosen"), list) else "preference"


def _messages_problems(row: dict, keys: Iterable[str], need_assistant: bool = True) -> list[str]:
    return [p for k in keys for p in turn_problems(row.get(k), k, "role", "content", ROLES, need_assistant)]


def _shared_prompt_problems(row: dict) -> list[str]:
    """Problems with a pair whose prompt is the shared beginning of 'chosen' and 'rejected'."""
    from trl.data_utils import extract_prompt

    split = extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
    if not split["chosen"] or not split["rejected"]:
        return ["one of fields 'chosen' and 'rejected' is the beginning of the other; they must differ in the answer"]
    if isinstance(row["chosen"], list) and split["chosen"][0]["role"] != "assistant":
        return [f"fields 'chosen' and 'rejected' differ first at turn {len(split['prompt'])}, a "
                f"'{split['chosen'][0]['role']}' turn; they must differ only in the assistant's answer"]
    if not split["prompt"]:
        return ["fields 'chosen' and 'rejected' share no beginning, so there is no prompt: start both with the "
                "same user turn, or add a 'prompt' column"]
    return []


def preference_row_problems(row: dict, fmt: str) -> list[str]:
    """What is wrong with one preference row of format ``fmt`` (empty when it is usable)."""
    if fmt == "preference":
        problems = text_problems(row, ("prompt", "chosen", "rejected"))
    elif fmt == "preference_chat":
        problems = _messages_problems(row, ("prompt",), need_assistant=False)
        problems += _messages_problems(row, ("chosen", "rejected"))
        if not problems and row["prompt"][-1]["role"] == "assistant":
            problems.append("field 'prompt' must end with the user's turn, not the assistant's")
    elif fmt == "ultrafeedback":
        problems = text_problems(row, ("prompt",)) + _messages_problems(row, ("chosen", "rejected"))
    elif isinstance(row.get("chosen"), list):  # preference_implicit, conversations
        problems = _messages_problems(row, ("chosen", "rejected"))
    else:  # preference_implicit, texts
        problems = text_problems(row, ("chosen", "rejected"))
    if problems:
        return problems
    if row["chosen"] == row["rejected"]:
        return ["fields 'chosen' and 'rejected' are identical; a pair needs two different answers"]
    if fmt in ("ultrafeedback", "preference_implicit"):
        return _shared_prompt_problems(row)
    return []


def to_dpo_dataset(dataset, fmt: str, tokenizer):
    """Shape validated preference data as TRL's explicit prompt / chosen / rejected columns."""
    from trl.data_utils import maybe_extract_prompt

    if isinstance(dataset[0]["chosen"], list):
        check_chat_template(tokenizer, fmt)
    if fmt in ("ultrafeedback", "preference_implicit"):
        dataset = dataset.map(maybe_extract_prompt, desc="Splitting off the shared prompt")
    return dataset.select_columns(["prompt", "chosen", "rejected"])
