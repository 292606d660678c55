"""Ready reward functions for GRPO, each a plain callable in the form TRL's ``GRPOTrainer`` calls.

TRL calls every reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)``, with
one entry per completion in each list and every other dataset column (``answer``, ...) passed by name, and
wants one float per completion back (None where the function does not apply). A completion is a string for
``prompt`` rows, a list with one assistant message for chat prompts; :func:`completion_text` reads both.

===============================  ==================================================================
reward                           scores a completion
===============================  ==================================================================
:func:`exact_match`              1.0 when its answer equals the row's reference column, else 0.0
:func:`numeric_match`            1.0 when its answer is the reference number (within a tolerance)
:func:`tag_format`               1.0 when it holds exactly one ``<answer>...</answer>`` (the format)
:func:`regex_reward`             1.0 when a regular expression matches it
:func:`length_penalty`           1.0 for an empty completion, falling linearly to 0.0 at ``max_chars``
===============================  ==================================================================

"Its answer" is the text inside the first ``<answer>...</answer>`` when there is one, else the whole
completion, stripped (:func:`extract_answer`). :data:`READY_REWARDS` names them for the command line
(``--reward``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

ANSWER_TAG = "answer"
"""The tag :func:`tag_format` asks for and :func:`extract_answer` reads: ``<answer>...</answer>``."""
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def completion_text(completion: Any) -> str:
    """The text of one completion: itself for a string, the assistant message's content for a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(turn.get("content", "")) for turn in completion if isinstance(turn, dict))
    return str(completion)


def extract_answer(text: str, tag: str = ANSWER_TAG) -> str:
    """The text inside the first ``<tag>...</tag>`` of ``text``, else all of ``text``; stripped.

    >>> extract_answer("I think <answer> 42 </answer>."), extract_answer(" 42 ")
    ('42', '42')
    """
    found = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return (found.group(1) if found else text).strip()


def parse_number(text: str) -> float | None:
    """The last number written in ``text`` ("1,234.5" reads 1234.5), or None when there is none.

    >>> parse_number("so x = 1,234.5"), parse_number("none")
    (1234.5, None)
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _named(func: Callable, name: str, doc: str) -> Callable:
    """``func`` under ``name``: TRL logs each reward as ``rewards/<name>/mean``."""
    func.__name__ = func.__qualname__ = name
    func.__doc__ = doc
    return func


def _reference(kwargs: dict, column: str, name: str) -> list:
    if column not in kwargs:
        shown = sorted(k for k in kwargs if k not in ("prompts", "completions", "completion_ids", "trainer_state",
                                                      "log_extra", "log_metric"))
        raise KeyError(f"{name} reads the reference column {column!r}, which the data does not have (its other "
                       f"columns: {shown or 'none'}): add it to every row, or pass column='...'")
    return kwargs[column]


def exact_match(column: str = "answer", tag: str = ANSWER_TAG, ignore_case: bool = True) -> Callable:
    """A reward of 1.0 when a completion's answer (:func:`extract_answer`) equals the row's ``column``, else 0.0.

    Whitespace is collapsed on both sides, and case ignored unless ``ignore_case=False``.
    """
    def norm(text: Any) -> str:
        text = " ".join(str(text).split())
        return text.lower() if ignore_case else text

    def reward(completions: list, **kwargs: Any) -> list[float]:
        refs = _reference(kwargs, column, "exact_match")
        return [float(norm(extract_answer(completion_text(c), tag)) == norm(ref)) for c, ref in zip(completions, refs)]

    return _named(reward, f"exact_match_{column}", exact_match.__doc__)


def numeric_match(column: str = "answer", tag: str = ANSWER_TAG, rel_tol: float = 1e-6) -> Callable:
    """A reward of 1.0 when the last number in a completion's answer equals the row's ``column`` (a number, or
    text holding one) within ``rel_tol``, else 0.0; None for a row whose reference holds no number."""
    def reward(completions: list, **kwargs: Any) -> list[float | None]:
        refs = _reference(kwargs, column, "numeric_match")
        scores: list[float | None] = []
        for c, ref in zip(completions, refs):
            want = float(ref) if isinstance(ref, (int, float)) else parse_number(str(ref))
            got = parse_number(extract_answer(completion_text(c), tag))
            scores.append(None if want is None else float(got is not None and math.isclose(got, want, rel_tol=rel_tol,
                                                                                             abs_tol=rel_tol)))
        return scores

    return _named(reward, f"numeric_match_{column}", numeric_match.__doc__)


def regex_reward(pattern: str, name: str = "regex", flags: int = re.DOTALL) -> Callable:
    """A reward of 1.0 when ``pattern`` matches a completion from its start (``re.match``), else 0.0."""
    compiled = re.compile(pattern, flags)

    def reward(completions: list, **kwargs: Any) -> list[float]:
        return [float(compiled.match(completion_text(c)) is not None) for c in completions]

    return _named(reward, name, f"{regex_reward.__doc__} Pattern: {pattern!r}.")


def tag_format(tag: str = ANSWER_TAG, strict: bool = False) -> Callable:
    """A reward of 1.0 when a completion holds exactly one ``<tag>...</tag>`` (``strict``: and nothing after
    it), else 0.0: the format reward of GRPO recipes, which teaches where the answer goes."""
    body = rf"(?:(?!<{tag}>).)*<{tag}>(?:(?!</?{tag}>).)*</{tag}>"
    pattern = body + (r"\s*\Z" if strict else rf"(?:(?!<{tag}>).)*\Z")
    return regex_reward(pattern, f"{tag}_format", re.DOTALL)


def length_penalty(max_chars: int = 200) -> Callable:
    """A reward of 1.0 for an empty completion, falling linearly to 0.0 at ``max_chars`` characters (and 0.0
    beyond): added to a correctness reward it favours short answers; alone it teaches the model to stop early."""
    if max_chars <= 0:
        raise ValueError(f"length_penalty(max_chars={max_chars!r}): pass a positive number of characters")

    def reward(completions: list, **kwargs: Any) -> list[float]:
        return [max(0.0, 1.0 - len(completion_text(c)) / max_chars) for c in completions]

    return _named(reward, "length_penalty", length_penalty.__doc__)


READY_REWARDS: dict[str, Callable[..., Callable]] = {
    "exact_match": exact_match, "numeric_match": numeric_match, "answer_format": tag_format,
    "length_penalty": length_penalty,
}
"""The ready rewards by name, for the command line's ``--reward`` (each built with its defaults)."""


def ready_reward(name: str) -> Callable:
    """The ready reward ``name`` (a key of :data:`READY_REWARDS`) with its default settings."""
    if name not in READY_REWARDS:
        raise ValueError(f"reward {name!r} is not a ready reward: use one of {', '.join(READY_REWARDS)}")
    return READY_REWARDS[name]()
