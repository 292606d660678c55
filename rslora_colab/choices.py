"""What ``"auto"`` means on this machine: the offline demo on CPU, a real model and data on a GPU.

Notebooks, the control panel and the command line start from the same
choices: :func:`resolve_choices` for the model and data, :func:`run_defaults`
and :func:`sweep_defaults` for the demo's own training settings,
:func:`preference_data` for DPO pairs, :func:`grpo_rewards` for GRPO's reward functions.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .data.read import read_dataset
from .demo import DEMO_NAME, DEMO_SWEEP_STEPS, demo_preferences, demo_training
from .rewards import ready_reward

logger = logging.getLogger(__name__)

GPU_DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct-bnb-4bit"
"""The model ``"auto"`` picks on a GPU: small, instruction-tuned, pre-quantized to 4-bit."""
GPU_DEFAULT_DATASET = "yahma/alpaca-cleaned"
"""The dataset ``"auto"`` picks on a GPU (Alpaca format, the one Unsloth's T4 notebooks use)."""
GPU_DEFAULT_PREFERENCES = "HuggingFaceH4/ultrafeedback_binarized"
"""Preference pairs ``"auto"`` picks on a GPU: the rsLoRA write-up's DPO data (its first 2,000 ``train_prefs``)."""
FALLBACK_PROMPT = "Give three tips for staying healthy."
"""What "Try it" asks when the run held no rows out (the first instruction of alpaca-cleaned, the GPU default)."""

def default_model() -> str:
    """``GPU_DEFAULT_MODEL`` when a CUDA GPU is present, else ``"demo"``."""
    return GPU_DEFAULT_MODEL if torch.cuda.is_available() else DEMO_NAME


def default_dataset(model: str) -> str:
    """``"demo"`` for the demo model, else ``GPU_DEFAULT_DATASET``."""
    return DEMO_NAME if model == DEMO_NAME else GPU_DEFAULT_DATASET


def resolve_choices(model: str = "auto", dataset: str = "auto") -> tuple[str, str]:
    """Replace ``"auto"`` in a model / dataset choice by this machine's default."""
    model = default_model() if model == "auto" else model
    return model, default_dataset(model) if dataset == "auto" else dataset


def run_defaults(model: str, method: str = "sft", max_steps: int | None = None) -> dict:
    """``quick_finetune`` keywords to start from: the demo's own settings for ``"demo"``, plus ``max_steps`` if given."""
    defaults = demo_training(method) if model == DEMO_NAME else {}
    return {**defaults, **({"max_steps": max_steps} if max_steps else {})}


def sweep_defaults(model: str, max_steps: int | None = None) -> dict:
    """``compare_ranks`` keywords to start from: the demo's batch, length and held-out share with 50 steps a run,
    else 100 steps (and the default held-out split)."""
    keys = ("batch_size", "grad_accum", "max_seq_length", "eval_fraction")
    shape = {k: v for k, v in run_defaults(model).items() if k in keys}
    return {**shape, "max_steps": max_steps or (DEMO_SWEEP_STEPS if model == DEMO_NAME else 100)}


def preference_data(dataset: str = "auto", model: str = "demo") -> Any:
    """Pairs for DPO: ``"auto"`` is the demo pairs for the demo model, else 2,000 UltraFeedback pairs (hub).

    ``"demo"`` gives the offline pairs; anything else is returned as given
    (a file, a hub id or a Dataset ``quick_finetune`` will read and check).
    """
    if dataset == "auto":
        dataset = DEMO_NAME if model == DEMO_NAME else GPU_DEFAULT_PREFERENCES
    if dataset == DEMO_NAME:
        return demo_preferences()
    if dataset == GPU_DEFAULT_PREFERENCES:
        return read_dataset(GPU_DEFAULT_PREFERENCES, split="train_prefs[:2000]")
    return dataset


def grpo_rewards(rewards: str | list[str] = "auto") -> list:
    """GRPO's reward functions from a notebook's choice: ``"auto"``, the demo's (short answers:
    ``length_penalty(60)``, :data:`~rslora_colab.demo.DEMO_GRPO_TRAINING`), or a list of ready rewards by name
    (``["numeric_match", "answer_format"]``: :data:`~rslora_colab.rewards.READY_REWARDS`)."""
    if rewards == "auto":
        return list(demo_training("grpo")["reward_funcs"])
    if isinstance(rewards, str):
        rewards = [rewards]
    return [ready_reward(name) for name in rewards]


def row_prompt(row: dict) -> str | list[dict] | None:
    """The question a data row asks, in any SFT or preference format (None for plain ``text`` rows): Alpaca's
    instruction (and input), ``prompt`` (a string or messages), or a conversation up to its last assistant turn."""
    if "instruction" in row:
        extra = row.get("input") or ""
        return f"{row['instruction']}\n\n{extra}" if extra else row["instruction"]
    if "prompt" in row:
        return row["prompt"]
    turns = row.get("messages") or row.get("conversations")
    if turns:
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        messages = [{"role": roles.get(t.get("from"), t.get("role")), "content": t.get("value", t.get("content"))}
                    for t in turns]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        return messages[:last] or None
    return None


def try_prompt(prompt: str | list[dict], result: Any) -> str | list[dict]:
    """What a notebook's "Try it" asks: ``prompt`` as given, or for ``"auto"`` the first held-out row's question (one
    the model never trained on, in the run's own format), else :data:`FALLBACK_PROMPT`."""
    if prompt != "auto":
        return prompt
    held = getattr(result, "eval_dataset", None)
    asked = row_prompt(dict(held[0])) if held is not None and len(held) else None
    if asked:
        logger.info(f"asking the first held-out row's question (never trained on): {asked!r}")
        return asked
    return FALLBACK_PROMPT
