"""Step 6 — save: the adapter, the run's metrics and its loss curve."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from .demo import DEMO_NAME, portable_model_name

ADAPTER_DIR = "adapter"
LAST_GOOD_DIR = "last_good_adapter"
"""Where a run the divergence guard gave up on keeps its last good adapter (in ``output_dir``)."""
METRICS_FILE = "metrics.json"
LOSS_PLOT_FILE = "loss.png"


def save_adapter(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save the PEFT adapter (its config keeps ``use_rslora``) and the tokenizer.

    The demo model is recorded as its base under the portable name ``"demo"``
    (in ``adapter_config.json`` and the model card), not this machine's cache
    folder, so a pushed demo adapter carries no local path and
    :func:`~rslora_colab.load_adapter` still finds its base.
    """
    path = Path(path)
    with portable_base_name(model) as demo:
        # PEFT's "auto" would look "demo" up on the Hub to see whether the vocabulary grew; the demo's never does
        model.save_pretrained(path, **({"save_embedding_layers": False} if demo else {}))
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def portable_base_name(model: Any) -> Iterator[bool]:
    """While saving, name a demo base model ``"demo"`` wherever PEFT reads the base's name; yields True if it did.

    PEFT takes ``adapter_config.json``'s ``base_model_name_or_path`` from its
    config and the model card's ``base_model`` from the base model's
    ``name_or_path`` and ``config._name_or_path``; all three are put back after.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    config = getattr(base, "config", None)
    if base is None or config is None or portable_model_name(config._name_or_path or "") != DEMO_NAME:
        yield False
        return
    peft_configs = list(getattr(model, "peft_config", {}).values())
    saved = ([c.base_model_name_or_path for c in peft_configs], config._name_or_path, base.__dict__.get("name_or_path"))
    try:
        for peft_config in peft_configs:
            peft_config.base_model_name_or_path = DEMO_NAME
        config._name_or_path = base.name_or_path = DEMO_NAME
        yield True
    finally:
        for peft_config, name in zip(peft_configs, saved[0]):
            peft_config.base_model_name_or_path = name
        config._name_or_path, base.name_or_path = saved[1], saved[2]


def write_json(data: dict, path: str | Path) -> Path:
    """Write ``data`` as JSON atomically (temp file, then rename), creating its folder; NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2))
    os.replace(tmp, path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def plot_loss(history: list[dict], path: str | Path | None = None, title: str = "Training loss"):
    """Plot loss (and learning rate) against step; save to ``path`` if given. Returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: works headless and in threads

    steps = [h["step"] for h in history if "loss" in h]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], marker=".", color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    lrs = [h.get("lr") for h in history if "loss" in h]
    if all(lr is not None for lr in lrs) and lrs:
        twin = ax.twinx()
        twin.plot(steps, lrs, color="tab:orange", alpha=0.6, label="lr")
        twin.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
