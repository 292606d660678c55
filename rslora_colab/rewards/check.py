"""Reward functions checked before the first step, and named when they fail during training.

A reward function is user code that runs only once generation has started, minutes into a run on a T4 (the
model loaded, the first completions sampled). :func:`check_rewards` calls every one of them before any
weights load, on a few rows of the data and a few sample completions (:data:`SAMPLE_COMPLETIONS`), with the
arguments TRL will pass, and raises one :class:`RewardError` naming each function that raises, returns the
wrong number of rewards, a value that is not a number, NaN or infinity (None is allowed: TRL's "does not apply").
:func:`named_rewards` wraps the functions so the same faults during training raise the same error, naming the
function, the step and the prompt (TRL's own message names neither the row nor, for an exception, the function).

Only plain synchronous functions are checked and wrapped; TRL also takes ``async`` functions and reward
models (``torch.nn.Module``), which are handed to it as they are.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Iterable

SAMPLE_COMPLETIONS = ("", "I do not know.", "The answer is <answer>42</answer>.")
"""What :func:`check_rewards` scores for each sample row: an empty completion, one with no answer, one in the
``<answer>`` format."""
CHECKED_ROWS = 3
"""How many of the data's first rows :func:`check_rewards` tries each function on."""
TRL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""What TRL passes every reward function besides the dataset's own columns (TRL 1.15/1.16)."""


class RewardError(ValueError):
    """A reward function failed: it raised, returned the wrong number of rewards, or a value that is not a number."""


def reward_name(func: Callable) -> str:
    """The name TRL gives a reward function in its logs (``rewards/<name>/mean``): TRL's own ``get_callable_name``."""
    from trl.trainer.utils import get_callable_name

    return get_callable_name(func)


def is_plain(func: Callable) -> bool:
    """True for a synchronous callable that is not a reward model: what the kit checks and wraps."""
    import torch

    call = getattr(func, "__call__", None)
    return not isinstance(func, torch.nn.Module) and not (inspect.iscoroutinefunction(func)
                                                          or inspect.iscoroutinefunction(call))


def reward_problem(rewards: Any, count: int) -> tuple[str, int | None] | None:
    """What is wrong with one call's return value for ``count`` completions, and the completion it is about
    (None when it is about the whole list); None when the value is usable."""
    try:
        values = list(rewards)
    except TypeError:
        return f"returned {type(rewards).__name__} {rewards!r:.80}, not a list of rewards", None
    if len(values) != count:
        return f"returned {len(values)} rewards for {count} completions (it must return one per completion)", None
    for k, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            return f"returned {value!r:.60} ({type(value).__name__}) for completion {k}; rewards must be numbers", k
        if math.isnan(float(value)):
            return (f"returned NaN for completion {k} (return None for a completion the function does not apply "
                    "to: TRL leaves those out of the mean)"), k
        if math.isinf(float(value)):
            return f"returned {float(value)} for completion {k}; an infinite reward turns GRPO's advantages to NaN", k
    return None


def reward_arguments(row: dict, fmt: str, tokenizer: Any, texts: Iterable[str]) -> dict[str, Any]:
    """The keyword arguments TRL passes a reward function for completions ``texts`` of one prompt row: every list
    one entry per completion (chat completions as one assistant message, ``fmt="prompt_chat"``), the row's other
    columns repeated, a fresh ``TrainerState`` and no-op ``log_extra`` / ``log_metric``."""
    from transformers import TrainerState

    texts = list(texts)
    chat = fmt == "prompt_chat"
    completions = [[{"role": "assistant", "content": t}] for t in texts] if chat else texts
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] if tokenizer is not None else [] for t in texts]
    columns = {key: [value] * len(texts) for key, value in row.items() if key != "prompt"}
    return {"prompts": [row["prompt"]] * len(texts), "completions": completions, "completion_ids": ids, **columns,
            "trainer_state": TrainerState(), "log_extra": lambda *args, **kw: None,
            "log_metric": lambda *args, **kw: None}


def check_rewards(reward_funcs: Iterable[Callable], dataset: Any, fmt: str, tokenizer: Any = None,
                  source: str = "dataset", rows: int = CHECKED_ROWS, samples: Iterable[str] = SAMPLE_COMPLETIONS,
                  row_label: Callable[[int], str] = "row {}".format) -> None:
    """Call every reward function on the first ``rows`` rows of validated prompt data, ``samples`` as completions.

    Raises one :class:`RewardError` with a line per failing function (the first row it failed on, what it did).
    ``fmt`` is the prompt format (``"prompt"`` or ``"prompt_chat"``); ``tokenizer`` gives the completion ids
    TRL would pass (empty lists without one). ``row_label(i)`` names row ``i`` in the message (the data
    module's ``row_label`` says ``line N`` for a .jsonl file). Nothing is trained; nothing is kept.
    """
    samples, problems = tuple(samples), []
    for func in (f for f in reward_funcs if is_plain(f)):
        name = reward_name(func)
        for i in range(min(rows, len(dataset))):
            kwargs = reward_arguments(dataset[i], fmt, tokenizer, samples)
            try:
                found = reward_problem(func(**kwargs), len(samples))
                problem = found[0] if found else None
            except Exception as err:  # noqa: BLE001 - user code: any exception is the finding
                problem = f"raised {type(err).__name__}: {err}"
            if problem:
                problems.append(f"{name!r} on {source} {row_label(i)} (prompt {_short(dataset[i]['prompt'])}, "
                                f"sample completions {list(samples)!r}): {problem}")
                break
    if problems:
        raise RewardError(f"{len(problems)} reward function(s) failed before training started:\n  "
                          + "\n  ".join(problems) + "\nTRL calls each one as f(prompts=[...], completions=[...], "
                          f"completion_ids=[...], <every other column>=[...], {', '.join(TRL_ARGUMENTS[3:])}) and "
                          "needs one float (or None) per completion; take **kwargs to ignore what is not needed.")


def _short(prompt: Any, limit: int = 60) -> str:
    text = prompt if isinstance(prompt, str) else (prompt[-1].get("content", "") if prompt else "")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def named_reward(func: Callable, observe: Callable | None = None) -> Callable:
    """``func`` wrapped so a failure during training raises :class:`RewardError` naming it, the step and the
    prompt; TRL sees the same name (``functools.wraps``), so its logs are unchanged. ``observe(name, kwargs,
    rewards)``, when given, sees every checked call (the kit's completion samples, ``train/grpo.py``)."""
    name = reward_name(func)

    @functools.wraps(func)
    def reward(*args: Any, **kwargs: Any) -> list:
        prompts, state = kwargs.get("prompts") or [], kwargs.get("trainer_state")
        where = f"at step {state.global_step}" if state is not None else "during training"
        try:
            rewards = func(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - user code
            shown = f" (first prompt of the batch: {_short(prompts[0])})" if prompts else ""
            raise RewardError(f"reward function {name!r} raised {type(err).__name__}: {err} {where}{shown}") from err
        found = reward_problem(rewards, len(kwargs.get("completions") or prompts))
        if found:
            problem, k = found
            shown = f" (prompt {_short(prompts[k])})" if k is not None and k < len(prompts) else ""
            raise RewardError(f"reward function {name!r} {problem} {where}{shown}")
        if observe is not None:
            observe(name, kwargs, rewards)
        return rewards

    reward.__name__ = name
    return reward


def named_rewards(reward_funcs: Iterable[Callable], observe: Callable | None = None) -> list[Callable]:
    """Every plain reward function wrapped by :func:`named_reward`; async ones and reward models as they are."""
    return [named_reward(f, observe) if is_plain(f) else f for f in reward_funcs]
