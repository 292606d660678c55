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

The model learns to stop only if each answer's end-of-turn token is inside the
loss. Checked before any model loads, on the chat template itself:

* assistant-only masking: TRL's ``is_chat_template_stop_token_trained`` (TRL
  only warns, and the kit hides library warnings). A template whose
  ``{% generation %}`` span leaves the end-of-turn token out falls back to
  training the last assistant turn as a completion, and one line says so.
* prompt/completion through the chat template (Alpaca rows, that fallback):
  the tokens after the prompt must end on an added (special) token, as TRL's
  check asks. A template that ends an answer with none gets the tokenizer's
  EOS appended to each answer, and one line says so; when even that is not
  trained, a ``ValueError`` says why.
* ``text`` and ``completion`` rows: TRL appends EOS itself, so it is trained.
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


def _added_token_last(tokenizer, ids: list[int]) -> bool:
    """True when the last non-blank token of ``ids`` is an added (special) token: an end-of-turn, not content."""
    added = set(tokenizer.get_added_vocab().values())
    for token_id in reversed(ids):
        if tokenizer.decode([token_id]).strip():
            return token_id in added
    return False


def _ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def completion_end_trained(tokenizer, suffix: str = "") -> bool:
    """True when an assistant answer (ending in ``suffix``) rendered as a completion trains an end-of-turn token.

    Measured as TRL's prompt/completion tokenization counts the completion: the
    tokens of prompt + answer after their common prefix with the prompt
    rendered with its generation prompt.
    """
    prompt = [{"role": "user", "content": "dummy"}]
    try:
        head = _ids(tokenizer, prompt, add_generation_prompt=True)
        whole = _ids(tokenizer, prompt + [{"role": "assistant", "content": "dummy" + suffix}])
    except Exception:  # noqa: BLE001 — a template that cannot render this: TRL's tokenization will say so
        return True
    from trl.data_utils import common_prefix_length

    return _added_token_last(tokenizer, whole[common_prefix_length(head, whole):])


def assistant_end_trained(tokenizer) -> bool:
    """True when TRL's assistant-only mask (its training template) includes the end-of-turn token."""
    from trl.chat_template_utils import (
        get_training_chat_template,
        has_generation_markers,
        is_chat_template_stop_token_trained,
    )

    template = None if has_generation_markers(tokenizer.chat_template) else get_training_chat_template(tokenizer)
    return is_chat_template_stop_token_trained(tokenizer, chat_template=template)


_said: set[tuple[str, str]] = set()
"""What :func:`_say_once` has said, by tokenizer name."""


def _say_once(tokenizer, message: str) -> None:
    """Log ``message`` once per tokenizer name (the rows are shaped twice: for the length check and for the trainer)."""
    key = (str(getattr(tokenizer, "name_or_path", "")), message)
    if key not in _said:
        _said.add(key)
        logger.info(message)


def _append_to_answer(row: dict, suffix: str) -> dict:
    last = row["completion"][-1]
    return {"completion": row["completion"][:-1] + [{**last, "content": last["content"] + suffix}]}


def train_the_end(dataset, tokenizer):
    """Conversational prompt/completion rows whose answers' end-of-turn token is trained (see the module docstring)."""
    if completion_end_trained(tokenizer):
        return dataset
    eos = tokenizer.eos_token
    if eos and completion_end_trained(tokenizer, eos):
        _say_once(tokenizer, f"the chat template ends an answer with no end-of-turn token in the loss, so the model "
                             f"would not learn to stop: {eos} is appended to each answer")
        return dataset.map(_append_to_answer, fn_kwargs={"suffix": eos})
    raise ValueError("the chat template leaves every answer's end out of the loss, even with the tokenizer's EOS "
                     f"({eos!r}) appended, so the model would never learn to stop: use a template that ends an "
                     "assistant turn with a special token (an -Instruct/-it model's own), or set "
                     "tokenizer.chat_template.")


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
        return train_the_end(dataset.map(_alpaca_to_completion, remove_columns=columns), tokenizer), {}
    if fmt == "sharegpt":
        dataset = dataset.map(_sharegpt_to_chat, remove_columns=columns)
    else:
        dataset = dataset.select_columns(["messages"])
    if can_mask_assistant_turns(tokenizer):
        if assistant_end_trained(tokenizer):
            return dataset, {"assistant_only_loss": True}
        _say_once(tokenizer, "the chat template's assistant mask leaves the end-of-turn token out, so the model "
                             "would not learn to stop: training on each row's last assistant turn as a completion "
                             "instead")
    else:
        _say_once(tokenizer, "this chat template cannot mark assistant turns; training on each row's last "
                             "assistant turn")
    return train_the_end(dataset.map(_last_turn_to_completion, remove_columns=["messages"]), tokenizer), {}


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
