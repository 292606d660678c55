"""Preference tuning (DPO): preference-data formats, their checks and shaping, and TRL's ``DPOTrainer``.

``quick_finetune(..., method="dpo")`` comes here. Formats are detected from
the columns and the first row:

=======================  ===============================================================
format                   rows
=======================  ===============================================================
``preference``           ``prompt``, ``chosen``, ``rejected`` as strings
``preference_chat``      ``prompt``, ``chosen``, ``rejected`` as message lists
                         (role/content); the prompt ends with the user's turn
``ultrafeedback``        ``prompt`` as a string, ``chosen`` / ``rejected`` as whole
                         conversations that repeat the user's turn (the layout of
                         ``HuggingFaceH4/ultrafeedback_binarized``; other columns ignored)
``preference_implicit``  ``chosen`` / ``rejected`` only: whole conversations (or texts)
                         whose shared beginning is the prompt
=======================  ===============================================================

The last two are split into prompt / chosen / rejected by TRL's
``maybe_extract_prompt`` (the longest shared beginning is the prompt).

The reference model is the base with the adapter disabled: TRL's
``DPOTrainer`` gets ``ref_model=None`` and a PEFT model, so no second copy of
the model is loaded. (TRL copies a PEFT model's adapter into a frozen "ref"
adapter; for a fresh adapter, whose B matrices are zero, that copy *is* the
base, so the kit deletes it and TRL disables the adapter instead. An adapter
that is already trained — SFT, then DPO — keeps TRL's frozen copy as the
reference, the usual SFT-then-DPO recipe.)

Learning rate: ``lr_for_rank(r, "dpo")`` in :mod:`rslora_colab.presets`
(5e-6 at r=16, 2.5e-6 at r=64); beta defaults to 0.1 (TRL's default).
"""

from __future__ import annotations

from typing import Any, Iterable

from .data import ROLES, _is_text, _turn_problems, check_chat_template, detect_format
from .load import runtime_of

def detect_preference_format(columns: Iterable[str], first_row: dict, source: str = "dataset") -> str:
    """The preference format from the column names and the first row (see the module docstring)."""
    cols = set(columns)
    if not {"chosen", "rejected"} <= cols:
        try:
            hint = f" This looks like {detect_format(cols, source)} data: train on it with method='sft'."
        except ValueError:
            hint = ""
        raise ValueError(f"{source}: columns {sorted(cols)} are not preference data, which method='dpo' needs: "
                         f"each row needs 'chosen' and 'rejected' answers (and usually a 'prompt').{hint}")
    if "prompt" not in cols:
        return "preference_implicit"
    if isinstance(first_row.get("prompt"), list):
        return "preference_chat"
    return "ultrafeedback" if isinstance(first_row.get("chosen"), list) else "preference"


def _text_problems(row: dict, keys: Iterable[str]) -> list[str]:
    return [f"field '{k}' must be a non-empty string" for k in keys if not _is_text(row.get(k))]


def _messages_problems(row: dict, keys: Iterable[str], need_assistant: bool = True) -> list[str]:
    return [p for k in keys for p in _turn_problems(row.get(k), k, "role", "content", ROLES, need_assistant)]


def _shared_prompt_problems(row: dict) -> list[str]:
    """Problems with a pair whose prompt is the shared beginning of 'chosen' and 'rejected'."""
    from trl.data_utils import extract_prompt

    split = extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
    if not split["chosen"] or not split["rejected"]:
        return ["one of fields 'chosen' and 'rejected' is the beginning of the other; they must differ in the answer"]
    if isinstance(row["chosen"], list) and split["chosen"][0]["role"] != "assistant":
        return [f"fields 'chosen' and 'rejected' differ first at turn {len(split['prompt'])}, a "
                f"'{split['chosen'][0]['role']}' turn; they must differ only in the assistant's answer"]
    if not split["prompt"]:
        return ["fields 'chosen' and 'rejected' share no beginning, so there is no prompt: start both with the "
                "same user turn, or add a 'prompt' column"]
    return []


def preference_row_problems(row: dict, fmt: str) -> list[str]:
    """What is wrong with one preference row of format ``fmt`` (empty when it is usable)."""
    if fmt == "preference":
        problems = _text_problems(row, ("prompt", "chosen", "rejected"))
    elif fmt == "preference_chat":
        problems = _messages_problems(row, ("prompt",), need_assistant=False)
        problems += _messages_problems(row, ("chosen", "rejected"))
        if not problems and row["prompt"][-1]["role"] == "assistant":
            problems.append("field 'prompt' must end with the user's turn, not the assistant's")
    elif fmt == "ultrafeedback":
        problems = _text_problems(row, ("prompt",)) + _messages_problems(row, ("chosen", "rejected"))
    elif isinstance(row.get("chosen"), list):  # preference_implicit, conversations
        problems = _messages_problems(row, ("chosen", "rejected"))
    else:  # preference_implicit, texts
        problems = _text_problems(row, ("chosen", "rejected"))
    if problems:
        return problems
    if row["chosen"] == row["rejected"]:
        return ["fields 'chosen' and 'rejected' are identical; a pair needs two different answers"]
    if fmt in ("ultrafeedback", "preference_implicit"):
        return _shared_prompt_problems(row)
    return []


def to_dpo_dataset(dataset, fmt: str, tokenizer):
    """Shape validated preference data as TRL's explicit prompt / chosen / rejected columns."""
    from trl.data_utils import maybe_extract_prompt

    if isinstance(dataset[0]["chosen"], list):
        check_chat_template(tokenizer, fmt)
    if fmt in ("ultrafeedback", "preference_implicit"):
        dataset = dataset.map(maybe_extract_prompt, desc="Splitting off the shared prompt")
    return dataset.select_columns(["prompt", "chosen", "rejected"])


def dpo_config(config: Any, settings: dict):
    """TRL's ``DPOConfig``: the arguments SFT uses too, plus ``beta``."""
    from trl import DPOConfig

    from .train import trainer_args

    return DPOConfig(**trainer_args(config, settings), beta=settings["beta"])


def is_fresh_adapter(model: Any, adapter: str = "default") -> bool:
    """True when every LoRA B matrix of ``adapter`` is zero: the adapter changes nothing yet."""
    return not any(param.any() for name, param in model.named_parameters() if f"lora_B.{adapter}." in name)


def use_base_as_reference(trainer: Any, fresh: bool) -> None:
    """Make DPO's reference the base with the adapter disabled, when that is what TRL's "ref" copy holds."""
    model = trainer.model
    if "ref" not in getattr(model, "peft_config", {}):
        return
    if fresh:
        model.delete_adapter("ref")  # TRL then computes the reference with the adapter disabled
    else:
        print("rslora-colab: the adapter is already trained, so DPO's reference is a frozen copy of it "
              "(the model you start from), not the bare base", flush=True)


def build_dpo_trainer(model: Any, tokenizer: Any, dataset: Any, fmt: str, config: Any, settings: dict,
                      callbacks: list | None = None):
    """TRL's ``DPOTrainer`` over an rsLoRA-adapted model; the reference is the base, adapter disabled."""
    if runtime_of(model).backend == "unsloth":
        import unsloth

        patch = getattr(unsloth, "PatchDPOTrainer", None)  # a no-op on GPU in 2026.10.9; its CPU backend has none
        if patch is not None:
            patch()
    from trl import DPOTrainer

    fresh = is_fresh_adapter(model)
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(config, settings),
                         train_dataset=to_dpo_dataset(dataset, fmt, tokenizer), processing_class=tokenizer,
                         callbacks=callbacks or [])
    use_base_as_reference(trainer, fresh)
    return trainer
