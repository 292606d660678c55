"""TRL's trainers over an rsLoRA-adapted model: one construction for SFT and DPO, read from :class:`RunSettings`.

``SFTConfig`` and ``DPOConfig`` take the same training arguments
(:func:`trainer_args`); DPO adds ``beta``.

DPO's reference model is the base with the adapter disabled: TRL's
``DPOTrainer`` gets ``ref_model=None`` and a PEFT model, so no second copy of
the model is loaded. (TRL copies a PEFT model's adapter into a frozen "ref"
adapter; for a fresh adapter, whose B matrices are zero, that copy *is* the
base, so the kit deletes it and TRL disables the adapter instead. An adapter
that is already trained — SFT, then DPO — keeps TRL's frozen copy as the
reference, the usual SFT-then-DPO recipe.) DPO's learning rate is
``lr_for_rank(r, "dpo")`` (:mod:`rslora_colab.presets`); beta defaults to 0.1.
"""

from __future__ import annotations

import logging
from typing import Any

from ..adapt import add_rslora, keep_adapter_fp32
from ..config import report_targets
from ..data import to_dpo_dataset, to_trainer_dataset, token_lengths
from ..distributed import check_trainer_world, timeout_s
from ..load import runtime_of
from ..resilience.checkpoints import checkpoint_args, make_checkpoints_atomic
from ..settings import RunSettings
from ..trl_args import trl_config
from .evaluation import eval_args, eval_callbacks
from .grpo import grpo_trainer

logger = logging.getLogger(__name__)


def trainer_args(run: RunSettings) -> dict:
    """The arguments SFT and DPO share: TRL's ``SFTConfig`` and ``DPOConfig`` both take them.

    With eval rows, evaluation's own (:func:`~rslora_colab.train.evaluation.eval_args`) are added on top.
    """
    config, precision = run.config, run.runtime.precision
    args = dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
        max_steps=config.max_steps or -1,
        num_train_epochs=config.epochs,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=run.optimizer,
        max_length=config.max_seq_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not run.runtime.on_gpu,
        gradient_checkpointing=False,  # add_rslora already set it up ("unsloth" mode on GPU)
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must show in the history, not be averaged away
        **checkpoint_args(config.checkpoint_every, config.keep_checkpoints),
        report_to=report_targets(config.report_to),
        seed=config.seed,
        # Several processes (DDP): a LoRA adapter on a dense model uses every trainable weight in every step, so
        # DDP need not search for unused ones (transformers' default for a PEFT model, which fails with reentrant
        # checkpointing, Unsloth's); the timeout is the one the kit's process group was created with.
        ddp_find_unused_parameters=False,
        ddp_timeout=timeout_s(),
    )
    return {**args, **eval_args(run)}


def sft_config(run: RunSettings, **extra: Any):
    """TRL's ``SFTConfig`` for this run (``extra`` adds e.g. ``assistant_only_loss``; the user's ``trl_args`` go
    over both, :func:`~rslora_colab.trl_args.trl_config`).

    ``packing`` and ``padding_free`` pass through under TRL's names. TRL truncates
    only when it packs: padding-free batches without packing get ``max_length=None``
    (:func:`check_padding_free` has made sure every row fits).
    """
    config, args = run.config, trainer_args(run)
    if config.packing:
        args.update(packing=True, padding_free=True)  # TRL's "bfd" packing is padding-free
    elif config.padding_free:
        args.update(padding_free=True, max_length=None)
    return trl_config("sft", {**args, **extra}, config.trl_args)


def packing_strategy(fmt: str) -> str:
    """TRL's ``packing_strategy`` for rows of format ``fmt``: ``"bfd_split"`` for raw ``text`` (a document longer
    than max_seq_length is split into pieces, so continued pretraining loses none of it), ``"bfd"`` (TRL's default:
    a longer row is truncated, as without packing) for rows with a prompt, whose answer a split would orphan."""
    return "bfd_split" if fmt == "text" else "bfd"


def check_padding_free(config: Any, lengths: Any, source: str = "dataset") -> None:
    """Refuse padding-free batches without packing when a row would not fit ``max_seq_length`` (TRL does not
    truncate then) or when only a sample of the rows was measured (``lengths``:
    :func:`~rslora_colab.data.token_lengths`)."""
    if not config.padding_free or config.packing or config.method != "sft":
        return
    longest = max(lengths.total, default=0)
    if lengths.sampled or longest > config.max_seq_length:
        why = (f"only a sample of its {lengths.dataset_rows:,} rows could be measured" if lengths.sampled else
               f"its longest row has {longest} tokens, over max_seq_length={config.max_seq_length}")
        raise ValueError(f"padding_free=True without packing: TRL does not truncate rows then, and {source}: {why}. "
                         "Pass packing=True (which truncates), or a max_seq_length that holds every row.")


def dpo_config(run: RunSettings):
    """TRL's ``DPOConfig``: the arguments SFT uses too, plus ``beta``, then the user's ``trl_args``."""
    return trl_config("dpo", {**trainer_args(run), "beta": run.config.beta}, run.config.trl_args)


def attach_adapter(model: Any, run: RunSettings):
    """The rsLoRA adapter this run puts on ``model`` (reused if it is already there)."""
    c = run.config
    return add_rslora(model, c.r, c.alpha, c.target_modules, c.dropout, c.use_rslora, c.gradient_checkpointing, c.seed,
                      c.train_embeddings)


def embedding_optimizer(model: Any, args: Any, embedding_lr: float):
    """The optimizer the trainer would build (``Trainer.get_optimizer_cls_and_kwargs``), with the trained
    embeddings (PEFT's ``modules_to_save`` copies) in a group of their own at ``embedding_lr``.

    Handed to the trainer through its public ``optimizers=(optimizer, None)``
    argument; the trainer still builds the schedule, which scales each group
    from its own learning rate. Both groups decay like the trainer's weights.
    """
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    embeddings = [p for name, p in trained if ".modules_to_save." in name]
    if not embeddings:
        raise ValueError("train_embeddings=True, but no embedding matrix is trainable: PEFT's modules_to_save "
                         "did not wrap embed_tokens / lm_head.")
    rest = [p for name, p in trained if ".modules_to_save." not in name]
    return cls([{"params": rest, "weight_decay": args.weight_decay},
                {"params": embeddings, "lr": embedding_lr, "weight_decay": args.weight_decay}], **kwargs)


def build_trainer(model: Any, tokenizer: Any, dataset: Any, fmt: str, run: RunSettings, callbacks: list | None = None,
                  eval_dataset: Any = None):
    """TRL's ``SFTTrainer`` (``DPOTrainer`` for ``method="dpo"``, ``GRPOTrainer`` for ``"grpo"``: :mod:`.grpo`) over an
    adapted model and validated data.

    ``eval_dataset`` (validated, the same format; ``run.eval_rows`` rows) goes to the trainer's own
    ``eval_dataset``, so TRL shapes and masks it exactly like the training rows.
    """
    if (eval_dataset is not None) != bool(run.eval_rows):
        raise ValueError(f"eval_dataset: the run expects {run.eval_rows} eval rows but got "
                         f"{'none' if eval_dataset is None else len(eval_dataset)}; resolve the run with "
                         "resolve_run(..., eval_rows=len(eval_dataset)).")
    callbacks = [*(callbacks or []), *eval_callbacks(run)]
    if run.config.method == "dpo":
        trainer = _dpo_trainer(model, tokenizer, dataset, fmt, run, callbacks, eval_dataset)
    elif run.config.method == "grpo":  # prompts and reward functions: rslora_colab.train.grpo
        trainer = grpo_trainer(model, tokenizer, dataset, fmt, run, callbacks, trainer_args(run), eval_dataset)
    else:
        from trl import SFTTrainer

        # a padding-free layout the caller asked for is checked here; the kit's own choice (run.batches_why) was
        # made from these rows' lengths already (choose_batches)
        for rows, name in ((dataset, "dataset"), (eval_dataset, "eval_dataset")):
            if rows is not None and run.config.padding_free and not run.config.packing and not run.batches_why:
                check_padding_free(run.config, token_lengths(rows, fmt, tokenizer), name)
        train_dataset, extra = to_trainer_dataset(dataset, fmt, tokenizer)
        shaped_eval = None if eval_dataset is None else to_trainer_dataset(eval_dataset, fmt, tokenizer)[0]
        if run.config.packing:
            extra["packing_strategy"] = packing_strategy(fmt)
        args = sft_config(run, **extra)
        optimizers = (None, None)  # the trainer builds its own; keep_adapter_fp32 below casts the embedding copies too
        if run.config.train_embeddings:
            optimizers = (embedding_optimizer(model, args, run.config.embedding_lr), None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=shaped_eval,
                             processing_class=tokenizer, callbacks=callbacks, optimizers=optimizers)
    check_trainer_world(trainer.args)  # a launcher's processes that would each train alone: say so now
    if not runtime_of(model).unsloth_gpu:
        keep_adapter_fp32(trainer.model)  # undo TRL's bf16 cast of QLoRA adapters (Unsloth's CPU backend too)
    return make_checkpoints_atomic(trainer)


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
        logger.info("the adapter is already trained, so DPO's reference is a frozen copy of it (the model you "
                    "start from), not the bare base")


def _dpo_trainer(model: Any, tokenizer: Any, dataset: Any, fmt: str, run: RunSettings, callbacks: list,
                 eval_dataset: Any = None):
    """TRL's ``DPOTrainer`` over an rsLoRA-adapted model; the reference is the base, adapter disabled."""
    if runtime_of(model).backend == "unsloth":
        import unsloth

        patch = getattr(unsloth, "PatchDPOTrainer", None)  # a no-op on GPU in 2026.10.9; its CPU backend has none
        if patch is not None:
            patch()
    from trl import DPOTrainer

    fresh = is_fresh_adapter(model)
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(run),
                         train_dataset=to_dpo_dataset(dataset, fmt, tokenizer),
                         eval_dataset=None if eval_dataset is None else to_dpo_dataset(eval_dataset, fmt, tokenizer),
                         processing_class=tokenizer, callbacks=callbacks)
    use_base_as_reference(trainer, fresh)
    return trainer


def masked_preview(trainer: Any, index: int = 0) -> tuple[str, str]:
    """Row ``index`` as the model sees it, and only the tokens the loss is computed on.

    Returns ``(full_text, trained_text)``: decode of ``input_ids`` and of the
    positions whose label is not -100, after TRL's collator.
    """
    batch = trainer.data_collator([trainer.train_dataset[index]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    decode = trainer.processing_class.decode
    return decode(ids), decode(ids[labels != -100])
