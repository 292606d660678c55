"""Step 2 — adapt: put an rsLoRA adapter on the model (PEFT, or Unsloth's fast path)."""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from .load import RUNTIME_ATTR, is_quantized, model_device, runtime_of
from .memory.catalog import STANDARD_MODULES
from .presets import check_rank

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = STANDARD_MODULES
"""All attention and MLP projections, as in Unsloth's and QLoRA's recipes (the catalog's ``STANDARD_MODULES``)."""


def module_names(value: Any) -> tuple:
    """``target_modules`` as a tuple of names: one string ("q_proj", or "q_proj, v_proj") is not split into letters."""
    if isinstance(value, str):
        return tuple(name for name in re.split(r"[,\s]+", value) if name)
    try:
        return tuple(value)
    except TypeError:  # not a sequence: FinetuneConfig.problems() names it
        return (value,)


def is_peft_model(model: Any) -> bool:
    """True when ``model`` already carries a PEFT adapter."""
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def adapter_scales(model: Any, adapter: str = "default") -> dict[str, float]:
    """The scale PEFT applies on every adapted layer, by module name."""
    return {
        name: float(module.scaling[adapter])
        for name, module in model.named_modules()
        if isinstance(getattr(module, "scaling", None), dict) and adapter in module.scaling
    }


def _present_targets(model: Any, targets: Sequence[str]) -> list[str]:
    """The requested target names that exist in the model; error if none do."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    present = [t for t in targets if t in leaves]
    if not present:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "in_features")})
        raise ValueError(f"target_modules={list(targets)} match no layer of this model; its linear layers are {linear}.")
    missing = [t for t in targets if t not in present]
    if missing:
        logger.info(f"this model has no {missing}; adapting {present}")
    return present


def _same_adapter(model: Any, r: int, alpha: float, targets: Sequence[str], dropout: float, use_rslora: bool,
                  embeddings: Sequence[str] = ()) -> bool:
    config = model.peft_config.get("default")
    return (
        config is not None
        and (config.r, float(config.lora_alpha), config.use_rslora, float(config.lora_dropout))
        == (r, float(alpha), use_rslora, float(dropout))
        and set(config.target_modules or ()) == set(targets)
        and set(config.modules_to_save or ()) == set(embeddings)
    )


def ties_embeddings(model: Any) -> bool:
    """True when the LM head is the input embedding's own matrix (``tie_word_embeddings``)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embed is not None and head.weight is embed.weight


def embedding_modules(model: Any) -> list[str]:
    """The names (leaf, as PEFT's ``modules_to_save`` takes them) of the input embedding and the LM head.

    A tied pair is one matrix: only the input embedding is named, and PEFT's
    ``ensure_weight_tying`` makes the head use its trained copy.
    """
    wanted = [model.get_input_embeddings()] + ([] if ties_embeddings(model) else [model.get_output_embeddings()])
    names = [name.split(".modules_to_save")[0].split(".original_module")[0].rsplit(".", 1)[-1]  # PEFT's wrapper's
             for module in wanted for name, m in model.named_modules() if m is module]
    if len(names) != len(wanted):
        raise ValueError("train_embeddings=True: this model's input embedding or LM head could not be found by name "
                         f"(found {names}); train without it.")
    return list(dict.fromkeys(names))


def keep_cpu_4bit_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference, and undo any repacking.

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight for a faster CPU kernel
    the first time it runs in eval mode without gradients (a generation, say).
    That kernel has no autograd support: gradients through the repacked
    layers come out wrong (grad norm ~3x too small in our test), so training
    after a "before" sample silently learns less. Training needs the plain
    layout; CPU inference just runs a little slower. A layer that was repacked
    already gets the plain layout back from its public ``state_dict()``, which
    bitsandbytes unpacks first (its saved format is the plain one).
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                module.state_dict()  # bitsandbytes restores the plain layout before it saves


def keep_adapter_fp32(model: Any) -> None:
    """Keep trainable (adapter) weights in fp32, the master copy mixed precision expects.

    TRL casts QLoRA adapters to bf16 when it builds a trainer. Adam's updates
    at rsLoRA's learning rates (1e-4 and below) are then often smaller than
    half a bf16 step of the weight they update, and are lost: on the demo
    model most ``lora_A`` entries never moved. Forward passes still run in the
    compute precision (autocast on a GPU), so only the master copy changes.
    """
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def _add_with_peft(model, r, alpha, targets, dropout, use_rslora, gradient_checkpointing, seed, embeddings=()):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if is_quantized(model) and model_device(model).type == "cpu":
        keep_cpu_4bit_trainable(model)
    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, gradient_checkpointing, gc_kwargs)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout,
        bias="none", task_type="CAUSAL_LM", use_rslora=use_rslora,
        **({"modules_to_save": list(embeddings), "ensure_weight_tying": ties_embeddings(model)} if embeddings else {}),
    )
    torch.manual_seed(seed)  # the same seed gives the same adapter init, as Unsloth's random_state does
    return get_peft_model(model, config)


def _add_with_unsloth(model, r, alpha, targets, dropout, use_rslora, gradient_checkpointing, seed, embeddings=()):
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model, r=r, target_modules=list(targets), lora_alpha=alpha, lora_dropout=dropout, bias="none",
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed, use_rslora=use_rslora, loftq_config=None,
        **({"modules_to_save": list(embeddings), "ensure_weight_tying": ties_embeddings(model)} if embeddings else {}),
    )


def add_rslora(
    model: Any,
    r: int = 64,
    alpha: float | None = None,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
    use_rslora: bool = True,
    gradient_checkpointing: bool = True,
    seed: int = 3407,
    train_embeddings: bool = False,
):
    """Add a rank-``r`` rsLoRA adapter (scale alpha/sqrt(r); ``alpha=None`` means alpha = r).

    ``train_embeddings=True`` (continued pretraining) also makes the input
    embedding and the LM head trainable in full (PEFT's ``modules_to_save``,
    :func:`embedding_modules`; a tied pair as one matrix), saved with the
    adapter. The trainer keeps them in fp32 and gives them their own learning
    rate (:mod:`rslora_colab.train.trainer`).

    On the Unsloth backend this is ``FastLanguageModel.get_peft_model`` with
    ``use_gradient_checkpointing="unsloth"``; on transformers it is PEFT's
    ``prepare_model_for_kbit_training`` then ``LoraConfig(use_rslora=True)``.

    Safe to call twice: a model that already has this very adapter is returned
    as it is, and one with a different adapter has it removed first, so
    adapters never stack. ``use_rslora=False`` gives classic LoRA (alpha/r).
    """
    check_rank(r)
    target_modules = module_names(target_modules)
    if dropout < 0 or dropout >= 1:
        raise ValueError(f"dropout={dropout!r}: pass a probability in [0, 1), e.g. 0.0.")
    alpha = float(r if alpha is None else alpha)
    runtime = runtime_of(model)
    targets = _present_targets(model, target_modules)
    embeddings = embedding_modules(model) if train_embeddings else []
    if is_peft_model(model):
        if _same_adapter(model, r, alpha, targets, dropout, use_rslora, embeddings):
            logger.info("the model already has this adapter; reusing it")
            return model
        if runtime.unsloth_gpu:  # Unsloth's GPU models are patched in place; its CPU backend is stock PEFT
            raise ValueError("This Unsloth model already has a different adapter: reload it with load_model() first.")
        logger.info("replacing the model's previous adapter")
        model = model.unload()
    add = _add_with_unsloth if runtime.backend == "unsloth" else _add_with_peft
    model = add(model, r, alpha, targets, dropout, use_rslora, gradient_checkpointing, seed, embeddings)
    setattr(model, RUNTIME_ATTR, runtime)
    return model
