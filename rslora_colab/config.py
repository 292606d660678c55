"""What the user asks for one fine-tuning run: :class:`FinetuneConfig`, every field validated at once.

Fields left open (``None``) are filled once, before training, into a
:class:`~rslora_colab.settings.RunSettings` (rank preset, machine, memory plan);
this class holds only what was asked.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .adapt import DEFAULT_TARGETS, module_names
from .memory.plan import GPU_BUDGETS
from .presets import MAX_RANK, METHODS, MIN_RANK
from .resilience.drive import default_output_dir
from .runtime import BACKENDS
from .trl_args import KIT_SETS, other_method_hint, split_trl_args, suggestion_names, trl_args_problems

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
HF_NAMES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "lora_r": "r", "rank": "r", "lora_rank": "r",
    "lora_alpha": "alpha", "lora_dropout": "dropout", "max_length": "max_seq_length", "max_seq_len": "max_seq_length",
    "lr_scheduler_type": "lr_scheduler", "random_state": "seed", "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints", "eval_steps": "eval_every", "val_size": "eval_fraction",
    "val_set_size": "eval_fraction", "test_size": "eval_fraction", "validation_split": "eval_fraction",
    "load_best_model_at_end": "save_best",
    "eval_strategy": "eval_every", "evaluation_strategy": "eval_every", "eval_dataset_size": "eval_fraction",
    "pack": "packing", "sample_packing": "packing",
}
"""Names from transformers' ``TrainingArguments``, PEFT's ``LoraConfig`` and Unsloth's notebooks, and the field
each one means here: an unknown keyword among them gets that field as its "did you mean"."""
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
"""Experiment trackers ``report_to`` may name, and the pip package each needs (transformers' integrations)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``quick_finetune`` needs besides the model and the data.

    Fields left as ``None`` are filled from :func:`~rslora_colab.preset_for_rank`
    (alpha, lr, warm-up, schedule; the lr depends on ``method``) when training starts. Building one checks
    every field and raises a single ``ValueError`` listing all problems.
    """

    r: int = 64
    """LoRA rank, 1 to 1024."""
    alpha: float | None = None
    """LoRA alpha; None means alpha = r (rsLoRA scale sqrt(r))."""
    use_rslora: bool = True
    """Scale the adapter by alpha/sqrt(r) (rsLoRA) instead of alpha/r (LoRA)."""
    lr: float | None = None
    """Peak learning rate; None takes ``lr_for_rank(r)``."""
    max_steps: int | None = None
    """Optimizer steps to run; None trains for ``epochs`` passes over the data."""
    epochs: float = 1.0
    """Passes over the data when ``max_steps`` is None."""
    batch_size: int = 2
    """Micro-batch per step (sequences per forward pass)."""
    grad_accum: int = 4
    """Micro-batches accumulated per optimizer step (effective batch = batch_size * grad_accum)."""
    max_seq_length: int = 2048
    """Longest sequence in tokens; longer rows are truncated."""
    output_dir: str | None = None
    """Folder for the adapter, metrics.json, loss.png and checkpoints; None: Google Drive when mounted on
    Colab (``MyDrive/rslora-colab/outputs/rslora``), else ``outputs/rslora``."""
    seed: int = 3407
    """Seed for adapter init and data order."""
    warmup_ratio: float | None = None
    """Fraction of steps for learning-rate warm-up; None takes the rank preset."""
    lr_scheduler: str | None = None
    """Learning-rate schedule after warm-up; None takes the rank preset (cosine)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    dropout: float = 0.0
    """LoRA dropout probability."""
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    """Names of the linear layers that get adapters."""
    load_in_4bit: bool = True
    """Load the base model in 4-bit NF4 (QLoRA)."""
    backend: str = "auto"
    """'auto', 'unsloth' or 'transformers'."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory ('unsloth' mode on GPU)."""
    logging_steps: int = 1
    """Record loss, lr and grad norm every this many steps (the divergence guard judges each record)."""
    plan: bool = True
    """Before loading, fit micro-batch, grad_accum and max_seq_length to the GPU (``plan_for_gpu``);
    raise if nothing fits. Skipped on a machine without a CUDA GPU unless ``gpu`` is a size."""
    gpu: str | float = "auto"
    """GPU memory to plan for: "auto" (this machine's CUDA GPU), "T4", or usable GiB such as 14.74."""
    guard: bool = True
    """Watch for divergence (NaN/inf, loss spikes): roll back to the last good adapter and halve the lr."""
    max_rollbacks: int = 3
    """Rollbacks the guard may make; the next divergence stops the run with a DivergenceError."""
    checkpoint_minutes: float = 4.0
    """Save a checkpoint when this many minutes have passed since the last one (0 turns the timer off)."""
    checkpoint_every: int | None = None
    """Also save a checkpoint every this many steps; None: only the timer and the end of training save."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep in output_dir."""
    eval_fraction: float | None = None
    """Share of the training rows held out to measure the eval loss (split with ``seed``; 0 holds none out).
    None: 5% of the rows, at most 100, when the data has 1,000 rows or more and no eval_dataset is given; else
    none (see ``rslora_colab.data.split``)."""
    eval_every: int | None = None
    """Evaluate on the held-out rows every this many steps, and at the end; None: every checkpoint_every steps
    when that is set, else 5 times a run (every 20% of the steps)."""
    save_best: bool | None = None
    """With eval rows: save the adapter of the evaluation with the lowest eval loss (its step is named) instead
    of the last step's; a checkpoint is then also saved at every evaluation (transformers'
    load_best_model_at_end). None: on with early stopping, else off."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations in a row without a new best eval loss; None: never stop early. Needs eval
    rows and save_best (the best adapter is the one saved)."""
    early_stopping_threshold: float = 0.0
    """How far below the best eval loss so far an evaluation must get to reset early stopping's patience."""
    report_to: str = "none"
    """Experiment tracking, as transformers' report_to: 'none', or one or more of 'tensorboard', 'wandb',
    'trackio' separated by commas (the package must be installed; tensorboard writes to output_dir/runs)."""
    method: str = "sft"
    """'sft' (learn the responses), 'dpo' (preference tuning on chosen/rejected pairs, TRL's DPOTrainer) or 'grpo'
    (reinforcement learning on prompts scored by reward_funcs, TRL's GRPOTrainer)."""
    beta: float | None = None
    """DPO and GRPO: how far the policy may move from the reference (smaller lets it move further). None: 0.1 for
    DPO (DPOConfig's default), 0.0 for GRPO (GRPOConfig's: no reference model and no KL term)."""
    num_generations: int = 4
    """GRPO only: completions sampled per prompt and scored against each other (TRL's num_generations; its
    default 8 is halved for a T4). batch_size * grad_accum completions make a step, so that must be a multiple of
    num_generations (the default 2 x 4 = 8 holds 2 prompts x 4 completions)."""
    max_completion_length: int = 256
    """GRPO only: longest completion sampled, in tokens (TRL's default 512 is halved for a T4); a prompt plus
    this must fit max_seq_length."""
    reward_funcs: tuple[Any, ...] = ()
    """GRPO only: the reward functions, plain Python callables as TRL's GRPOTrainer takes them:
    ``f(prompts, completions, **columns) -> list[float]``, one reward per completion (None: not applicable).
    Ready ones are in ``rslora_colab.rewards``; the rewards of several functions are added up."""
    packing: bool = False
    """SFT only: pack several rows into each max_seq_length sequence (TRL's packing, best-fit decreasing): no
    padding, and each row attends only to itself (a block-diagonal mask built from the position ids). Fewer,
    fuller micro-batches; a row longer than max_seq_length is truncated, as without packing."""
    padding_free: bool | None = None
    """SFT only: put a micro-batch's rows one after another in one sequence instead of padding each to the
    longest (TRL's padding_free; each row attends only to itself). Every row must fit max_seq_length, since
    nothing truncates them; packing=True implies it. None: the kit chooses per backend and says why in the start
    line (transformers: on when every row fits; Unsloth on a GPU: Unsloth's own choice; Unsloth's CPU backend:
    off; ``rslora_colab.train.setup.choose_batches``)."""

    train_embeddings: bool = False
    """Continued pretraining (new knowledge, a new language, a domain's vocabulary, from raw ``text`` rows, best
    with packing=True): also train the input embeddings and the LM head (``embed_tokens``, ``lm_head``) in full,
    in fp32, beside the rsLoRA adapter, at ``embedding_lr`` (PEFT's modules_to_save; a tied pair trains as one
    matrix). Costs the vocabulary x hidden matrices in fp32 with their gradients and optimizer state; the memory
    plan counts them. SFT only."""
    embedding_lr: float | None = None
    """Learning rate of embed_tokens and lm_head with train_embeddings; None: lr x 0.2 (Unsloth's
    continued-pretraining notebooks, ``rslora_colab.presets.EMBEDDING_LR_FACTOR``)."""
    trl_args: dict[str, Any] = field(default_factory=dict, hash=False)
    """Fields of the method's TRL config (SFTConfig, DPOConfig, GRPOConfig) under TRL's own names, handed to it
    untouched after the kit's arguments, e.g. {"neftune_noise_alpha": 5, "optim": "adamw_8bit"}; recorded in the
    manifest. ``quick_finetune(..., neftune_noise_alpha=5)`` puts a TRL keyword here itself
    (``rslora_colab.trl_args``: what the kit keeps, and why)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", module_names(self.target_modules))
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", default_output_dir())
        object.__setattr__(self, "gpu", gpu_budget_value(self.gpu))
        object.__setattr__(self, "reward_funcs", as_reward_tuple(self.reward_funcs))
        if isinstance(self.trl_args, dict):  # a copy of its own: the frozen config is not changed from outside
            object.__setattr__(self, "trl_args", dict(self.trl_args))
        problems = self.problems()
        if problems:
            raise ValueError("Invalid fine-tuning settings:\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        """Every problem with these settings, one readable line each."""
        checks = [
            (is_int(self.r) and MIN_RANK <= self.r <= MAX_RANK, "r", f"an integer from {MIN_RANK} to {MAX_RANK}"),
            (self.alpha is None or is_positive(self.alpha), "alpha", "a positive number, or None for alpha = r"),
            (self.lr is None or (is_positive(self.lr) and self.lr < 1), "lr", "a number in (0, 1), e.g. 1e-4"),
            (self.max_steps is None or (is_int(self.max_steps) and self.max_steps > 0), "max_steps",
             "a positive integer, or None to train by epochs"),
            (is_positive(self.epochs), "epochs", "a positive number"),
            (is_int(self.batch_size) and self.batch_size > 0, "batch_size", "a positive integer"),
            (is_int(self.grad_accum) and self.grad_accum > 0, "grad_accum", "a positive integer"),
            (is_int(self.max_seq_length) and self.max_seq_length >= 16, "max_seq_length", "an integer >= 16"),
            (isinstance(self.output_dir, str) and self.output_dir != "", "output_dir", "a folder path"),
            (not isinstance(self.output_dir, str) or not _is_root(self.output_dir), "output_dir",
             "a folder of the run's own, not a filesystem root"),
            (is_int(self.seed) and 0 <= self.seed < 2**32, "seed", "an integer from 0 to 2**32 - 1 (numpy's range)"),
            (self.warmup_ratio is None or (is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1),
             "warmup_ratio", "a fraction in [0, 1)"),
            (self.lr_scheduler is None or self.lr_scheduler in SCHEDULERS, "lr_scheduler", f"one of {SCHEDULERS}"),
            (is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (is_positive(self.max_grad_norm), "max_grad_norm", "a positive number"),
            (is_number(self.dropout) and 0 <= self.dropout < 1, "dropout", "a probability in [0, 1)"),
            (len(self.target_modules) > 0 and all(isinstance(t, str) for t in self.target_modules),
             "target_modules", "a non-empty list of layer names such as 'q_proj'"),
            (self.backend in BACKENDS, "backend", f"one of {BACKENDS}"),
            (is_int(self.logging_steps) and self.logging_steps > 0, "logging_steps", "a positive integer"),
            (not (is_int(self.logging_steps) and is_int(self.max_steps)) or self.logging_steps <= self.max_steps,
             "logging_steps", f"at most max_steps={self.max_steps}: the history, the plot and the divergence guard "
             "see one record every logging_steps"),
            (isinstance(self.plan, bool), "plan", "True or False"),
            (is_positive(self.gpu)
             or (isinstance(self.gpu, str) and self.gpu.strip().lower() in ("auto", *GPU_BUDGETS)),
             "gpu", '"auto", "T4" or the usable GPU memory in GiB, e.g. 14.74'),
            (isinstance(self.guard, bool), "guard", "True or False"),
            (is_int(self.max_rollbacks) and self.max_rollbacks >= 0, "max_rollbacks", "an integer >= 0"),
            (is_positive(self.checkpoint_minutes) or self.checkpoint_minutes == 0, "checkpoint_minutes",
             "minutes > 0 between checkpoints, e.g. 4, or 0 to save only by step and at the end"),
            (self.checkpoint_every is None or (is_int(self.checkpoint_every) and self.checkpoint_every > 0),
             "checkpoint_every", "a positive number of steps, or None"),
            (is_int(self.keep_checkpoints) and self.keep_checkpoints > 0, "keep_checkpoints", "an integer >= 1"),
            (self.eval_fraction is None or (is_number(self.eval_fraction) and 0 <= self.eval_fraction < 1),
             "eval_fraction", "a fraction in [0, 1), e.g. 0.1, or None for the automatic split"),
            (self.eval_every is None or (is_int(self.eval_every) and self.eval_every > 0), "eval_every",
             "a positive number of steps, or None"),
            (self.save_best is None or isinstance(self.save_best, bool), "save_best",
             "True, False, or None (on with early stopping)"),
            (self.early_stopping_patience is None
             or (is_int(self.early_stopping_patience) and self.early_stopping_patience > 0),
             "early_stopping_patience", "a positive number of evaluations, or None to never stop early"),
            (self.early_stopping_patience is None or self.save_best is not False, "early_stopping_patience",
             "None with save_best=False: early stopping keeps the best adapter, so it needs save_best"),
            (is_number(self.early_stopping_threshold) and self.early_stopping_threshold >= 0,
             "early_stopping_threshold", "a number >= 0, e.g. 0.01"),
            *report_to_checks(self.report_to),
            (self.method in METHODS, "method", f"one of {METHODS}"),
            (isinstance(self.packing, bool), "packing", "True or False"),
            (self.padding_free is None or isinstance(self.padding_free, bool), "padding_free",
             "True, False, or None (the kit chooses per backend)"),
            (self.method != "dpo" or not (self.packing is True or self.padding_free is True), "packing",
             "False with method='dpo': packing and padding_free are for SFT rows (TRL's SFTTrainer)"),
            *grpo_checks(self),
            (isinstance(self.train_embeddings, bool), "train_embeddings", "True or False"),
            (self.train_embeddings is not True or self.method == "sft", "train_embeddings",
             f"False with method={self.method!r}: continued pretraining trains on text (method='sft')"),
            (self.embedding_lr is None or (is_positive(self.embedding_lr) and self.embedding_lr < 1),
             "embedding_lr", "a number in (0, 1), e.g. 2e-5, or None for lr x 0.2"),
            (self.embedding_lr is None or self.train_embeddings is True, "embedding_lr",
             "None unless train_embeddings=True (it is the embeddings' own learning rate)"),
        ]
        return [f"{name}={getattr(self, name)!r}: expected {expected}" for ok, name, expected in checks if not ok
                ] + trl_args_problems(self.trl_args, self.method)

    @property
    def keeps_best(self) -> bool:
        """True when the saved adapter is the best evaluation's: ``save_best``, or by default early stopping."""
        return self.save_best if self.save_best is not None else self.early_stopping_patience is not None

    @classmethod
    def from_overrides(cls, **overrides: Any) -> "FinetuneConfig":
        """Build from keyword overrides: a field of the method's TRL config that is not the kit's goes to
        ``trl_args`` under its own name; other unknown keywords get a 'did you mean' error."""
        known = [f.name for f in fields(cls)]
        overrides, trl = split_trl_args(overrides, {*known, *HF_NAMES})
        unknown = [k for k in overrides if k not in known]
        if unknown:
            method = overrides.get("method", "sft")
            candidates = [*known, *suggestion_names(method)]
            hints = [f"{k!r}" + (f" (the kit sets it: {KIT_SETS[k]})" if k in KIT_SETS else
                                 f" ({o})" if k not in HF_NAMES and (o := other_method_hint(k, method)) else
                                 f" (did you mean {m!r}?)" if (m := suggest_name(k, candidates)) else "")
                     for k in unknown]
            raise ValueError(f"Unknown setting(s) {', '.join(hints)}. Known settings: {', '.join(known)}; and the "
                             "fields of TRL's config for the method (SFTConfig, DPOConfig, GRPOConfig).")
        return cls(**overrides, **({"trl_args": trl} if trl else {}))


def _is_root(folder: str) -> bool:
    """True for a filesystem root (``/``, ``C:\\``): a run's files and its checkpoint rotation do not belong there."""
    path = Path(folder).expanduser().resolve()
    return path.parent == path


def report_targets(report_to: Any) -> list[str]:
    """``report_to`` as a list of tracker names: ``"tensorboard, wandb"`` -> ``["tensorboard", "wandb"]``."""
    return [name.strip().lower() for name in str(report_to).split(",") if name.strip()]


def report_to_checks(report_to: Any) -> list[tuple[bool, str, str]]:
    """``problems()`` entries for ``report_to``: known tracker names, each one's package installed.

    Installed means what transformers' ``report_to`` itself tests when the trainer is built
    (``is_tensorboard_available`` and friends), checked here so a missing package stops the run before any
    model loads.
    """
    from transformers.integrations import integration_utils as hf

    names = report_targets(report_to) if isinstance(report_to, str) else []
    known = f"'none', or some of {', '.join(TRACKERS)} separated by commas"
    if names == ["none"]:
        return []
    if not names or any(name not in TRACKERS for name in names):
        return [(False, "report_to", known)]
    return [(getattr(hf, f"is_{name}_available")(), "report_to", f"{name} installed: pip install {TRACKERS[name]}")
            for name in names]


def as_reward_tuple(reward_funcs: Any) -> Any:
    """``reward_funcs`` as a tuple: one callable or a list of them (as TRL's ``GRPOTrainer`` takes) -> a tuple."""
    if callable(reward_funcs):
        return (reward_funcs,)
    return tuple(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else reward_funcs


def grpo_checks(config: Any) -> list[tuple[bool, str, str]]:
    """``problems()`` entries for ``beta`` and the GRPO settings (``num_generations``, ``max_completion_length``,
    ``reward_funcs``), and for what GRPO does not take (packing)."""
    grpo, funcs = config.method == "grpo", config.reward_funcs
    batch = config.batch_size * config.grad_accum if is_int(config.batch_size) and is_int(config.grad_accum) else None
    generations_ok = is_int(config.num_generations) and config.num_generations >= 2
    return [
        (config.beta is None or (is_number(config.beta) and (config.beta >= 0 if grpo else config.beta > 0)), "beta",
         "a number >= 0 (0 turns GRPO's KL term off), or None" if grpo else "a positive number, e.g. 0.1, or None"),
        (generations_ok, "num_generations", "an integer >= 2: GRPO compares each prompt's completions with each other"),
        (is_int(config.max_completion_length) and config.max_completion_length >= 1, "max_completion_length",
         "a positive number of tokens, e.g. 256"),
        (not grpo or not generations_ok or not is_int(config.max_completion_length) or not is_int(config.max_seq_length)
         or config.max_completion_length < config.max_seq_length, "max_completion_length",
         f"less than max_seq_length={config.max_seq_length}: the prompt and the completion share it"),
        (isinstance(funcs, tuple) and all(callable(f) for f in funcs), "reward_funcs",
         "callables f(prompts, completions, **columns) -> list[float], e.g. from rslora_colab.rewards"),
        (not grpo or funcs != (), "reward_funcs",
         "at least one reward function with method='grpo', e.g. rslora_colab.rewards.length_penalty(100)"),
        (grpo or funcs == (), "reward_funcs", "() unless method='grpo': only GRPO is trained by reward functions"),
        (not grpo or batch is None or not generations_ok or batch % config.num_generations == 0, "num_generations",
         f"a divisor of batch_size * grad_accum = {batch} completions per step: TRL's GRPOConfig puts all of a "
         "prompt's completions in one step (change grad_accum or num_generations)"),
        (not grpo or not (config.packing is True or config.padding_free is True), "packing",
         "False with method='grpo': packing and padding_free are for SFT rows (TRL's SFTTrainer)"),
    ]


def gpu_budget_value(gpu: Any) -> Any:
    """``gpu`` as given, except that text holding a number (``"14.74"``, from the command line) becomes that number."""
    if isinstance(gpu, str):
        try:
            return float(gpu)
        except ValueError:
            return gpu
    return gpu


def suggest_name(name: str, known: list[str]) -> str | None:
    """The known setting ``name`` was probably meant to be: its transformers/PEFT meaning, else the closest spelling."""
    if HF_NAMES.get(name) in known:
        return HF_NAMES[name]
    close = difflib.get_close_matches(name, known, 1)
    return close[0] if close else None


def is_int(value: Any) -> bool:
    """True for an int that is not a bool (True would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite int or float that is not a bool (inf and NaN make no sense as a setting)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive(value: Any) -> bool:
    """True for a finite number > 0 that is not a bool."""
    return is_number(value) and value > 0
