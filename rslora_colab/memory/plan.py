"""Pick a micro-batch and sequence length that fit a GPU, from :mod:`rslora_colab.memory.estimate`.

:func:`plan_for_gpu` keeps the effective batch (``batch_size * grad_accum``)
and looks for the largest micro-batch that divides it and whose estimate
(which already holds the CUDA context and a fragmentation margin) stays within
the GPU budget; if even micro-batch 1 does not fit it halves
``max_seq_length`` down to 256. When nothing fits it says how much is needed
and suggests the nearest setting that fits. :func:`halve_micro_batch` gives the
next smaller shape after a real out-of-memory error (``resilience.oom``),
:func:`split_global_batch` shares a global batch among several processes (one
per GPU), and :func:`catalog_table` tabulates what fits for every catalog model.
:func:`training_estimate_kwargs` describes how the kit trains on a runtime
(backend, precision, optimizer), so every caller estimates the same run.

The estimates are **not calibrated on a GPU yet** (see ``docs/memory.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..presets import check_rank
from ..runtime import Runtime
from .catalog import CATALOG, STANDARD_MODULES, ModelSpec, resolve_spec
from .estimate import FUSED_MODULES, VramEstimate, check_int, estimate_vram

T4_GIB = 14.74
"""Memory a Colab T4 exposes to PyTorch (``total_memory``), GiB."""

GPU_BUDGETS: dict[str, float] = {"t4": T4_GIB}
"""Named GPUs accepted by ``gpu=`` (lower case) -> usable GiB."""

MIN_SEQ_LENGTH = 256
"""Shortest ``max_seq_length`` the planner falls back to."""

TABLE_SEQ_LENGTHS: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
"""Sequence lengths tried by :func:`catalog_table`."""


@dataclass(frozen=True)
class TrainPlan:
    """Training shape chosen for a GPU budget, and why."""

    model: str
    """Name of the model planned for."""
    r: int
    """LoRA rank."""
    fits: bool
    """True when the planned setting's estimate is within ``budget_gib``."""
    micro_batch: int
    """``per_device_train_batch_size`` to use."""
    grad_accum: int
    """``gradient_accumulation_steps`` to use (micro_batch * grad_accum = requested effective batch)."""
    max_seq_length: int
    """Sequence length to use (may be shorter than requested)."""
    estimate: VramEstimate
    """Estimate of the planned setting (of the smallest one tried when nothing fits)."""
    budget_gib: float
    """GPU memory the plan must fit in."""
    message: str
    """One line: fits / does not fit, with the numbers."""
    suggestion: str
    """What changed from the request, or the nearest setting that fits ("" if none needed)."""
    micro_batch_tokens: int | None = None
    """Padding-free batches: the most tokens one micro-batch holds (the rows laid one after another), which the
    estimate is made for; None for padded and packed batches (``micro_batch`` x ``max_seq_length``)."""

    @property
    def effective_batch(self) -> int:
        """Sequences per optimizer step: micro_batch * grad_accum."""
        return self.micro_batch * self.grad_accum

    def as_dict(self) -> dict[str, Any]:
        """The plan as a plain dict, estimate included."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CatalogRow:
    """One row of :func:`catalog_table`."""

    model: str
    """Catalog model name."""
    r: int
    """LoRA rank."""
    max_seq_length: int | None
    """Longest tried sequence length at which micro-batch 1 fits (None: none fits)."""
    micro_batch: int
    """Largest micro-batch that fits at that length (0 when none fits)."""
    total_gib: float | None
    """Estimate at that setting."""


def _cuda_total_gib() -> float | None:
    """Total memory of this process's CUDA device in GiB (torch's current one: device 0, or the local rank's
    once a launcher's processes joined), or None without a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties().total_memory / 2**30


def resolve_budget_gib(gpu: Any = "auto") -> float:
    """GiB to plan for: ``"auto"`` (this machine's CUDA GPU, else a T4), ``"T4"``, or a number.

    ``"auto"`` reads ``total_memory`` of this process's device (device 0 with one process), the figure 14.74 GiB is
    for a T4; the estimates count the CUDA context themselves.
    """
    if isinstance(gpu, (int, float)) and not isinstance(gpu, bool):
        if gpu > 0:
            return float(gpu)
    elif isinstance(gpu, str):
        key = gpu.strip().lower()
        if key == "auto":
            total = _cuda_total_gib()
            return T4_GIB if total is None else total
        if key in GPU_BUDGETS:
            return GPU_BUDGETS[key]
    raise ValueError(f"gpu={gpu!r} is not valid: pass \"auto\", \"T4\" or the usable GPU memory "
                     f"in GiB as a positive number, e.g. 14.74.")


def training_estimate_kwargs(runtime: Runtime, target_modules: Iterable[str] = STANDARD_MODULES,
                             load_in_4bit: bool = True, gradient_checkpointing: bool = True,
                             method: str = "sft", train_embeddings: bool = False) -> dict[str, Any]:
    """:func:`estimate_vram` keyword arguments describing how the kit trains on ``runtime``.

    The transformers backend keeps embeddings and norms in fp32 (PEFT's
    ``prepare_model_for_kbit_training`` upcasts them) and uses plain gradient
    checkpointing; Unsloth keeps them 16-bit and offloads checkpoints. The
    optimizer is the runtime's. Target names the estimator does not know are
    left out (an empty list means: no estimate possible). ``method="dpo"``
    counts two sequences per row (chosen and rejected share one forward); ``train_embeddings`` counts the
    fp32 embed_tokens and lm_head being trained (continued pretraining).
    """
    unsloth = runtime.backend == "unsloth"
    wide = runtime.precision == "fp32" or (not unsloth and load_in_4bit)
    checkpointing = ("unsloth" if unsloth else True) if gradient_checkpointing else False
    return {
        "target_modules": [t for t in target_modules if t in STANDARD_MODULES + FUSED_MODULES],
        "load_in_4bit": load_in_4bit,
        "optimizer": runtime.optimizer,
        "gradient_checkpointing": checkpointing,
        "dtype_bytes": 4 if wide else 2,
        "sequences_per_row": 2 if method == "dpo" else 1,
        "train_embeddings": train_embeddings,
    }


def _seq_candidates(max_seq_length: int) -> list[int]:
    """Requested length, then halvings down to :data:`MIN_SEQ_LENGTH` (inclusive)."""
    seqs = [max_seq_length]
    while seqs[-1] > MIN_SEQ_LENGTH:
        seqs.append(max(seqs[-1] // 2, MIN_SEQ_LENGTH))
    return seqs


def _divisors_desc(n: int, cap: int) -> list[int]:
    """Divisors of ``n`` not above ``cap``, largest first."""
    return [d for d in range(min(n, cap), 0, -1) if n % d == 0]


def _smallest_fit(spec: ModelSpec, r: int, seqs: Sequence[int], budget: float,
                  kwargs: dict[str, Any]) -> VramEstimate | None:
    """Estimate at micro-batch 1 for the first of ``seqs`` that fits, else None."""
    for seq in seqs:
        est = estimate_vram(spec, r=r, max_seq_length=seq, batch_size=1, **kwargs)
        if est.total_gib <= budget:
            return est
    return None


def _suggest(spec: ModelSpec, r: int, seqs: Sequence[int], budget: float,
             kwargs: dict[str, Any]) -> str:
    """Nearest settings that fit when nothing tried did: memory settings, rank, smaller model."""
    ideas: list[str] = []
    lean = {"load_in_4bit": True, "gradient_checkpointing": "unsloth"}
    changed = {k: v for k, v in lean.items() if kwargs.get(k, v) != v}
    if changed:
        est = _smallest_fit(spec, r, seqs, budget, {**kwargs, **changed})
        if est:
            knobs = ", ".join(f"{k}={v!r}".replace("'", '"') for k, v in changed.items())
            ideas.append(f"{knobs} (max_seq_length={est.max_seq_length}, ~{est.total_gib:.2f} GiB)")
    smaller_r = r // 2
    while smaller_r >= 1:
        est = _smallest_fit(spec, smaller_r, seqs, budget, kwargs)
        if est:
            ideas.append(f"r={smaller_r} with max_seq_length={est.max_seq_length}, micro-batch 1 "
                         f"(~{est.total_gib:.2f} GiB)")
            break
        smaller_r //= 2
    for other in sorted(CATALOG, key=lambda m: m.total_params, reverse=True):
        if other.total_params >= spec.total_params:
            continue
        model_id = other.bnb_4bit_id if kwargs.get("load_in_4bit", True) else other.hub_id
        est = _smallest_fit(resolve_spec(model_id), r, seqs, budget, kwargs)
        if est:
            ideas.append(f"a smaller model: {model_id} at r={r}, "
                         f"max_seq_length={est.max_seq_length} (~{est.total_gib:.2f} GiB)")
            break
    if not ideas:
        return "nothing in reach fits: use a GPU with more memory."
    return "try " + "; or ".join(ideas) + "."


def plan_for_gpu(
    model: Any,
    r: int = 64,
    max_seq_length: int = 2048,
    gpu: Any = "auto",
    batch_size: int = 2,
    grad_accum: int = 4,
    max_micro_batch: int | None = None,
    micro_batch_tokens: Callable[[int, int], int] | None = None,
    **estimate_kwargs: Any,
) -> TrainPlan:
    """The largest micro-batch (and, if needed, shorter sequence) that fits ``gpu``.

    Keeps ``batch_size * grad_accum`` fixed: micro-batches are divisors of
    it, largest first (so it can exceed ``batch_size`` unless
    ``max_micro_batch`` caps it; ``quick_finetune`` caps it at the
    requested ``batch_size`` until GPU measurements back larger ones). If micro-batch 1
    does not fit, ``max_seq_length`` is halved down to 256. The estimate used
    already contains the CUDA context and the allocator margin, so "fits"
    means ``estimate.total_gib <= budget_gib``. Extra keyword arguments go to
    :func:`rslora_colab.memory.estimate.estimate_vram` (``target_modules``,
    ``load_in_4bit``, ``optimizer``, ``gradient_checkpointing``,
    ``calibration``...).

    Padding-free batches hold no padding: ``micro_batch_tokens(micro, seq)``
    gives the most tokens a micro-batch of ``micro`` rows, each cut to
    ``seq``, can hold (its ``micro`` longest rows:
    :meth:`~rslora_colab.data.TokenLengths.most_tokens`), and each candidate is
    estimated for that many tokens instead of ``micro x seq``. Every term of
    the estimate grows with tokens (``s x b``) except eager attention's
    scores, which only Gemma-2's soft-capping uses.

    >>> plan_for_gpu("Llama-3.2-1B-Instruct", r=16, gpu="T4").fits
    True
    """
    check_rank(r)
    check_int("max_seq_length", max_seq_length, 1, None, "2048")
    check_int("batch_size", batch_size, 1, None, "2")
    check_int("grad_accum", grad_accum, 1, None, "4")
    if max_micro_batch is not None:
        check_int("max_micro_batch", max_micro_batch, 1, None, "2")
    budget = resolve_budget_gib(gpu)
    spec = resolve_spec(model)
    if spec.max_position_embeddings and max_seq_length > spec.max_position_embeddings:
        raise ValueError(f"max_seq_length={max_seq_length} is longer than {spec.name} supports: "
                         f"pass at most {spec.max_position_embeddings}.")
    effective = batch_size * grad_accum
    cap = effective if max_micro_batch is None else min(max_micro_batch, effective)
    seqs = _seq_candidates(max_seq_length)

    def tokens(micro: int, seq: int) -> int | None:
        return None if micro_batch_tokens is None else max(1, min(micro * seq, micro_batch_tokens(micro, seq)))

    def make(fits: bool, micro: int, seq: int, est: VramEstimate, message: str, suggestion: str) -> TrainPlan:
        return TrainPlan(spec.name, r, fits, micro, effective // micro, seq, est, budget,
                         message, suggestion, tokens(micro, seq))

    for seq in seqs:
        for micro in _divisors_desc(effective, cap):
            held = tokens(micro, seq)  # padding-free: the rows' own tokens, estimated as micro rows of their mean
            est = estimate_vram(spec, r=r, max_seq_length=seq if held is None else math.ceil(held / micro),
                                batch_size=micro, **estimate_kwargs)
            if est.total_gib <= budget:
                laid = "" if held is None else f", padding-free: at most {held:,} tokens per micro-batch"
                message = (f"fits: micro-batch {micro} x grad_accum {effective // micro} "
                           f"(effective {effective}), max_seq_length {seq}{laid}, r={r}: "
                           f"~{est.total_gib:.2f} of {budget:.2f} GiB")
                return make(True, micro, seq, est, message, _changes(spec, r, max_seq_length, seq,
                                                                     batch_size, micro, budget,
                                                                     estimate_kwargs))
    smallest = est  # micro-batch 1 at the shortest length tried
    message = (f"does not fit: needs {smallest.total_gib:.2f} GiB, you have {budget:.2f} GiB "
               f"({spec.name}, r={r}, micro-batch 1, max_seq_length {seqs[-1]})")
    return make(False, 1, seqs[-1], smallest, message,
                _suggest(spec, r, seqs, budget, estimate_kwargs))


def _changes(spec: ModelSpec, r: int, asked_seq: int, seq: int, asked_batch: int, micro: int,
             budget: float, kwargs: dict[str, Any]) -> str:
    """Plain words for what the plan changed from the request ("" when nothing)."""
    notes: list[str] = []
    if micro != asked_batch:
        notes.append(f"micro-batch {asked_batch} -> {micro} (grad_accum adjusted, effective batch unchanged)")
    if seq != asked_seq:
        notes.append(f"max_seq_length {asked_seq} -> {seq}")
        smaller_r = r // 2
        while smaller_r >= 1:
            est = estimate_vram(spec, r=smaller_r, max_seq_length=asked_seq, batch_size=1, **kwargs)
            if est.total_gib <= budget:
                notes.append(f"to keep max_seq_length {asked_seq}, use r={smaller_r} with micro-batch 1")
                break
            smaller_r //= 2
    return "; ".join(notes)


def split_global_batch(batch_size: int, grad_accum: int, processes: int) -> tuple[int, int]:
    """``(micro_batch, grad_accum)`` per process so that ``processes`` of them keep ``batch_size * grad_accum``.

    The global batch (sequences per optimizer step, over every process) stays
    what one GPU would use: each process takes ``1/processes`` of it, with the
    largest micro-batch up to ``batch_size`` that divides its share. The rank
    presets and every measurement made on one GPU then hold unchanged: the
    same optimisation, on more GPUs. A ``ValueError`` says what to change when
    the global batch cannot be shared evenly.

    >>> split_global_batch(2, 4, 2)   # 8 = 2 processes x micro-batch 2 x grad_accum 2
    (2, 2)
    >>> split_global_batch(8, 1, 2)   # 8 = 2 x 4 x 1
    (4, 1)
    """
    global_batch = batch_size * grad_accum
    if processes <= 1:
        return batch_size, grad_accum
    if global_batch % processes:
        step = math.lcm(batch_size, processes)
        near = [n for n in ((global_batch // step) * step, (global_batch // step + 1) * step) if n > 0]
        ideas = " or ".join(f"grad_accum={n // batch_size} ({n} sequences)" for n in near)
        raise ValueError(
            f"batch_size={batch_size} x grad_accum={grad_accum} = {global_batch} sequences per optimizer step (the "
            f"global batch) cannot be shared evenly by {processes} processes: make it a multiple of {processes}, "
            f"e.g. with batch_size={batch_size}: {ideas}.")
    share = global_batch // processes
    micro = _divisors_desc(share, batch_size)[0]
    return micro, share // micro


def halve_micro_batch(micro_batch: int, grad_accum: int) -> tuple[int, int] | None:
    """``(micro_batch, grad_accum)`` after an out-of-memory error, or None at micro-batch 1.

    The new micro-batch is the largest divisor of the effective batch
    (``micro_batch * grad_accum``) that is at most half the old one, so the
    effective batch stays exactly the same: 4 x 2 -> 2 x 4, 6 x 1 -> 3 x 2,
    5 x 2 -> 2 x 5.

    >>> halve_micro_batch(4, 2)
    (2, 4)
    """
    if micro_batch <= 1:
        return None
    effective = micro_batch * grad_accum
    smaller = _divisors_desc(effective, micro_batch // 2)[0]
    return smaller, effective // smaller


def catalog_table(
    gpu: Any = "T4",
    ranks: Iterable[int] = (16, 64, 256),
    seq_lengths: Sequence[int] = TABLE_SEQ_LENGTHS,
    max_batch: int = 16,
    models: Iterable[Any] | None = None,
    **estimate_kwargs: Any,
) -> list[CatalogRow]:
    """For each model and rank: the longest of ``seq_lengths`` where micro-batch 1 fits
    (capped at the model's context length), and the largest micro-batch (<= ``max_batch``)
    that fits at that length. ``models=None`` means every catalog model, resolved by its
    Unsloth 4-bit id; extra keyword arguments go to :func:`estimate_vram`."""
    budget = resolve_budget_gib(gpu)
    check_int("max_batch", max_batch, 1, None, "16")
    if models is None:  # the Unsloth 4-bit repos are what a T4 loads (split Phi layout)
        models = [m.bnb_4bit_id for m in CATALOG]
    specs = [resolve_spec(m) for m in models]
    rows: list[CatalogRow] = []
    for spec in specs:
        for r in ranks:
            check_rank(r)
            usable = [s for s in sorted(seq_lengths, reverse=True)
                      if not spec.max_position_embeddings or s <= spec.max_position_embeddings]
            best = _smallest_fit(spec, r, usable, budget, estimate_kwargs)
            if best is None:
                rows.append(CatalogRow(spec.name, r, None, 0, None))
                continue
            batch, est = 1, best
            while batch < max_batch:
                nxt = estimate_vram(spec, r=r, max_seq_length=best.max_seq_length,
                                    batch_size=batch + 1, **estimate_kwargs)
                if nxt.total_gib > budget:
                    break
                batch, est = batch + 1, nxt
            rows.append(CatalogRow(spec.name, r, best.max_seq_length, batch, est.total_gib))
    return rows


def render_catalog_table(rows: Sequence[CatalogRow], markdown: bool = True) -> str:
    """:func:`catalog_table` rows as a Markdown table (or aligned plain text)."""
    header = ("model", "r", "longest seq", "largest micro-batch", "est. GiB")
    body = [(row.model, str(row.r),
             str(row.max_seq_length) if row.max_seq_length else "does not fit",
             str(row.micro_batch) if row.micro_batch else "-",
             f"{row.total_gib:.2f}" if row.total_gib is not None else "-") for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
                     for cells in [header, *body])


def format_plan(plan: TrainPlan) -> str:
    """A plan as a few lines for the CLI or a notebook: verdict, changes, breakdown."""
    lines = [f"rslora-colab plan for {plan.model} (r={plan.r}) on {plan.budget_gib:.2f} GiB:",
             f"  {plan.message}"]
    if plan.suggestion:
        lines.append(f"  {'changed' if plan.fits else 'suggestion'}: {plan.suggestion}")
    lines.append("  estimates are not yet calibrated on a GPU; see docs/memory.md")
    lines.append(plan.estimate.table())
    return "\n".join(lines)
