"""What a run produced: :class:`FinetuneResult`, and the (model, tokenizer) pair that chat and save take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .watch import mean_value, plot_loss


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced and measured."""

    model: Any
    """The trained model (base + rsLoRA adapter), ready for generation."""
    tokenizer: Any
    """Its tokenizer."""
    adapter_path: Path
    """Folder holding the saved adapter (``adapter_config.json`` keeps ``use_rslora``); only
    :func:`quick_finetune` writes it, :func:`train_adapter` leaves it unwritten."""
    settings: dict
    """Settings actually used: backend, precision, r, alpha, scale, lr, batch, steps, ..."""
    history: list[dict] = field(default_factory=list)
    """One record per logged step (step, loss, lr, grad_norm, num_tokens), plus events: the divergence
    guard's (``{"step", "event": "rollback" | "scaler_skip" | "gave_up", "reason", "lr", ...}``) and
    out-of-memory recoveries (``{"step", "event": "oom", "micro_batch", "grad_accum"}``); a resumed run
    includes the steps before the checkpoint."""
    wall_time_s: float = 0.0
    """Seconds spent in ``trainer.train()``."""
    tokens_per_s: float = 0.0
    """Training tokens processed per second."""
    peak_gpu_memory_gib: float | None = None
    """Peak reserved CUDA memory in GiB; None on CPU."""

    @property
    def first_loss(self) -> float:
        """Mean loss of the first 5 logged steps."""
        return self.mean_of("loss", first=True)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 5 logged steps."""
        return self.mean_of("loss", first=False)

    def mean_of(self, key: str, first: bool, n: int = 5) -> float:
        """Mean of the first (or last) ``n`` finite values of ``key`` in the history, e.g. ``"reward_margin"``."""
        return mean_value(self.history, key, first, n)

    def summary(self) -> dict:
        """The JSON-ready part of the result (everything but model and tokenizer)."""
        return {"adapter_path": str(self.adapter_path), "settings": self.settings, "history": self.history,
                "wall_time_s": self.wall_time_s, "tokens_per_s": self.tokens_per_s,
                "peak_gpu_memory_gib": self.peak_gpu_memory_gib,
                "first_loss": self.first_loss, "final_loss": self.final_loss}

    def plot(self, path: str | Path | None = None):
        """The loss curve as a matplotlib figure."""
        return plot_loss(self.history, path, title=f"rsLoRA r={self.settings['r']}, lr={self.settings['lr']:.2g}")


def model_and_tokenizer(result_or_model: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a :class:`FinetuneResult`, or from a model and its tokenizer."""
    if isinstance(result_or_model, FinetuneResult):
        return result_or_model.model, tokenizer or result_or_model.tokenizer
    if tokenizer is None:
        raise ValueError("tokenizer: pass the model's tokenizer (or pass a FinetuneResult, which carries it).")
    return result_or_model, tokenizer
