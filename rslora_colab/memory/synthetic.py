"""Real-shaped models with random weights, for measuring memory and speed without downloads.

A model built from a catalog entry's architecture numbers uses exactly the
memory and compute of the real one, so GPU benchmarks (``bench/gpu_*.py``)
and the estimator's tests need no Hugging Face access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .catalog import resolve_spec


def config_for(model: Any):
    """A transformers config with the architecture of ``model`` (catalog id, config dict or path)."""
    from transformers import AutoConfig

    fields = resolve_spec(model).to_config_dict()
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def empty_model(model: Any):
    """The model on PyTorch's meta device: every shape, no memory (for counting parameters)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config_for(model))


def build_random_model(model: Any, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                       device: str = "cpu", seed: int = 0) -> Path:
    """Save a random-weight checkpoint of ``model``'s architecture, with the demo tokenizer, to ``path``.

    Build on ``device="cuda"`` for multi-billion-parameter models (seconds
    instead of minutes). The demo tokenizer's ids all fall inside any
    catalog vocabulary, so the folder loads and trains like a hub model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..demo import demo_model

    path = Path(path)
    torch.manual_seed(seed)
    with torch.device(device):
        built = AutoModelForCausalLM.from_config(config_for(model), dtype=dtype)
    built.save_pretrained(path)
    AutoTokenizer.from_pretrained(demo_model()).save_pretrained(path)
    return path
