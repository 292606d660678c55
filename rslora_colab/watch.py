"""Step 5 — watch: record what training does, step by step."""

from __future__ import annotations

import math

from transformers import ProgressCallback, TrainerCallback

HISTORY_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "num_tokens": "num_tokens",
                "mean_token_accuracy": "token_accuracy",
                # DPO: beta * (policy - reference) log-prob of the chosen and rejected answers, and their gap
                "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
                "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy"}


class HistoryCallback(TrainerCallback):
    """Keeps one record per logged step: step, loss, lr, grad_norm, num_tokens (and DPO's rewards).

    A :class:`~rslora_colab.guard.DivergenceGuard` appends its events
    (``{"step", "event", "reason", "lr", ...}``) to the same list.

    ``history`` is a plain list of dicts, so it goes straight into JSON or a
    pandas DataFrame.
    """

    def __init__(self, history: list[dict] | None = None) -> None:
        self.history: list[dict] = [] if history is None else history

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.history.append(history_record(state.global_step, logs))


def history_record(step: int, logs: dict) -> dict:
    """The history record of one logged step: step, loss, lr, grad_norm, num_tokens, token_accuracy."""
    return {"step": step, **{short: float(logs[key]) for key, short in HISTORY_KEYS.items() if key in logs}}


def losses(history: list[dict]) -> list[float]:
    """The loss of every recorded step."""
    return [h["loss"] for h in history if "loss" in h]


def mean_value(history: list[dict], key: str, first: bool, n: int = 5) -> float:
    """Mean of the first (or last) ``n`` finite values of ``key`` (e.g. ``"reward_margin"``); NaN when none."""
    values = [h[key] for h in history if key in h and math.isfinite(h[key])]
    window = values[:n] if first else values[-n:]
    return sum(window) / len(window) if window else math.nan


def mean_loss(history: list[dict], first: bool, n: int = 5) -> float:
    """Mean of the first (or last) ``n`` finite losses; NaN when there are none."""
    return mean_value(history, "loss", first, n)


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
