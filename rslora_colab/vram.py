"""Estimate the GPU memory a QLoRA/rsLoRA fine-tune needs, term by term.

Every number here is arithmetic on the model's ``config.json`` plus the
constants in :class:`Calibration`. **The constants are taken from papers and
library documentation; none has been checked against a GPU measurement yet.**
``docs/memory.md`` lists the formulas and sources; pass your own
``Calibration`` once measurements exist.

Notation: h hidden size, i intermediate size, L layers, a attention heads,
d head_dim, V vocabulary, s sequence length, b micro-batch, r LoRA rank.

Terms (bytes), each summed into :class:`VramEstimate`:

* base weights: the 7 projections, L * (h*q + 2*h*kv + q*h + 3*h*i) params
  (q = a*d, kv = n_kv*d, grouped-query attention counted), at
  ``nf4_bytes_per_param`` = 0.516 B in 4-bit (QLoRA, Dettmers et al. 2023,
  arXiv:2305.14314: 4-bit codes 0.5 B + 8-bit absmax per 64 weights 1/64 B +
  fp32 second-level constant per 256 blocks 4/16384 B = 0.5159 B), else
  ``dtype_bytes``.
* embeddings: embedding + lm_head (V*h tied, 2*V*h untied) + RMSNorm weights,
  kept in 16-bit by bitsandbytes (only linear layers are quantized).
* LoRA weights / grads / optimizer: r*(d_in + d_out) params per adapted
  module per layer; fp32 weights and grads (fp16 mixed precision keeps fp32
  masters); AdamW keeps 8 B/param (two fp32 moments), bitsandbytes 8-bit
  AdamW ~2 B/param but 32-bit state for tensors under 4096 elements
  (bitsandbytes ``min_8bit_size``).
* activations (Korthikanti et al. 2022, arXiv:2205.05198, sec. 4.1): one
  layer without recomputation stores ~34*s*b*h bytes when the attention
  kernel does not materialise the s x s scores (their 34 + 5*a*s/h with the
  score term removed); eager attention (Gemma-2's soft-capping) adds back
  5*a*s^2*b. LoRA adds x@A (2*s*b*r bytes) per adapted module. Gradient
  checkpointing keeps only each layer's 16-bit input (2*s*b*h) plus one
  layer's full activations during recompute; Unsloth's ``"unsloth"`` mode
  moves those per-layer inputs to CPU RAM, leaving a couple on the GPU.
* logits: b*s*V elements; transformers' loss keeps fp16 logits (2 B) + an
  fp32 upcast (4 B) + its fp32 gradient (4 B) = 10 B; Unsloth's fused
  cross-entropy works on the fp16 logits and writes the gradient in place
  (we count 4 B).
* workspace: bitsandbytes dequantizes one NF4 matrix to 16-bit per matmul;
  two of the largest are counted (forward and backward).
* CUDA context + cuBLAS workspaces (~0.3-0.5 GB, not in PyTorch's
  ``max_memory_reserved``) and an allocator fragmentation margin (10 % of
  the tensors).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Union

from .catalog import STANDARD_MODULES, ModelSpec, resolve_spec
from .presets import check_rank

GIB = 2**30
"""Bytes in a GiB (all ``*_gib`` fields use binary gigabytes)."""

FUSED_MODULES = ("qkv_proj", "gate_up_proj")
"""Fused module names (Phi-3 layout) also accepted in ``target_modules``."""

Checkpointing = Union[str, bool]


@dataclass(frozen=True)
class Calibration:
    """Every tunable constant of the estimator, in one place.

    Defaults come from the sources cited per field. **Not calibrated on a
    GPU yet**: once real peaks are measured, fit these and pass the result as
    ``calibration=`` to :func:`estimate_vram` / ``plan_for_gpu``.
    """

    nf4_bytes_per_param: float = 0.516
    """NF4 + double quantization, bytes per quantized weight (QLoRA: 0.5 + 1/64 + 4/16384)."""
    lora_weight_bytes: float = 4.0
    """Bytes per LoRA weight: fp32 masters (fp16 AMP cannot step fp16 params)."""
    lora_grad_bytes: float = 4.0
    """Bytes per LoRA gradient (same dtype as the weight)."""
    adamw_bytes_per_param: float = 8.0
    """32-bit AdamW state: exp_avg + exp_avg_sq in fp32 (Loshchilov & Hutter; PyTorch AdamW)."""
    adamw_8bit_bytes_per_param: float = 2.0
    """bitsandbytes 8-bit AdamW: two uint8 states (Dettmers et al. 2021, arXiv:2110.02861)."""
    bnb_min_8bit_size: int = 4096
    """bitsandbytes keeps 32-bit state for tensors with fewer elements (``min_8bit_size``)."""
    act_bytes_per_sbh: float = 34.0
    """Full activations of one layer per s*b*h, fused attention (Korthikanti et al. 2022)."""
    attn_scores_bytes: float = 5.0
    """Eager attention extra per a*s^2*b: scores + softmax + dropout mask (Korthikanti)."""
    lora_act_bytes: float = 2.0
    """Per s*b*r per adapted module: x@A kept in 16-bit for B's backward."""
    checkpoint_bytes_per_sbh: float = 2.0
    """What gradient checkpointing keeps per layer: its 16-bit input (2*s*b*h)."""
    recompute_layers: float = 1.0
    """Layers of full activations alive at once while checkpointed layers are recomputed."""
    offload_resident_layers: float = 2.0
    """Layer inputs still on the GPU in Unsloth's offloaded mode (in use + prefetched)."""
    logits_bytes_unfused: float = 10.0
    """Per logit, transformers loss: fp16 logits 2 + fp32 upcast 4 + fp32 grad 4."""
    logits_bytes_fused: float = 4.0
    """Per logit, Unsloth fused cross-entropy: fp16 logits + fp16 grad written in place."""
    dequant_buffers: float = 2.0
    """16-bit copies of the largest NF4 matrix alive at once (forward + backward matmul)."""
    cuda_context_gib: float = 0.45
    """CUDA context + cuBLAS workspaces, outside PyTorch's allocator (~0.3-0.5 GB)."""
    fragmentation: float = 0.10
    """Allocator margin as a fraction of all tensor bytes (caching-allocator fragmentation)."""


DEFAULT_CALIBRATION = Calibration()
"""The constants used when no ``calibration`` is passed (uncalibrated, see above)."""

OPTIMIZERS: dict[str, str] = {
    "adamw_8bit": "adam8",
    "adamw_bnb_8bit": "adam8",
    "paged_adamw_8bit": "adam8",
    "adamw_torch": "adam32",
    "adamw_torch_fused": "adam32",
    "paged_adamw_32bit": "adam32",
    "adamw": "adam32",
    "sgd": "none",
}
"""transformers ``optim`` names the estimator knows -> kind of state they keep."""

CHECKPOINTING_MODES: tuple[Checkpointing, ...] = ("unsloth", True, False)
"""Accepted ``gradient_checkpointing`` values."""


@dataclass(frozen=True)
class VramEstimate:
    """Estimated peak GPU memory of one training step, per term, in GiB."""

    model: str
    """Name of the model the estimate is for."""
    r: int
    """LoRA rank."""
    max_seq_length: int
    """Tokens per sequence (s)."""
    batch_size: int
    """Micro-batch: sequences per forward/backward pass (b)."""
    load_in_4bit: bool
    """Whether the base linear weights are NF4."""
    optimizer: str
    """transformers ``optim`` name."""
    gradient_checkpointing: Checkpointing
    """``"unsloth"`` (offloaded), True, or False."""
    lora_params: int
    """Trainable LoRA parameters."""
    base_weights_gib: float
    """Quantized (or 16-bit) linear projections of all layers."""
    embeddings_gib: float
    """Embedding + lm_head (tied or not) + norms, 16-bit."""
    lora_weights_gib: float
    """LoRA A and B matrices (fp32)."""
    lora_grads_gib: float
    """Gradients of the LoRA matrices."""
    optimizer_gib: float
    """Optimizer state of the LoRA matrices."""
    activations_gib: float
    """Activations kept for the backward pass (after checkpointing)."""
    logits_gib: float
    """Logits, their loss-time copies and gradients."""
    workspace_gib: float
    """Dequantization buffers for NF4 matmuls."""
    cuda_context_gib: float
    """CUDA context and library workspaces."""
    allocator_margin_gib: float
    """Fragmentation margin of PyTorch's caching allocator."""
    total_gib: float
    """Sum of all the terms above: the estimated peak."""
    offloaded_cpu_gib: float = 0.0
    """CPU RAM holding offloaded checkpoints (``"unsloth"`` mode); not in ``total_gib``."""

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-friendly)."""
        return asdict(self)

    def table(self) -> str:
        """The breakdown as an aligned plain-text table."""
        ckpt = self.gradient_checkpointing
        head = (f"VRAM estimate for {self.model}: r={self.r}, max_seq_length={self.max_seq_length}, "
                f"micro-batch {self.batch_size}, {'4-bit' if self.load_in_4bit else '16-bit'} base, "
                f"{self.optimizer}, gradient_checkpointing={ckpt!r}")
        rows = [(label, getattr(self, name)) for name, label in TERM_LABELS]
        lines = [head] + [f"  {label:<34}{value:>8.2f} GiB" for label, value in rows]
        lines.append(f"  {'total':<34}{self.total_gib:>8.2f} GiB")
        if self.offloaded_cpu_gib:
            lines.append(f"  (plus {self.offloaded_cpu_gib:.2f} GiB of checkpoints in CPU RAM)")
        lines.append(f"  LoRA parameters: {self.lora_params:,}")
        return "\n".join(lines)


TERM_LABELS: tuple[tuple[str, str], ...] = (
    ("base_weights_gib", "base weights"),
    ("embeddings_gib", "embeddings + lm_head + norms"),
    ("lora_weights_gib", "LoRA weights"),
    ("lora_grads_gib", "LoRA gradients"),
    ("optimizer_gib", "optimizer state"),
    ("activations_gib", "activations"),
    ("logits_gib", "logits + loss"),
    ("workspace_gib", "dequantization workspace"),
    ("cuda_context_gib", "CUDA context"),
    ("allocator_margin_gib", "allocator margin"),
)
"""(field, label) of the terms that add up to ``total_gib``, in table order."""


def _check_int(field_name: str, value: Any, low: int, high: int | None, example: str) -> None:
    """Raise ``ValueError`` naming the field unless ``value`` is an int in [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and (high is None or value <= high):
        return
    span = f"from {low} to {high}" if high is not None else f">= {low}"
    raise ValueError(f"{field_name}={value!r} is not valid: pass an integer {span}, e.g. {example}.")


def _normalize_targets(target_modules: Any) -> tuple[str, ...]:
    """Validated tuple of target names; ``"all-linear"`` means the 7 standard ones."""
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return STANDARD_MODULES
        target_modules = (target_modules,)
    names = tuple(target_modules or ())
    known = STANDARD_MODULES + FUSED_MODULES
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise ValueError(
            f"target_modules={target_modules!r} is not valid: pass names from {', '.join(known)} "
            f"(or \"all-linear\"); the kit's default is all 7 of {', '.join(STANDARD_MODULES)}."
        )
    return names


def lora_modules(spec: ModelSpec, target_modules: Iterable[str] = STANDARD_MODULES) -> dict[str, tuple[int, int]]:
    """``{module: (d_in, d_out)}`` of the modules one layer's LoRA adapters sit on.

    Standard names map onto the model's real modules. In the fused Phi-3
    layout any of q/k/v (or ``qkv_proj``) gives one ``qkv_proj`` adapter of
    shape h -> q + 2*kv, and gate/up (or ``gate_up_proj``) one
    ``gate_up_proj`` adapter h -> 2*i. In the split layout ``qkv_proj`` means
    q, k and v, and ``gate_up_proj`` means gate and up.
    """
    names = set(_normalize_targets(tuple(target_modules) if not isinstance(target_modules, str) else target_modules))
    if "qkv_proj" in names:
        names |= {"q_proj", "k_proj", "v_proj"}
    if "gate_up_proj" in names:
        names |= {"gate_proj", "up_proj"}
    shapes = spec.linear_shapes()
    out: dict[str, tuple[int, int]] = {}
    for name in STANDARD_MODULES:
        if name not in names:
            continue
        if spec.fused_qkv and name in ("q_proj", "k_proj", "v_proj"):
            out["qkv_proj"] = (spec.hidden_size, spec.q_dim + 2 * spec.kv_dim)
        elif spec.fused_gate_up and name in ("gate_proj", "up_proj"):
            out["gate_up_proj"] = (spec.hidden_size, 2 * spec.intermediate_size)
        else:
            out[name] = shapes[name]
    return out


def lora_param_count(model: Any, r: int, target_modules: Iterable[str] = STANDARD_MODULES) -> int:
    """Trainable LoRA parameters: L * sum over adapted modules of r*(d_in + d_out).

    >>> lora_param_count("meta-llama/Llama-3.1-8B-Instruct", 16)
    41943040
    """
    check_rank(r)
    spec = resolve_spec(model)
    per_layer = sum(r * (d_in + d_out) for d_in, d_out in lora_modules(spec, target_modules).values())
    return per_layer * spec.num_hidden_layers


def _optimizer_bytes(spec: ModelSpec, r: int, modules: dict[str, tuple[int, int]], kind: str,
                     cal: Calibration) -> float:
    """Optimizer state bytes for all LoRA tensors (8-bit threshold applied per tensor)."""
    if kind == "none":
        return 0.0
    total = 0.0
    for d_in, d_out in modules.values():
        for numel in (r * d_in, d_out * r):  # lora_A is r x d_in, lora_B is d_out x r
            small = numel < cal.bnb_min_8bit_size
            per = cal.adamw_bytes_per_param if kind == "adam32" or small else cal.adamw_8bit_bytes_per_param
            total += numel * per
    return total * spec.num_hidden_layers


def layer_activation_bytes(spec: ModelSpec, r: int, seq: int, batch: int, n_adapters: int,
                           cal: Calibration = DEFAULT_CALIBRATION) -> float:
    """Full activations one layer keeps for backward without recomputation.

    Korthikanti et al. (arXiv:2205.05198, eq. 1): s*b*h*(34 + 5*a*s/h) bytes;
    the 34*s*b*h part is kept, the 5*a*s^2*b score part only for eager
    attention. Plus ``lora_act_bytes``*s*b*r per adapted module (x@A).
    """
    sb = seq * batch
    total = cal.act_bytes_per_sbh * sb * spec.hidden_size
    total += cal.lora_act_bytes * sb * r * n_adapters
    if spec.eager_attention:
        total += cal.attn_scores_bytes * spec.num_attention_heads * seq * seq * batch
    return total


def activation_bytes(spec: ModelSpec, r: int, seq: int, batch: int, n_adapters: int,
                     gradient_checkpointing: Checkpointing,
                     cal: Calibration = DEFAULT_CALIBRATION) -> tuple[float, float]:
    """``(gpu_bytes, cpu_bytes)`` of activations under a checkpointing mode.

    * False: every layer keeps its full activations: L * full.
    * True: every layer keeps its input (2*s*b*h), plus one layer's full
      activations while it is recomputed (Korthikanti sec. 4.2, "full
      recomputation").
    * ``"unsloth"``: as True, but the per-layer inputs live in CPU RAM; only
      ``offload_resident_layers`` of them sit on the GPU at once.
    """
    full = layer_activation_bytes(spec, r, seq, batch, n_adapters, cal)
    ckpt = cal.checkpoint_bytes_per_sbh * seq * batch * spec.hidden_size
    layers = spec.num_hidden_layers
    if gradient_checkpointing is False:
        return layers * full, 0.0
    if gradient_checkpointing is True:
        return layers * ckpt + cal.recompute_layers * full, 0.0
    resident = min(cal.offload_resident_layers, layers)
    return resident * ckpt + cal.recompute_layers * full, layers * ckpt


def _validate(r: int, max_seq_length: int, batch_size: int, optimizer: str,
              gradient_checkpointing: Any, dtype_bytes: Any, load_in_4bit: Any) -> None:
    """Raise ``ValueError`` naming the first bad argument and how to fix it."""
    check_rank(r)
    _check_int("max_seq_length", max_seq_length, 1, None, "2048")
    _check_int("batch_size", batch_size, 1, None, "2")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not known to the estimator: pass one of "
                         f"{', '.join(OPTIMIZERS)} (the kit uses \"adamw_8bit\").")
    if not (isinstance(gradient_checkpointing, bool) or gradient_checkpointing == "unsloth"):
        raise ValueError(f"gradient_checkpointing={gradient_checkpointing!r} is not valid: pass "
                         f"\"unsloth\" (offload to CPU RAM), True or False.")
    if dtype_bytes not in (2, 4) or isinstance(dtype_bytes, bool):
        raise ValueError(f"dtype_bytes={dtype_bytes!r} is not valid: pass 2 (fp16/bf16) or 4 (fp32).")
    if not isinstance(load_in_4bit, bool):
        raise ValueError(f"load_in_4bit={load_in_4bit!r} is not valid: pass True or False.")


def estimate_vram(
    model: Any,
    r: int = 64,
    max_seq_length: int = 2048,
    batch_size: int = 2,
    target_modules: Iterable[str] = STANDARD_MODULES,
    load_in_4bit: bool = True,
    optimizer: str = "adamw_8bit",
    gradient_checkpointing: Checkpointing = "unsloth",
    dtype_bytes: int = 2,
    fused_loss: bool | None = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
) -> VramEstimate:
    """Estimated peak GPU memory of one LoRA training step.

    ``model`` is anything :func:`rslora_colab.catalog.resolve_spec` accepts.
    ``dtype_bytes`` is the width of the non-quantized weights (embeddings,
    lm_head, norms, and the linears when ``load_in_4bit=False``).
    ``fused_loss=None`` assumes Unsloth's fused cross-entropy exactly when
    ``gradient_checkpointing="unsloth"`` (i.e. the Unsloth backend), and
    transformers' fp32 loss otherwise. See the module docstring for every
    term and its source.

    >>> round(estimate_vram("Llama-3.2-1B-Instruct", r=16).total_gib, 1) > 0
    True
    """
    _validate(r, max_seq_length, batch_size, optimizer, gradient_checkpointing, dtype_bytes, load_in_4bit)
    cal = calibration
    spec = resolve_spec(model)
    modules = lora_modules(spec, target_modules)
    s, b, L = max_seq_length, batch_size, spec.num_hidden_layers

    linear_params = spec.linear_params_per_layer * L
    base = linear_params * (cal.nf4_bytes_per_param if load_in_4bit else dtype_bytes)
    embeddings = (spec.embedding_params + spec.norm_params) * dtype_bytes
    lora_params = L * sum(r * (d_in + d_out) for d_in, d_out in modules.values())
    lora_weights = lora_params * cal.lora_weight_bytes
    lora_grads = lora_params * cal.lora_grad_bytes
    optim = _optimizer_bytes(spec, r, modules, OPTIMIZERS[optimizer], cal)
    acts_gpu, acts_cpu = activation_bytes(spec, r, s, b, len(modules), gradient_checkpointing, cal)
    fused = (gradient_checkpointing == "unsloth") if fused_loss is None else bool(fused_loss)
    logits = b * s * spec.vocab_size * (cal.logits_bytes_fused if fused else cal.logits_bytes_unfused)
    largest = max(d_in * d_out for d_in, d_out in _module_shapes(spec).values())
    workspace = cal.dequant_buffers * largest * dtype_bytes if load_in_4bit else 0.0

    tensors = base + embeddings + lora_weights + lora_grads + optim + acts_gpu + logits + workspace
    margin = tensors * cal.fragmentation
    total = tensors + margin + cal.cuda_context_gib * GIB
    return VramEstimate(
        model=spec.name, r=r, max_seq_length=s, batch_size=b, load_in_4bit=load_in_4bit,
        optimizer=optimizer, gradient_checkpointing=gradient_checkpointing, lora_params=lora_params,
        base_weights_gib=base / GIB, embeddings_gib=embeddings / GIB,
        lora_weights_gib=lora_weights / GIB, lora_grads_gib=lora_grads / GIB,
        optimizer_gib=optim / GIB, activations_gib=acts_gpu / GIB, logits_gib=logits / GIB,
        workspace_gib=workspace / GIB, cuda_context_gib=cal.cuda_context_gib,
        allocator_margin_gib=margin / GIB, total_gib=total / GIB, offloaded_cpu_gib=acts_cpu / GIB,
    )


def _module_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """One layer's real linear modules (fused where the layout fuses them)."""
    return lora_modules(spec, STANDARD_MODULES)
