"""Row checks every format shares: non-empty text, and conversations made of role/text turns."""

from __future__ import annotations

from typing import Any, Iterable

ROLES = {"system", "user", "assistant", "tool"}
"""Roles a chat turn may have (``messages`` rows)."""
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool"}
"""ShareGPT ``from`` values and the chat role each becomes."""
ASSISTANT = {"assistant", "gpt"}
"""The roles whose turns are trained on."""


def is_text(value: Any) -> bool:
    """True for a string with something other than whitespace in it."""
    return isinstance(value, str) and value.strip() != ""


def text_problems(row: dict, keys: Iterable[str]) -> list[str]:
    """One problem per field of ``keys`` that is not a non-empty string."""
    return [f"field '{k}' must be a non-empty string" for k in keys if not is_text(row.get(k))]


def turn_problems(turns: Any, field: str, role_key: str, text_key: str, roles: Iterable[str],
                  need_assistant: bool = True) -> list[str]:
    """What is wrong with a conversation in ``field``: turns that are not ``{role_key, text_key}`` dicts,
    unknown roles, and (when ``need_assistant``) no assistant turn, or an empty one."""
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
    if need_assistant and not problems and not any(turn[role_key] in ASSISTANT for turn in turns):
        problems.append(f"field '{field}' has no assistant turn to learn from")
    if need_assistant and not problems:  # the trained turns: an empty one teaches the model to say nothing
        problems += [f"{field}[{j}].{text_key} is empty: an assistant turn needs text to learn from (fill it in, or "
                     "drop the turn or the row)" for j, turn in enumerate(turns)
                     if turn[role_key] in ASSISTANT and not turn[text_key].strip()]
    return problems
