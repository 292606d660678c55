"""Will these settings fit the GPU? The control panel's VRAM gauge, as a plain function.

:func:`check_fit` estimates the peak memory of the exact settings chosen
(:func:`~rslora_colab.memory.estimate.estimate_vram`, with the run described the
way ``quick_finetune`` trains it: :func:`~rslora_colab.memory.plan.training_estimate_kwargs`)
and compares it with this machine's CUDA GPU, or with a free Colab T4
(14.74 GiB, Unsloth, fp16) when there is none. When it does not fit, the
reason names the biggest terms and what ``quick_finetune``'s own plan
(:func:`~rslora_colab.memory.plan.plan_for_gpu`) would change. The estimates are not
calibrated on a GPU yet (see ``docs/memory.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime import Runtime, detect_runtime, trains_as
from .catalog import resolve_spec
from .estimate import TERM_LABELS, VramEstimate, estimate_vram
from .plan import T4_GIB, plan_for_gpu, resolve_budget_gib, training_estimate_kwargs

T4_RUNTIME = Runtime("unsloth", "fp16", "Tesla T4", "no GPU here: planning for a free Colab T4")
"""The runtime assumed when there is no CUDA GPU to measure against."""

SHAPE_TERMS = {"activations_gib", "logits_gib"}
"""Terms that grow with max_seq_length x batch size."""


@dataclass(frozen=True)
class FitCheck:
    """The gauge's reading for one set of training settings."""

    fits: bool | None
    """True / False; None when no estimate could be made (e.g. a model outside the catalog)."""
    total_gib: float | None
    """Estimated peak GPU memory, GiB (None without an estimate)."""
    budget_gib: float
    """GPU memory compared against, GiB."""
    device: str
    """What the budget is: the detected GPU's name, or a T4 when there is no GPU."""
    message: str
    """One line: the verdict and the numbers."""
    reason: str
    """Why it will not fit and what would (empty when it fits)."""
    estimate: VramEstimate | None = None
    """The full per-term estimate."""


def budget_and_device(gpu: Any = "auto") -> tuple[float, str]:
    """GiB to compare against and a name for it: the CUDA GPU here, else a T4."""
    budget = resolve_budget_gib(gpu)
    if isinstance(gpu, str) and gpu.strip().lower() == "auto":
        import torch

        if torch.cuda.is_available():
            return budget, torch.cuda.get_device_name()  # this process's GPU (under a launcher: accelerate's pick)
        return budget, "a T4 (no GPU here)"
    return budget, "a T4" if budget == T4_GIB else f"a {budget:.2f} GiB GPU"


def estimate_target(model: str) -> Any:
    """What :func:`estimate_vram` should read for a model name: the demo's config for ``"demo"``."""
    from ..demo import DEMO_NAME, demo_config

    return demo_config() if model == DEMO_NAME else model


def _why(est: VramEstimate) -> str:
    """Name the two biggest terms, and say which grow with the batch shape."""
    terms = sorted(((getattr(est, field), field, label) for field, label in TERM_LABELS), reverse=True)[:2]
    text = "biggest parts: " + ", ".join(f"{label} {value:.1f} GiB" for value, _, label in terms)
    if any(field in SHAPE_TERMS for _, field, _ in terms):
        text += (f"; activations and logits grow with max_seq_length x batch size "
                 f"({est.max_seq_length} x {est.batch_size})")
    return text


def gauge_runtime() -> Runtime:
    """The runtime the gauge estimates for: this machine's GPU, else a free Colab T4 (Unsloth, fp16)."""
    import torch

    return detect_runtime() if torch.cuda.is_available() else T4_RUNTIME


def _planner_hint(model: Any, r: int, max_seq_length: int, batch_size: int, grad_accum: int, budget: float,
                  kwargs: dict[str, Any]) -> str:
    """What ``quick_finetune``'s plan would change so that it fits ("" if it cannot say)."""
    try:
        plan = plan_for_gpu(model, r=r, max_seq_length=max_seq_length, gpu=budget, batch_size=batch_size,
                            grad_accum=grad_accum, max_micro_batch=batch_size, **kwargs)
    except ValueError as err:
        return str(err)
    if plan.fits:
        return "quick_finetune's plan would use " + plan.message.removeprefix("fits: ")
    return plan.suggestion


def check_fit(model: str, r: int = 64, max_seq_length: int = 2048, batch_size: int = 2, grad_accum: int = 4,
              gpu: Any = "auto", train_embeddings: bool = False) -> FitCheck:
    """Compare the estimated peak memory of these settings with the GPU (or a T4 without one).

    ``model`` is a catalog id, a local folder with ``config.json``, or ``"demo"``. ``train_embeddings``
    counts continued pretraining's fp32 embed_tokens and lm_head.

    >>> check_fit("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", r=64, max_seq_length=8192, batch_size=8).fits
    False
    """
    budget, device = budget_and_device(gpu)
    target = estimate_target(model)
    try:
        runtime = trains_as(gauge_runtime(), resolve_spec(target).model_type)  # Unsloth: some families in fp32
        kwargs = training_estimate_kwargs(runtime, train_embeddings=train_embeddings)
        est = estimate_vram(target, r=r, max_seq_length=max_seq_length, batch_size=batch_size, **kwargs)
    except ValueError as err:
        return FitCheck(None, None, budget, device, f"no estimate: {err}", "")
    if est.total_gib <= budget:
        message = f"fits: ~{est.total_gib:.2f} of {budget:.2f} GiB on {device}"
        return FitCheck(True, est.total_gib, budget, device, message, "", est)
    reason = _why(est)
    hint = _planner_hint(target, r, max_seq_length, batch_size, grad_accum, budget, kwargs)
    if hint:
        reason += f"; {hint}"
    message = f"won't fit: needs ~{est.total_gib:.1f} GiB, {device} has {budget:.2f} GiB"
    return FitCheck(False, est.total_gib, budget, device, message, reason, est)
