"""The control panel: choose model, rank and data, see whether it fits the GPU, train, and watch the loss.

>>> panel = control_panel()    # doctest: +SKIP
>>> panel                      # shows it in Jupyter / Colab   # doctest: +SKIP
>>> quick_finetune(**panel.settings)   # the same run from a code cell  # doctest: +SKIP

One way to train at a time, and never over a finished run:

* *Run all* trains once, with the parameters cell's values, through
  :meth:`ControlPanel.run` (the notebook's Train cell): the panel's live view
  and status follow that run, and its Train button is greyed out meanwhile.
* Each click on **Train** is a new run into a new folder (``name-2``, ...,
  :mod:`rslora_colab.notebook.runs`), so no finished adapter is replaced.
  A click the kernel could only read after cells finished running (the user
  clicked while *Run all* was busy) starts nothing and says so: it was made
  while the button showed a run in progress.
* A red VRAM gauge asks for a second click before training.

Train runs ``quick_finetune`` in a background thread, so the kernel stays
free to receive the Stop click (a blocking click handler would queue it until
training ended) and widget updates reach the page while it runs.
:meth:`ControlPanel.wait` joins it (tests and scripts). What that thread
prints is appended to the panel's log widget: an ``Output`` used as a context
manager would not work there, since the front end drops output whose request
(the click) has already finished.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import sys
import threading
import time
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..choices import resolve_choices
from ..config import FinetuneConfig
from ..demo import DEMO_NAME, DEMO_TRAINING, demo_data
from ..memory import CATALOG, FitCheck, check_fit
from ..presets import lr_for_rank
from ..resilience.checkpoints import OutputWriteError
from ..resilience.guard import DivergenceError
from ..train import quick_finetune
from ..train.evaluation import describe_best
from ..watch import StopCallback
from .live import LivePlotCallback, enable_colab_widgets, in_ipython
from .runs import UPLOADS, next_run_folder, notebook_output_dir

logger = logging.getLogger(__name__)

RANK_MIN, RANK_MAX = 4, 256
"""The rank slider's range."""
SEQ_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
"""Sequence lengths offered."""
DATA_FILE_TYPES = ".jsonl,.json,.csv,.parquet"
"""File types the upload button accepts (those ``load_and_validate`` reads)."""
DEFAULT_MAX_STEPS = 60
"""Max steps offered for a real model (Unsloth's T4 notebooks use 60)."""
EVAL_SPLITS = (("auto: 5%, at most 100 rows, from 1,000 rows", None), ("none", 0.0), ("5%", 0.05), ("10%", 0.1),
               ("20%", 0.2))
"""The held-out share offered (``eval_fraction``): label and value."""
GAUGE_COLOURS = {True: "success", False: "danger", None: "warning"}
"""Progress-bar style of the VRAM gauge: fits, won't fit, unknown."""
WIDE = {"description_width": "110px"}
EXPECTED_ERRORS = (ValueError, DivergenceError, OutputWriteError)
"""Errors whose message says what to do: the log shows that line, not a traceback (as the CLI does)."""
BUSY_CLICK_S = 0.5
"""A Train click handled within this many seconds of a cell finishing was made while cells ran (the kernel reads
clicks only between executions): it starts nothing."""
DEFAULT_NOTEBOOK = "rslora"
"""The output folder name ``control_panel`` uses when no notebook name or output_dir is given."""

_cell_ended = {"at": 0.0}  # time.monotonic() when the kernel last finished executing a cell (IPython's post_run_cell)


def _note_cell_end(*args: Any) -> None:
    _cell_ended["at"] = time.monotonic()


def watch_cell_ends() -> None:
    """Record when each cell finishes (an IPython ``post_run_cell`` hook, registered once; nothing outside
    IPython)."""
    if not in_ipython():
        return
    from IPython import get_ipython

    events = get_ipython().events
    if _note_cell_end not in events.callbacks["post_run_cell"]:
        events.register("post_run_cell", _note_cell_end)


def clicked_while_busy(now: float | None = None) -> bool:
    """True when a click is handled right after a cell finished: it was queued while cells ran."""
    return (time.monotonic() if now is None else now) - _cell_ended["at"] < BUSY_CLICK_S


def model_choices() -> list[str]:
    """The model list: ``"demo"``, then each catalog model's Unsloth 4-bit id."""
    return [DEMO_NAME] + [spec.bnb_4bit_id for spec in CATALOG if spec.bnb_4bit_id]


def _config_default(name: str) -> Any:
    return next(f.default for f in fields(FinetuneConfig) if f.name == name)


def shape_defaults(model: str) -> dict[str, Any]:
    """Batch, accumulation, length, steps and eval split to start from: the demo's own on ``"demo"``, the kit's
    otherwise (the learning rate follows the rank in the panel, also for the demo)."""
    if model == DEMO_NAME:
        return {k: v for k, v in DEMO_TRAINING.items() if k != "lr"}
    return {"max_steps": DEFAULT_MAX_STEPS, "batch_size": _config_default("batch_size"),
            "grad_accum": _config_default("grad_accum"), "max_seq_length": _config_default("max_seq_length"),
            "eval_fraction": _config_default("eval_fraction")}


def save_upload(upload_value: Any, folder: str | Path) -> Path | None:
    """Write the file held by a ``FileUpload`` value into ``folder``; its path, or None when empty.

    Reads the ipywidgets 8 value (a tuple of dicts with name and content) and
    the ipywidgets 7 one (a dict of name -> {metadata, content}), as Colab may
    run either.
    """
    if not upload_value:
        return None
    if isinstance(upload_value, dict):  # ipywidgets 7
        name, item = next(iter(upload_value.items()))
        content = item["content"]
    else:
        item = upload_value[0]
        name, content = item["name"], item["content"]
    path = Path(folder) / Path(name).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(content))
    return path


class _ThreadStream(io.TextIOBase):
    """A stand-in for sys.stdout/sys.stderr: one thread's writes go to ``sink``, the others' to ``original``."""

    def __init__(self, original: Any, sink: Any) -> None:
        self._original, self._sink, self._ident = original, sink, threading.get_ident()

    def write(self, text: str) -> int:
        if threading.get_ident() != self._ident:
            return self._original.write(text)
        if text:
            self._sink(text)
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def thread_output_to(output: Any):
    """Send what the calling thread prints (stdout and stderr) to an ipywidgets ``Output``; others are untouched."""
    streams = {"stdout": _ThreadStream(sys.stdout, output.append_stdout),
               "stderr": _ThreadStream(sys.stderr, output.append_stderr)}
    for name, stream in streams.items():
        setattr(sys, name, stream)
    try:
        yield output
    finally:
        for name, stream in streams.items():
            if getattr(sys, name) is stream:  # leave it alone if someone replaced it meanwhile
                setattr(sys, name, stream._original)


class ControlPanel:
    """An ipywidgets panel over ``quick_finetune``; see :func:`control_panel`.

    Widgets are attributes (``model``, ``dataset``, ``upload``, ``rank``,
    ``lr``, ``lr_auto``, ``alpha``, ``alpha_auto``, ``max_seq_length``,
    ``batch_size``, ``grad_accum``, ``max_steps``, ``eval_split``, ``output_dir``, ``packing``,
    ``train_embeddings``,
    ``gauge_bar``, ``gauge_text``, ``train_button``, ``stop_button``,
    ``status``, ``log``), so code can drive it as a user would.
    """

    def __init__(self, model: str, dataset: str, r: int, lr: float | None, alpha: float | None,
                 max_seq_length: int, batch_size: int, grad_accum: int, max_steps: int, output_dir: str,
                 gpu: Any = "auto", eval_fraction: float | None = None, packing: bool = False,
                 train_embeddings: bool = False) -> None:
        import ipywidgets as w

        enable_colab_widgets()
        watch_cell_ends()
        self.gpu = gpu
        self.result = None
        """The last run's ``FinetuneResult`` (None before one finishes)."""
        self.error: BaseException | None = None
        """The exception that ended the last run, if any."""
        self.fit: FitCheck | None = None
        """The gauge's last reading."""
        self.folder: Path | None = None
        """The folder the last (or current) run writes to."""
        self._thread: threading.Thread | None = None
        self._stopper: StopCallback | None = None
        self._setting = False  # True while the panel itself writes lr / alpha
        self._confirm_red = False  # a red gauge was pointed out; the next click trains anyway
        self._code_run = False  # a run started from a code cell (Run all) is in progress

        box = {"style": WIDE, "layout": w.Layout(width="340px")}
        self.model = w.Combobox(value=model, options=model_choices(), description="model", ensure_option=False,
                                placeholder="pick one, or type a hub id / folder", continuous_update=False,
                                style=WIDE, layout=w.Layout(width="520px"))
        self.dataset = w.Text(value=dataset, description="dataset", placeholder="hub id, .jsonl/.csv/.parquet, demo",
                              style=WIDE, layout=w.Layout(width="520px"))
        self.upload = w.FileUpload(accept=DATA_FILE_TYPES, multiple=False, description="upload file")
        self.rank = w.IntSlider(value=r, min=RANK_MIN, max=RANK_MAX, description="rank r", continuous_update=False,
                                **box)
        self.lr = w.FloatText(value=lr if lr is not None else lr_for_rank(r), description="learning rate",
                              step=1e-5, **box)
        self.lr_auto = w.Checkbox(value=lr is None, description="from rank (lr_for_rank)", indent=False)
        self.alpha = w.FloatText(value=alpha if alpha is not None else float(r), description="alpha", **box)
        self.alpha_auto = w.Checkbox(value=alpha is None, description="alpha = r (scale sqrt(r))", indent=False)
        seqs = tuple(sorted(set(SEQ_LENGTHS) | {max_seq_length}))
        self.max_seq_length = w.Dropdown(options=seqs, value=max_seq_length, description="max seq length", **box)
        self.batch_size = w.BoundedIntText(value=batch_size, min=1, max=512, description="batch size", **box)
        self.grad_accum = w.BoundedIntText(value=grad_accum, min=1, max=512, description="grad accum", **box)
        self.max_steps = w.BoundedIntText(value=max_steps, min=1, max=1_000_000, description="max steps", **box)
        splits = EVAL_SPLITS if eval_fraction in dict(EVAL_SPLITS).values() else \
            (*EVAL_SPLITS, (f"{eval_fraction:.0%}", eval_fraction))
        self.eval_split = w.Dropdown(options=splits, value=eval_fraction, description="held out (eval)", **box)
        self.output_dir = w.Text(value=output_dir, description="save to", **box)
        self.packing = w.Checkbox(value=packing, description="pack rows (no padding; SFT)", indent=False)
        self.train_embeddings = w.Checkbox(value=train_embeddings, indent=False,
                                           description="train embeddings (continued pretraining; more memory)")
        self.gauge_bar = w.FloatProgress(value=0, min=0, max=1, description="VRAM", style=WIDE,
                                         layout=w.Layout(width="340px", flex="0 0 auto"))
        self.gauge_text = w.HTML(layout=w.Layout(width="520px"))
        button = w.Layout(width="110px", flex="0 0 auto")
        self.train_button = w.Button(description="Train", button_style="success", icon="play", layout=button)
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    layout=button)
        self.status = w.HTML("ready: <b>Train</b> starts a run into a new folder; <i>Run all</i> trains with the "
                             "parameters cell's values", layout=w.Layout(width="860px"))
        self.watch = LivePlotCallback(display=False)
        """The live progress bar and loss plot."""
        self.log = w.Output(layout=w.Layout(max_height="260px", overflow="auto"))
        log_box = w.Accordion(children=[self.log])
        log_box.set_title(0, "log")

        self.widget = w.VBox([
            w.HTML("<b>rslora-colab</b>: fine-tune with rsLoRA (adapter scale alpha/sqrt(r))"),
            self.model, w.HBox([self.dataset, self.upload]),
            w.HBox([self.rank, self.max_seq_length]),
            w.HBox([self.lr, self.lr_auto]), w.HBox([self.alpha, self.alpha_auto]),
            w.HBox([self.batch_size, self.grad_accum]), w.HBox([self.max_steps, self.eval_split]),
            w.HBox([self.output_dir, self.packing, self.train_embeddings]),
            w.HBox([self.gauge_bar, self.gauge_text]),
            w.HBox([self.train_button, self.stop_button]), self.status,
            self.watch.widget, log_box,
        ])
        """The panel's root widget."""
        self._wire()
        self.update_gauge()

    # ------------------------------------------------------------------ wiring

    def _wire(self) -> None:
        self.rank.observe(self._on_rank, "value")
        self.lr.observe(lambda change: self._typed(self.lr_auto), "value")
        self.alpha.observe(lambda change: self._typed(self.alpha_auto), "value")
        self.lr_auto.observe(lambda change: self._follow_rank(), "value")
        self.alpha_auto.observe(lambda change: self._follow_rank(), "value")
        self.model.observe(self._on_model, "value")
        for widget in (self.max_seq_length, self.batch_size, self.grad_accum, self.train_embeddings):
            widget.observe(lambda change: self.update_gauge(), "value")
        self.upload.observe(self._on_upload, "value")
        self.train_button.on_click(lambda button: self.click_train())
        self.stop_button.on_click(lambda button: self.stop())

    def _typed(self, auto_box: Any) -> None:
        """A value the user typed: stop filling it from the rank."""
        if not self._setting:
            auto_box.value = False

    def _follow_rank(self) -> None:
        """Fill lr and alpha from the rank where their box is ticked."""
        self._setting = True
        try:
            if self.lr_auto.value:
                self.lr.value = lr_for_rank(self.rank.value)
            if self.alpha_auto.value:
                self.alpha.value = float(self.rank.value)
        finally:
            self._setting = False

    def _on_rank(self, change: dict) -> None:
        self._follow_rank()
        self.update_gauge()

    def _on_model(self, change: dict) -> None:
        """Another model: start from its batch, length and steps (the demo's are far too big for an 8B model)."""
        if (change["old"] == DEMO_NAME) != (change["new"] == DEMO_NAME):
            shape = shape_defaults(change["new"].strip())
            self.batch_size.value, self.grad_accum.value = shape["batch_size"], shape["grad_accum"]
            if shape["max_seq_length"] not in self.max_seq_length.options:
                self.max_seq_length.options = tuple(sorted({*self.max_seq_length.options, shape["max_seq_length"]}))
            self.max_seq_length.value, self.max_steps.value = shape["max_seq_length"], shape["max_steps"]
            self.eval_split.value = shape["eval_fraction"]
        self.update_gauge()

    def _on_upload(self, change: dict) -> None:
        path = save_upload(change["new"], Path(self.output_dir.value).parent / UPLOADS)
        if path is not None:
            self.dataset.value = str(path)
            self.status.value = f"uploaded to {path.resolve()}"

    # ------------------------------------------------------------------ reading

    @property
    def settings(self) -> dict:
        """The chosen values as ``quick_finetune`` keywords, model and dataset included.

        ``quick_finetune(**panel.settings)`` runs what the Train button runs.
        The dataset ``"demo"`` becomes the demo's own data (``demo_data()``).
        """
        dataset = self.dataset.value.strip()
        return {
            "model": self.model.value.strip(),
            "dataset": demo_data() if dataset == DEMO_NAME else dataset,
            "r": self.rank.value, "lr": float(self.lr.value), "alpha": float(self.alpha.value),
            "max_seq_length": self.max_seq_length.value, "batch_size": self.batch_size.value,
            "grad_accum": self.grad_accum.value, "max_steps": self.max_steps.value,
            "eval_fraction": self.eval_split.value, "output_dir": self.output_dir.value.strip(),
            "packing": self.packing.value, "train_embeddings": self.train_embeddings.value,
        }

    def problems(self) -> list[str]:
        """Everything wrong with the current choices (empty when Train can start)."""
        settings = self.settings
        found = [] if settings["model"] else ["model: empty; pick one from the list or type a hub id"]
        if isinstance(settings["dataset"], str) and not settings["dataset"]:
            found.append("dataset: empty; type a hub id or a file path, or upload a file")
        try:
            FinetuneConfig.from_overrides(**{k: v for k, v in settings.items() if k not in ("model", "dataset")})
        except ValueError as err:
            found += [line.strip() for line in str(err).splitlines()[1:]] or [str(err)]
        return found

    def update_gauge(self) -> FitCheck:
        """Re-estimate VRAM for the current choices and redraw the gauge."""
        self._confirm_red = False
        fit = check_fit(self.model.value.strip() or DEMO_NAME, self.rank.value, self.max_seq_length.value,
                        self.batch_size.value, self.grad_accum.value, self.gpu, self.train_embeddings.value)
        self.fit = fit
        self.gauge_bar.max = fit.budget_gib
        self.gauge_bar.value = min(fit.total_gib or 0.0, fit.budget_gib)
        self.gauge_bar.bar_style = GAUGE_COLOURS[fit.fits]
        colour = {True: "green", False: "#c62828", None: "#b26a00"}[fit.fits]
        reason = f"<br><small>{fit.reason}</small>" if fit.reason else ""
        self.gauge_text.value = (f"<span style='color:{colour}'><b>{fit.message}</b>{reason}</span>"
                                 "<br><small>estimate, not yet calibrated on a GPU</small>")
        return fit

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        """True while a training run is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def click_train(self) -> bool:
        """What a click on Train does: :meth:`train`, unless the click was made while cells were running."""
        if clicked_while_busy():
            self.status.value = ("a Train click made while cells were running was ignored (one run at a time); "
                                 "click <b>Train</b> again to start a new run")
            return False
        return self.train()

    def train(self) -> bool:
        """Check the choices, then train a new run in a background thread, into the first free folder of
        ``output_dir``, ``output_dir-2``, ... (a finished run is never replaced).

        Returns False (and says why in :attr:`status`) when it cannot start: a run in progress, a setting
        that is wrong, or a red VRAM gauge not yet confirmed by a second click.
        """
        if self.running or self._code_run:
            self.status.value = "already training: wait for it, or press Stop first"
            return False
        found = self.problems()
        if found:
            self.status.value = "<span style='color:#c62828'>cannot train: " + "; ".join(found) + "</span>"
            return False
        if self.fit is not None and self.fit.fits is False and not self._confirm_red:
            self._confirm_red = True
            self.status.value = (f"<span style='color:#c62828'>the VRAM gauge says this won't fit "
                                 f"({html.escape(self.fit.reason or self.fit.message)}). Lower the batch size or "
                                 "the max seq length, or click <b>Train</b> again to try anyway.</span>")
            return False
        self._confirm_red = False
        settings = self.settings
        self.folder, _ = next_run_folder(settings["output_dir"], resume_unfinished=False)
        settings["output_dir"] = str(self.folder)
        self.result, self.error, self._stopper = None, None, StopCallback()
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.status.value = (f"training {html.escape(settings['model'])} r={settings['r']} into "
                             f"{html.escape(str(self.folder.resolve()))} ...")
        self._thread = threading.Thread(target=self._run, args=(settings,), daemon=True, name="rslora-colab-train")
        self._thread.start()
        return True

    def run(self, **overrides: Any):
        """Train now, in this cell (the notebook's Train cell; *Run all*): the panel's settings, with
        ``overrides`` (e.g. ``preview.settings``, which hands over the loaded model) on top.

        The live view appears under the cell and in the panel; Train is greyed out meanwhile. The run goes into
        ``output_dir`` when it is empty, continues it when it holds an unfinished run (a disconnect or Ctrl-C
        loses nothing: run all again), and otherwise goes into the next free ``output_dir-N``. Returns the
        ``FinetuneResult`` (also :attr:`result`); errors are raised, so *Run all* stops there.
        """
        if self.running:
            raise RuntimeError("the panel is training (its Train button): wait for it, or press Stop, then run this "
                               "cell again.")
        settings = {**self.settings, **overrides}
        self.folder, resume = next_run_folder(settings["output_dir"], resume_unfinished=True)
        settings["output_dir"] = str(self.folder)
        if in_ipython():
            from IPython.display import display

            display(self.watch.widget)
        self.result, self.error, self._code_run = None, None, True
        self.train_button.disabled = self.stop_button.disabled = True
        verb = "continuing the unfinished run in" if resume else "training into"
        logger.info(f"{'continuing the unfinished run in' if resume else 'this run writes to'} "
                    f"{self.folder.resolve()}")
        self.status.value = (f"{verb} {html.escape(str(self.folder.resolve()))} (from the Train cell; the kernel's "
                             "&#9632; interrupt stops after the current step and saves) ...")
        try:
            self.result = quick_finetune(**settings, resume=resume, callbacks=[self.watch])
            self._done(stopped=False)
        except BaseException as err:
            self.error = err
            self.status.value = f"<span style='color:#c62828'>failed: {html.escape(str(err))}</span>"
            raise
        finally:
            self._code_run = False
            self.train_button.disabled = False
        return self.result

    def _done(self, stopped: bool) -> None:
        """The status line of a finished run: the losses, the best step, and the adapter's full path."""
        result = self.result
        best = describe_best(result.history, result.adapter_step, max((h["step"] for h in result.history),
                                                                      default=0))
        held = f"; {html.escape(best)}" if best else ""
        self.status.value = (f"<span style='color:green'>done{' (stopped early)' if stopped else ''}: loss "
                             f"{result.first_loss:.3f} &rarr; {result.final_loss:.3f}{held} in "
                             f"{result.wall_time_s:.0f} s; adapter in "
                             f"{html.escape(str(Path(result.adapter_path).resolve()))}. <b>Train</b> starts a new "
                             "run in a new folder.</span>")

    def _run(self, settings: dict) -> None:
        with thread_output_to(self.log):
            try:
                self.result = quick_finetune(**settings, callbacks=[self.watch, self._stopper])
                self._done(stopped=self._stopper.requested)
            except Exception as err:  # shown in the panel; the log gets the message, or the traceback if unexpected
                self.error = err
                if isinstance(err, EXPECTED_ERRORS):  # they name the setting or folder and the fix
                    logger.error(str(err))
                else:
                    traceback.print_exc()
                self.status.value = (f"<span style='color:#c62828'>failed: {type(err).__name__}: "
                                     f"{html.escape(str(err))}</span>")
            finally:
                self.train_button.disabled, self.stop_button.disabled = False, True

    def stop(self) -> None:
        """What the Stop button does: end training after the current step (the adapter is still saved)."""
        if self._stopper is not None and self.running:
            self._stopper.stop()
            self.status.value = "stopping after this step ..."

    def wait(self, timeout: float | None = None):
        """Block until the current run ends; return its ``FinetuneResult`` or raise its error."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"training still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def control_panel(model: str = "auto", dataset: str = "auto", r: int = 64, lr: float | None = None,
                  alpha: float | None = None, max_seq_length: int | None = None, batch_size: int | None = None,
                  grad_accum: int | None = None, max_steps: int | None = None,
                  output_dir: str | None = None, gpu: Any = "auto", notebook: str = DEFAULT_NOTEBOOK,
                  packing: bool = False, train_embeddings: bool = False) -> ControlPanel:
    """An ipywidgets panel to choose, check and run a fine-tune; show it by making it a cell's last line.

    ``model``/``dataset`` ``"auto"`` mean the offline demo on CPU and
    ``unsloth/Llama-3.2-1B-Instruct-bnb-4bit`` + ``yahma/alpaca-cleaned`` on a
    GPU. ``lr``/``alpha`` ``None`` follow the rank (``lr_for_rank``, alpha = r)
    until a value is typed. Unset shape values start from the demo's settings
    for ``"demo"`` and the kit's defaults otherwise. ``output_dir=None`` is the
    notebook's own folder: ``outputs/<notebook>``, on Google Drive when mounted
    on Colab. ``gpu`` is what the VRAM gauge compares with: ``"auto"`` (this GPU,
    else a T4), ``"T4"`` or GiB. ``packing`` starts the "pack rows" box ticked
    (SFT: several rows per sequence, no padding), ``train_embeddings`` the
    "train embeddings" box (continued pretraining: embed_tokens and lm_head
    train too, in fp32; the gauge counts them).

    >>> panel = control_panel(max_steps=30)   # doctest: +SKIP
    >>> panel                                 # doctest: +SKIP
    """
    if isinstance(r, bool) or not isinstance(r, int) or not RANK_MIN <= r <= RANK_MAX:
        raise ValueError(f"r={r!r}: the panel's rank slider runs from {RANK_MIN} to {RANK_MAX}; pass an integer "
                         f"in that range (call quick_finetune directly for other ranks).")
    model, dataset = resolve_choices(model, dataset)
    shape = shape_defaults(model)
    chosen = {"max_seq_length": max_seq_length, "batch_size": batch_size, "grad_accum": grad_accum,
              "max_steps": max_steps}
    shape.update({k: v for k, v in chosen.items() if v is not None})
    return ControlPanel(model, dataset, r, lr, alpha, shape["max_seq_length"], shape["batch_size"],
                        shape["grad_accum"], shape["max_steps"], output_dir or notebook_output_dir(notebook), gpu,
                        shape["eval_fraction"], packing, train_embeddings)
