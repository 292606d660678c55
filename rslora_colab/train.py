"""Step 4 — train: ``quick_finetune`` and the TRL trainer behind it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapt import add_rslora, keep_adapter_fp32
from .checkpoints import (WRITE_ERRORS, CheckpointTimer, OutputWriteError, checkpoint_args,
                          make_checkpoints_atomic, resume_training)
from .colab import warn_if_volatile
from .config import FinetuneConfig
from .data import load_and_validate, source_name, to_trainer_dataset
from .fit import fit_to_gpu
from .guard import DivergenceError, DivergenceGuard
from .interrupt import InterruptCallback, TrainingInterrupted, stop_on_interrupt
from .lengths import check_truncation, token_lengths
from .load import load_model, load_tokenizer, runtime_of
from .lock import run_lock
from .oom import train_with_oom_recovery
from .presets import preset_for_rank
from .resume import FINAL_SAVE, history_until, mark_final_save, prepare_run, run_manifest
from .runtime import Runtime
from .save import ADAPTER_DIR, LAST_GOOD_DIR, LOSS_PLOT_FILE, METRICS_FILE, plot_loss, save_adapter, write_json
from .watch import HistoryCallback, mean_loss, quiet_progress


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced and measured."""

    model: Any
    """The trained model (base + rsLoRA adapter), ready for generation."""
    tokenizer: Any
    """Its tokenizer."""
    adapter_path: Path
    """Folder holding the saved adapter (``adapter_config.json`` keeps ``use_rslora``); only
    :func:`quick_finetune` writes it, :func:`train_adapter` leaves it unwritten."""
    settings: dict
    """Settings actually used: backend, precision, r, alpha, scale, lr, batch, steps, ..."""
    history: list[dict] = field(default_factory=list)
    """One record per logged step (step, loss, lr, grad_norm, num_tokens), plus events: the divergence
    guard's (``{"step", "event": "rollback" | "scaler_skip" | "gave_up", "reason", "lr", ...}``) and
    out-of-memory recoveries (``{"step", "event": "oom", "micro_batch", "grad_accum"}``); a resumed run
    includes the steps before the checkpoint."""
    wall_time_s: float = 0.0
    """Seconds spent in ``trainer.train()``."""
    tokens_per_s: float = 0.0
    """Training tokens processed per second."""
    peak_gpu_memory_gib: float | None = None
    """Peak reserved CUDA memory in GiB; None on CPU."""

    @property
    def first_loss(self) -> float:
        """Mean loss of the first 5 logged steps."""
        return mean_loss(self.history, first=True)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 5 logged steps."""
        return mean_loss(self.history, first=False)

    def summary(self) -> dict:
        """The JSON-ready part of the result (everything but model and tokenizer)."""
        return {"adapter_path": str(self.adapter_path), "settings": self.settings, "history": self.history,
                "wall_time_s": self.wall_time_s, "tokens_per_s": self.tokens_per_s,
                "peak_gpu_memory_gib": self.peak_gpu_memory_gib,
                "first_loss": self.first_loss, "final_loss": self.final_loss}

    def plot(self, path: str | Path | None = None):
        """The loss curve as a matplotlib figure."""
        return plot_loss(self.history, path, title=f"rsLoRA r={self.settings['r']}, lr={self.settings['lr']:.2g}")


def model_and_tokenizer(result_or_model: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a :class:`FinetuneResult`, or from a model and its tokenizer."""
    if isinstance(result_or_model, FinetuneResult):
        return result_or_model.model, tokenizer or result_or_model.tokenizer
    if tokenizer is None:
        raise ValueError("tokenizer: pass the model's tokenizer (or pass a FinetuneResult, which carries it).")
    return result_or_model, tokenizer


def resolve_settings(config: FinetuneConfig, runtime: Runtime) -> dict:
    """Fill the config's open fields from the rank preset and the machine."""
    preset = preset_for_rank(config.r, config.alpha, config.use_rslora, config.method)
    return {
        "backend": runtime.backend, "precision": runtime.precision, "device": runtime.device,
        "r": config.r, "alpha": preset.alpha, "use_rslora": config.use_rslora, "scale": preset.scale,
        "lr": config.lr if config.lr is not None else preset.lr,
        "warmup_ratio": config.warmup_ratio if config.warmup_ratio is not None else preset.warmup_ratio,
        "lr_scheduler": config.lr_scheduler or preset.lr_scheduler,
        "optimizer": runtime.optimizer,
        "batch_size": config.batch_size, "grad_accum": config.grad_accum,
        "max_seq_length": config.max_seq_length, "max_steps": config.max_steps, "epochs": config.epochs,
        "seed": config.seed, "target_modules": list(config.target_modules), "load_in_4bit": config.load_in_4bit,
        "method": config.method, **({"beta": config.beta} if config.method == "dpo" else {}),
    }


def trainer_args(config: FinetuneConfig, settings: dict) -> dict:
    """The arguments SFT and DPO share: TRL's ``SFTConfig`` and ``DPOConfig`` both take them."""
    precision = settings["precision"]
    return dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=settings["lr"],
        lr_scheduler_type=settings["lr_scheduler"],
        warmup_steps=settings["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        max_steps=config.max_steps or -1,
        num_train_epochs=config.epochs,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=settings["optimizer"],
        max_length=config.max_seq_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=precision == "fp32" and not torch.cuda.is_available(),
        gradient_checkpointing=False,  # add_rslora already set it up ("unsloth" mode on GPU)
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must show in the history, not be averaged away
        **checkpoint_args(config.checkpoint_every, config.keep_checkpoints),
        report_to="none",
        seed=config.seed,
    )


def sft_config(config: FinetuneConfig, settings: dict, **extra: Any):
    """TRL's ``SFTConfig`` for these settings (``extra`` adds e.g. ``assistant_only_loss``)."""
    from trl import SFTConfig

    return SFTConfig(**trainer_args(config, settings), **extra)


def build_trainer(model: Any, tokenizer: Any, dataset: Any, fmt: str, config: FinetuneConfig, settings: dict,
                  callbacks: list | None = None):
    """TRL's ``SFTTrainer`` (``DPOTrainer`` for ``method="dpo"``) over an adapted model and validated data."""
    if config.method == "dpo":
        from .prefer import build_dpo_trainer

        trainer = build_dpo_trainer(model, tokenizer, dataset, fmt, config, settings, callbacks)
    else:
        from trl import SFTTrainer

        train_dataset, extra = to_trainer_dataset(dataset, fmt, tokenizer)
        trainer = SFTTrainer(model=model, args=sft_config(config, settings, **extra), train_dataset=train_dataset,
                             processing_class=tokenizer, callbacks=callbacks or [])
    if not runtime_of(model).unsloth_gpu:
        keep_adapter_fp32(trainer.model)  # undo TRL's bf16 cast of QLoRA adapters (Unsloth's CPU backend too)
    return make_checkpoints_atomic(trainer)


def attach_adapter(model: Any, config: FinetuneConfig, settings: dict):
    """The rsLoRA adapter ``quick_finetune`` puts on ``model`` for these settings (reused if already there)."""
    return add_rslora(model, config.r, settings["alpha"], config.target_modules, config.dropout,
                      config.use_rslora, config.gradient_checkpointing, config.seed)


def _load_pair(model: Any, config: FinetuneConfig):
    if isinstance(model, (str, Path)):
        return load_model(str(model), config.max_seq_length, config.load_in_4bit, config.backend)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise ValueError(f"model: got a {type(model).__name__}; pass a hub id, a local folder, 'demo', "
                     "or a (model, tokenizer) pair from load_model().")


def _tokens_seen(trainer: Any, history: list[dict]) -> float:
    counted = [h["num_tokens"] for h in history if "num_tokens" in h]
    return counted[-1] if counted else float(trainer.state.num_input_tokens_seen or 0)


def quick_finetune(model: Any, dataset: Any, r: int = 64, callbacks: list | None = None, resume: bool = False,
                   **overrides: Any) -> FinetuneResult:
    """Fine-tune ``model`` on ``dataset`` with a rank-``r`` rsLoRA adapter, in one call.

    ``model``: a hub id, a local folder, ``"demo"``, or a ``(model, tokenizer)``
    pair. ``dataset``: a ``datasets.Dataset``, a list of dicts, a
    ``.jsonl/.json/.csv/.parquet`` file, or a hub id. The data is checked
    before any model is loaded. Keyword overrides are the fields of
    :class:`FinetuneConfig` (lr, alpha, max_steps, epochs, batch_size,
    grad_accum, max_seq_length, output_dir, seed, method, beta, ...); open
    ones come from ``preset_for_rank(r, method)``. ``method="dpo"`` tunes on
    preference pairs with TRL's ``DPOTrainer`` and a far lower learning rate
    (see :mod:`rslora_colab.prefer`). On a GPU the batch and sequence length are first
    fitted to its memory (``plan``, ``gpu``), and a CUDA out-of-memory error
    during training halves the micro-batch and carries on (see
    :mod:`rslora_colab.oom`). The adapter, ``metrics.json`` and ``loss.png`` are
    written to ``output_dir``, with checkpoints every ``checkpoint_minutes``.
    ``resume=True`` continues the newest valid checkpoint there (same settings
    required) and ends at the same step count. A :class:`DivergenceGuard`
    rolls back NaN/exploding steps; it raises ``DivergenceError`` if that fails.

    Before the model loads: ``output_dir`` must be writable and is locked for
    the whole run (a second run on it is refused, :mod:`rslora_colab.lock`),
    and the rows are measured with the tokenizer alone (a warning names those
    TRL would drop because their prompt fills ``max_seq_length``; a
    ``ValueError`` if none would remain, :mod:`rslora_colab.lengths`). Ctrl-C
    stops after the current step, saves a checkpoint and raises
    :class:`~rslora_colab.interrupt.TrainingInterrupted`; a checkpoint or final
    save that cannot be written raises
    :class:`~rslora_colab.checkpoints.OutputWriteError`, saying what
    ``resume=True`` will continue from.

    >>> result = quick_finetune("demo", demo_dataset(), r=16, max_steps=20)  # doctest: +SKIP
    """
    config = FinetuneConfig.from_overrides(r=r, **overrides)
    source = source_name(dataset)
    dataset, fmt = load_and_validate(dataset, config.method)
    config, plan = fit_to_gpu(model, config)  # before any weights load; raises if nothing fits
    with run_lock(config.output_dir):  # a writable folder, and no other live run in it
        check_lengths(model, dataset, fmt, config, source)  # the tokenizer only: rows TRL would drop
        model, tokenizer = _load_pair(model, config)
        result = _train(model, tokenizer, dataset, fmt, config, callbacks, resume, plan.message if plan else None,
                        saves_outputs=True)
        save_final_outputs(result, tokenizer, config.output_dir)
    return result


def check_lengths(model: Any, dataset: Any, fmt: str, config: FinetuneConfig, source: str = "dataset") -> int:
    """Before the model loads: warn about rows TRL would drop at ``config.max_seq_length``; raise if all would go.

    Reads only the tokenizer (:func:`~rslora_colab.load.load_tokenizer`); see
    :mod:`rslora_colab.lengths`. Returns the rows that will be dropped.
    """
    tokenizer = load_tokenizer(model)
    if tokenizer is None:
        return 0
    lengths = token_lengths(dataset, fmt, tokenizer, config.method)
    return check_truncation(lengths, config.max_seq_length, source, "pairs" if config.method == "dpo" else "rows")


def save_final_outputs(result: FinetuneResult, tokenizer: Any, output_dir: str | Path) -> None:
    """The final save: the adapter, ``metrics.json`` and ``loss.png``; the run manifest records when it is done.

    A failure raises :class:`~rslora_colab.checkpoints.OutputWriteError`
    saying that ``--resume`` saves the finished run without training again
    (the manifest still says ``final_save: pending``, so a fresh start will
    not delete that run's last checkpoint).
    """
    out = Path(output_dir)
    try:
        save_adapter(result.model, tokenizer, result.adapter_path)
        write_json(result.summary(), out / METRICS_FILE)
        result.plot(out / LOSS_PLOT_FILE)
        mark_final_save(out, "done")
    except (*WRITE_ERRORS, ValueError) as err:  # PEFT: ValueError when a file is where the adapter folder goes
        raise OutputWriteError(
            f"training finished, but saving the adapter and metrics to {out} failed ({type(err).__name__}: {err}). "
            "The trained weights are in the run's last checkpoint there: fix the folder (make it writable, free "
            "some space, or move away what is in the way), then run the same command with --resume (Python: "
            "resume=True) to save them without training again.") from err


def train_adapter(model: Any, tokenizer: Any, dataset: Any, fmt: str, config: FinetuneConfig,
                  callbacks: list | None = None, resume: bool = False, gpu_plan: str | None = None) -> FinetuneResult:
    """Add the adapter ``config`` describes to a loaded model and train it; saves no adapter or metrics.

    ``dataset`` must already be validated as format ``fmt`` (see
    :func:`~rslora_colab.data.load_and_validate`). This is :func:`quick_finetune`
    without the loading and the final files (checkpoints are still written to
    ``config.output_dir``, which it holds with :func:`~rslora_colab.lock.run_lock`
    while it trains); :func:`~rslora_colab.compare_ranks` calls it once per run.
    Ctrl-C stops after the current step, saves a checkpoint and raises
    :class:`~rslora_colab.interrupt.TrainingInterrupted`; when the divergence
    guard gives up, the last good adapter is saved to ``output_dir/last_good_adapter``
    and ``DivergenceError`` says so.
    """
    with run_lock(config.output_dir):
        return _train(model, tokenizer, dataset, fmt, config, callbacks, resume, gpu_plan, saves_outputs=False)


def _train(model: Any, tokenizer: Any, dataset: Any, fmt: str, config: FinetuneConfig, callbacks: list | None,
           resume: bool, gpu_plan: str | None, saves_outputs: bool) -> FinetuneResult:
    """:func:`train_adapter` in a folder the caller holds (:func:`~rslora_colab.lock.run_lock`).

    ``saves_outputs``: the caller writes the final files, so the manifest marks that save pending until then.
    """
    runtime = runtime_of(model)
    settings = {**resolve_settings(config, runtime), "gpu_plan": gpu_plan}
    manifest = run_manifest(model, dataset, fmt, settings, config)
    checkpoint = prepare_run(config.output_dir, {**manifest, FINAL_SAVE: "pending"} if saves_outputs else manifest,
                             resume)
    warn_if_volatile(config.output_dir)
    model = attach_adapter(model, config, settings)
    recorder = HistoryCallback(history_until(checkpoint))
    timer = [CheckpointTimer(config.checkpoint_minutes)] if config.checkpoint_minutes else []
    interrupt = InterruptCallback()
    trainer = build_trainer(model, tokenizer, dataset, fmt, config, settings,
                            [recorder, *timer, interrupt, *(callbacks or [])])
    guard = DivergenceGuard(config.max_rollbacks, recorder.history).attach(trainer) if config.guard else None
    quiet_progress(trainer)
    kept = len(trainer.train_dataset)  # after TRL dropped the rows truncation left nothing to learn in
    rows = f"{kept} of {len(dataset)}" if kept != len(dataset) else f"{kept}"
    print(f"rslora-colab: training r={config.r} alpha={settings['alpha']:g} (scale {settings['scale']:.3g}) "
          f"lr={settings['lr']:.3g} on {rows} {fmt} rows, {settings['precision']} on {runtime.device}",
          flush=True)
    if runtime.on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = Path(config.output_dir)
    try:
        with stop_on_interrupt(interrupt):
            steps = resume_training(trainer, checkpoint, lambda resume_from: train_with_oom_recovery(
                trainer, recorder.history, settings, resume_from))
    except DivergenceError as err:
        raise _gave_up(err, trainer, tokenizer, guard, settings, recorder.history, out) from None
    wall = time.perf_counter() - start
    result = FinetuneResult(
        model=trainer.model, tokenizer=tokenizer, adapter_path=out / ADAPTER_DIR, settings=settings,
        history=recorder.history, wall_time_s=wall,
        tokens_per_s=_tokens_seen(trainer, recorder.history) / wall if steps else 0.0,
        peak_gpu_memory_gib=torch.cuda.max_memory_reserved() / 2**30 if runtime.on_gpu else None,
    )
    if interrupt.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        saved = out / f"checkpoint-{interrupt.stopped_at}"
        raise TrainingInterrupted(
            f"stopped by Ctrl-C after step {interrupt.stopped_at} of {trainer.state.max_steps}; the checkpoint "
            f"{saved} holds it. Run the same command with --resume (Python: resume=True) to continue from there.",
            result, saved)
    return result


def _gave_up(err: DivergenceError, trainer: Any, tokenizer: Any, guard: DivergenceGuard | None, settings: dict,
             history: list[dict], out: Path) -> DivergenceError:
    """The guard gave up: keep the evidence and the last good adapter (the model holds it), and say where."""
    write_json({"settings": settings, "history": history}, out / METRICS_FILE)
    path = out / LAST_GOOD_DIR
    step = guard.last_good_step if guard is not None else None
    try:
        save_adapter(trainer.model, tokenizer, path)
        kept = f" The last good adapter (step {step}) is saved in {path}."
    except WRITE_ERRORS as save_err:
        kept = f" Saving the last good adapter (step {step}) to {path} failed too ({type(save_err).__name__})."
    return DivergenceError(f"{err}{kept}")


def masked_preview(trainer: Any, index: int = 0) -> tuple[str, str]:
    """Row ``index`` as the model sees it, and only the tokens the loss is computed on.

    Returns ``(full_text, trained_text)``: decode of ``input_ids`` and of the
    positions whose label is not -100, after TRL's collator.
    """
    batch = trainer.data_collator([trainer.train_dataset[index]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    decode = trainer.processing_class.decode
    return decode(ids), decode(ids[labels != -100])
