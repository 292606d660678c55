"""One run, resolved once before training: :class:`RunSettings`, read by every trainer, written as the manifest.

This is litgpt's ``setup()`` -> ``main()`` split. :func:`resolve_run` takes
what the user asked (:class:`~rslora_colab.FinetuneConfig`, after the memory
plan fitted its batch shape) and the machine (:class:`~rslora_colab.Runtime`),
fills every open field from :func:`~rslora_colab.preset_for_rank` (alpha,
learning rate, warm-up, schedule) and returns a frozen object. Nothing
downstream reads the unresolved config again:

* the TRL trainer arguments (:mod:`rslora_colab.train.trainer`),
* the run manifest a resume must match (:meth:`RunSettings.manifest`),
* ``FinetuneResult.settings`` and ``metrics.json`` (:meth:`RunSettings.as_dict`),
* out-of-memory recovery, which records a new batch shape with
  :meth:`RunSettings.with_batch` instead of changing shared state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import FinetuneConfig
from .presets import BETA_DEFAULTS, EMBEDDING_LR_FACTOR, adapter_scale, preset_for_rank
from .runtime import Runtime

MANIFEST_FIELDS = ("r", "alpha", "use_rslora", "target_modules", "lr", "lr_scheduler", "warmup_ratio",
                   "max_seq_length", "max_steps", "epochs", "seed", "load_in_4bit", "weight_decay",
                   "max_grad_norm", "dropout", "method", "beta", "eval_fraction", "early_stopping_patience",
                   "early_stopping_threshold", "packing", "padding_free", "train_embeddings", "embedding_lr",
                   "num_generations", "max_completion_length")
"""Resolved settings a resumed run must share with the run it continues (plus the optimizer and the global batch:
how it is split into processes, micro-batches and accumulation may change, as after an out-of-memory error);
``beta`` only for DPO and GRPO, the generation settings only for GRPO (with the reward functions' names),
``eval_fraction`` only when rows are held out, early stopping's only when it is on (a
resume restores its counter with the saved patience)."""


@dataclass(frozen=True)
class RunSettings:
    """Everything one training run uses, with no open field left."""

    config: FinetuneConfig
    """The settings as asked, with alpha, lr, warmup_ratio and lr_scheduler filled from the rank preset and the
    batch shape (batch_size, grad_accum, max_seq_length) the memory plan chose."""
    runtime: Runtime
    """Backend, precision and device the run trains on."""
    gpu_plan: str | None = None
    """The memory plan's verdict in one line; None when no plan was made (a CPU, or ``plan=False``)."""
    world_size: int = 1
    """Processes training data-parallel (one per GPU, under torchrun or accelerate launch); 1 without a launcher.
    ``config.batch_size`` and ``config.grad_accum`` are per process."""
    eval_rows: int = 0
    """Rows the eval loss is measured on (held out with ``eval_fraction``, or an ``eval_dataset``); 0: no evaluation."""
    batches_why: str = ""
    """Why the micro-batches are laid out as they are (``batches``), for the start line: the kit's choice for the
    backend, made from the rows' measured lengths (:func:`~rslora_colab.train.setup.choose_batches`); "" when the
    layout is as asked (or DPO/GRPO's)."""

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over every process: world_size x batch_size x grad_accum."""
        return self.world_size * self.config.batch_size * self.config.grad_accum

    @property
    def scale(self) -> float:
        """The factor on ``B @ A``: alpha/sqrt(r) for rsLoRA, alpha/r for LoRA (:func:`~rslora_colab.adapter_scale`)."""
        return adapter_scale(self.config.alpha, self.config.r, self.config.use_rslora)

    @property
    def optimizer(self) -> str:
        """The transformers ``optim`` name: the runtime's choice, or the one passed through to TRL (``trl_args``)."""
        return self.config.trl_args.get("optim", self.runtime.optimizer)

    def with_batch(self, batch_size: int, grad_accum: int) -> "RunSettings":
        """The same run with another micro-batch shape (after an out-of-memory error; effective batch kept)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, batch_size=batch_size,
                                                                    grad_accum=grad_accum))

    def with_layout(self, packing: bool, padding_free: bool, why: str | None = None) -> "RunSettings":
        """The same run with the batch layout the trainer really uses (Unsloth's CPU backend turns packing off;
        on a GPU Unsloth picks padding-free or padded batches itself), and ``why`` if given."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, packing=packing,
                                                                    padding_free=padding_free),
                                   batches_why=self.batches_why if why is None else why)

    def manifest(self) -> dict[str, Any]:
        """The settings that shape training: a resume with any of them different is refused."""
        config = self.config
        stopping = config.early_stopping_patience is not None
        grpo = config.method == "grpo"
        optional = {"beta": config.method in BETA_DEFAULTS, "num_generations": grpo, "max_completion_length": grpo,
                    "eval_fraction": bool(config.eval_fraction),
                    "early_stopping_patience": stopping, "early_stopping_threshold": stopping,
                    "packing": config.packing, "padding_free": config.padding_free,  # absent when off, as before
                    "train_embeddings": config.train_embeddings, "embedding_lr": config.train_embeddings}
        fields = {name: getattr(config, name) for name in MANIFEST_FIELDS if optional.get(name, True)}
        return {**fields, "target_modules": list(config.target_modules), "optimizer": self.optimizer,
                "global_batch": self.global_batch, **({"reward_funcs": self.reward_names} if grpo else {}),
                **({"trl_args": dict(config.trl_args)} if config.trl_args else {})}

    @property
    def reward_names(self) -> list[str]:
        """The reward functions' names, as TRL logs them (``rewards/<name>/mean``); empty unless GRPO."""
        from .rewards import reward_name

        return [reward_name(func) for func in self.config.reward_funcs]

    def as_dict(self) -> dict[str, Any]:
        """What ``FinetuneResult.settings`` and ``metrics.json`` show: backend, precision, r, alpha, scale, lr, ..."""
        c, rt = self.config, self.runtime
        return {
            "backend": rt.backend, "precision": rt.precision, "device": rt.device,
            "r": c.r, "alpha": c.alpha, "use_rslora": c.use_rslora, "scale": self.scale, "lr": c.lr,
            "warmup_ratio": c.warmup_ratio, "lr_scheduler": c.lr_scheduler, "optimizer": self.optimizer,
            "batch_size": c.batch_size, "grad_accum": c.grad_accum, "world_size": self.world_size,
            "global_batch": self.global_batch, "max_seq_length": c.max_seq_length,
            "max_steps": c.max_steps, "epochs": c.epochs, "seed": c.seed, "target_modules": list(c.target_modules),
            "load_in_4bit": c.load_in_4bit, "method": c.method,
            **({"beta": c.beta} if c.method in BETA_DEFAULTS else {}),
            **({"num_generations": c.num_generations, "max_completion_length": c.max_completion_length,
                "reward_funcs": self.reward_names} if c.method == "grpo" else {}),
            "gpu_plan": self.gpu_plan, "eval_fraction": c.eval_fraction, "eval_rows": self.eval_rows,
            "eval_every": c.eval_every, "save_best": c.keeps_best, "early_stopping_patience": c.early_stopping_patience,
            "early_stopping_threshold": c.early_stopping_threshold, "report_to": c.report_to,
            "packing": c.packing, "padding_free": bool(c.padding_free or c.packing), "batches": self.batches,
            "batches_why": self.batches_why,
            **({"train_embeddings": True, "embedding_lr": c.embedding_lr} if c.train_embeddings else {}),
            **({"trl_args": dict(c.trl_args)} if c.trl_args else {}),
        }

    @property
    def batches(self) -> str:
        """How a micro-batch is laid out, in words: packed, padding-free, or padded to its longest row."""
        c = self.config
        if c.method != "sft":
            return "padded"
        return "packed" if c.packing else "padding-free" if c.padding_free else "padded"


def resolve_run(config: FinetuneConfig, runtime: Runtime, gpu_plan: str | None = None,
                world_size: int = 1, eval_rows: int = 0, batches_why: str = "") -> RunSettings:
    """Fill the config's open fields from the rank preset for its method; the result is frozen.

    ``world_size``: the processes training together; ``config`` then holds one process's batch shape
    (:func:`~rslora_colab.memory.plan.split_global_batch`). ``eval_fraction`` is already resolved by then (it
    depends on the data: :func:`~rslora_colab.train.split_eval`).
    """
    preset = preset_for_rank(config.r, config.alpha, config.use_rslora, config.method)
    filled = dataclasses.replace(
        config, alpha=preset.alpha, lr=config.lr if config.lr is not None else preset.lr,
        warmup_ratio=config.warmup_ratio if config.warmup_ratio is not None or "warmup_steps" in config.trl_args
        else preset.warmup_ratio,  # TRL's own warmup_steps, passed through, replaces the preset's ratio
        lr_scheduler=config.lr_scheduler or preset.lr_scheduler,
        beta=config.beta if config.beta is not None else BETA_DEFAULTS.get(config.method))
    if config.train_embeddings and config.embedding_lr is None:
        filled = dataclasses.replace(filled, embedding_lr=filled.lr * EMBEDDING_LR_FACTOR)
    return RunSettings(filled, runtime, gpu_plan, world_size, eval_rows, batches_why)
