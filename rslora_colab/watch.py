"""Step 5 — watch: record what training does, step by step, and draw it.

The history is a plain list of dicts (one per logged step, plus guard and
out-of-memory events), so it goes straight into JSON or a DataFrame;
:func:`plot_loss` draws it. The live notebook view is
:class:`~rslora_colab.notebook.live.LivePlotCallback`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

from .distributed import agree

HISTORY_KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "num_tokens": "num_tokens",
                "mean_token_accuracy": "token_accuracy",
                # DPO: beta * (policy - reference) log-prob of the chosen and rejected answers, and their gap
                "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
                "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                # GRPO: the summed reward and its spread, the KL to the reference (beta > 0), the completions
                "reward": "reward", "reward_std": "reward_std", "frac_reward_zero_std": "reward_zero_std_share",
                "kl": "kl", "entropy": "entropy", "completions/mean_length": "completion_length",
                "completions/clipped_ratio": "completion_clipped_share"}
"""Training logs the history keeps, and their names there (GRPO's per-function rewards too: :data:`REWARD_KEY`)."""
REWARD_KEY = ("rewards/", "/mean")
"""GRPO logs each reward function's mean as ``rewards/<name>/mean``; the history keeps it as ``reward/<name>``."""
EVAL_KEYS = {"eval_loss": "eval_loss", "eval_mean_token_accuracy": "eval_token_accuracy",
             # DPO on held-out pairs: how often the chosen answer out-scores the rejected one, and by how much
             "eval_rewards/accuracies": "eval_reward_accuracy", "eval_rewards/margins": "eval_reward_margin",
             "eval_rewards/chosen": "eval_reward_chosen", "eval_rewards/rejected": "eval_reward_rejected",
             # GRPO on held-out prompts: the mean reward of completions sampled for them (each function's too)
             "eval_reward": "eval_reward", "eval_reward_std": "eval_reward_std",
             "eval_completions/mean_length": "eval_completion_length"}
"""Evaluation logs the history keeps (one record per evaluation), and their names there."""


class HistoryCallback(TrainerCallback):
    """Keeps one record per logged step: step, loss, lr, grad_norm, num_tokens (and DPO's rewards, GRPO's reward,
    per-function rewards, KL and completion length), and one per
    evaluation: step, eval_loss (and DPO's held-out reward accuracy and margin).

    A :class:`~rslora_colab.resilience.guard.DivergenceGuard` appends its events
    (``{"step", "event", "reason", "lr", ...}``) to the same list.

    ``history`` is a plain list of dicts, so it goes straight into JSON or a
    pandas DataFrame.
    """

    def __init__(self, history: list[dict] | None = None) -> None:
        self.history: list[dict] = [] if history is None else history

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and is_history_log(logs):
            self.history.append(history_record(state.global_step, logs))


def is_history_log(logs: dict) -> bool:
    """True for a log the history keeps: a training step's (``loss``) or an evaluation's (``eval_loss``)."""
    return "loss" in logs or "eval_loss" in logs


def history_record(step: int, logs: dict) -> dict:
    """The history record of one logged step (step, loss, lr, grad_norm, num_tokens, token_accuracy) or of one
    evaluation (step, eval_loss, ...)."""
    keys = EVAL_KEYS if "eval_loss" in logs else HISTORY_KEYS
    record = {"step": step, **{short: float(logs[key]) for key, short in keys.items() if key in logs}}
    start, end = REWARD_KEY
    prefix = "eval_" if "eval_loss" in logs else ""
    per_function = {f"{prefix}reward/{key[len(prefix + start):-len(end)]}": float(value) for key, value in logs.items()
                    if key.startswith(prefix + start) and key.endswith(end) and value is not None}
    return {**record, **per_function}


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


def eval_records(history: list[dict]) -> list[dict]:
    """The evaluations in a history, in order (the first may be at step 0: before training)."""
    return [h for h in history if "eval_loss" in h]


def best_eval(history: list[dict]) -> dict | None:
    """The evaluation with the lowest finite eval loss after training began (the first of equals), or None;
    for GRPO (evaluations with ``eval_reward``) the one with the highest held-out reward.

    This is transformers' own rule for ``metric_for_best_model``: strictly better wins, and the
    evaluation before the first step (``eval_on_start``) is not a candidate.
    """
    key = best_key(history)
    candidates = [h for h in eval_records(history) if h["step"] > 0 and math.isfinite(h.get(key, math.nan))]
    if key == "eval_reward":
        return max(candidates, key=lambda h: h[key], default=None)  # max keeps the first of equals too
    return min(candidates, key=lambda h: h[key], default=None)


def best_key(history: list[dict]) -> str:
    """What "best" means in this history: ``eval_reward`` (higher is better) for GRPO, else ``eval_loss``."""
    return "eval_reward" if any("eval_reward" in h for h in eval_records(history)) else "eval_loss"


def mean_value(history: list[dict], key: str, first: bool, n: int = 5) -> float:
    """Mean of the first (or last) ``n`` finite values of ``key`` (e.g. ``"reward_margin"``); NaN when none."""
    values = [h[key] for h in history if key in h and math.isfinite(h[key])]
    window = values[:n] if first else values[-n:]
    return sum(window) / len(window) if window else math.nan


def mean_loss(history: list[dict], first: bool, n: int = 5) -> float:
    """Mean of the first (or last) ``n`` finite losses; NaN when there are none."""
    return mean_value(history, "loss", first, n)


class LossInBarCallback(ProgressCallback):
    """transformers' progress bar, showing loss, lr and the latest eval loss in the bar instead of printing a line
    per log."""

    eval_loss: float | None = None
    eval_name = "eval"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:  # GRPO: the held-out reward (its eval loss is a surrogate near 0)
            self.eval_name, key = ("held-out reward", "eval_reward") if "eval_reward" in logs else ("eval", "eval_loss")
            self.eval_loss = logs[key]
        if self.training_bar is not None and logs and "loss" in logs:
            shown = {"loss": f"{logs['loss']:.3f}", "lr": f"{logs.get('learning_rate', 0):.2e}"}
            if self.eval_loss is not None:
                shown[self.eval_name] = f"{self.eval_loss:.3f}"
            self.training_bar.set_postfix(shown, refresh=False)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """No second bar for each evaluation: its loss shows in the training bar."""


def notebook_bar_callback():
    """transformers' notebook progress bar with the latest loss in its caption, instead of a table row per log.

    With the kit's ``logging_steps=1`` that table grows by one row every step.
    """
    from transformers.utils.notebook import (
        NotebookProgressCallback,  # needs IPython: imported only in notebooks
    )

    class NotebookBarCallback(NotebookProgressCallback):
        latest = ""

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            self.training_tracker.inner_table = None  # no table under the bar

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.latest = f"loss {logs['loss']:.3f}, lr {logs.get('learning_rate', 0):.2e}"

        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            if self.latest and self.training_tracker is not None:
                self.training_tracker.comment = self.latest  # shown from the next redraw

    return NotebookBarCallback()


def quiet_progress(trainer) -> None:
    """Keep one progress bar with the loss in it: :class:`LossInBarCallback` in a terminal, and in a
    notebook :func:`notebook_bar_callback` (transformers' bar without its per-step loss table); none of the
    trainer's when a callback shows its own (``shows_progress``, e.g. the live view in a notebook)."""
    callbacks = trainer.callback_handler.callbacks
    kinds = {type(cb).__name__: type(cb) for cb in callbacks}
    own_bar = any(getattr(cb, "shows_progress", False) for cb in callbacks)
    if kinds.get("ProgressCallback") is ProgressCallback:
        trainer.remove_callback(ProgressCallback)
        if not own_bar:
            trainer.add_callback(LossInBarCallback())
    if "NotebookProgressCallback" in kinds:
        trainer.remove_callback(kinds["NotebookProgressCallback"])
        if not own_bar:
            trainer.add_callback(notebook_bar_callback())


class StopCallback(TrainerCallback):
    """Ends training after the current step once :meth:`stop` is called (e.g. from a Stop button).

    Thread-safe: training may run in another thread. What was trained so far is
    kept: ``quick_finetune`` still saves the adapter and the metrics.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        """Ask training to stop at the end of the current step."""
        self._event.set()

    @property
    def requested(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._event.is_set()

    def on_step_end(self, args, state, control, **kwargs):
        if agree(self._event.is_set()):  # several processes: all stop after the same step
            control.should_training_stop = True


def plot_loss(history: list[dict], path: str | Path | None = None, title: str = "Training loss",
              adapter_step: int | None = None):
    """Plot the training loss, the eval loss (when evaluated) and the learning rate against step.

    ``adapter_step`` marks the step whose adapter was kept (the lowest eval loss with ``save_best``). Saved to
    ``path`` if given. Returns the figure.
    """
    from matplotlib.figure import Figure  # no pyplot: works headless and in threads
    from matplotlib.ticker import MaxNLocator

    steps = [h["step"] for h in history if "loss" in h]
    margins = [h for h in history if "reward_margin" in h or "eval_reward_margin" in h]
    rewards = [h for h in history if "reward" in h]
    fig = Figure(figsize=(10.5, 3.5) if margins or rewards else (6, 3.5))
    ax = fig.add_subplot(1, 2, 1) if margins or rewards else fig.add_subplot()
    if margins:  # DPO: the number to watch is the reward margin (chosen - rejected), beside the loss
        plot_margins(fig.add_subplot(1, 2, 2), history)
    elif rewards:  # GRPO: the mean reward of the sampled completions, each reward function's beside it
        plot_rewards(fig.add_subplot(1, 2, 2), history, adapter_step)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], marker=".", color="tab:blue", label="training loss")
    evals = [] if rewards else eval_records(history)  # GRPO: the held-out reward is drawn beside, not its loss
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o", color="tab:red",
                label="eval loss (held out)")
        kept = next((h for h in evals if h["step"] == adapter_step), None)
        if kept is not None:
            ax.plot([kept["step"]], [kept["eval_loss"]], marker="*", markersize=14, color="tab:red", linestyle="",
                    label=f"adapter kept (step {kept['step']})")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    lrs = [h.get("lr") for h in history if "loss" in h]
    if all(lr is not None for lr in lrs) and lrs:
        twin = ax.twinx()
        twin.plot(steps, lrs, color="tab:orange", alpha=0.6, label="lr")
        twin.set_ylabel("learning rate", color="tab:orange")
    return finish_figure(fig, path)


def plot_margins(ax, history: list[dict]) -> None:
    """DPO's reward margin against step: training (per logged step) and held out (per evaluation)."""
    from matplotlib.ticker import MaxNLocator

    trained = [h for h in history if "reward_margin" in h]
    held = [h for h in history if "eval_reward_margin" in h]
    ax.plot([h["step"] for h in trained], [h["reward_margin"] for h in trained], marker=".", color="tab:green",
            label="reward margin (training)")
    if held:
        ax.plot([h["step"] for h in held], [h["eval_reward_margin"] for h in held], marker="o", color="tab:purple",
                label="reward margin (held out)")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel="step", ylabel="chosen - rejected", title="DPO reward margin (should rise above 0)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def plot_rewards(ax, history: list[dict], adapter_step: int | None = None) -> None:
    """GRPO's mean reward per logged step (summed over the reward functions), each function's own, and the
    held-out reward per evaluation (a star on the kept adapter's when ``adapter_step`` names one)."""
    from matplotlib.ticker import MaxNLocator

    steps = [h for h in history if "reward" in h]
    ax.plot([h["step"] for h in steps], [h["reward"] for h in steps], marker=".", color="tab:green",
            label="reward (sum)")
    held = [h for h in history if "eval_reward" in h]
    if held:
        ax.plot([h["step"] for h in held], [h["eval_reward"] for h in held], marker="o", color="tab:purple",
                label="reward (held-out prompts)")
        kept = next((h for h in held if h["step"] == adapter_step), None)
        if kept is not None:
            ax.plot([kept["step"]], [kept["eval_reward"]], marker="*", markersize=14, color="tab:purple",
                    linestyle="", label=f"adapter kept (step {kept['step']})")
    names = sorted({key for h in steps for key in h if key.startswith("reward/")})
    if len(names) > 1:
        for key in names:
            ax.plot([h["step"] for h in steps if key in h], [h[key] for h in steps if key in h], alpha=0.7,
                    label=key.removeprefix("reward/"))
    ax.set(xlabel="step", ylabel="mean reward", title="GRPO reward of the sampled completions (should rise)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def finish_figure(fig, path: str | Path | None = None):
    """Lay ``fig`` out, save it to ``path`` as PNG when given (110 dpi), and return it."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
