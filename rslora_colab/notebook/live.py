"""The live view in a notebook: a progress bar, the latest numbers and the loss curve, redrawn while training runs."""

from __future__ import annotations

import io
import math
import time

from ..resilience.drive import on_colab
from ..watch import HistoryCallback, best_eval, eval_records, losses, mean_loss, mean_value, plot_loss


def enable_colab_widgets() -> None:
    """Let Colab render ipywidgets 8 (its custom widget manager); does nothing elsewhere."""
    if not on_colab():
        return
    try:
        from google.colab import output  # type: ignore[import-not-found]
    except ImportError:  # Colab's environment variables, but not its kernel
        return
    output.enable_custom_widget_manager()


def figure_png(figure, dpi: int = 80) -> bytes:
    """A matplotlib ``Figure`` rendered to PNG bytes (no pyplot, works in any thread)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def in_ipython() -> bool:
    """True inside an IPython kernel or shell (a notebook cell, the panel's thread)."""
    return _ipython() is not None


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def show_figures_as_images() -> bool:
    """Make a cell whose value is a matplotlib ``Figure`` show the picture, not ``<Figure size ...>``.

    The kit draws without pyplot (safe in threads and headless), so IPython has no formatter for its figures
    until this registers one (PNG, as matplotlib's inline backend does). Returns False outside IPython.
    """
    shell = _ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    from matplotlib.figure import Figure

    shell.display_formatter.formatters["image/png"].for_type(Figure, lambda figure: figure_png(figure, dpi=90))
    return True


class LivePlotCallback(HistoryCallback):
    """A progress bar, the latest numbers and the loss curve (with the eval loss), updated in the notebook while
    training runs.

    Pass it to ``quick_finetune(..., callbacks=[LivePlotCallback()])`` in a
    notebook cell: the view appears under the cell when training starts (set
    ``display=False`` to place :attr:`widget` yourself, as the control panel
    does). The curve is :func:`~rslora_colab.watch.plot_loss` — a matplotlib
    ``Figure``, no pyplot — redrawn every ``every`` logged steps (at most once
    per ``min_interval_s`` seconds) and at the end. Outside IPython it only
    records :attr:`history`.

    >>> quick_finetune("demo", demo_dataset(), r=16, max_steps=30, callbacks=[LivePlotCallback()])  # doctest: +SKIP
    """

    def __init__(self, every: int = 5, min_interval_s: float = 0.5, title: str = "rsLoRA training loss",
                 display: bool = True) -> None:
        import ipywidgets as widgets

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
        self.shows_progress = in_ipython()
        """True when this view is on screen: the trainer then shows no progress bar of its own (one bar a run)."""
        self._drawn_step, self._drawn_time, self._start, self._shown = 0, 0.0, 0.0, False
        self._main = True  # the trainer's word from on_train_begin on: under several processes, rank 0 draws

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self._shown = True

    def redraw(self) -> None:
        """Draw the loss curve of :attr:`history` into the view now (on rank 0 only, under several processes)."""
        if not self._main:
            return
        self.image.value = figure_png(plot_loss(self.history, None, self.title))
        self.image.layout.display = None  # shown from the first drawing on
        self.draws += 1
        self._drawn_step = self.history[-1]["step"] if self.history else 0
        self._drawn_time = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._main = state.is_world_process_zero
        self.history.clear()
        self.draws, self._drawn_step, self._start = 0, 0, time.monotonic()
        self.bar.max, self.bar.value, self.bar.bar_style = max(state.max_steps, 1), 0, "info"
        self.label.value = f"step 0/{state.max_steps}: starting"
        if self.display and not self._shown and in_ipython() and self._main:
            self._ipython_display_()

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.value = min(state.global_step, self.bar.max)

    def on_log(self, args, state, control, logs=None, **kwargs):
        before = len(self.history)
        super().on_log(args, state, control, logs, **kwargs)
        if len(self.history) == before:
            return
        last = self.history[-1]
        if "eval_loss" in last:  # an evaluation: drawn at once, it is rare and the number users wait for
            self.redraw()
            return
        margin = f" &middot; reward margin {last['reward_margin']:.3f}" if "reward_margin" in last else ""
        if "reward" in last:  # GRPO: the loss is a surrogate near 0; the reward is the number to watch
            margin = f" &middot; reward {last['reward']:.3f}"
        self.label.value = (f"step {last['step']}/{state.max_steps} &middot; loss {last['loss']:.4f}{margin} "
                            f"&middot; lr {last.get('lr', math.nan):.2e}{self._eval_text()} &middot; "
                            f"{time.monotonic() - self._start:.0f} s")
        due = last["step"] - self._drawn_step >= self.every
        if due and time.monotonic() - self._drawn_time >= self.min_interval_s:
            self.redraw()

    def _eval_text(self) -> str:
        """`` · eval loss X (step S)`` for the latest evaluation, or nothing before the first."""
        evals = eval_records(self.history)
        if evals and "eval_reward" in evals[-1]:  # GRPO: the held-out reward, not its surrogate loss
            return f" &middot; held-out reward {evals[-1]['eval_reward']:.3f} (step {evals[-1]['step']})"
        return f" &middot; eval loss {evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})" if evals else ""

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.value = min(state.global_step, self.bar.max)
        finished = state.global_step >= state.max_steps
        self.bar.bar_style = "success" if finished else "warning"
        first, final = mean_loss(self.history, first=True), mean_loss(self.history, first=False)
        evals, best = eval_records(self.history), best_eval(self.history)
        held = (f" &middot; eval loss {evals[0]['eval_loss']:.3f} &rarr; {evals[-1]['eval_loss']:.3f}, lowest "
                f"{best['eval_loss']:.3f} at step {best['step']}") if evals and best else ""
        if evals and best and "eval_reward" in best:  # GRPO
            held = (f" &middot; held-out reward {evals[0]['eval_reward']:.3f} &rarr; {evals[-1]['eval_reward']:.3f}, "
                    f"highest {best['eval_reward']:.3f} at step {best['step']}")
        n = min(5, len(losses(self.history)))
        grpo = any("reward" in h for h in self.history)
        reward = (f" &middot; reward {mean_value(self.history, 'reward', True):.3f} &rarr; "
                  f"{mean_value(self.history, 'reward', False):.3f}") if grpo else ""
        self.label.value = (f"{'done' if finished else 'stopped'} at step {state.global_step}/{state.max_steps} "
                            f"&middot; loss {first:.3f} &rarr; {final:.3f}{reward} (mean of first/last "
                            f"{n}){held} &middot; "
                            f"{time.monotonic() - self._start:.0f} s")
        self.redraw()
