"""Estimate the GPU memory a QLoRA/rsLoRA fine-tune needs, term by term.

Every number here is arithmetic on the model's ``config.json`` plus the
constants in :class:`Calibration`. **The constants are taken from papers and
library source code; none has been checked on a GPU of ours yet.** The static
part (what is resident after loading and adding LoRA) matches the figures
Unsloth's own T4 notebooks print for Llama and Qwen models within 1 % when the
constants describe the library versions those notebooks ran
(:data:`STACK_CALIBRATIONS`); ``docs/memory.md`` lists the formulas, sources
and that comparison. Pass your own ``Calibration`` once measurements exist.

Notation: h hidden size, i intermediate size, L layers, a attention heads,
d head_dim, V vocabulary, s sequence length, b micro-batch, r LoRA rank.

Terms (bytes), each summed into :class:`VramEstimate`:

* base weights: the 7 projections, L * (h*q + 2*h*kv + q*h + 3*h*i) params
  (q = a*d, kv = n_kv*d, grouped-query attention counted), at
  ``nf4_bytes_per_param`` = 0.516 B in 4-bit (QLoRA, Dettmers et al. 2023,
  arXiv:2305.14314: 4-bit codes 0.5 B + 8-bit absmax per 64 weights 1/64 B +
  fp32 second-level constant per 256 blocks 4/16384 B = 0.5159 B), else
  ``dtype_bytes``. The published sizes of Unsloth's plain 4-bit repos agree to
  0.1 % (Meta-Llama-3.1-8B-bnb-4bit 5.70 GB, Qwen2.5-7B-bnb-4bit 5.55 GB);
  bitsandbytes' per-matrix code tables (16 + 256 floats) are noise.
* 16-bit layers of a dynamic quant: the linears an ``-unsloth-bnb-4bit`` repo
  keeps unquantized (its ``llm_int8_skip_modules``), at ``dtype_bytes``
  instead of NF4 (:func:`dynamic_16bit_params`).
* embeddings: embedding + lm_head (V*h tied, 2*V*h untied) + RMSNorm weights,
  kept in 16-bit by bitsandbytes (only linear layers are quantized). Neither
  loader unties a tied head: Unsloth re-ties it (``unsloth_zoo`` patching_utils,
  ``patch_model_and_tokenizer``: ``lm_head.weight = ... old_input_embedding``,
  ``model.tie_weights()``), PEFT's ``prepare_model_for_kbit_training`` casts the
  one shared parameter in place (``param.data = param.data.to(float32)``).
* RoPE caches (Unsloth): cos and sin tables of min(32768, max_position) rows x
  head_dim in fp16 (Unsloth's ``LlamaRotaryEmbedding``); one shared table now,
  one per attention layer in Unsloth 2024.x (see ``Calibration``).
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
  moves those per-layer inputs to CPU RAM, leaving a couple on the GPU. The
  layer whose backward runs also holds its MLP's gate and up gradients
  (4*s*b*i bytes), which eq. 1 (stored activations only) leaves out; with it
  the per-token growth matches Unsloth's published context lengths
  (``docs/memory.md``).
* logits: transformers' loss keeps all b*s*V logits: fp16 (2 B) + an fp32
  upcast (4 B) + its fp32 gradient (4 B) = 10 B. Unsloth's fused linear
  cross-entropy (``unsloth_zoo.fused_losses.fused_linear``) computes the logits
  one chunk of rows at a time and writes the hidden-state gradient in forward:
  one chunk of :func:`fused_ce_rows` rows x V plus b*s*h*2 B
  (:func:`logits_bytes`).
* workspace: bitsandbytes dequantizes one NF4 matrix to 16-bit per matmul;
  two of the largest are counted (forward and backward).
* CUDA context + cuBLAS workspaces (~0.3-0.5 GB, not in PyTorch's
  ``max_memory_reserved``) and an allocator fragmentation margin (10 % of
  the tensors).
* load-time peak: a loader that casts a 16-bit tensor on the GPU holds two
  copies of it for a moment (transformers 4.51); the freed block is reused by
  the first step, so only its excess over the step's own tensors counts.

:meth:`VramEstimate.static_gib` is the part that is resident after loading and
adding LoRA, before the first step: what Unsloth's notebooks print as
"X GB of memory reserved." ``docs/memory.md`` compares it with those figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Union

from ..presets import check_rank
from .catalog import STANDARD_MODULES, ModelSpec, resolve_spec

GIB = 2**30
"""Bytes in a GiB (all ``*_gib`` fields use binary gigabytes)."""

FUSED_MODULES = ("qkv_proj", "gate_up_proj")
"""Fused module names (Phi-3 layout) also accepted in ``target_modules``."""

Checkpointing = Union[str, bool]


@dataclass(frozen=True)
class Calibration:
    """Every tunable constant of the estimator, in one place.

    Defaults come from the sources cited per field and describe the stack the
    kit installs. **Not checked on a GPU of ours yet**: once real peaks are
    measured (``bench/gpu_memory.py``), fit these and pass the result as
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
    backward_bytes_per_sbi: float = 4.0
    """Per s*b*i: gradients of the MLP's gate and up outputs (2 x i x 2 B per token), alive while one layer's
    backward runs on top of its stored activations, which is all Korthikanti's count covers. 4 is the least any
    SwiGLU backward needs (Unsloth's fused kernel writes them in place of the saved gate and up outputs; autograd
    makes new tensors). Checked against Unsloth's published maximum context lengths
    (``tests/data/published_context_lengths.json``)."""
    offload_resident_layers: float = 2.0
    """Layer inputs still on the GPU in Unsloth's offloaded mode (in use + prefetched)."""
    logits_bytes_unfused: float = 10.0
    """Per logit, transformers loss: fp16 logits 2 + fp32 upcast 4 + fp32 grad 4."""
    fused_ce_bytes_per_logit: float = 8.0
    """Per logit of one Unsloth cross-entropy chunk: its fp32 logits (4 B, what ``fused_linear_rows`` budgets) and
    the gradient the op forms from them in forward; 8 B is the sibling path's own figure (``_BYTES_PER_LOGIT = 8.0``,
    unsloth_zoo 2026.10.9 ``fused_losses/chunked_logprob.py``, "one chunk's logits")."""
    fused_ce_min_logits: int = 512 * 151936
    """Fewest logits per chunk (``_MIN_LOGITS``, ``fused_losses/fused_linear.py``: "Fewer than 512 rows starve
    the K = vocab GEMM"): min rows = the power of two at or below this / V, clamped to [512, max rows]."""
    fused_ce_max_rows: int = 4096
    """Most rows per chunk (``_MAX_ROWS``, ``UNSLOTH_FUSED_LINEAR_MAX_ROWS`` default, ``fused_linear.py``)."""
    fused_ce_chunk_gib: float = 2.0
    """Budget of one chunk's fp32 logits (``_CHUNK_GB``, ``UNSLOTH_LOGPROB_CHUNK_GB`` default 2.0; Unsloth also caps
    it at half the free memory, which only shrinks chunks)."""
    dynamic_16bit_fraction: float = 0.0607
    """Share of linear weights a dynamic ``-unsloth-bnb-4bit`` repo keeps 16-bit when its count is not known:
    Qwen3-14B's 803 M of 13,212 M (the catalog's Qwen3-14B entry, from its published shard sizes). Its skip list
    style (whole ``mlp``/``self_attn`` blocks of a few layers) is the same in the lists quoted in
    vllm-project/vllm#12974 and unslothai/unsloth#8968 (Qwen3-0.6B: at least 25 M of 440 M, 5.7 %)."""
    rope_cache_max_rows: int = 32768
    """Rows of Unsloth's RoPE cos/sin tables: ``current_rope_size = min(4 * 8192, max_position_embeddings)``
    (``LlamaRotaryEmbedding.__init__``, unsloth/models/llama.py, 2024.5 through 2026.10.9)."""
    rope_cache_bytes: float = 2.0
    """Bytes per cos/sin entry: built in ``torch.get_default_dtype()``, which transformers sets to the load dtype
    (fp16 on a T4) while it builds the model; Unsloth downcasts them to the model dtype (``downcast_rope``)."""
    rope_caches_shared: float = 1.0
    """RoPE tables shared by all layers: Unsloth sets every ``layer.self_attn.rotary_emb = model.model.rotary_emb``
    ("For transformers > 4.47.1", unsloth/models/llama.py); 2026.10.9 builds it lazily at the first forward."""
    rope_caches_per_layer: float = 0.0
    """RoPE tables per attention layer: 0 now; 1 for Unsloth 2024.x with transformers < 4.48, whose attention
    ``__init__`` built its own ``self.rotary_emb`` (``patch_llama_rope_scaling`` / ``patch_linear_scaling``)."""
    load_cast_copies: float = 0.0
    """Extra copies of the last-loaded 16-bit tensor (an untied lm_head, last shard) alive while the loader casts
    it: 0 for transformers 5.x (one ``tensor.to(device=, dtype=)``, converted on the CPU: PyTorch ``Copy.cu``
    "Type conversions are performed on the CPU for CPU-GPU copies") and 4.44 (cast on the CPU); 1 for 4.51.3,
    whose ``_load_state_dict_into_meta_model`` moves the bf16 tensor to the GPU, then casts it there."""
    dequant_buffers: float = 2.0
    """16-bit copies of the largest NF4 matrix alive at once (forward + backward matmul)."""
    cuda_context_gib: float = 0.45
    """CUDA context + cuBLAS workspaces, outside PyTorch's allocator (~0.3-0.5 GB)."""
    fragmentation: float = 0.10
    """Allocator margin as a fraction of all tensor bytes (caching-allocator fragmentation)."""


DEFAULT_CALIBRATION = Calibration()
"""The constants used when no ``calibration`` is passed: the stack the kit installs (Unsloth 2026.x, transformers 5)."""

STACK_CALIBRATIONS: dict[str, Calibration] = {
    "current": DEFAULT_CALIBRATION,
    "unsloth-2024": replace(DEFAULT_CALIBRATION, rope_caches_per_layer=1.0),
    "transformers-4.51": replace(DEFAULT_CALIBRATION, load_cast_copies=1.0),
}
"""Calibrations for the library versions behind published figures (``docs/memory.md``), by name.

* ``"unsloth-2024"``: Unsloth 2024.5-2024.10 with transformers 4.4x: one RoPE table per attention
  layer plus the model's own.
* ``"transformers-4.51"``: Unsloth 2025.4-2025.5 with transformers 4.51.3: the loader casts each
  16-bit tensor on the GPU.
"""

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
    """Micro-batch: rows per forward/backward pass (b sequences; 2b for DPO, see ``sequences_per_row``)."""
    load_in_4bit: bool
    """Whether the base linear weights are NF4."""
    optimizer: str
    """transformers ``optim`` name."""
    gradient_checkpointing: Checkpointing
    """``"unsloth"`` (offloaded), True, or False."""
    lora_params: int
    """Trainable LoRA parameters."""
    base_weights_gib: float
    """Quantized (or 16-bit) linear projections of all layers, less a dynamic quant's 16-bit layers."""
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
    dynamic_16bit_gib: float = 0.0
    """Linears a dynamic 4-bit repo keeps in 16-bit (:func:`dynamic_16bit_params`)."""
    rope_cache_gib: float = 0.0
    """Unsloth's RoPE cos/sin tables (:func:`rope_cache_bytes`)."""
    load_excess_gib: float = 0.0
    """Load-time transient beyond what the first step allocates into its freed block (0 unless loads cast on GPU)."""
    load_transient_gib: float = 0.0
    """Extra copy alive while the loader casts the last 16-bit tensor; freed before training, not in ``total_gib``."""
    sequences_per_row: int = 1
    """Sequences each row puts through the model: 2 for DPO (chosen and rejected in one batch), else 1."""
    trained_embeddings_gib: float = 0.0
    """Continued pretraining (``train_embeddings``): the trained fp32 copies of embed_tokens and lm_head (one
    matrix when tied), resident from the moment the adapter is added (:func:`embedding_training_bytes`)."""
    trained_embeddings_state_gib: float = 0.0
    """Their fp32 gradients and optimizer state."""

    @property
    def trained_embeddings_total_gib(self) -> float:
        """Everything continued pretraining adds: the fp32 copies, their gradients and optimizer state."""
        return self.trained_embeddings_gib + self.trained_embeddings_state_gib

    @property
    def static_gib(self) -> float:
        """Reserved after loading and adding LoRA, before the first step (``max_memory_reserved`` then).

        Base weights, 16-bit layers, embeddings, RoPE tables, and the larger of the LoRA weights
        and the load-time transient (the LoRA weights are allocated into its freed block). No CUDA
        context (it lies outside ``max_memory_reserved``) and no fragmentation margin: the caching
        allocator rounds blocks to 512 B and segments to 2 MiB, under 1 % on every published figure.
        """
        resident = self.base_weights_gib + self.dynamic_16bit_gib + self.embeddings_gib + self.rope_cache_gib
        return resident + self.trained_embeddings_gib + max(self.lora_weights_gib, self.load_transient_gib)

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-friendly)."""
        return asdict(self)

    def table(self) -> str:
        """The breakdown as an aligned plain-text table."""
        ckpt = self.gradient_checkpointing
        head = (f"VRAM estimate for {self.model}: r={self.r}, max_seq_length={self.max_seq_length}, "
                f"micro-batch {self.batch_size}{_pairs_note(self.sequences_per_row)}, "
                f"{'4-bit' if self.load_in_4bit else '16-bit'} base, "
                f"{self.optimizer}, gradient_checkpointing={ckpt!r}")
        rows = [(label, getattr(self, name)) for name, label in TERM_LABELS
                if getattr(self, name) or name not in OPTIONAL_TERMS]
        lines = [head] + [f"  {label:<34}{value:>8.2f} GiB" for label, value in rows]
        lines.append(f"  {'total':<34}{self.total_gib:>8.2f} GiB")
        lines.append(f"  (static after load + LoRA: {self.static_gib:.2f} GiB, CUDA context not included)")
        if self.offloaded_cpu_gib:
            lines.append(f"  (plus {self.offloaded_cpu_gib:.2f} GiB of checkpoints in CPU RAM)")
        lines.append(f"  LoRA parameters: {self.lora_params:,}")
        return "\n".join(lines)


def _pairs_note(sequences_per_row: int) -> str:
    """" (x2 sequences: chosen + rejected)" for a preference run, "" otherwise."""
    return f" (x{sequences_per_row} sequences: chosen + rejected)" if sequences_per_row > 1 else ""


TERM_LABELS: tuple[tuple[str, str], ...] = (
    ("base_weights_gib", "base weights"),
    ("dynamic_16bit_gib", "16-bit layers (dynamic quant)"),
    ("embeddings_gib", "embeddings + lm_head + norms"),
    ("rope_cache_gib", "RoPE caches"),
    ("lora_weights_gib", "LoRA weights"),
    ("lora_grads_gib", "LoRA gradients"),
    ("optimizer_gib", "optimizer state"),
    ("trained_embeddings_gib", "trained embed + head (fp32)"),
    ("trained_embeddings_state_gib", "their gradients + optimizer state"),
    ("activations_gib", "activations"),
    ("logits_gib", "logits + loss"),
    ("workspace_gib", "dequantization workspace"),
    ("load_excess_gib", "load-time peak excess"),
    ("cuda_context_gib", "CUDA context"),
    ("allocator_margin_gib", "allocator margin"),
)
"""(field, label) of the terms that add up to ``total_gib``, in table order."""

OPTIONAL_TERMS = frozenset({"dynamic_16bit_gib", "rope_cache_gib", "load_excess_gib", "trained_embeddings_gib",
                            "trained_embeddings_state_gib"})
"""Terms :meth:`VramEstimate.table` leaves out when they are zero (most models and backends)."""


def check_int(field_name: str, value: Any, low: int, high: int | None, example: str) -> None:
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


def embedding_training_bytes(spec: ModelSpec, optimizer_kind: str, cal: Calibration) -> tuple[float, float]:
    """``(weights, gradients + optimizer state)`` in bytes for training embed_tokens and lm_head in full.

    PEFT's ``modules_to_save`` trains a copy of each matrix (``V x h``; one when
    tied), which the kit and Unsloth (on a T4: unslothai/unsloth#1200) keep in
    fp32: 4 bytes, plus a 4-byte fp32 gradient and the optimizer's state (8-bit
    AdamW about 2 bytes, 32-bit AdamW 8). The frozen 16-bit originals stay in
    ``embeddings_gib``.
    """
    state = {"adam8": cal.adamw_8bit_bytes_per_param, "adam32": cal.adamw_bytes_per_param, "none": 0.0}[optimizer_kind]
    return spec.embedding_params * 4.0, spec.embedding_params * (4 + state)


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

    In every mode one layer's backward adds its MLP gradients
    (``backward_bytes_per_sbi`` * s*b*i) on top.
    """
    full = layer_activation_bytes(spec, r, seq, batch, n_adapters, cal)
    ckpt = cal.checkpoint_bytes_per_sbh * seq * batch * spec.hidden_size
    backward = cal.backward_bytes_per_sbi * seq * batch * spec.intermediate_size
    layers = spec.num_hidden_layers
    if gradient_checkpointing is False:
        return layers * full + backward, 0.0
    if gradient_checkpointing is True:
        return layers * ckpt + cal.recompute_layers * full + backward, 0.0
    resident = min(cal.offload_resident_layers, layers)
    return resident * ckpt + cal.recompute_layers * full + backward, layers * ckpt


def dynamic_16bit_params(spec: ModelSpec, cal: Calibration = DEFAULT_CALIBRATION) -> int:
    """Linear weights kept in 16-bit when ``spec`` is a dynamic 4-bit repo (0 otherwise).

    The catalog's count where a source gives it (``ModelSpec.dynamic_16bit_params``, or a
    config's ``llm_int8_skip_modules``), else ``dynamic_16bit_fraction`` of all linear weights.

    >>> dynamic_16bit_params(resolve_spec("Qwen/Qwen3-14B"))  # three MLP blocks
    802160640
    >>> dynamic_16bit_params(resolve_spec("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"))
    0
    """
    if not spec.dynamic_quant:
        return 0
    if spec.dynamic_16bit_params is not None:
        return spec.dynamic_16bit_params
    return round(cal.dynamic_16bit_fraction * spec.linear_params_per_layer * spec.num_hidden_layers)


def rope_cache_bytes(spec: ModelSpec, cal: Calibration = DEFAULT_CALIBRATION) -> float:
    """Unsloth's RoPE cos + sin tables: copies * 2 * min(32768, max_position) * head_dim * 2 B.

    copies = ``rope_caches_shared`` + ``rope_caches_per_layer`` * L (1 now; L + 1 in Unsloth 2024.x).
    A ``"longrope"`` model (Phi-3.5) keeps a short and a long table pair of ``long_rope_rows`` rows
    (Unsloth's ``LongRopeRotaryEmbedding``).

    >>> rope_cache_bytes(resolve_spec("llama-3.1-8b")) / 2**20  # one shared fp16 table pair
    16.0
    """
    if spec.long_rope_rows:
        rows = 2 * min(spec.long_rope_rows, spec.max_position_embeddings or spec.long_rope_rows)
    else:
        rows = min(cal.rope_cache_max_rows, spec.max_position_embeddings or cal.rope_cache_max_rows)
    copies = cal.rope_caches_shared + cal.rope_caches_per_layer * spec.num_hidden_layers
    return copies * 2 * rows * spec.head_dim * cal.rope_cache_bytes


def _pow2_floor(x: float) -> int:
    """The largest power of two at or below ``x`` (0 below 1), as unsloth_zoo's ``_pow2`` then ``//= 2``."""
    return 1 << (int(x).bit_length() - 1) if x >= 1 else 0


def fused_ce_rows(spec: ModelSpec, tokens: int, cal: Calibration = DEFAULT_CALIBRATION) -> int:
    """Rows per chunk of Unsloth's fused cross-entropy for ``tokens`` = b*s rows.

    ``fused_linear_rows`` (unsloth_zoo 2026.10.9, ``fused_losses/fused_linear.py``): the power of two
    at or below tokens*h/V, at least the power of two at or below ``fused_ce_min_logits``/V (and 512),
    at most ``fused_ce_max_rows``, at most ``fused_ce_chunk_gib`` of fp32 logits, at most ``tokens``.
    Unsloth's trainer sends TRL's fused LM head here too (``patch_trl_fused_lm_head_kernel``).

    >>> fused_ce_rows(resolve_spec("llama-3.1-8b"), 2 * 2048)
    512
    """
    vocab = spec.vocab_size
    min_rows = min(max(_pow2_floor(cal.fused_ce_min_logits / vocab), 512), cal.fused_ce_max_rows)
    rows = min(max(_pow2_floor(tokens * spec.hidden_size / vocab), min_rows), cal.fused_ce_max_rows)
    rows = min(rows, max(int(cal.fused_ce_chunk_gib * GIB) // (vocab * 4), 2))
    return max(min(rows, tokens), 1)


def logits_bytes(spec: ModelSpec, tokens: int, fused: bool, dtype_bytes: int,
                 cal: Calibration = DEFAULT_CALIBRATION) -> float:
    """Loss-time memory for ``tokens`` = b*s rows of V logits.

    * transformers (``fused=False``): every logit, ``logits_bytes_unfused`` each.
    * Unsloth (``fused=True``): one chunk, :func:`fused_ce_rows` x V x ``fused_ce_bytes_per_logit``,
      plus the hidden-state gradient the op writes in forward (tokens * h * ``dtype_bytes``).
    """
    if not fused:
        return tokens * spec.vocab_size * cal.logits_bytes_unfused
    chunk = fused_ce_rows(spec, tokens, cal) * spec.vocab_size * cal.fused_ce_bytes_per_logit
    return chunk + tokens * spec.hidden_size * dtype_bytes


def load_transient_bytes(spec: ModelSpec, cal: Calibration = DEFAULT_CALIBRATION) -> float:
    """Extra copy alive while the loader casts the last-loaded 16-bit tensor on the GPU.

    An untied lm_head sits in the last shard (transformers shards in state-dict order), so all
    other weights are resident when its bf16 copy (2 B) and fp16 copy coexist; a tied embedding
    loads first, when nothing else is resident. ``load_cast_copies`` says whether the loader
    casts on the GPU at all.
    """
    late = 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size
    return cal.load_cast_copies * late * 2


def _validate(r: int, max_seq_length: int, batch_size: int, optimizer: str,
              gradient_checkpointing: Any, dtype_bytes: Any, load_in_4bit: Any) -> None:
    """Raise ``ValueError`` naming the first bad argument and how to fix it."""
    check_rank(r)
    check_int("max_seq_length", max_seq_length, 1, None, "2048")
    check_int("batch_size", batch_size, 1, None, "2")
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
    sequences_per_row: int = 1,
    train_embeddings: bool = False,
) -> VramEstimate:
    """Estimated peak GPU memory of one LoRA training step.

    ``model`` is anything :func:`rslora_colab.memory.catalog.resolve_spec` accepts.
    ``dtype_bytes`` is the width of the non-quantized weights (embeddings,
    lm_head, norms, and the linears when ``load_in_4bit=False``).
    ``fused_loss=None`` assumes the Unsloth backend (its fused cross-entropy
    and RoPE tables) exactly when ``gradient_checkpointing="unsloth"``, and
    transformers' fp32 loss otherwise. A spec with ``dynamic_quant`` (a hub id
    Unsloth maps to a dynamic repo, or that repo's id) counts its 16-bit
    layers when ``load_in_4bit``. ``sequences_per_row=2`` is a preference
    (DPO) step: TRL's ``DPOTrainer`` puts each row's chosen and rejected
    sequences through the model as one batch of ``2 * batch_size``, so the
    activation and logit terms double (the reference forward that follows runs
    without gradients, one layer at a time, inside that peak). See the module
    docstring for every term and its source. ``train_embeddings=True``
    (continued pretraining) adds the fp32 copies of embed_tokens and lm_head,
    their gradients and optimizer state (:func:`embedding_training_bytes`).

    >>> round(estimate_vram("Llama-3.2-1B-Instruct", r=16).total_gib, 1) > 0
    True
    """
    _validate(r, max_seq_length, batch_size, optimizer, gradient_checkpointing, dtype_bytes, load_in_4bit)
    check_int("sequences_per_row", sequences_per_row, 1, 2, "1 (or 2 for DPO)")
    cal = calibration
    spec = resolve_spec(model)
    modules = lora_modules(spec, target_modules)
    s, b, L = max_seq_length, batch_size * sequences_per_row, spec.num_hidden_layers  # b: sequences per forward

    linear_params = spec.linear_params_per_layer * L
    kept_16bit = dynamic_16bit_params(spec, cal) if load_in_4bit else 0
    base = (linear_params - kept_16bit) * (cal.nf4_bytes_per_param if load_in_4bit else dtype_bytes)
    dynamic_16bit = kept_16bit * dtype_bytes
    embeddings = (spec.embedding_params + spec.norm_params) * dtype_bytes
    unsloth = (gradient_checkpointing == "unsloth") if fused_loss is None else bool(fused_loss)
    rope = rope_cache_bytes(spec, cal) if unsloth else 0.0
    lora_params = L * sum(r * (d_in + d_out) for d_in, d_out in modules.values())
    lora_weights = lora_params * cal.lora_weight_bytes
    lora_grads = lora_params * cal.lora_grad_bytes
    optim = _optimizer_bytes(spec, r, modules, OPTIMIZERS[optimizer], cal)
    acts_gpu, acts_cpu = activation_bytes(spec, r, s, b, len(modules), gradient_checkpointing, cal)
    logits = logits_bytes(spec, b * s, unsloth, dtype_bytes, cal)
    largest = max(d_in * d_out for d_in, d_out in _module_shapes(spec).values())
    workspace = cal.dequant_buffers * largest * dtype_bytes if load_in_4bit else 0.0
    transient = load_transient_bytes(spec, cal)
    # The transient's block is freed before LoRA is added; what comes after load is allocated into it.
    copies, copies_state = embedding_training_bytes(spec, OPTIMIZERS[optimizer], cal) if train_embeddings else (0, 0)
    after_load = lora_weights + lora_grads + optim + acts_gpu + logits + workspace + copies + copies_state
    load_excess = max(0.0, transient - after_load)

    tensors = base + dynamic_16bit + embeddings + rope + after_load + load_excess
    margin = tensors * cal.fragmentation
    total = tensors + margin + cal.cuda_context_gib * GIB
    return VramEstimate(
        model=spec.name, r=r, max_seq_length=s, batch_size=batch_size, load_in_4bit=load_in_4bit,
        optimizer=optimizer, gradient_checkpointing=gradient_checkpointing, lora_params=lora_params,
        base_weights_gib=base / GIB, embeddings_gib=embeddings / GIB,
        lora_weights_gib=lora_weights / GIB, lora_grads_gib=lora_grads / GIB,
        optimizer_gib=optim / GIB, activations_gib=acts_gpu / GIB, logits_gib=logits / GIB,
        workspace_gib=workspace / GIB, cuda_context_gib=cal.cuda_context_gib,
        allocator_margin_gib=margin / GIB, total_gib=total / GIB, offloaded_cpu_gib=acts_cpu / GIB,
        dynamic_16bit_gib=dynamic_16bit / GIB, rope_cache_gib=rope / GIB,
        load_excess_gib=load_excess / GIB, load_transient_gib=transient / GIB,
        sequences_per_row=sequences_per_row, trained_embeddings_gib=copies / GIB,
        trained_embeddings_state_gib=copies_state / GIB,
    )


def _module_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """One layer's real linear modules (fused where the layout fuses them)."""
    return lora_modules(spec, STANDARD_MODULES)
