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
loss and the adapter's gradient norm at every step.
"""

from __future__ import annotations

import gc
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import FinetuneConfig, is_int, is_positive
from .data import load_and_validate, source_name
from .interrupt import TrainingInterrupted
from .load import load_model
from .presets import MAX_RANK, MIN_RANK
from .sweep_result import RunRecord, SweepResult
from .train import check_lengths, train_adapter
from .watch import AdapterGradNormCallback

METHODS = {"lora": False, "rslora": True}
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
             and all(m in METHODS for m in self.methods), "methods", f"some of {tuple(METHODS)}"),
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
        settings = {"r": r, "use_rslora": METHODS[method], "seed": seed, "max_steps": self.max_steps,
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
    shared = dict(overrides, output_dir=output_dir)
    if sweep.mode == "controlled":
        shared = {**CONTROLLED_SCHEDULE, **shared}
    return [FinetuneConfig.from_overrides(**shared, **sweep.run_settings(*run)) for run in sweep.runs()]


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
    ``load_in_4bit``, ...). ``save_to``: a JSON file rewritten after every
    run, so a crash keeps the finished runs.

    >>> result = compare_ranks("demo", demo_dataset(), ranks=(4, 64), max_steps=60, batch_size=8,
    ...                        grad_accum=1, max_seq_length=256)           # doctest: +SKIP
    >>> print(result.markdown()); result.plot("sweep.png")              # doctest: +SKIP
    """
    sweep = SweepConfig(_as_tuple(ranks), None if methods is None else _as_tuple(methods), mode, alpha, lr,
                        max_steps, _as_tuple(seeds))
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model: got a {type(model).__name__}; pass a name (hub id, local folder or 'demo'): "
                         "the sweep reloads it for every run so all runs start from the same weights.")
    with tempfile.TemporaryDirectory(prefix="rslora-sweep-") as scratch:
        configs = _run_configs(sweep, overrides, scratch)
        source = source_name(dataset)
        dataset, fmt = load_and_validate(dataset)
        check_lengths(model, dataset, fmt, configs[0], source)  # before any model loads: rows TRL would drop
        result = SweepResult(settings={"mode": sweep.mode, "model": str(model), "rows": len(dataset), "format": fmt,
                                       "ranks": list(sweep.ranks), "methods": list(sweep.methods),
                                       "seeds": list(sweep.seeds), "max_steps": sweep.max_steps,
                                       "alpha": sweep.alpha, "lr": sweep.lr, "shared": dict(overrides)})
        for number, ((method, r, seed), config) in enumerate(zip(sweep.runs(), configs), 1):
            print(f"\nrslora-colab: sweep run {number}/{len(configs)}: {method} r={r} seed={seed}", flush=True)
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
    history = [{**h, "adapter_grad_norm": adapter_norms.get(h["step"], math.nan)} for h in trained.history]
    s = trained.settings
    return RunRecord(method=method, r=config.r, seed=config.seed, alpha=s["alpha"], scale=s["scale"], lr=s["lr"],
                     warmup_steps=math.ceil(config.max_steps * s["warmup_ratio"]), history=history,
                     wall_time_s=trained.wall_time_s)
