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

The batch the presets are for
-----------------------------
The anchors come from Unsloth's T4 notebooks: micro-batch 2 x gradient
accumulation 4, a **global batch of 8** sequences per optimizer step on one
GPU, the kit's default. On several GPUs (``docs/scale-out.md``) the kit keeps
``batch_size * grad_accum`` as the global batch and shares it among the
processes (fewer accumulation steps each), so the presets, the step counts
and the divergence guard's thresholds hold unchanged: the same optimisation,
faster. A larger global batch is the user's choice (raise ``grad_accum``); the
lr is not rescaled for it (for Adam a square-root rule, lr x sqrt(k) for a k
times larger batch, is the usual starting point: Malladi et al. 2022,
arXiv:2205.10287).

Preference tuning (DPO)
-----------------------
DPO steps are far smaller than SFT steps: ``lr_for_rank(r, "dpo")`` is the
SFT curve times ``DPO_LR_FACTOR = 0.025`` (a 40th), so it keeps the same rank
dependence::

    r = 16  ->  5.0e-6      r = 64  ->  2.5e-6      r = 256  ->  1.0e-6

Source of the factor: the alignment-handbook's Zephyr-7B-beta QLoRA DPO
recipe (``recipes/zephyr-7b-beta/dpo/config_qlora.yaml``: r = 16, alpha = 16,
UltraFeedback-binarized) trains at 5e-6, where the kit's SFT preset for the
same rank (from Unsloth's r = 16 notebooks) is 2e-4: 5e-6 / 2e-4 = 0.025.
For scale, the same handbook's full-parameter DPO uses 5e-7 and TRL's
``DPOConfig`` defaults to 1e-6 (both for full fine-tuning, not adapters).
The factor is taken from those recipes, not tuned by this kit.

Reinforcement learning (GRPO)
-----------------------------
``lr_for_rank(r, "grpo")`` is the SFT curve times ``GRPO_LR_FACTOR = 0.05``
(a 20th)::

    r = 16  ->  1.0e-5      r = 32  ->  7.5e-6      r = 64  ->  5.0e-6

Sources, and where they agree: TRL's "LoRA Without Regret" guide
(``docs/source/lora_without_regret.md``, after Schulman et al. 2025) trains GRPO
adapters at 1e-5, ten times its full fine-tuning rate of 1e-6 (which is also
``GRPOConfig``'s default): the kit's r = 16 value. Unsloth's LoRA
hyper-parameter guide recommends 5e-6 for RL (DPO, GRPO): the kit's r = 64
value. Where they differ: the guide's run is classic LoRA at r = 1,
alpha = 32 (scale alpha/r = 32, so scale * lr = 3.2e-4), and it says the
1/r scaling makes the best lr roughly independent of rank. Under rsLoRA with
alpha = r the scale grows like sqrt(r), so the kit keeps the SFT curve's fall
with rank instead (r = 16: scale 4, scale * lr = 4e-5, eight times more
cautious than the guide's r = 1 run; GRPO's gradients come from a handful of
sampled completions per prompt, noisier than SFT's). The guide also
recommends small ranks for RL (1 to 32): the factor is anchored there. Like
DPO's it is read from recipes, not tuned by this kit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

EMBEDDING_LR_FACTOR = 0.2
"""Continued pretraining (``train_embeddings=True``): ``embed_tokens`` and ``lm_head`` train at this times the
adapter's lr. Source: Unsloth's continued-pretraining notebooks (``learning_rate = 5e-5``,
``embedding_learning_rate = 1e-5``, "select a 2 to 10x smaller learning rate for the embedding matrices"); the
kit takes the notebooks' 5x. A full matrix moves every entry by about lr per Adam step, where the adapter's
product B @ A is scaled by alpha/sqrt(r) on top, so the embeddings want the smaller step."""

MIN_RANK = 1
MAX_RANK = 1024
LR_CEILING = 3e-4
LR_FLOOR = 1e-5

DPO_LR_FACTOR = 0.025
"""DPO learning rate / SFT learning rate at the same rank (see the module docstring)."""
GRPO_LR_FACTOR = 0.05
"""GRPO learning rate / SFT learning rate at the same rank (see the module docstring)."""
LR_FACTORS = {"sft": 1.0, "dpo": DPO_LR_FACTOR, "grpo": GRPO_LR_FACTOR}
METHODS = tuple(LR_FACTORS)
"""Training methods: ``"sft"`` (supervised fine-tuning), ``"dpo"`` (preference tuning) and ``"grpo"``
(reinforcement learning from reward functions)."""
BETA_DEFAULTS = {"dpo": 0.1, "grpo": 0.0}
"""The KL coefficient ``beta`` each method uses when none is given: DPO's ``DPOConfig`` default (0.1), and
GRPO's ``GRPOConfig`` default (0.0: no reference model, so no second forward pass and no KL term)."""

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


def portable_alpha(alpha: float, r: int) -> float:
    """The ``lora_alpha`` that gives an rsLoRA adapter its own scale under the plain LoRA rule alpha/r: alpha*sqrt(r).

    ``portable_alpha(a, r) / r == adapter_scale(a, r)``: what a portable adapter
    (``use_rslora: false``) records, for engines that ignore ``use_rslora``.

    >>> portable_alpha(64, 64), portable_alpha(16, 16)
    (512.0, 64.0)
    """
    return adapter_scale(alpha, r) * r


def check_method(method: str) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in LR_FACTORS:
        raise ValueError(f"method={method!r} is not known: use one of {METHODS}.")


def lr_for_rank(r: int, method: str = "sft") -> float:
    """Learning rate for an rsLoRA adapter of rank ``r`` with alpha = r.

    For SFT it hits 2e-4 at r=16, 1.5e-4 at r=32 and 1e-4 at r=64, falling
    smoothly and monotonically in between and beyond; ``method="dpo"`` scales
    that curve by :data:`DPO_LR_FACTOR`, ``method="grpo"`` by :data:`GRPO_LR_FACTOR`. See the module docstring.

    >>> lr_for_rank(16), lr_for_rank(32), lr_for_rank(64)
    (0.0002, 0.00015, 0.0001)
    >>> lr_for_rank(16, "dpo"), lr_for_rank(64, "dpo")
    (5e-06, 2.5e-06)
    >>> lr_for_rank(16, "grpo"), lr_for_rank(32, "grpo"), lr_for_rank(64, "grpo")
    (1e-05, 7.5e-06, 5e-06)
    """
    check_rank(r)
    check_method(method)
    sft = min(max(math.exp(log_lr_curve(math.log2(r) - 5)), LR_FLOOR), LR_CEILING)
    return round(sft * LR_FACTORS[method], 12)


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
    method: str = "sft"
    """The training method the learning rate is for (``"sft"``, ``"dpo"`` or ``"grpo"``)."""

    def as_dict(self) -> dict:
        """The preset as a plain dict (for JSON and printing)."""
        return asdict(self)


def preset_for_rank(r: int, alpha: float | None = None, use_rslora: bool = True, method: str = "sft") -> RankPreset:
    """The kit's settings for rank ``r`` and training ``method``; ``alpha=None`` means alpha = r.

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
        lr=lr_for_rank(r, method),
        # Higher ranks take larger first steps (scale grows like sqrt(r)):
        # give them a slightly longer warm-up.
        warmup_ratio=0.03 if r <= 32 else 0.05,
        lr_scheduler="cosine",
        method=method,
    )
