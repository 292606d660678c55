"""Step 3 — data: read a dataset, check every row before any model loads, and shape it for TRL.

============================  =================================================
module                        job
============================  =================================================
:mod:`.read`                  Dataset, list, file (.jsonl/.json/.csv/.parquet) or hub id
:mod:`.rows`                  the checks every format shares (text, turns)
:mod:`.sft`                   SFT formats, their row checks, shape for ``SFTTrainer``
:mod:`.preference`            DPO formats, their row checks, shape for ``DPOTrainer``
:mod:`.prompts`               GRPO prompt formats, their row checks, shape for ``GRPOTrainer``
:mod:`.lengths`               token lengths with the tokenizer alone (dropped rows, memory plan)
:mod:`.split`                 held-out rows for the eval loss (``eval_fraction``, its default)
============================  =================================================

Problems raise one ``ValueError`` naming the source, the row (``line N`` of a
.jsonl), the field and what was expected.
"""

from __future__ import annotations

from typing import Any

from ..demo import DEMO_NAME, demo_data
from ..presets import check_method
from .lengths import TokenLengths, check_prompt_room, check_truncation, token_lengths
from .preference import (
    detect_preference_format,
    preference_row_problems,
    to_dpo_dataset,
)
from .prompts import detect_prompt_format, prompt_row_problems, to_grpo_dataset
from .read import MAX_REPORTED, read_dataset, row_label, source_name
from .sft import detect_format, prompt_and_answer, row_problems, to_trainer_dataset
from .split import eval_fraction_for, hold_out

__all__ = ["TokenLengths", "check_prompt_room", "check_truncation", "detect_format", "detect_preference_format", "eval_fraction_for",
           "hold_out", "load_and_validate", "load_eval_dataset", "prompt_and_answer", "read_dataset", "source_name",
           "to_dpo_dataset", "to_grpo_dataset", "to_trainer_dataset", "token_lengths", "validate"]


def validate(dataset, source: str = "dataset", method: str = "sft") -> str:
    """Check every row; return the format or raise one ``ValueError`` listing the problems.

    ``method="dpo"`` expects preference data (see :mod:`rslora_colab.data.preference`), ``method="grpo"``
    prompts (:mod:`rslora_colab.data.prompts`).
    """
    check_method(method)
    if len(dataset) == 0:
        raise ValueError(f"{source}: is empty; it needs at least one row.")
    if method == "dpo":
        fmt, check = detect_preference_format(dataset.column_names, dataset[0], source), preference_row_problems
    elif method == "grpo":
        fmt, check = detect_prompt_format(dataset.column_names, dataset[0], source), prompt_row_problems
    else:
        fmt, check = detect_format(dataset.column_names, source), row_problems
    problems = [f"{source} {row_label(source, i)}: {p}" for i, row in enumerate(dataset) for p in check(row, fmt)]
    if problems:
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ValueError(f"{source} ({fmt} format) has {len(problems)} problem(s):\n  "
                         + "\n  ".join(problems[:MAX_REPORTED]) + more)
    return fmt


def load_and_validate(source: Any, method: str = "sft"):
    """Load ``source`` and check every row for ``method`` ('sft', 'dpo' or 'grpo'); returns ``(dataset, format)``.

    ``"demo"`` names the offline demo's own data (:func:`~rslora_colab.demo.demo_data`): its heading questions,
    ``demo_preferences()`` for DPO, or ``demo_prompts()`` for GRPO.
    """
    if isinstance(source, str) and source == DEMO_NAME:
        source = demo_data(method)
    dataset = read_dataset(source)
    return dataset, validate(dataset, source_name(source), method)


def load_eval_dataset(source: Any, fmt: str, method: str = "sft"):
    """Load and check eval data exactly like training data; returns the dataset.

    It must be in the training data's format ``fmt``: TRL shapes and masks
    both with the same trainer settings (e.g. chat data's assistant-only
    loss), so another format would be scored on other tokens.
    """
    name = source_name(source, "eval_dataset")
    dataset = read_dataset(source)
    eval_fmt = validate(dataset, name, method)
    if eval_fmt != fmt:
        raise ValueError(f"{name}: is {eval_fmt} data, but the training data is {fmt}: the eval rows are masked "
                         f"like the training rows, so give both the same format (columns).")
    return dataset
