"""Step 6 — save: the adapter, the run's metrics and its loss curve."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.json"
LOSS_PLOT_FILE = "loss.png"


def save_adapter(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save the PEFT adapter (its config keeps ``use_rslora``) and the tokenizer."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
