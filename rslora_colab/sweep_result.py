"""What a rank sweep measured: per-run records, the summary table, the fitted slopes and the figure."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .save import write_json
from .watch import losses

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

    def final_loss(self, last: int = LAST_STEPS) -> float:
        """Mean loss of the last ``last`` steps (NaN if any of them is not finite)."""
        window = losses(self.history)[-last:]
        return sum(window) / len(window) if window else math.nan

    def first_loss(self, first: int = LAST_STEPS) -> float:
        """Mean loss of the first ``first`` steps."""
        window = losses(self.history)[:first]
        return sum(window) / len(window) if window else math.nan

    def mean_grad_norm(self) -> float:
        """Mean adapter gradient norm over the steps after warm-up (all steps if warm-up is all there is).

        Non-finite norms (fp16 steps the loss scaler skipped) are left out.
        """
        finite = [h for h in self.history if math.isfinite(h["adapter_grad_norm"])]
        norms = [h["adapter_grad_norm"] for h in finite if h["step"] > self.warmup_steps]
        norms = norms or [h["adapter_grad_norm"] for h in finite]
        return sum(norms) / len(norms) if norms else math.nan

    def diverged(self, last: int = LAST_STEPS) -> bool:
        """True when a loss is not finite, or the run ends above where it started."""
        values = losses(self.history)
        return not all(math.isfinite(v) for v in values) or self.final_loss(last) > self.first_loss(last)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent p of y ∝ x^p (NaN with < 2 usable points)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0 and math.isfinite(y)]
    if len(points) < 2:
        return math.nan
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else math.nan


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
        """One row per method and rank: final loss and adapter gradient norm, mean ± std over seeds.

        ``final_loss`` is the mean loss of each run's last ``last`` steps;
        ``grad_norm`` is each run's mean adapter gradient norm after warm-up;
        ``diverged`` counts runs with a non-finite loss or a final loss above
        the first one.
        """
        rows = []
        for (method, r), runs in self.groups().items():
            loss, loss_std = _mean_std([run.final_loss(last) for run in runs])
            grad, grad_std = _mean_std([run.mean_grad_norm() for run in runs])
            rows.append({"method": method, "r": r, "alpha": runs[0].alpha, "scale": runs[0].scale, "lr": runs[0].lr,
                         "seeds": len(runs), "final_loss": loss, "final_loss_std": loss_std,
                         "grad_norm": grad, "grad_norm_std": grad_std,
                         "diverged": sum(run.diverged(last) for run in runs)})
        return rows

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
        """The table as Markdown, with the fitted gradient-norm slopes (after warm-up, and at step 1) underneath."""
        lines = [f"| method | r | alpha | scale | lr | final loss (last {last} steps) | adapter grad norm | diverged |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in self.table(last):
            lines.append(f"| {row['method']} | {row['r']} | {row['alpha']:g} | {row['scale']:.3g} | {row['lr']:.2g} "
                         f"| {_pm(row['final_loss'], row['final_loss_std'], 3)} "
                         f"| {_pm(row['grad_norm'], row['grad_norm_std'], 4)} | {row['diverged']}/{row['seeds']} |")
        later = ", ".join(f"{m} r^{p:+.2f}" for m, p in self.grad_norm_slopes().items())
        first = ", ".join(f"{m} r^{p:+.2f}" for m, p in self.grad_norm_slopes(step=1).items())
        return "\n".join(lines) + (f"\n\nadapter grad norm vs rank (log-log fit): after warm-up {later}; "
                                   f"at step 1 (B = 0) {first}")

    def plot(self, path: str | Path | None = None, smooth: int = 5):
        """Loss curves per rank (one panel per method), final loss vs rank, and grad norm vs rank (log-log).

        Curves are the mean over seeds with a ``smooth``-step moving average.
        Saved to ``path`` when given. Returns a matplotlib ``Figure``.
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
            norms = [row["grad_norm"] for row in mine]
            slope = loglog_slope(rs, norms)
            grad_ax.plot(rs, norms, marker=marker, linestyle="", label=f"{method}: slope {slope:+.2f}")
            if math.isfinite(slope):
                anchor = math.exp(statistics.fmean(math.log(n) for n in norms) - slope
                                  * statistics.fmean(math.log(r) for r in rs))
                grad_ax.plot(rs, [anchor * r ** slope for r in rs], color=grad_ax.lines[-1].get_color(), alpha=0.6)
        loss_ax.set(xscale="log", xlabel="rank r", ylabel=f"final loss (last {LAST_STEPS} steps)",
                    title="final loss vs rank")
        grad_ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="adapter grad norm (after warm-up)",
                    title="gradient norm vs rank")
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        for ax in (loss_ax, grad_ax):
            ax.set_xticks(ranks, [str(r) for r in ranks])
        fig.suptitle(f"rank sweep ({self.settings.get('mode', '?')}): {self.settings.get('model', '')}", fontsize=10)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

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
        runs = [RunRecord(**{**run, "history": [_nan_for_none(h) for h in run["history"]]}) for run in data["runs"]]
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
    ax.set(xlabel="step", ylabel=f"loss ({smooth}-step moving avg)")
