"""Fit a run to the GPU before any weights load: :func:`~rslora_colab.plan.plan_for_gpu` on a config.

``quick_finetune`` calls :func:`fit_to_gpu` first. It reads the model's
architecture without loading it (a catalog id needs nothing, a local folder
its ``config.json``, any other hub id only ``config.json`` through
``AutoConfig``; a loaded model its ``.config``), estimates the run for the
backend that will train it, and applies the plan's micro-batch, gradient
accumulation and sequence length, or raises the planner's "does not fit"
before the download starts. The estimates are not yet calibrated on a GPU
(``docs/memory.md``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from .catalog import STANDARD_MODULES, ModelSpec, resolve_spec, spec_from_config, unsloth_maps_to_dynamic
from .config import FinetuneConfig
from .load import runtime_of
from .plan import TrainPlan, plan_for_gpu
from .runtime import Runtime, detect_runtime
from .vram import FUSED_MODULES


def model_spec(model: Any) -> ModelSpec | None:
    """Architecture of a hub id, local folder, ``"demo"`` or ``(model, tokenizer)`` pair, without weights.

    Returns None when there is nothing to read (after one line saying why when a
    hub id's ``config.json`` cannot be fetched); loading then reports the real problem.
    """
    if isinstance(model, tuple):
        loaded = getattr(model[0], "config", None) if model else None
        return spec_from_config(loaded) if loaded is not None else None
    if not isinstance(model, (str, os.PathLike)):
        return None  # not a model quick_finetune accepts: loading says so
    from .demo import resolve_model_name

    name = resolve_model_name(str(model))
    try:
        return resolve_spec(name)  # catalog id, or a local folder / config.json
    except ValueError:
        pass
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)  # fetches config.json only
    except (OSError, ValueError) as err:
        print(f"rslora-colab: no memory plan: could not read {name}'s config.json ({err})", flush=True)
        return None
    return spec_from_config(config, name=name)


def estimate_settings(config: FinetuneConfig, runtime: Runtime) -> dict[str, Any]:
    """``estimate_vram`` keyword arguments describing how this config will train on ``runtime``.

    The transformers backend keeps embeddings and norms in fp32 (PEFT's
    ``prepare_model_for_kbit_training`` upcasts them) and uses plain gradient
    checkpointing; Unsloth keeps them 16-bit and offloads checkpoints.
    """
    unsloth = runtime.backend == "unsloth"
    wide = runtime.precision == "fp32" or (not unsloth and config.load_in_4bit)
    checkpointing = ("unsloth" if unsloth else True) if config.gradient_checkpointing else False
    return {
        "target_modules": [t for t in config.target_modules if t in STANDARD_MODULES + FUSED_MODULES],
        "load_in_4bit": config.load_in_4bit,
        "optimizer": runtime.optimizer,
        "gradient_checkpointing": checkpointing,
        "dtype_bytes": 4 if wide else 2,
    }


def _wants_plan(config: FinetuneConfig) -> bool:
    """Plan when asked to and there is a GPU budget: a CUDA GPU, or an explicit ``gpu=`` size."""
    explicit = not (isinstance(config.gpu, str) and config.gpu.strip().lower() == "auto")
    return config.plan and (explicit or torch.cuda.is_available())


def fit_to_gpu(model: Any, config: FinetuneConfig) -> tuple[FinetuneConfig, TrainPlan | None]:
    """``config`` with the micro-batch, grad_accum and max_seq_length that fit ``config.gpu``.

    Skipped (returns ``(config, None)``) with ``plan=False``, on a machine
    without a CUDA GPU unless ``gpu`` names a size, or when the architecture
    cannot be read. The effective batch is kept; the micro-batch never goes
    above the requested ``batch_size`` (the estimates are not calibrated to
    back a larger one), and ``max_seq_length`` is capped at the model's
    context length. Raises ``ValueError`` with the planner's "does not fit:
    needs X GiB, you have Y" and its suggestion when nothing fits. Prints one
    line with the outcome.
    """
    if not _wants_plan(config):
        return config, None
    spec = model_spec(model)
    if spec is None:
        return config, None
    runtime = runtime_of(model[0]) if isinstance(model, tuple) else detect_runtime(config.backend)
    if runtime.backend != "unsloth" and isinstance(model, str) and unsloth_maps_to_dynamic(model):
        # Only Unsloth's mapper swaps a hub id for its dynamic 4-bit repo; transformers quantizes every linear.
        spec = dataclasses.replace(spec, dynamic_quant=False)
    kwargs = estimate_settings(config, runtime)
    if not kwargs["target_modules"]:
        print(f"rslora-colab: no memory plan: the estimator does not know target_modules "
              f"{list(config.target_modules)}", flush=True)
        return config, None
    seq = config.max_seq_length
    if spec.max_position_embeddings:
        seq = min(seq, spec.max_position_embeddings)
    plan = plan_for_gpu(spec, r=config.r, max_seq_length=seq, gpu=config.gpu, batch_size=config.batch_size,
                        grad_accum=config.grad_accum, max_micro_batch=config.batch_size, **kwargs)
    if not plan.fits:
        raise ValueError(f"{plan.message}. Suggestion: {plan.suggestion} Or pass plan=False to try anyway "
                         f"(the estimate is not yet calibrated on a GPU).")
    capped = f"; max_seq_length {config.max_seq_length} -> {seq} (the model's context)" \
        if seq < config.max_seq_length else ""
    changed = f"; changed: {plan.suggestion}" if plan.suggestion else ""
    print(f"rslora-colab: memory plan ({runtime.backend}, uncalibrated): {plan.message}{changed}{capped}",
          flush=True)
    planned = dataclasses.replace(config, batch_size=plan.micro_batch, grad_accum=plan.grad_accum,
                                  max_seq_length=plan.max_seq_length)
    return planned, plan
