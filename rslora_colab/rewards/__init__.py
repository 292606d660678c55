"""Rewards for GRPO: ready reward functions, and the checks that name a failing one.

* :mod:`.ready` — exact and numeric match against a reference column, the ``<answer>`` format, a regular
  expression, a length penalty; :data:`READY_REWARDS` names them for the command line.
* :mod:`.check` — every reward function called once on sample completions before any weights load
  (:func:`check_rewards`), and wrapped for training so a failure names the function (:func:`named_rewards`).
"""

from __future__ import annotations

from .check import RewardError, check_rewards, named_rewards, reward_arguments, reward_name
from .ready import (
    READY_REWARDS,
    completion_text,
    exact_match,
    extract_answer,
    length_penalty,
    numeric_match,
    ready_reward,
    regex_reward,
    tag_format,
)

__all__ = ["READY_REWARDS", "RewardError", "check_rewards", "completion_text", "exact_match", "extract_answer",
           "length_penalty", "named_rewards", "numeric_match", "ready_reward", "regex_reward", "reward_arguments", "reward_name",
           "tag_format"]
