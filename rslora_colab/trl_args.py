"""TRL's own settings, passed through under TRL's names: ``quick_finetune(..., neftune_noise_alpha=5)``.

Any keyword that is not a :class:`~rslora_colab.FinetuneConfig` field but is a field of the method's TRL config
(``SFTConfig``, ``DPOConfig``, ``GRPOConfig``) is kept in ``FinetuneConfig.trl_args`` and handed to that class
untouched, after the kit's own arguments, so the user's value wins
(:func:`~rslora_colab.train.trainer.trl_config`); the run manifest and ``metrics.json`` record it, and a resume
must give the same. A new TRL setting costs the kit nothing.

Three kinds of TRL name are not passed through, each refused with the way to ask for it:

* the ones the kit keeps under a name of its own (``learning_rate`` is ``lr``: its default is the rank
  preset, and the memory plan and out-of-memory recovery change the batch): ``HF_NAMES`` in
  :mod:`rslora_colab.config` gives the "did you mean";
* the ones the kit derives from the machine or needs for its own guarantees (:data:`KIT_SETS`, with why);
* names no TRL config of the method has: "did you mean" among the kit's fields and TRL's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

TRL_CONFIGS = {"sft": "SFTConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig"}
"""The TRL config class each method's trainer takes."""

KIT_SETS = {
    "bf16": "precision comes from the GPU (fp16 on a T4, bf16 from compute capability 8; rslora_colab.detect_runtime)",
    "fp16": "precision comes from the GPU (fp16 on a T4, bf16 from compute capability 8; rslora_colab.detect_runtime)",
    "use_cpu": "the device is the machine's (rslora_colab.detect_runtime)",
    "save_strategy": "checkpoints are the kit's: checkpoint_minutes, checkpoint_every, keep_checkpoints",
    "eval_on_start": "evaluation is the kit's: eval_every, eval_fraction, save_best, early_stopping_patience",
    "metric_for_best_model": "the best adapter is the lowest eval loss (GRPO: the highest held-out reward): save_best",
    "greater_is_better": "the best adapter is the lowest eval loss (GRPO: the highest held-out reward): save_best",
    "restore_callback_states_from_checkpoint": "a resume restores early stopping's count itself (resume=True)",
    "logging_nan_inf_filter": "the divergence guard must see a NaN loss (guard=False turns the guard off)",
    "resume_from_checkpoint": "pass resume=True (the CLI: --resume): the kit picks the newest valid checkpoint",
    "ddp_timeout": "set RSLORA_COLAB_DDP_TIMEOUT (seconds): the kit's own process group waits as long",
}
"""TRL arguments the kit sets from the machine or needs for its own guarantees, and how to ask for what each does."""
USER_WINS = ("optim", "warmup_steps", "per_device_eval_batch_size", "use_vllm", "ddp_find_unused_parameters",
             "assistant_only_loss", "packing_strategy")
"""TRL arguments the kit sets that take the user's value when one is passed through: the optimizer (the runtime's
paged 8-bit AdamW on a GPU), the warm-up in steps (instead of the preset's ``warmup_ratio``), the eval batch,
vLLM for GRPO, DDP's unused-parameter search, the assistant-only loss and the packing strategy the data's format
chose. Every argument the kit sets is a kit field, a name in ``HF_NAMES``, in :data:`KIT_SETS` or here
(``tests/test_trl_args.py``)."""


@functools.cache
def trl_config_class(method: str) -> type:
    """TRL's config class for ``method`` (``"sft"`` -> ``SFTConfig``)."""
    import trl

    return getattr(trl, TRL_CONFIGS[method])


@functools.cache
def trl_fields(method: str) -> dict[str, Any]:
    """The fields of ``method``'s TRL config, with their types where they resolve: ``{name: type or None}``."""
    cls = trl_config_class(method)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a forward reference TRL does not import: no types, the names still hold
        hints = {}
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls) if f.init}


def _simple_type(hint: Any) -> tuple[type, ...] | None:
    """The builtin types a value of ``hint`` may have, for ``bool``/``int``/``float``/``str`` and their Optional;
    None for anything richer (TRL checks those itself)."""
    origin = typing.get_origin(hint)
    if origin is not None and origin not in (typing.Union, types.UnionType):  # list[str], dict, Literal: TRL's
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)] if origin else [hint]
    if len(args) != 1 or args[0] not in (bool, int, float, str):
        return None
    kind = args[0]
    return {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[kind] + (
        (type(None),) if type(None) in typing.get_args(hint) else ())


def trl_args_problems(trl_args: Any, method: str) -> list[str]:
    """Every problem with ``trl_args`` for ``method``, one line each (``FinetuneConfig.problems``)."""
    if not isinstance(trl_args, dict) or not all(isinstance(k, str) for k in trl_args):
        return [f"trl_args={trl_args!r}: expected a dict of TRL config fields, e.g. {{'neftune_noise_alpha': 5}}"]
    if method not in TRL_CONFIGS or not trl_args:
        return []
    known, cls = trl_fields(method), TRL_CONFIGS[method]
    problems = []
    for name, value in trl_args.items():
        if name in KIT_SETS:
            problems.append(f"trl_args[{name!r}]: the kit sets it: {KIT_SETS[name]}")
        elif name not in known:
            problems.append(f"trl_args[{name!r}]: {cls} (method={method!r}) has no such field")
        elif (kinds := _simple_type(known[name])) and (not isinstance(value, kinds)
                                                     or (bool not in kinds and isinstance(value, bool))):
            problems.append(f"trl_args[{name!r}]={value!r}: expected {known[name]} ({cls}.{name})")
        elif not _json_value(value):
            problems.append(f"trl_args[{name!r}]={value!r}: expected a value the run manifest can record "
                            "(numbers, text, lists and dicts of them)")
    return problems


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def split_trl_args(overrides: dict[str, Any], kit_names: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``overrides`` as ``(the rest, TRL's)``: a keyword outside ``kit_names`` (the kit's fields and its own names
    for TRL's, ``HF_NAMES``) and :data:`KIT_SETS` that is a field of the method's TRL config goes to TRL's, joined
    with any explicit ``trl_args=``. What stays in the rest is for ``from_overrides`` to take or refuse."""
    method, given = overrides.get("method", "sft"), overrides.get("trl_args")
    if method not in TRL_CONFIGS or not isinstance(given or {}, dict) or all(
            name in kit_names for name in overrides if name != "trl_args") and not given:
        return overrides, {}  # nothing of TRL's: TRL is not even imported
    known, rest, trl = trl_fields(method), {}, dict(given or {})
    for name, value in overrides.items():
        if name not in kit_names and name not in KIT_SETS and name in known:
            trl[name] = value
        elif name != "trl_args":
            rest[name] = value
    return rest, trl


def suggestion_names(method: Any) -> list[str]:
    """TRL's field names for ``method``, for a "did you mean" (none for an unknown method)."""
    return sorted(trl_fields(method)) if method in TRL_CONFIGS else []


def trl_config(method: str, args: dict[str, Any], trl_args: dict[str, Any]) -> Any:
    """TRL's config for ``method``: the kit's ``args``, then the user's own ``trl_args`` over them (theirs win).

    An error TRL raises for the values passed through names them, since the user wrote them.
    """
    cls = trl_config_class(method)
    try:
        return cls(**{**args, **trl_args})
    except (TypeError, ValueError) as err:
        if not trl_args:
            raise
        given = ", ".join(f"{name}={value!r}" for name, value in trl_args.items())
        raise ValueError(f"{cls.__name__} refused the settings passed through to it ({given}): {err}") from err


def other_method_hint(name: str, method: Any) -> str | None:
    """For a keyword ``method``'s TRL config lacks: which other method's config has it, as a hint."""
    others = [m for m in TRL_CONFIGS if m != method and name in trl_fields(m)]
    if not others:
        return None
    return f"a field of {' and '.join(TRL_CONFIGS[m] for m in others)}: with method={others[0]!r}"
