"""The rank sweep: LoRA (alpha/r) against rsLoRA (alpha/sqrt(r)) across ranks, on any model and data.

Two modes:

* ``"controlled"`` — the paper's comparison (arXiv:2312.03732): every run has
  the same alpha, learning rate, schedule, seed and data order; only the rank
  and the scaling (``use_rslora`` False/True) change.
* ``"presets"`` — the kit's own settings per rank: alpha = r and
  ``lr_for_rank(r)`` (warm-up and schedule from ``preset_for_rank``), to check
  that high ranks stay stable while still learning more.

Every run reloads the base model with :func:`~rslora_colab.load_model`, so all
start from the same weights, and trains through the kit's own
:func:`~rslora_colab.train.train_adapter` (TRL ``SFTTrainer``), recording the
loss and the adapter's gradient norm at every step, and, with held-out rows
(``eval_fraction``, split with each run's seed, so every run of a seed is
measured on the same rows), the eval loss at every evaluation: a lower
training loss at a higher rank may be capacity to memorize, and the held-out
loss says whether it carries over to rows the adapter never saw.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import FinetuneConfig, is_int, is_positive
from .data import load_and_validate, source_name
from .distributed import world_size
from .load import load_model, load_tokenizer
from .logs import library_bars_off
from .presets import MAX_RANK, MIN_RANK
from .resilience.atomic import write_json
from .resilience.interrupt import TrainingInterrupted
from .train import check_lengths, train_adapter
from .watch import (
    AdapterGradNormCallback,
    best_eval,
    eval_records,
    finish_figure,
    losses,
)

logger = logging.getLogger(__name__)

SCALINGS = {"lora": False, "rslora": True}
"""Sweep method name -> ``use_rslora``: LoRA scales by alpha/r, rsLoRA by alpha/sqrt(r)."""
MODES = ("controlled", "presets")
CONTROLLED_ALPHA = 8.0
"""alpha shared by every run of a controlled sweep unless given."""
CONTROLLED_LR = 1e-3
"""Learning rate shared by every run of a controlled sweep unless given. With alpha 8 the largest scale in the
default sweep (rsLoRA r=4, scale 4) gives scale*lr = 4e-3: quick learning in a short run, and stable on the demo
model. It was the first value tried, not tuned (docs/results.md)."""
CONTROLLED_SCHEDULE = {"warmup_ratio": 0.05, "lr_scheduler": "cosine"}
"""Warm-up and schedule shared by every run of a controlled sweep (the presets' vary with rank)."""
SWEEP_OWNED = ("r", "alpha", "lr", "use_rslora", "seed", "max_steps", "epochs", "logging_steps", "output_dir")
"""FinetuneConfig fields the sweep sets itself; pass them as compare_ranks arguments instead."""


LAST_STEPS = 10
"""Final loss = mean loss of a run's last this-many steps."""


@dataclass
class RunRecord:
    """One trained adapter of a sweep and what it recorded."""

    method: str
    """'lora' (scale alpha/r) or 'rslora' (scale alpha/sqrt(r))."""
    r: int
    """Adapter rank."""
    seed: int
    """Seed of the adapter init and the data order."""
    alpha: float
    """LoRA alpha."""
    scale: float
    """The factor applied to B @ A."""
    lr: float
    """Peak learning rate."""
    warmup_steps: int
    """Learning-rate warm-up steps; the gradient-norm average skips them."""
    history: list[dict] = field(default_factory=list)
    """One record per step: step, loss, lr, grad_norm (trainer, all trainable weights), adapter_grad_norm
    (LoRA weights only, before clipping), num_tokens."""
    wall_time_s: float = 0.0
    """Seconds spent training."""
    eval_history: list[dict] = field(default_factory=list)
    """One record per evaluation on the held-out rows: step (0: before training), eval_loss; empty without them."""

    def mean_loss(self, first: bool, steps: int = LAST_STEPS) -> float:
        """Mean loss of the first (or last) ``steps`` steps (NaN if any of them is not finite)."""
        values = losses(self.history)
        window = values[:steps] if first else values[-steps:]
        return sum(window) / len(window) if window else math.nan

    @property
    def first_loss(self) -> float:
        """Mean loss of the first :data:`LAST_STEPS` steps."""
        return self.mean_loss(first=True)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last :data:`LAST_STEPS` steps (NaN if any of them is not finite)."""
        return self.mean_loss(first=False)

    def mean_grad_norm(self) -> float:
        """Mean adapter gradient norm over the steps after warm-up (all steps if warm-up is all there is).

        Non-finite norms (fp16 steps the loss scaler skipped) are left out.
        """
        finite = [h for h in self.history if math.isfinite(h["adapter_grad_norm"])]
        norms = [h["adapter_grad_norm"] for h in finite if h["step"] > self.warmup_steps]
        norms = norms or [h["adapter_grad_norm"] for h in finite]
        return sum(norms) / len(norms) if norms else math.nan

    @property
    def final_eval_loss(self) -> float:
        """The held-out loss at the last evaluation (the end of the run); NaN without held-out rows."""
        return self.eval_history[-1]["eval_loss"] if self.eval_history else math.nan

    @property
    def lowest_eval(self) -> tuple[float, int]:
        """``(lowest held-out loss, its step)`` after training began; ``(NaN, 0)`` without held-out rows."""
        best = best_eval(self.eval_history)
        return (best["eval_loss"], best["step"]) if best else (math.nan, 0)

    def diverged(self, last: int = LAST_STEPS) -> bool:
        """True when a loss is not finite, or the run ends above where it started."""
        values = losses(self.history)
        return not all(math.isfinite(v) for v in values) or self.mean_loss(False, last) > self.mean_loss(True, last)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent p of y ∝ x^p (NaN with < 2 usable points)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0 and math.isfinite(y)]
    if len({x for x, _ in points}) < 2:
        return math.nan
    return statistics.linear_regression([x for x, _ in points], [y for _, y in points]).slope


@dataclass
class SweepResult:
    """Every run of :func:`~rslora_colab.compare_ranks`, with the summary table and the figure."""

    settings: dict = field(default_factory=dict)
    """How the sweep ran: mode, model, rows, format, ranks, methods, seeds, max_steps, alpha, lr, shared."""
    runs: list[RunRecord] = field(default_factory=list)
    """One record per (method, rank, seed), in training order."""

    def groups(self) -> dict[tuple[str, int], list[RunRecord]]:
        """Runs keyed by (method, rank), in training order."""
        grouped: dict[tuple[str, int], list[RunRecord]] = {}
        for run in self.runs:
            grouped.setdefault((run.method, run.r), []).append(run)
        return grouped

    def table(self, last: int = LAST_STEPS) -> list[dict]:
        """One row per method and rank: final loss, held-out loss and adapter gradient norm, mean ± std over seeds.

        ``final_loss`` is the mean loss of each run's last ``last`` steps;
        ``eval_loss`` the held-out loss at the end of each run and
        ``lowest_eval_loss`` its lowest after step 0 (``lowest_eval_step`` the
        mean step it was reached at): an end well above the lowest is a run
        that started to overfit (NaN without held-out rows); ``grad_norm`` is
        each run's mean adapter gradient norm after warm-up; ``diverged`` counts
        runs with a non-finite loss or a final loss above the first one.
        """
        rows = []
        for (method, r), runs in self.groups().items():
            loss, loss_std = _mean_std([run.mean_loss(False, last) for run in runs])
            evaluated = [run for run in runs if run.eval_history]
            held, held_std = _mean_std([run.final_eval_loss for run in evaluated])
            lowest, lowest_std = _mean_std([run.lowest_eval[0] for run in evaluated])
            grad, grad_std = _mean_std([run.mean_grad_norm() for run in runs])
            rows.append({"method": method, "r": r, "alpha": runs[0].alpha, "scale": runs[0].scale, "lr": runs[0].lr,
                         "seeds": len(runs), "final_loss": loss, "final_loss_std": loss_std,
                         "eval_loss": held, "eval_loss_std": held_std, "lowest_eval_loss": lowest,
                         "lowest_eval_loss_std": lowest_std,
                         "lowest_eval_step": statistics.fmean([run.lowest_eval[1] for run in evaluated] or [0]),
                         "grad_norm": grad, "grad_norm_std": grad_std,
                         "diverged": sum(run.diverged(last) for run in runs)})
        return rows

    @property
    def held_out(self) -> bool:
        """True when the runs were evaluated on held-out rows."""
        return any(run.eval_history for run in self.runs)

    def grad_norm_slopes(self, step: int | None = None) -> dict[str, float]:
        """Per method, the exponent p of (adapter gradient norm) ∝ r^p, fitted on log-log axes.

        ``step=None`` fits the table's after-warm-up means; ``step=1`` fits the
        norms of the first step (B = 0: the theory's setting), any other step
        likewise; each rank's value is the mean over seeds.
        """
        norms: dict[str, dict[int, float]] = {}
        for (method, r), runs in self.groups().items():
            values = [run.mean_grad_norm() if step is None else _at_step(run, step) for run in runs]
            norms.setdefault(method, {})[r] = statistics.fmean(values)
        return {method: loglog_slope(list(by_rank), list(by_rank.values())) for method, by_rank in norms.items()}

    def same_data_order(self) -> bool:
        """True when, within each seed, every run saw the same token counts step by step (same batches)."""
        by_seed: dict[int, set] = {}
        for run in self.runs:
            by_seed.setdefault(run.seed, set()).add(tuple(h.get("num_tokens") for h in run.history))
        return all(len(orders) == 1 for orders in by_seed.values())

    def markdown(self, last: int = LAST_STEPS) -> str:
        """The table as Markdown, with the fitted gradient-norm slopes (after warm-up, and at step 1) underneath.

        With held-out rows it has two more columns: the held-out loss at the end, and the lowest one (at the mean
        step it was reached).
        """
        held = self.held_out
        extra = " held-out loss (end) | lowest held-out loss (step) |" if held else ""
        lines = [f"| method | r | alpha | scale | lr | final loss (last {last} steps) |{extra} adapter grad norm "
                 "| diverged |", "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if held else "") + "---:|---:|"]
        for row in self.table(last):
            cells = (f" {_pm(row['eval_loss'], row['eval_loss_std'], 3)} | "
                     f"{_pm(row['lowest_eval_loss'], row['lowest_eval_loss_std'], 3)} ({row['lowest_eval_step']:.0f}) |"
                     if held else "")
            lines.append(f"| {row['method']} | {row['r']} | {row['alpha']:g} | {row['scale']:.3g} | {row['lr']:.2g} "
                         f"| {_pm(row['final_loss'], row['final_loss_std'], 3)} |{cells}"
                         f" {_pm(row['grad_norm'], row['grad_norm_std'], 4)} | {row['diverged']}/{row['seeds']} |")
        later = ", ".join(f"{m} r^{p:+.2f}" for m, p in self.grad_norm_slopes().items())
        first = ", ".join(f"{m} r^{p:+.2f}" for m, p in self.grad_norm_slopes(step=1).items())
        return "\n".join(lines) + (f"\n\nadapter grad norm vs rank (log-log fit): after warm-up {later}; "
                                   f"at step 1 (B = 0) {first}")

    def plot(self, path: str | Path | None = None, smooth: int = 5):
        """Loss curves per rank (one panel per method), final loss vs rank, and grad norm vs rank (log-log).

        Curves are the mean over seeds with a ``smooth``-step moving average;
        with held-out rows the held-out loss is drawn dashed beside them (per
        rank in the curve panels, at the end of the runs in the loss-vs-rank
        panel). Saved to ``path`` when given. Returns a matplotlib ``Figure``.
        """
        from matplotlib.figure import Figure  # no pyplot: works headless and in threads

        methods = list(dict.fromkeys(run.method for run in self.runs))
        ranks = sorted({run.r for run in self.runs})
        colors = _rank_colors(ranks)
        fig = Figure(figsize=(4.2 * (len(methods) + 2), 3.8))
        axes = fig.subplots(1, len(methods) + 2, squeeze=False)[0]
        for ax, method in zip(axes, methods):
            _plot_curves(ax, {r: runs for (m, r), runs in self.groups().items() if m == method}, colors, smooth)
            ax.set_title(f"{method}: loss per rank")
            if ax is not axes[0]:
                ax.sharey(axes[0])  # one scale, so the panels compare at a glance
        rows = self.table()
        loss_ax, grad_ax = axes[-2], axes[-1]
        for method, marker in zip(methods, "os^D"):
            mine = [row for row in rows if row["method"] == method]
            rs = [row["r"] for row in mine]
            loss_ax.errorbar(rs, [row["final_loss"] for row in mine], marker=marker, capsize=3, label=method,
                             yerr=_nan0([row["final_loss_std"] for row in mine]))
            if self.held_out:
                loss_ax.errorbar(rs, [row["eval_loss"] for row in mine], marker=marker, capsize=3, linestyle="--",
                                 color=loss_ax.lines[-1].get_color(), mfc="none", label=f"{method}: held-out",
                                 yerr=_nan0([row["eval_loss_std"] for row in mine]))
            norms = [row["grad_norm"] for row in mine]
            slope = loglog_slope(rs, norms)
            grad_ax.plot(rs, norms, marker=marker, linestyle="", label=f"{method}: slope {slope:+.2f}")
            if math.isfinite(slope):
                anchor = math.exp(statistics.fmean(math.log(n) for n in norms) - slope
                                  * statistics.fmean(math.log(r) for r in rs))
                grad_ax.plot(rs, [anchor * r ** slope for r in rs], color=grad_ax.lines[-1].get_color(), alpha=0.6)
        loss_ax.set(xscale="log", xlabel="rank r", ylabel=f"final loss (last {LAST_STEPS} steps)"
                    + (", held-out at the end" if self.held_out else ""), title="final loss vs rank")
        grad_ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="adapter grad norm (after warm-up)",
                    title="gradient norm vs rank")
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        for ax in (loss_ax, grad_ax):
            ax.set_xticks(ranks, [str(r) for r in ranks])
        fig.suptitle(f"rank sweep ({self.settings.get('mode', '?')}): {self.settings.get('model', '')}", fontsize=10)
        return finish_figure(fig, path)

    def to_dict(self) -> dict:
        """The whole result as plain data, with the table and slopes for readers of the JSON."""
        return {"settings": self.settings, "table": self.table(), "grad_norm_slopes": self.grad_norm_slopes(),
                "same_data_order": self.same_data_order(), "runs": [asdict(run) for run in self.runs]}

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (NaN becomes null)."""
        return write_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, path: str | Path) -> "SweepResult":
        """Read a result written by :meth:`to_json` (to re-plot or re-tabulate it)."""
        data = json.loads(Path(path).read_text())
        runs = [RunRecord(**{**run, "history": [_nan_for_none(h) for h in run["history"]],
                             "eval_history": [_nan_for_none(h) for h in run.get("eval_history", [])]})
                for run in data["runs"]]
        return cls(settings=data["settings"], runs=runs)


def _at_step(run: RunRecord, step: int) -> float:
    """The run's adapter gradient norm at optimizer step ``step`` (NaN if it has none)."""
    return next((h["adapter_grad_norm"] for h in run.history if h["step"] == step), math.nan)


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _nan0(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else 0.0 for v in values]


def _nan_for_none(record: dict) -> dict:
    return {k: math.nan if v is None else v for k, v in record.items()}


def _rank_colors(ranks: list[int]) -> dict[int, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {r: cmap(i / max(len(ranks) - 1, 1) * 0.9) for i, r in enumerate(ranks)}


def _plot_curves(ax, by_rank: dict[int, list[RunRecord]], colors: dict, smooth: int) -> None:
    """Mean-over-seeds loss per step for each rank, as a moving average."""
    for r, runs in sorted(by_rank.items()):
        curves = [losses(run.history) for run in runs]
        length = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        window = max(1, smooth)
        smoothed = [statistics.fmean(mean[max(0, i - window + 1): i + 1]) for i in range(length)]
        ax.plot(range(1, length + 1), smoothed, color=colors[r], label=f"r={r}")
        evals = [run.eval_history for run in runs if run.eval_history]
        if evals:
            points = min(len(e) for e in evals)
            ax.plot([evals[0][i]["step"] for i in range(points)],
                    [statistics.fmean(e[i]["eval_loss"] for e in evals) for i in range(points)],
                    color=colors[r], linestyle="--", marker=".", alpha=0.8)
    held = " (dashed: held-out)" if any(run.eval_history for runs in by_rank.values() for run in runs) else ""
    ax.set(xlabel="step", ylabel=f"loss ({smooth}-step moving avg){held}")


@dataclass
class SweepConfig:
    """What a rank sweep runs; building one checks every field and raises one ``ValueError``."""

    ranks: tuple[int, ...] = (4, 16, 64, 256)
    """Adapter ranks to train, each from 1 to 1024."""
    methods: tuple[str, ...] | None = None
    """Scalings to compare: 'lora' (alpha/r) and/or 'rslora' (alpha/sqrt(r)); None means both in
    controlled mode and 'rslora' alone in presets mode."""
    mode: str = "controlled"
    """'controlled' (same alpha, lr, schedule and data order for every run) or 'presets' (alpha = r,
    lr_for_rank(r))."""
    alpha: float | None = None
    """LoRA alpha shared by every run (controlled mode); None means CONTROLLED_ALPHA. Must stay None in
    presets mode, where alpha = r."""
    lr: float | None = None
    """Learning rate shared by every run (controlled mode); None means CONTROLLED_LR. Must stay None in
    presets mode, where lr = lr_for_rank(r)."""
    max_steps: int = 100
    """Optimizer steps per run."""
    seeds: tuple[int, ...] = (0,)
    """One full set of runs per seed; the seed sets the adapter init and the data order."""

    def __post_init__(self) -> None:
        self.ranks, self.seeds = tuple(self.ranks), tuple(self.seeds)
        if self.methods is None:
            self.methods = ("lora", "rslora") if self.mode != "presets" else ("rslora",)
        self.methods = tuple(self.methods)
        problems = self.problems()
        if problems:
            raise ValueError("Invalid sweep settings:\n  " + "\n  ".join(problems))
        if self.mode == "controlled":
            self.alpha = float(CONTROLLED_ALPHA if self.alpha is None else self.alpha)
            self.lr = float(CONTROLLED_LR if self.lr is None else self.lr)

    def problems(self) -> list[str]:
        """Every problem with these settings, one readable line each."""
        presets = self.mode == "presets"
        checks = [
            (len(self.ranks) > 0 and len(set(self.ranks)) == len(self.ranks)
             and all(is_int(r) and MIN_RANK <= r <= MAX_RANK for r in self.ranks),
             "ranks", f"distinct integers from {MIN_RANK} to {MAX_RANK}, e.g. (4, 16, 64, 256)"),
            (len(self.methods) > 0 and len(set(self.methods)) == len(self.methods)
             and all(m in SCALINGS for m in self.methods), "methods", f"some of {tuple(SCALINGS)}"),
            (self.mode in MODES, "mode", f"one of {MODES}"),
            (self.alpha is None if presets else self.alpha is None or is_positive(self.alpha), "alpha",
             "None in presets mode (alpha = r there)" if presets else "a positive number, e.g. 8"),
            (self.lr is None if presets else self.lr is None or (is_positive(self.lr) and self.lr < 1), "lr",
             "None in presets mode (lr_for_rank(r) there)" if presets else "a number in (0, 1), e.g. 1e-3"),
            (is_int(self.max_steps) and self.max_steps > 0, "max_steps", "a positive integer, e.g. 100"),
            (len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds) and all(is_int(s) for s in self.seeds),
             "seeds", "distinct integers, e.g. (0, 1, 2)"),
        ]
        return [f"{name}={getattr(self, name)!r}: expected {expected}" for ok, name, expected in checks if not ok]

    def runs(self) -> list[tuple[str, int, int]]:
        """``(method, rank, seed)`` of every run, in the order they train."""
        return [(m, r, s) for s in self.seeds for m in self.methods for r in self.ranks]

    def run_settings(self, method: str, r: int, seed: int) -> dict:
        """The :class:`FinetuneConfig` fields this sweep fixes for one run."""
        settings = {"r": r, "use_rslora": SCALINGS[method], "seed": seed, "max_steps": self.max_steps,
                    "logging_steps": 1}
        if self.mode == "controlled":
            settings.update(alpha=self.alpha, lr=self.lr)
        return settings


def _as_tuple(value: Any) -> tuple:
    """A single value (``ranks=64``, ``methods="lora"``) as a 1-tuple; a sequence as a tuple."""
    return (value,) if isinstance(value, (int, str)) else tuple(value)


def _run_configs(sweep: SweepConfig, overrides: dict, output_dir: str) -> list[FinetuneConfig]:
    """One validated FinetuneConfig per run; errors name the field before anything loads."""
    owned = sorted(set(overrides) & set(SWEEP_OWNED))
    if owned:
        raise ValueError(f"{', '.join(owned)}: set by the sweep for each run; pass ranks=, methods=, alpha=, lr=, "
                         "max_steps=, seeds= to compare_ranks instead.")
    shared = dict(overrides)
    if sweep.mode == "controlled":
        shared = {**CONTROLLED_SCHEDULE, **shared}
    return [FinetuneConfig.from_overrides(**shared, **sweep.run_settings(*run),
                                          output_dir=str(Path(output_dir) / f"run-{number}"))
            for number, run in enumerate(sweep.runs(), 1)]  # a folder each: no run starts over another's files


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare_ranks(
    model: str | Path,
    dataset: Any,
    ranks: Sequence[int] = (4, 16, 64, 256),
    methods: Sequence[str] | None = None,
    alpha: float | None = None,
    lr: float | None = None,
    max_steps: int = 100,
    seeds: Sequence[int] = (0,),
    mode: str = "controlled",
    save_to: str | Path | None = None,
    **overrides: Any,
) -> SweepResult:
    """Train one adapter per (method, rank, seed) and compare how they learn.

    ``model`` is a name (hub id, local folder or ``"demo"``): it is reloaded
    for every run so all start from the same base weights. ``dataset`` is
    anything :func:`~rslora_colab.load_and_validate` reads. In
    ``mode="controlled"`` (default) every run shares ``alpha`` (8), ``lr``
    (1e-3), warm-up, schedule and the seed's data order, and only the rank and
    the scaling change; in ``mode="presets"`` each rank gets alpha = r and
    ``lr_for_rank(r)``. Other keywords are :class:`FinetuneConfig` fields
    shared by every run (``batch_size``, ``grad_accum``, ``max_seq_length``,
    ``load_in_4bit``, ``eval_fraction``, ``eval_every``, ...). With
    ``eval_fraction`` each run holds out that share of the rows (split with
    its seed) and the table reports the held-out loss beside the training
    loss. ``save_to``: a JSON file rewritten after every
    run, so a crash keeps the finished runs.

    >>> result = compare_ranks("demo", demo_dataset(), ranks=(4, 64), max_steps=60, batch_size=8,
    ...                        grad_accum=1, max_seq_length=256)           # doctest: +SKIP
    >>> print(result.markdown()); result.plot("sweep.png")              # doctest: +SKIP
    """
    if world_size() > 1:
        raise ValueError("compare_ranks runs in one process (its runs are small and one after another): start it "
                         "without torchrun or accelerate launch, e.g. python -m rslora_colab compare.")
    sweep = SweepConfig(_as_tuple(ranks), None if methods is None else _as_tuple(methods), mode, alpha, lr,
                        max_steps, _as_tuple(seeds))
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model: got a {type(model).__name__}; pass a name (hub id, local folder or 'demo'): "
                         "the sweep reloads it for every run so all runs start from the same weights.")
    with tempfile.TemporaryDirectory(prefix="rslora-sweep-") as scratch, library_bars_off():
        configs = _run_configs(sweep, overrides, scratch)
        source = source_name(dataset)
        dataset, fmt = load_and_validate(dataset)
        # before any model loads: the rows TRL would drop
        check_lengths(load_tokenizer(model, configs[0].backend, configs[0].load_in_4bit), dataset, fmt, configs[0],
                      source)
        result = SweepResult(settings={"mode": sweep.mode, "model": str(model), "rows": len(dataset), "format": fmt,
                                       "ranks": list(sweep.ranks), "methods": list(sweep.methods),
                                       "seeds": list(sweep.seeds), "max_steps": sweep.max_steps,
                                       "alpha": sweep.alpha, "lr": sweep.lr, "shared": dict(overrides)})
        for number, ((method, r, seed), config) in enumerate(zip(sweep.runs(), configs), 1):
            logger.info(f"sweep run {number}/{len(configs)}: {method} r={r} seed={seed}")
            try:
                result.runs.append(_train_one(str(model), dataset, fmt, config, method))
            except TrainingInterrupted:  # its checkpoint is in the scratch folder, which goes now: no --resume
                kept = f"; the {number - 1} finished run(s) are in {save_to}" if save_to is not None and number > 1 \
                    else "; no run had finished"
                raise TrainingInterrupted(f"the sweep was stopped by Ctrl-C during run {number} of {len(configs)}"
                                          f"{kept}. A sweep cannot be resumed: run it again.", result) from None
            if save_to is not None:
                result.to_json(save_to)
            _free_memory()
    return result


def _train_one(model_name: str, dataset: Any, fmt: str, config: FinetuneConfig, method: str) -> RunRecord:
    """Load the base model afresh, train one adapter, and keep what it recorded."""
    model, tokenizer = load_model(model_name, config.max_seq_length, config.load_in_4bit, config.backend)
    grads = AdapterGradNormCallback()
    trained = train_adapter(model, tokenizer, dataset, fmt, config, [grads])
    adapter_norms = {h["step"]: h["adapter_grad_norm"] for h in grads.history}
    history = [{**h, "adapter_grad_norm": adapter_norms.get(h["step"], math.nan)} for h in trained.history
               if "loss" in h]
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in eval_records(trained.history)]
    s = trained.settings
    return RunRecord(method=method, r=config.r, seed=config.seed, alpha=s["alpha"], scale=s["scale"], lr=s["lr"],
                     warmup_steps=math.ceil(config.max_steps * s["warmup_ratio"]), history=history,
                     wall_time_s=trained.wall_time_s, eval_history=evals)
