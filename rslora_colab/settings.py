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

RESUME_MAY_CHANGE = ("batch_size", "grad_accum", "output_dir", "backend", "gradient_checkpointing", "plan", "gpu",
                     "logging_steps", "guard", "max_rollbacks", "checkpoint_minutes", "checkpoint_every",
                     "keep_checkpoints", "eval_every", "save_best", "report_to")
"""``FinetuneConfig`` fields a resumed run may change: how the global batch is split into micro-batches and
accumulation (the global batch itself is in the manifest: an out-of-memory error halves the micro-batch), where
and with what it runs (the folder may move with Drive; the plan may fit another GPU), and how the run is watched,
saved and reported. Every other field is in the manifest (:meth:`RunSettings.manifest`), so a new one is held
by a resume without a line here."""


def _applies(config: FinetuneConfig) -> dict[str, bool]:
    """Fields that only mean something for some runs, and whether they do for ``config``'s: absent otherwise from
    the manifest and the settings shown (``beta`` only for DPO and GRPO, the generation settings and the reward
    functions only for GRPO, the embeddings' only when trained, ``trl_args`` only when given)."""
    grpo = config.method == "grpo"
    return {"beta": config.method in BETA_DEFAULTS, "num_generations": grpo, "max_completion_length": grpo,
            "reward_funcs": grpo, "train_embeddings": config.train_embeddings,
            "embedding_lr": config.train_embeddings, "trl_args": bool(config.trl_args)}


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
        """The settings that shape training: a resume with any of them different is refused.

        Every field of the config but :data:`RESUME_MAY_CHANGE`, resolved, plus the optimizer and the global batch;
        a field that does not apply to the run is absent (:func:`_applies`), and so are ``eval_fraction`` when no
        rows are held out, early stopping's when it is off (a resume restores its counter with the saved
        patience), ``packing`` and ``padding_free`` when off (as in manifests written before they existed).
        """
        config = self.config
        stopping = config.early_stopping_patience is not None
        applies = {**_applies(config), "eval_fraction": bool(config.eval_fraction),
                   "early_stopping_patience": stopping, "early_stopping_threshold": stopping,
                   "packing": config.packing, "padding_free": config.padding_free}
        return {**self._fields(exclude=RESUME_MAY_CHANGE, applies=applies), "optimizer": self.optimizer,
                "global_batch": self.global_batch}

    def _fields(self, exclude: tuple[str, ...] = (), applies: dict[str, bool] | None = None) -> dict[str, Any]:
        """The config's fields as plain values (lists, reward functions by name), less ``exclude`` and those
        ``applies`` says do not apply."""
        applies = _applies(self.config) if applies is None else applies
        shown = {"target_modules": list(self.config.target_modules), "reward_funcs": self.reward_names,
                 "trl_args": dict(self.config.trl_args)}
        return {f.name: shown.get(f.name, getattr(self.config, f.name)) for f in dataclasses.fields(self.config)
                if f.name not in exclude and applies.get(f.name, True)}

    @property
    def reward_names(self) -> list[str]:
        """The reward functions' names, as TRL logs them (``rewards/<name>/mean``); empty unless GRPO."""
        from .rewards import reward_name

        return [reward_name(func) for func in self.config.reward_funcs]

    def as_dict(self) -> dict[str, Any]:
        """What ``FinetuneResult.settings`` and ``metrics.json`` show: every config field that applies to the run
        (resolved), with the runtime (backend, precision, device), the scale, the optimizer, the global batch, the
        memory plan's verdict, the eval rows and the batch layout."""
        c, rt = self.config, self.runtime
        return {
            **self._fields(),
            "backend": rt.backend, "precision": rt.precision, "device": rt.device, "scale": self.scale,
            "optimizer": self.optimizer, "world_size": self.world_size, "global_batch": self.global_batch,
            "gpu_plan": self.gpu_plan, "eval_rows": self.eval_rows, "save_best": c.keeps_best,
            "padding_free": bool(c.padding_free or c.packing), "batches": self.batches, "batches_why": self.batches_why,
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
