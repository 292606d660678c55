"""Prompt data (GRPO): its formats, the checks of each row, and its shape for TRL's ``GRPOTrainer``.

``quick_finetune(..., method="grpo")`` reads its data here. GRPO trains on prompts alone: the model writes
the completions and the reward functions score them. Formats, from the ``prompt`` column's first row:

=================  ==================================================================================
format             rows
=================  ==================================================================================
``prompt``         ``prompt`` as a string (the model continues it)
``prompt_chat``    ``prompt`` as a message list (role/content) ending with the user's turn; the model
                   writes the assistant's answer through the chat template
=================  ==================================================================================

Every other column (a reference ``answer``, a ``solution``, ...) is kept and handed to each reward function
under its own name, TRL's way. ``completion`` and ``completion_ids`` are not allowed as column names: TRL
keeps those for the sampled completions, so a reward would never see that column.
"""

from __future__ import annotations

from typing import Iterable

from .rows import ROLES, text_problems, turn_problems
from .sft import check_chat_template

RESERVED_COLUMNS = ("completion", "completion_ids", "prompts", "completions", "trainer_state", "log_extra",
                    "log_metric")
"""Column names TRL uses itself for the arguments of a reward function: a column with one of them would be
dropped or clash."""


def detect_prompt_format(columns: Iterable[str], first_row: dict, source: str = "dataset") -> str:
    """The prompt format from the column names and the first row (see the module docstring)."""
    cols = set(columns)
    if "prompt" not in cols:
        hint = (" It has a 'messages' column: GRPO needs only the question, so put its turns up to the user's in "
                "'prompt' and any reference answer in a column of its own (e.g. 'answer')." if "messages" in cols
                else "")
        raise ValueError(f"{source}: columns {sorted(cols)} are not prompt data, which method='grpo' needs: a "
                         f"'prompt' column (text, or a list of role/content turns), plus any columns the reward "
                         f"functions read (e.g. 'answer').{hint}")
    clash = sorted(cols & set(RESERVED_COLUMNS))
    if clash:
        raise ValueError(f"{source}: column(s) {clash} have names TRL gives the arguments of a reward function (the "
                         "sampled completions and its own state), so a reward would never see them: rename them, "
                         "e.g. to 'answer'.")
    return "prompt_chat" if isinstance(first_row.get("prompt"), list) else "prompt"


def prompt_row_problems(row: dict, fmt: str) -> list[str]:
    """What is wrong with one prompt row of format ``fmt`` (empty when it is usable)."""
    if fmt == "prompt":
        return text_problems(row, ("prompt",)) if not isinstance(row.get("prompt"), list) else [
            "field 'prompt' is a list of turns, but the first row's is text: give every row the same kind"]
    if not isinstance(row.get("prompt"), list):
        return ["field 'prompt' must be a non-empty list of turns (the first row's is), not "
                f"{type(row.get('prompt')).__name__}"]
    problems = turn_problems(row["prompt"], "prompt", "role", "content", ROLES, need_assistant=False)
    if not problems and row["prompt"][-1]["role"] == "assistant":
        problems.append("field 'prompt' must end with the user's turn, not the assistant's: the model writes the "
                        "answer")
    if not problems and not any(turn["content"].strip() for turn in row["prompt"]):
        problems.append("field 'prompt' has only empty turns")
    return problems


def to_grpo_dataset(dataset, fmt: str, tokenizer):
    """Validated prompt data as TRL's ``GRPOTrainer`` takes it: the same rows (``prompt`` plus the reference
    columns); chat prompts need the tokenizer's chat template."""
    if fmt == "prompt_chat":
        check_chat_template(tokenizer, fmt)
    return dataset
