"""Estimate the GPU memory of one GRPO step: generation, then the log-prob pass with gradients.

**Arithmetic only, like** :mod:`.estimate`: **no term here has been measured on a GPU yet.** A GRPO step
(TRL's ``GRPOTrainer`` without vLLM, 1.15/1.16) has two phases, and its peak is the larger of them:

1. **generation**: the whole generation batch (``batch_size * grad_accum`` completions per process,
   ``num_generations`` per prompt; TRL's ``generation_batch_size``) is sampled in one ``generate`` call by the
   training model, adapter on. Besides what is resident (base weights, embeddings, RoPE tables, the LoRA
   weights, the optimizer's state after the first step) it holds:

   * the KV cache: ``G * (P + C) * L * 2 * n_kv * d`` values (keys and values of every layer) at
     ``dtype_bytes``: G completions of prompt length P plus completion length C;
   * the prefill of the G prompts without gradients: one layer's widest intermediate at a time, the MLP's
     gate, up and their product, ``3 * G * P * i`` values;
   * sampling: the last position's logits in fp32 with the softmax and top-k/top-p copies, ``3 * G * V * 4`` B
     (transformers' ``generate`` keeps only the last position's logits, ``logits_to_keep=1``).

2. **training**: ``batch_size`` of those sequences (P + C tokens) forward and backward, as an SFT step of
   the same shape (:func:`~rslora_colab.memory.estimate.estimate_vram`, activations and checkpointing
   included) except the logits: TRL computes them for the C completion positions only (``logits_to_keep``)
   and divides them by the temperature into a new tensor, so transformers' loss holds ``b * C * V`` logits at
   ``logits_bytes_unfused + 4`` B each (Unsloth's chunked loss: its fused chunk, as for SFT). With ``beta > 0``
   the reference log-probs come from a forward without gradients before this, inside this phase's peak.

Both phases add the CUDA context and the fragmentation margin of :class:`~rslora_colab.memory.Calibration`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

from .catalog import STANDARD_MODULES, resolve_spec
from .estimate import DEFAULT_CALIBRATION, GIB, Calibration, VramEstimate, estimate_vram, logits_bytes

TEMPERATURE_COPY_BYTES = 4.0
"""Extra bytes per completion logit in TRL's log-prob pass: ``logits / temperature`` is a new fp32 tensor."""
SAMPLING_COPIES = 3
"""fp32 copies of the last position's logits while sampling: the logits, their softmax, a top-k/top-p copy."""
PREFILL_WIDTHS = 3
"""Widest tensors of one layer while prefilling without gradients: the MLP's gate, up and their product."""


@dataclass(frozen=True)
class GrpoEstimate:
    """Estimated peak GPU memory of one GRPO step, per phase, in GiB (see the module docstring)."""

    model: str
    """Name of the model the estimate is for."""
    r: int
    """LoRA rank."""
    num_generations: int
    """Completions per prompt."""
    prompt_length: int
    """Prompt tokens (P)."""
    completion_length: int
    """Completion tokens (C): max_completion_length."""
    batch_size: int
    """Completions per forward/backward pass (TRL's per_device_train_batch_size)."""
    generation_batch: int
    """Completions sampled together: batch_size * grad_accum (TRL's generation_batch_size on one GPU)."""
    train: VramEstimate
    """The training phase as an SFT step of the same shape, with GRPO's logits (``logits_gib``) in its total."""
    resident_gib: float
    """What generation shares with training: weights, embeddings, RoPE tables, LoRA weights, optimizer state,
    dequantization buffers."""
    kv_cache_gib: float
    """Keys and values of every layer for the generation batch, prompt and completion."""
    prefill_gib: float
    """One layer's widest intermediates while prefilling the generation batch's prompts (no gradients)."""
    sampling_gib: float
    """The last position's logits and their sampling copies, fp32."""
    generation_gib: float
    """Peak of the generation phase, margin and CUDA context included."""
    train_gib: float
    """Peak of the training phase (the log-prob pass with gradients), margin and CUDA context included."""
    total_gib: float
    """The step's peak: the larger phase."""

    @property
    def phase(self) -> str:
        """Which phase sets the peak: ``"generation"`` or ``"training"``."""
        return "generation" if self.generation_gib > self.train_gib else "training"

    def table(self) -> str:
        """The breakdown as an aligned plain-text table."""
        head = (f"GRPO step estimate for {self.model}: r={self.r}, {self.generation_batch} completions sampled "
                f"together ({self.num_generations} per prompt), prompt {self.prompt_length} + completion "
                f"{self.completion_length} tokens, micro-batch {self.batch_size}")
        rows = [("resident (weights, LoRA, optimizer)", self.resident_gib), ("KV cache", self.kv_cache_gib),
                ("prefill (no gradients)", self.prefill_gib), ("sampling logits", self.sampling_gib),
                ("generation phase peak", self.generation_gib), ("training phase logits", self.train.logits_gib),
                ("training phase peak", self.train_gib)]
        lines = [head] + [f"  {label:<38}{value:>8.2f} GiB" for label, value in rows]
        lines.append(f"  {'total (the ' + self.phase + ' phase)':<38}{self.total_gib:>8.2f} GiB")
        return "\n".join(lines)


def estimate_grpo_vram(model: Any, r: int = 32, num_generations: int = 4, prompt_length: int = 256,
                       max_completion_length: int = 256, batch_size: int = 2, grad_accum: int = 4,
                       target_modules: Iterable[str] = STANDARD_MODULES, load_in_4bit: bool = True,
                       optimizer: str = "adamw_8bit", gradient_checkpointing: Any = "unsloth", dtype_bytes: int = 2,
                       fused_loss: bool | None = None,
                       calibration: Calibration = DEFAULT_CALIBRATION) -> GrpoEstimate:
    """Estimated peak GPU memory of one GRPO step (the module docstring lists the terms).

    The defaults are the kit's GRPO defaults on a T4: 2 x 4 = 8 completions a step, 4 per prompt, 256-token
    completions, here after 256-token prompts. Other arguments as :func:`~rslora_colab.memory.estimate_vram`.

    >>> est = estimate_grpo_vram("Qwen2.5-3B-Instruct", r=32)
    >>> est.generation_batch, est.phase
    (8, 'training')
    """
    if not (isinstance(num_generations, int) and num_generations >= 2):
        raise ValueError(f"num_generations={num_generations!r}: pass an integer >= 2")
    if (batch_size * grad_accum) % num_generations:
        raise ValueError(f"batch_size * grad_accum = {batch_size * grad_accum} must be a multiple of "
                         f"num_generations={num_generations}")
    cal, spec = calibration, resolve_spec(model)
    seq, gen_batch = prompt_length + max_completion_length, batch_size * grad_accum
    train = estimate_vram(spec, r=r, max_seq_length=seq, batch_size=batch_size, target_modules=target_modules,
                          load_in_4bit=load_in_4bit, optimizer=optimizer,
                          gradient_checkpointing=gradient_checkpointing, dtype_bytes=dtype_bytes,
                          fused_loss=fused_loss, calibration=cal)
    unsloth = (gradient_checkpointing == "unsloth") if fused_loss is None else bool(fused_loss)
    completion_tokens = batch_size * max_completion_length
    grpo_logits = logits_bytes(spec, completion_tokens, unsloth, dtype_bytes, cal)
    if not unsloth:
        grpo_logits += completion_tokens * spec.vocab_size * TEMPERATURE_COPY_BYTES
    margin = 1 + cal.fragmentation
    train_gib = train.total_gib + (grpo_logits / GIB - train.logits_gib) * margin
    train = dataclasses.replace(train, logits_gib=grpo_logits / GIB, total_gib=train_gib,
                                allocator_margin_gib=train.allocator_margin_gib
                                + (grpo_logits / GIB - train.logits_gib) * cal.fragmentation)

    resident = (train.base_weights_gib + train.dynamic_16bit_gib + train.embeddings_gib + train.rope_cache_gib
                + train.lora_weights_gib + train.optimizer_gib + train.workspace_gib)
    kv = gen_batch * seq * spec.num_hidden_layers * 2 * spec.num_key_value_heads * spec.head_dim * dtype_bytes
    prefill = PREFILL_WIDTHS * gen_batch * prompt_length * spec.intermediate_size * dtype_bytes
    sampling = SAMPLING_COPIES * gen_batch * spec.vocab_size * 4
    generation = (resident + (kv + prefill + sampling) / GIB) * margin + cal.cuda_context_gib
    return GrpoEstimate(model=spec.name, r=r, num_generations=num_generations, prompt_length=prompt_length,
                        completion_length=max_completion_length, batch_size=batch_size, generation_batch=gen_batch,
                        train=train, resident_gib=resident, kv_cache_gib=kv / GIB, prefill_gib=prefill / GIB,
                        sampling_gib=sampling / GIB, generation_gib=generation, train_gib=train_gib,
                        total_gib=max(generation, train_gib))
