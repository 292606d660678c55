"""Step 5 — watch: record what training does, step by step, and show it live in a notebook."""

from __future__ import annotations

import io
import math
import threading
import time

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


def notebook_bar_callback():
    """transformers' notebook progress bar with the latest loss in its caption, instead of a table row per log.

    With the kit's ``logging_steps=1`` that table grows by one row every step.
    """
    from transformers.utils.notebook import NotebookProgressCallback  # needs IPython: imported only in notebooks

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
    notebook :func:`notebook_bar_callback` (transformers' bar without its per-step loss table)."""
    kinds = {type(cb).__name__: type(cb) for cb in trainer.callback_handler.callbacks}
    if kinds.get("ProgressCallback") is ProgressCallback:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossInBarCallback())
    if "NotebookProgressCallback" in kinds:
        trainer.remove_callback(kinds["NotebookProgressCallback"])
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
        if self._event.is_set():
            control.should_training_stop = True


def figure_png(figure, dpi: int = 80) -> bytes:
    """A matplotlib ``Figure`` rendered to PNG bytes (no pyplot, works in any thread)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class LivePlotCallback(HistoryCallback):
    """A progress bar, the latest numbers and the loss curve, updated in the notebook while training runs.

    Pass it to ``quick_finetune(..., callbacks=[LivePlotCallback()])`` in a
    notebook cell: the view appears under the cell when training starts (set
    ``display=False`` to place :attr:`widget` yourself, as the control panel
    does). The curve is :func:`~rslora_colab.save.plot_loss` — a matplotlib
    ``Figure``, no pyplot — redrawn every ``every`` logged steps (at most once
    per ``min_interval_s`` seconds) and at the end. Outside IPython it only
    records :attr:`history`.

    >>> quick_finetune("demo", demo_dataset(), r=16, max_steps=30, callbacks=[LivePlotCallback()])  # doctest: +SKIP
    """

    def __init__(self, every: int = 5, min_interval_s: float = 0.5, title: str = "rsLoRA training loss",
                 display: bool = True) -> None:
        import ipywidgets as widgets

        from .colab import enable_colab_widgets

        super().__init__()
        enable_colab_widgets()
        self.every, self.min_interval_s, self.title, self.display = every, min_interval_s, title, display
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="step", bar_style="info")
        self.label = widgets.HTML("training has not started")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="620px", display="none"))
        self.widget = widgets.VBox([widgets.HBox([self.bar, self.label]), self.image])
        """The whole view: progress bar, numbers, loss plot."""
        self.draws = 0
        """How many times the plot was redrawn."""
        self._drawn_step, self._drawn_time, self._start, self._shown = 0, 0.0, 0.0, False

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self._shown = True

    def redraw(self) -> None:
        """Draw the loss curve of :attr:`history` into the view now."""
        from .save import plot_loss  # one home for the loss figure

        self.image.value = figure_png(plot_loss(self.history, None, self.title))
        self.image.layout.display = None  # shown from the first drawing on
        self.draws += 1
        self._drawn_step = self.history[-1]["step"] if self.history else 0
        self._drawn_time = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.history.clear()
        self.draws, self._drawn_step, self._start = 0, 0, time.monotonic()
        self.bar.max, self.bar.value, self.bar.bar_style = max(state.max_steps, 1), 0, "info"
        self.label.value = f"step 0/{state.max_steps}: starting"
        if self.display and not self._shown and _in_ipython():
            self._ipython_display_()

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.value = min(state.global_step, self.bar.max)

    def on_log(self, args, state, control, logs=None, **kwargs):
        before = len(self.history)
        super().on_log(args, state, control, logs, **kwargs)
        if len(self.history) == before:
            return
        last = self.history[-1]
        self.label.value = (f"step {last['step']}/{state.max_steps} &middot; loss {last['loss']:.4f} &middot; "
                            f"lr {last.get('lr', math.nan):.2e} &middot; {time.monotonic() - self._start:.0f} s")
        due = last["step"] - self._drawn_step >= self.every
        if due and time.monotonic() - self._drawn_time >= self.min_interval_s:
            self.redraw()

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.value = min(state.global_step, self.bar.max)
        finished = state.global_step >= state.max_steps
        self.bar.bar_style = "success" if finished else "warning"
        first, final = mean_loss(self.history, first=True), mean_loss(self.history, first=False)
        self.label.value = (f"{'done' if finished else 'stopped'} at step {state.global_step}/{state.max_steps} "
                            f"&middot; loss {first:.3f} &rarr; {final:.3f} (mean of first/last 5) &middot; "
                            f"{time.monotonic() - self._start:.0f} s")
        self.redraw()
