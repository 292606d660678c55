"""Before any weights load: fit the run to the GPU and measure the rows with the tokenizer alone.

``quick_finetune`` resolves everything it can before it loads a model, so a
run that cannot work fails in seconds, not after a download:

* :func:`fit_to_gpu` reads the model's architecture without loading it (a
  catalog id needs nothing, a local folder its ``config.json``, any other hub
  id only ``config.json`` through ``AutoConfig``; a loaded model its
  ``.config``), estimates the run for the backend that will train it
  (:mod:`rslora_colab.memory`), and applies the plan's micro-batch, gradient
  accumulation and sequence length, or raises the planner's "does not fit".
* :func:`check_lengths` tokenizes the rows as TRL will
  (:mod:`rslora_colab.data.lengths`) and names the rows TRL would drop.

The estimates are not yet calibrated on a GPU (``docs/memory.md``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig
from ..data import check_truncation, token_lengths
from ..load import load_model, load_tokenizer, runtime_of
from ..memory.catalog import model_spec, unsloth_maps_to_dynamic
from ..memory.plan import TrainPlan, plan_for_gpu, training_estimate_kwargs
from ..runtime import detect_runtime

logger = logging.getLogger(__name__)


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
    kwargs = training_estimate_kwargs(runtime, config.target_modules, config.load_in_4bit,
                                      config.gradient_checkpointing)
    if not kwargs["target_modules"]:
        logger.info(f"no memory plan: the estimator does not know target_modules {list(config.target_modules)}")
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
    logger.info(f"memory plan ({runtime.backend}, uncalibrated): {plan.message}{changed}{capped}")
    planned = dataclasses.replace(config, batch_size=plan.micro_batch, grad_accum=plan.grad_accum,
                                  max_seq_length=plan.max_seq_length)
    return planned, plan


def check_lengths(model: Any, dataset: Any, fmt: str, config: FinetuneConfig, source: str = "dataset") -> int:
    """Before the model loads: warn about rows TRL would drop at ``config.max_seq_length``; raise if all would go.

    Reads only the tokenizer (:func:`~rslora_colab.load.load_tokenizer`); see
    :mod:`rslora_colab.data.lengths`. Returns the rows that will be dropped.
    """
    tokenizer = load_tokenizer(model)
    if tokenizer is None:
        return 0
    lengths = token_lengths(dataset, fmt, tokenizer, config.method)
    return check_truncation(lengths, config.max_seq_length, source, "pairs" if config.method == "dpo" else "rows")


def load_pair(model: Any, config: FinetuneConfig):
    """``(model, tokenizer)``: loaded with :func:`~rslora_colab.load_model` from a name, or the pair as given."""
    if isinstance(model, (str, Path)):
        return load_model(str(model), config.max_seq_length, config.load_in_4bit, config.backend)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise ValueError(f"model: got a {type(model).__name__}; pass a hub id, a local folder, 'demo', "
                     "or a (model, tokenizer) pair from load_model().")
