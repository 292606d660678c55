"""Supervised fine-tuning data: its formats, the checks of each row, and its shape for TRL's ``SFTTrainer``.

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
"""

from __future__ import annotations

import logging
from typing import Iterable

from .rows import ROLES, SHAREGPT_ROLES, text_problems, turn_problems

logger = logging.getLogger(__name__)


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


def row_problems(row: dict, fmt: str) -> list[str]:
    """What is wrong with one row of format ``fmt`` (empty when it is usable)."""
    if fmt == "text":
        return text_problems(row, ("text",))
    if fmt == "completion":
        return text_problems(row, ("prompt", "completion"))
    if fmt == "alpaca":
        problems = text_problems(row, ("instruction", "output"))
        if row.get("input") is not None and not isinstance(row.get("input"), str):
            problems.append("field 'input' must be a string or empty")
        return problems
    if fmt == "chat":
        return turn_problems(row.get("messages"), "messages", "role", "content", ROLES)
    return turn_problems(row.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)


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
        from trl.chat_template_utils import (
            get_training_chat_template,
            has_generation_markers,
        )
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
    logger.info("this chat template cannot mark assistant turns; training on each row's last assistant turn")
    return dataset.map(_last_turn_to_completion, remove_columns=["messages"]), {}


def prompt_and_answer(row: dict, fmt: str) -> tuple[str | list[dict], str] | None:
    """What to ask a chat model for one validated row, and the answer the row holds: ``(prompt, answer)``.

    The prompt is what the trainer shows the model before the trained tokens (an Alpaca instruction and
    input as one user turn; a conversation up to its last assistant turn). None for ``text`` and
    ``completion`` rows, which are not trained through the chat template.
    """
    if fmt == "alpaca":
        return _alpaca_to_completion(row)["prompt"][0]["content"], row["output"]
    if fmt in ("chat", "sharegpt"):
        completion = _last_turn_to_completion(row if fmt == "chat" else _sharegpt_to_chat(row))
        return completion["prompt"], completion["completion"][0]["content"]
    return None
