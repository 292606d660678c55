"""What every sub-command resolves the same way: which model, which data, which settings."""

from __future__ import annotations

import logging
from typing import Any

from ..choices import default_model
from ..demo import DEMO_NAME, demo_data, demo_training

logger = logging.getLogger(__name__)

ALIASES = {"r": "--rank", "max_seq_length": "--seq", "output_dir": "--out", "batch_size": "--batch"}
"""Short options for the settings typed most (``--rank 64 --seq 1024 --out runs/x``)."""


def resolve_job(model: str | None, data: str | None, overrides: dict[str, Any],
                method: str = "sft") -> tuple[str, Any, dict[str, Any]]:
    """Model, data and settings for one command; with no ``--model`` on a CPU, the offline demo and its settings.

    With no --model: the GPU default on a GPU, else the offline demo, whose
    settings start from its own (``demo_training``) under what was typed.
    """
    chosen = model or default_model()
    if chosen == DEMO_NAME and data is None:
        rows = {"dpo": "158 preference pairs",
                "grpo": "79 questions ('give the heading of topic X'), rewarded for short answers (GRPO)"}.get(
            method, "79 questions ('give the heading of topic X')")
        logger.info("no GPU and no --model, so this is the offline demo: a tiny Llama (2 layers, hidden 128) built "
                    f"here and fine-tuned on {rows} from Python's manual. Pass --model and --data for a real run.")
        overrides = {**demo_training(method), **overrides}
    elif chosen == DEMO_NAME:  # the user's data: the demo model's training settings, not its data's 10% eval split
        logger.info(f"no GPU and no --model, so this trains the offline demo model (a tiny Llama, 2 layers, hidden "
                    f"128) on {data}: it shows every step works, not what a real model learns. Pass --model for "
                    "a real run.")
        model_settings = {k: v for k, v in demo_training(method).items() if k != "eval_fraction"}
        overrides = {**model_settings, **overrides}
    if data is None and chosen != DEMO_NAME and model is not None:
        raise ValueError("--data is required with --model: pass a .jsonl/.json/.csv/.parquet file or a hub dataset id.")
    return chosen, data or demo_data(method), overrides
