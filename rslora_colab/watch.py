"""Step 5 — watch: record what training does, step by step."""

from __future__ import annotations

import math

from transformers import ProgressCallback, TrainerCallback

HISTORY_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "num_tokens": "num_tokens",
                "mean_token_accuracy": "token_accuracy"}


class HistoryCallback(TrainerCallback):
    """Keeps one record per logged step: step, loss, lr, grad_norm, num_tokens.

    ``history`` is a plain list of dicts, so it goes straight into JSON or a
    pandas DataFrame.
    """

    def __init__(self, history: list[dict] | None = None) -> None:
        self.history: list[dict] = [] if history is None else history

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            record = {"step": state.global_step}
            record.update({short: float(logs[key]) for key, short in HISTORY_KEYS.items() if key in logs})
            self.history.append(record)


ADAPTER_PARAM_MARK = "lora_"
"""PEFT names every LoRA parameter ``...lora_A...`` / ``...lora_B...`` (also ``lora_magnitude`` for DoRA)."""


def grad_norms(model) -> tuple[float, float]:
    """Global L2 norms of the current gradients: ``(adapter, all)``; adapter = parameters named ``lora_*``."""
    adapter_sq, total_sq = 0.0, 0.0
    for name, param in model.named_parameters():
        if param.grad is not None:
            sq = float(param.grad.detach().float().pow(2).sum())
            total_sq += sq
            adapter_sq += sq if ADAPTER_PARAM_MARK in name else 0.0
    return math.sqrt(adapter_sq), math.sqrt(total_sq)


class AdapterGradNormCallback(TrainerCallback):
    """Records the adapter's gradient norm at every optimizer step, before clipping.

    The norm is the global L2 norm over the ``.grad`` of every LoRA parameter
    when the optimizer is about to step: with gradient accumulation that is the
    gradient summed over the step's micro-batches, i.e. the gradient of the
    whole effective batch's loss (the trainer divides by its token count).

    transformers calls ``on_pre_optimizer_step`` after unscaling (fp16) and
    clipping. Clipping multiplies every gradient by one factor, so the
    adapter's share of the total norm survives it; the trainer then logs the
    total norm from *before* clipping, and share × that total is the adapter's
    norm before clipping. Needs ``logging_steps=1`` for a value at every step.
    Records ``{"step", "adapter_grad_norm"}`` in ``history``.
    """

    def __init__(self) -> None:
        self.history: list[dict] = []
        self._share: float | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        adapter, total = grad_norms(model)
        self._share = 0.0 if total == 0 else adapter / total  # NaN when fp16 overflowed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs and self._share is not None:
            norm = self._share * float(logs["grad_norm"])
            self.history.append({"step": state.global_step, "adapter_grad_norm": norm})
            self._share = None


def losses(history: list[dict]) -> list[float]:
    """The loss of every recorded step."""
    return [h["loss"] for h in history if "loss" in h]


def mean_loss(history: list[dict], first: bool, n: int = 5) -> float:
    """Mean of the first (or last) ``n`` finite losses; NaN when there are none."""
    values = [v for v in losses(history) if math.isfinite(v)]
    window = values[:n] if first else values[-n:]
    return sum(window) / len(window) if window else math.nan


class LossInBarCallback(ProgressCallback):
    """transformers' progress bar, showing loss and lr in the bar instead of printing a line per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            shown = {"loss": f"{logs['loss']:.3f}", "lr": f"{logs.get('learning_rate', 0):.2e}"}
            self.training_bar.set_postfix(shown, refresh=False)


def quiet_progress(trainer) -> None:
    """Swap the trainer's line-per-log console bar for :class:`LossInBarCallback` (notebook bars stay)."""
    if any(type(cb) is ProgressCallback for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossInBarCallback())
