"""Step 4 — train: ``quick_finetune`` (load, adapt, train, save in one call) and ``train_adapter`` (train only).

The path of one ``quick_finetune`` call, each step in its own module:

1. settings: :class:`~rslora_colab.FinetuneConfig` validates every field at once;
2. data: :func:`~rslora_colab.load_and_validate` reads and checks every row;
3. setup (:mod:`.setup`): the memory plan fits the batch shape to the GPU, the
   output folder is locked and checked, the rows are measured with the tokenizer;
4. load and adapt: :func:`~rslora_colab.load_model`, then the rsLoRA adapter;
5. resolve (:func:`~rslora_colab.settings.resolve_run`): one frozen
   :class:`~rslora_colab.settings.RunSettings`; the run manifest is written;
6. train (:mod:`.trainer`): TRL's trainer, with the divergence guard, atomic
   checkpoints, out-of-memory recovery and Ctrl-C handling from
   :mod:`rslora_colab.resilience`;
7. save: the adapter, ``metrics.json`` and ``loss.png``.

The same call runs data-parallel when a launcher starts it in several
processes, one per GPU (``torchrun``, ``accelerate launch``,
``accelerate.notebook_launcher``; ``docs/scale-out.md``): each process trains
its share of every global batch, and rank 0 alone talks and writes the
lock, the manifest, the final files (:mod:`rslora_colab.distributed`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig
from ..data import token_lengths
from ..distributed import gather, run_on_main, start, world_size
from ..load import load_tokenizer, runtime_of
from ..logs import library_bars_off
from ..resilience.atomic import write_json
from ..resilience.checkpoints import (
    WRITE_ERRORS,
    CheckpointTimer,
    OutputWriteError,
    resume_training,
)
from ..resilience.drive import warn_if_volatile
from ..resilience.guard import DivergenceError, DivergenceGuard
from ..resilience.interrupt import (
    InterruptCallback,
    TrainingInterrupted,
    stop_on_interrupt,
)
from ..resilience.lock import run_lock
from ..resilience.oom import train_with_oom_recovery
from ..resilience.resume import (
    FINAL_SAVE,
    check_no_foreign_files,
    history_until,
    mark_final_save,
    prepare_run,
    run_manifest,
)
from ..result import FinetuneResult
from ..save import (
    ADAPTER_DIR,
    LAST_GOOD_DIR,
    LOSS_PLOT_FILE,
    METRICS_FILE,
    save_adapter,
)
from ..settings import RunSettings, resolve_run
from ..watch import HistoryCallback, quiet_progress
from .evaluation import adapter_step, describe_best, load_best
from .setup import choose_batches, fit_before_loading, load_pair, read_rows, share_batch, split_eval
from .trainer import attach_adapter, build_trainer

logger = logging.getLogger(__name__)


def _tokens_seen(trainer: Any, history: list[dict]) -> float:
    counted = [h["num_tokens"] for h in history if "num_tokens" in h]
    return counted[-1] if counted else float(trainer.state.num_input_tokens_seen or 0)


def quick_finetune(model: Any, dataset: Any, r: int = 64, callbacks: list | None = None, resume: bool = False,
                   eval_dataset: Any = None, **overrides: Any) -> FinetuneResult:
    """Fine-tune ``model`` on ``dataset`` with a rank-``r`` rsLoRA adapter, in one call.

    ``model``: a hub id, a local folder, ``"demo"``, or a ``(model, tokenizer)``
    pair. ``dataset``: a ``datasets.Dataset``, a list of dicts, a
    ``.jsonl/.json/.csv/.parquet`` file, or a hub id. The data is checked
    before any model is loaded. Keyword overrides are the fields of
    :class:`FinetuneConfig` (lr, alpha, max_steps, epochs, batch_size,
    grad_accum, max_seq_length, output_dir, seed, method, beta, ...); open
    ones come from ``preset_for_rank(r, method)``. ``method="dpo"`` tunes on
    preference pairs with TRL's ``DPOTrainer`` and a far lower learning rate
    (see :mod:`rslora_colab.train.trainer`); ``method="grpo"`` on prompts scored by
    ``reward_funcs`` with TRL's ``GRPOTrainer`` (:mod:`rslora_colab.train.grpo`; each reward function is
    called on sample completions before the model loads). On a GPU the batch and sequence length are first
    fitted to its memory (``plan``, ``gpu``), and a CUDA out-of-memory error
    during training halves the micro-batch and carries on (see
    :mod:`rslora_colab.resilience.oom`). The adapter, ``metrics.json`` and ``loss.png`` are
    written to ``output_dir``, with checkpoints every ``checkpoint_minutes``.
    ``resume=True`` continues the newest valid checkpoint there (same settings
    required) and ends at the same step count. A :class:`DivergenceGuard`
    rolls back NaN/exploding steps; it raises ``DivergenceError`` if that fails.

    Evaluation (:mod:`rslora_colab.train.evaluation`): ``eval_dataset`` takes
    the same kinds of data as ``dataset`` (checked the same way, same format),
    or ``eval_fraction`` holds out a share of the rows with the run's seed
    (default: 5%, at most 100 rows, for data of 1,000 rows or more). The eval
    loss is measured before the first step, every ``eval_every`` steps and at
    the end, and recorded in the history. ``early_stopping_patience`` stops a
    run whose eval loss stopped improving, and then (or with
    ``save_best=True``) the adapter saved is the one with the lowest eval
    loss; ``result.adapter_step`` names its step.

    Before the model loads: ``output_dir`` must be writable and is locked for
    the whole run (a second run on it is refused, :mod:`rslora_colab.resilience.lock`),
    and the rows are measured with the tokenizer alone (a warning names those
    TRL would drop because their prompt fills ``max_seq_length``; a
    ``ValueError`` if none would remain, :mod:`rslora_colab.data.lengths`); on a
    GPU the memory plan is made for the longest row the data really has
    (:mod:`rslora_colab.train.setup`). Ctrl-C
    stops after the current step, saves a checkpoint and raises
    :class:`~rslora_colab.resilience.interrupt.TrainingInterrupted`; a checkpoint or final
    save that cannot be written raises
    :class:`~rslora_colab.resilience.checkpoints.OutputWriteError`, saying what
    ``resume=True`` will continue from.

    Started by a launcher in several processes (one per GPU), the run is
    data-parallel: ``batch_size * grad_accum`` stays the global batch, shared
    by the processes, and only rank 0 talks and writes (``docs/scale-out.md``).

    >>> result = quick_finetune("demo", demo_dataset(), r=16, max_steps=20)  # doctest: +SKIP
    """
    start()  # several processes: join them now (the lock and the manifest need it); nothing with one
    config = share_batch(FinetuneConfig.from_overrides(r=r, **overrides))  # 1. every setting checked
    config, rows = read_rows(dataset, eval_dataset, config)  # 2. every row checked, the eval rows held out
    with run_lock(config.output_dir), library_bars_off():  # a writable folder, no other live run in it
        check_no_foreign_files(config.output_dir)  # and no file of the user's that the run would overwrite
        tokenizer = load_tokenizer(model, config.backend, config.load_in_4bit)
        fitted = fit_before_loading(model, tokenizer, rows, config)  # 3. lengths, layout, rewards, memory plan
        model, tokenizer = load_pair(model, fitted.config)  # 4. the weights (the adapter: in _train)
        # 5-6. resolve the run, add the adapter, train (with every extra in one callback list)
        result = _train(model, tokenizer, rows.train, rows.fmt, fitted.config, callbacks, resume, fitted.plan,
                        saves_outputs=True, eval_dataset=rows.held, batches_why=fitted.batches_why)
        save_final_outputs(result, tokenizer, fitted.config.output_dir)  # 7. adapter, metrics.json, loss.png
    return result


def save_final_outputs(result: FinetuneResult, tokenizer: Any, output_dir: str | Path) -> None:
    """The final save: the adapter, ``metrics.json`` and ``loss.png``; the run manifest records when it is done.

    A failure raises :class:`~rslora_colab.resilience.checkpoints.OutputWriteError`
    saying that ``--resume`` saves the finished run without training again
    (the manifest still says ``final_save: pending``, so a fresh start will
    not delete that run's last checkpoint). Under several processes rank 0
    writes and the others wait for it (and raise its error).
    """
    run_on_main(_save_final_outputs, result, tokenizer, Path(output_dir))


def _save_final_outputs(result: FinetuneResult, tokenizer: Any, out: Path) -> None:
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
                  callbacks: list | None = None, resume: bool = False, gpu_plan: str | None = None,
                  eval_dataset: Any = None) -> FinetuneResult:
    """Add the adapter ``config`` describes to a loaded model and train it; saves no adapter or metrics.

    ``dataset`` must already be validated as format ``fmt`` (see
    :func:`~rslora_colab.data.load_and_validate`). This is :func:`quick_finetune`
    without the loading and the final files (checkpoints are still written to
    ``config.output_dir``, which it holds with :func:`~rslora_colab.resilience.lock.run_lock`
    while it trains); :func:`~rslora_colab.compare_ranks` calls it once per run.
    Ctrl-C stops after the current step, saves a checkpoint and raises
    :class:`~rslora_colab.resilience.interrupt.TrainingInterrupted`; when the divergence
    guard gives up, the last good adapter is saved to ``output_dir/last_good_adapter``
    and ``DivergenceError`` says so. Under several processes ``config``'s
    ``batch_size * grad_accum`` is the global batch they share (see :func:`quick_finetune`).
    The eval rows are ``eval_dataset`` (validated, the same format) or
    ``config.eval_fraction`` of ``dataset``, as in :func:`quick_finetune`.
    """
    start()
    config, dataset, held = split_eval(dataset, share_batch(config), eval_dataset)
    with run_lock(config.output_dir), library_bars_off():
        check_no_foreign_files(config.output_dir)
        return _train(model, tokenizer, dataset, fmt, config, callbacks, resume, gpu_plan, saves_outputs=False,
                      eval_dataset=held)


def _train(model: Any, tokenizer: Any, dataset: Any, fmt: str, config: FinetuneConfig, callbacks: list | None,
           resume: bool, gpu_plan: str | None, saves_outputs: bool, eval_dataset: Any = None,
           batches_why: str = "") -> FinetuneResult:
    """:func:`train_adapter` in a folder the caller holds (:func:`~rslora_colab.resilience.lock.run_lock`).

    ``dataset`` and ``eval_dataset`` are the training and eval rows, already split (:func:`split_eval`).
    ``saves_outputs``: the caller writes the final files, so the manifest marks that save pending until then.
    ``batches_why``: why the batches are laid out as they are (:func:`choose_batches`), when the caller chose.
    """
    runtime = runtime_of(model)
    if not batches_why:  # train_adapter: the kit's choice of batch layout, from the rows as TRL will build them
        measure = config.method == "sft" and config.padding_free is None and runtime.backend != "unsloth"
        measured = [token_lengths(rows, fmt, tokenizer) for rows in (dataset, eval_dataset)
                    if rows is not None] if measure else []
        config, batches_why = choose_batches(config, runtime, *measured)
    run = resolve_run(config, runtime, gpu_plan, world_size(),
                      len(eval_dataset) if eval_dataset is not None else 0, batches_why)
    manifest = run_manifest(model, dataset, fmt, run, eval_dataset)
    checkpoint = run_on_main(prepare_run, config.output_dir,  # rank 0 decides; every process resumes the same one
                             {**manifest, FINAL_SAVE: "pending"} if saves_outputs else manifest, resume)
    warn_if_volatile(config.output_dir)
    recorder, interrupt = HistoryCallback(history_until(checkpoint)), InterruptCallback()
    timer = [CheckpointTimer(config.checkpoint_minutes)] if config.checkpoint_minutes else []
    trainer = build_trainer(attach_adapter(model, run), tokenizer, dataset, fmt, run,
                            [recorder, *timer, interrupt, *(callbacks or [])], eval_dataset)
    if eval_dataset is not None and len(trainer.eval_dataset) == 0:  # held-out rows are checked with the others
        raise ValueError(f"all {len(eval_dataset)} eval rows have a prompt of max_seq_length={config.max_seq_length} "
                         "tokens or more, so TRL drops them and nothing is left to evaluate on: raise "
                         "max_seq_length, hold out other rows (another seed), or pass an eval_dataset.")
    run = _layout_that_runs(run, trainer)
    grpo = config.method == "grpo"  # a policy-gradient loss: no spike rules, and the reward is judged instead
    guard = (DivergenceGuard(config.max_rollbacks, recorder.history, loss_spikes=not grpo, reward_collapse=grpo)
             .attach(trainer) if config.guard else None)
    quiet_progress(trainer)
    _announce(run, len(trainer.train_dataset), len(dataset), fmt, trainer.eval_dataset)
    if run.runtime.on_gpu:
        torch.cuda.reset_peak_memory_stats()
    began, out = time.perf_counter(), Path(config.output_dir)
    try:
        with stop_on_interrupt(interrupt):
            ended, steps = resume_training(trainer, checkpoint, lambda resume_from: train_with_oom_recovery(
                trainer, run, recorder.history, resume_from))
    except DivergenceError as err:
        raise _gave_up(err, trainer, tokenizer, guard, run, recorder.history, out) from None
    if checkpoint is not None and steps == 0:
        load_best(trainer)  # the run had ended there: train() did not run, so it did not load the best either
    result = _result(trainer, tokenizer, ended or run, recorder.history, time.perf_counter() - began, steps,
                     eval_dataset)
    best = describe_best(result.history, result.adapter_step, trainer.state.global_step)
    if best:
        logger.info(best)
    if interrupt.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        saved = out / f"checkpoint-{interrupt.stopped_at}"
        raise TrainingInterrupted(
            f"stopped by {interrupt.by} after step {interrupt.stopped_at} of {trainer.state.max_steps}; the "
            f"checkpoint {saved} holds it. Run the same command with --resume (Python: resume=True) to continue "
            "from there.", result, saved, interrupt.signum)
    return result


def _result(trainer: Any, tokenizer: Any, run: RunSettings, history: list[dict], wall: float,
            steps: int, eval_dataset: Any = None) -> FinetuneResult:
    """The run's result; ``run`` is the settings it ended with (out-of-memory recovery may have changed the batch)."""
    return FinetuneResult(
        model=trainer.model, tokenizer=tokenizer, adapter_path=Path(run.config.output_dir) / ADAPTER_DIR,
        settings=run.as_dict(), history=history, wall_time_s=wall,
        tokens_per_s=_tokens_seen(trainer, history) / wall if steps else 0.0,
        peak_gpu_memory_gib=max(gather(torch.cuda.max_memory_reserved() / 2**30)) if run.runtime.on_gpu else None,
        adapter_step=adapter_step(trainer), eval_dataset=eval_dataset,
    )


def _layout_that_runs(run: RunSettings, trainer: Any) -> RunSettings:
    """``run`` with the batch layout the built trainer uses, saying so when it is not the one asked for.

    Unsloth 2026.10.9's CPU backend turns ``packing`` and ``padding_free`` off in
    TRL's config ("needs FlashAttention to keep packed examples apart"); the run
    then trains, and is recorded, with padded batches. On a GPU, with
    ``padding_free`` left open, Unsloth picks the layout itself; it is recorded here.
    """
    asked = (run.config.packing, run.config.padding_free)
    got = (bool(getattr(trainer.args, "packing", False)), bool(getattr(trainer.args, "padding_free", False)))
    if run.config.method != "sft":
        return run
    if asked[1] is None and not asked[0] and run.runtime.unsloth_gpu:  # left to Unsloth (choose_batches)
        return run.with_layout(packing=got[0], padding_free=got[1],
                               why="Unsloth's choice for this GPU, unsloth/utils/padding_choice.py")
    if not any(asked) or got[0] == asked[0] and got[1] >= bool(asked[1]):
        return run
    logger.info(f"{run.runtime.backend} ({run.runtime.device}) turned {'packing' if asked[0] else 'padding_free'} "
                "off: training with padded batches")
    return run.with_layout(packing=got[0], padding_free=got[1])


def _announce(run: RunSettings, kept: int, rows: int, fmt: str, eval_rows: Any = None) -> None:
    """One line before training: the adapter, the learning rate, the rows TRL kept (and the eval rows), the
    precision and device."""
    c = run.config
    shown = f"{kept} of {rows}" if kept != rows else f"{kept}"  # TRL drops rows truncation leaves nothing to learn in
    if c.packing and c.method == "sft":  # TRL's rows are then the packed sequences
        shown = f"{rows}"
    held = ""
    if eval_rows is not None:
        dropped = f" of {run.eval_rows}" if len(eval_rows) != run.eval_rows else ""
        how = f"held out ({c.eval_fraction:.0%})" if c.eval_fraction else "from eval_dataset"
        measure = "held-out reward" if c.method == "grpo" else "eval loss"
        held = f", {measure} on {len(eval_rows)}{dropped} rows {how}"
    where = f"{run.runtime.device} x {run.world_size} processes" if run.world_size > 1 else run.runtime.device
    batches = {"packed": f", packed into {kept} sequences of at most {c.max_seq_length} tokens",
               "padding-free": ", padding-free batches", "padded": ", padded batches" if run.batches_why else ""
               }[run.batches] + (f" ({run.batches_why})" if run.batches_why else "")
    embeddings = f" + embed_tokens/lm_head in fp32 at lr={c.embedding_lr:.3g}" if c.train_embeddings else ""
    logger.info(f"training r={c.r} alpha={c.alpha:g} (scale {run.scale:.3g}) lr={c.lr:.3g}{embeddings} on {shown} "
                f"{fmt} rows{batches}{held}, global batch {run.global_batch}, {run.runtime.precision} on {where}")


def _gave_up(err: DivergenceError, trainer: Any, tokenizer: Any, guard: DivergenceGuard | None, run: RunSettings,
             history: list[dict], out: Path) -> DivergenceError:
    """The guard gave up: keep the evidence and the last good adapter (the model holds it), and say where."""
    path = out / LAST_GOOD_DIR
    step = guard.last_good_step if guard is not None else None
    which, kept_step = "last good adapter", adapter_step(trainer)
    if trainer.state.global_step != kept_step:  # transformers loaded the best checkpoint before stopping
        step, which = kept_step, "adapter with the lowest eval loss"

    def keep() -> str:
        write_json({"settings": run.as_dict(), "history": history}, out / METRICS_FILE)
        try:
            save_adapter(trainer.model, tokenizer, path)
            return f" The {which} (step {step}) is saved in {path}."
        except WRITE_ERRORS as save_err:
            return f" Saving the {which} (step {step}) to {path} failed too ({type(save_err).__name__})."

    return DivergenceError(f"{err}{run_on_main(keep)}")  # rank 0 writes
