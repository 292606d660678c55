"""Rank presets: the rsLoRA scale and the rank-dependent learning rate.

This module is the one home of two facts:

* :func:`adapter_scale` — the multiplier PEFT applies to ``B @ A``:
  ``alpha / sqrt(r)`` for rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) and
  ``alpha / r`` for classic LoRA (Hu et al. 2021).
* :func:`lr_for_rank` — the learning-rate curve.

Why the learning rate falls with rank
-------------------------------------
With ``alpha = r`` (the kit's default) the rsLoRA scale is ``sqrt(r)``. Adam
moves every adapter entry by roughly ``lr`` per step, so the change of the
effective weight ``scale * B @ A`` grows with ``scale * lr``. Holding
``scale * lr`` near ``8e-4`` gives the anchor points the kit promises::

    r = 16  ->  2.0e-4   (scale 4.0,  scale*lr = 8.0e-4)
    r = 32  ->  1.5e-4   (scale 5.66, scale*lr = 8.5e-4)
    r = 64  ->  1.0e-4   (scale 8.0,  scale*lr = 8.0e-4)

The curve
---------
Let ``x = log2(r) - 5`` (so the anchors sit at x = -1, 0, 1) and
``y = ln(lr)``. Between r = 16 and r = 64, ``y`` is the parabola through the
three anchors::

    y(x) = y0 + b*x + c*x^2
    y0 = ln 1.5e-4
    b  = (ln 1e-4 - ln 2e-4) / 2                 = -0.3466
    c  = (ln 1e-4 + ln 2e-4 - 2 ln 1.5e-4) / 2   = -0.0589

Outside [16, 64] the curve continues as a straight line in log-log space
(a power law ``lr ∝ r^-p``) with the parabola's slope at the edge, so the
curve and its first derivative are continuous everywhere:

* below r = 16: slope ``b - 2c`` per doubling   -> lr ∝ r^-0.33
* above r = 64: slope ``b + 2c`` per doubling   -> lr ∝ r^-0.67

Finally the result is clamped to [LR_FLOOR, LR_CEILING] = [1e-5, 3e-4]:
r <= 4 gets 3e-4 and r = 1024 gets 1.57e-5. Ranks outside 1..1024 are
rejected.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MIN_RANK = 1
MAX_RANK = 1024
LR_CEILING = 3e-4
LR_FLOOR = 1e-5

_Y0 = math.log(1.5e-4)
_B = (math.log(1e-4) - math.log(2e-4)) / 2
_C = (math.log(1e-4) + math.log(2e-4) - 2 * _Y0) / 2


def check_rank(r: int, field: str = "r") -> None:
    """Raise ``ValueError`` unless ``r`` is an int in [MIN_RANK, MAX_RANK]."""
    if isinstance(r, bool) or not isinstance(r, int) or not MIN_RANK <= r <= MAX_RANK:
        raise ValueError(
            f"{field}={r!r} is not a usable LoRA rank: pass an integer from "
            f"{MIN_RANK} to {MAX_RANK} (16, 32 or 64 are good starts)."
        )


def adapter_scale(alpha: float, r: int, use_rslora: bool = True) -> float:
    """The factor applied to ``B @ A``: alpha/sqrt(r) (rsLoRA) or alpha/r (LoRA)."""
    check_rank(r)
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def lr_for_rank(r: int) -> float:
    """Learning rate for an rsLoRA adapter of rank ``r`` with alpha = r.

    Hits 2e-4 at r=16, 1.5e-4 at r=32 and 1e-4 at r=64, falls smoothly and
    monotonically in between and beyond; see the module docstring.

    >>> lr_for_rank(16), lr_for_rank(32), lr_for_rank(64)
    (0.0002, 0.00015, 0.0001)
    """
    check_rank(r)
    return round(min(max(math.exp(log_lr_curve(math.log2(r) - 5)), LR_FLOOR), LR_CEILING), 12)


def log_lr_curve(x: float) -> float:
    """ln(lr) before clamping, at x = log2(r) - 5: the parabola, then its tangent lines."""
    edge = min(max(x, -1.0), 1.0)  # the parabola's domain
    return _Y0 + _B * edge + _C * edge * edge + (_B + 2 * _C * edge) * (x - edge)


@dataclass(frozen=True)
class RankPreset:
    """Training settings the kit picks for one adapter rank."""

    r: int
    """LoRA rank."""
    alpha: float
    """LoRA alpha; the kit's default is alpha = r."""
    use_rslora: bool
    """Scale by alpha/sqrt(r) (True) or alpha/r (False)."""
    scale: float
    """The factor applied to B @ A, from :func:`adapter_scale`."""
    lr: float
    """Peak learning rate, from :func:`lr_for_rank`."""
    warmup_ratio: float
    """Fraction of the steps spent warming the learning rate up from 0."""
    lr_scheduler: str
    """Schedule after warm-up (a transformers ``lr_scheduler_type``)."""

    def as_dict(self) -> dict:
        """The preset as a plain dict (for JSON and printing)."""
        return asdict(self)


def preset_for_rank(r: int, alpha: float | None = None, use_rslora: bool = True) -> RankPreset:
    """The kit's settings for rank ``r``; ``alpha=None`` means alpha = r.

    >>> preset_for_rank(64).scale
    8.0
    """
    check_rank(r)
    alpha = float(r if alpha is None else alpha)
    return RankPreset(
        r=r,
        alpha=alpha,
        use_rslora=use_rslora,
        scale=adapter_scale(alpha, r, use_rslora),
        lr=lr_for_rank(r),
        # Higher ranks take larger first steps (scale grows like sqrt(r)):
        # give them a slightly longer warm-up.
        warmup_ratio=0.03 if r <= 32 else 0.05,
        lr_scheduler="cosine",
    )
