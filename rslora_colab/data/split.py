"""Held-out rows: split the training data into rows to train on and rows to measure the eval loss on.

``quick_finetune(..., eval_fraction=0.1)`` holds out 10% of the rows, drawn
with the run's ``seed`` (``datasets``' own ``train_test_split``), so the same
seed gives the same split on a resume. The eval rows are shaped and masked
exactly like the training rows (TRL's ``eval_dataset``: the loss is on the
responses only).

The default (``eval_fraction=None``) holds out **5% of the rows, at most 100,
once the data has 1,000 rows or more**, and nothing below that:

* LLaMA-Factory's ``val_size`` and axolotl's ``val_set_size`` default to 0,
  so a run there shows no eval curve unless asked. The kit's users pick the
  rank and learning rate from curves, and a training loss alone cannot show
  overfitting, so larger data gets a held-out split without asking.
* Small data (a few hundred hand-written rows) is left whole: every row is
  worth training on there, and 5% of it would be too few rows to give a
  steady eval loss. Pass ``eval_fraction`` to split it anyway (the demo holds
  out 10% of its 158 rows).
* At most 100 rows, because every evaluation is a forward pass over all of
  them: on Unsloth's T4 recipe (60 steps of 8 rows) five evaluations of 100
  rows cost about as much as a third of the training's forward and backward
  passes; on a 1-epoch run over 10,000 rows, about 2%.
"""

from __future__ import annotations

from typing import Any

AUTO_EVAL_MIN_ROWS = 1000
"""Datasets with fewer rows are not split by default."""
AUTO_EVAL_FRACTION = 0.05
"""Share of the rows the default split holds out ..."""
AUTO_EVAL_MAX_ROWS = 100
"""... but never more rows than this."""


def eval_fraction_for(rows: int, asked: float | None, has_eval_dataset: bool = False) -> float:
    """The share of ``rows`` to hold out: ``asked`` when given, else the default in the module docstring.

    With an ``eval_dataset`` there is nothing to hold out by default.

    >>> eval_fraction_for(158, None), eval_fraction_for(1000, None), eval_fraction_for(10_000, None)
    (0.0, 0.05, 0.01)
    """
    if asked is not None:
        return float(asked)
    if has_eval_dataset or rows < AUTO_EVAL_MIN_ROWS:
        return 0.0
    return min(AUTO_EVAL_FRACTION, AUTO_EVAL_MAX_ROWS / rows)


def held_out_rows(rows: int, fraction: float) -> int:
    """How many of ``rows`` a ``fraction`` holds out: at least 1 (for a fraction > 0), at most ``rows - 1``."""
    if fraction <= 0:
        return 0
    return min(max(1, round(rows * fraction)), rows - 1)


def hold_out(dataset: Any, fraction: float, seed: int, source: str = "dataset") -> tuple[Any, Any | None]:
    """``(train rows, eval rows)``: ``fraction`` of ``dataset`` drawn at random with ``seed``; no eval rows at 0.

    Raises ``ValueError`` when the data is too small to keep a row on each side.
    """
    count = held_out_rows(len(dataset), fraction)
    if count == 0:
        return dataset, None
    if len(dataset) < 2:
        raise ValueError(f"{source}: has {len(dataset)} row, too few to hold any out for evaluation: pass "
                         "eval_fraction=0, or an eval_dataset.")
    parts = dataset.train_test_split(test_size=count, seed=seed)
    return parts["train"], parts["test"]
