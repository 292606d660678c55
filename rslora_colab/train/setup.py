"""Before any weights load: fit the run to the GPU and measure the rows with the tokenizer alone.

``quick_finetune`` resolves everything it can before it loads a model, so a
run that cannot work fails in seconds, not after a download:

* :func:`split_eval` holds out the eval rows (``eval_fraction``) or takes
  the ``eval_dataset`` (:mod:`rslora_colab.data.split`).
* :func:`check_lengths` tokenizes the rows as TRL will
  (:mod:`rslora_colab.data.lengths`), names the rows TRL would drop (for the
  training and the eval rows alike), and returns every row's length.
* :func:`fit_to_gpu` reads the model's architecture without loading it (a
  catalog id needs nothing, a local folder its ``config.json``, any other hub
  id only ``config.json`` through ``AutoConfig``; a loaded model its
  ``.config``), estimates the run for the backend that will train it
  (:mod:`rslora_colab.memory`) at the longest sequence the data can really
  produce, and applies the plan's micro-batch, gradient accumulation and
  sequence length, or raises the planner's "does not fit".

Planning from the data: TRL truncates each row to ``max_seq_length`` and its
collator pads a micro-batch to the longest row in it, so the largest batch
the run can build is ``micro-batch x longest row`` (truncated). A user with
Alpaca rows of a few hundred tokens who leaves ``max_seq_length=2048`` is
planned for their real length, not 2048; ``max_seq_length`` stays the cap
TRL truncates at, and the worst case when the data is not known (the
control panel before an upload, a hub dataset whose tokenizer cannot be
read). On a big dataset the lengths come from an evenly spaced sample
(:data:`~rslora_colab.data.lengths.LENGTH_SAMPLE` rows) and the plan says so;
a longer row the sample missed is what out-of-memory recovery is for.

Several processes: :func:`share_batch`, under a launcher that started several
processes (one per GPU), gives each its share of the global batch
``batch_size * grad_accum``, which stays what one GPU would use
(``docs/scale-out.md``); the memory plan then fits that share to each GPU.

The estimates are not yet calibrated on a GPU (``docs/memory.md``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig
from ..data import (
    TokenLengths,
    check_prompt_room,
    check_truncation,
    eval_fraction_for,
    hold_out,
    load_and_validate,
    load_eval_dataset,
    source_name,
    token_lengths,
)
from ..distributed import smallest, world_size
from ..load import load_model, runtime_of
from ..memory.catalog import model_spec, unsloth_maps_to_dynamic
from ..memory.grpo import estimate_grpo_vram
from ..memory.plan import (
    TrainPlan,
    plan_for_gpu,
    resolve_budget_gib,
    split_global_batch,
    training_estimate_kwargs,
)
from ..runtime import Runtime, detect_runtime, trains_as
from .evaluation import check_evaluation
from .grpo import check_rewards_before_loading
from .trainer import check_padding_free, packing_strategy

logger = logging.getLogger(__name__)


def _wants_plan(config: FinetuneConfig) -> bool:
    """Plan when asked to and there is a GPU budget: a CUDA GPU, or an explicit ``gpu=`` size."""
    explicit = not (isinstance(config.gpu, str) and config.gpu.strip().lower() == "auto")
    return config.plan and (explicit or torch.cuda.is_available())


def fit_to_gpu(model: Any, config: FinetuneConfig, lengths: TokenLengths | None = None,
               source: str = "dataset", chosen: bool = False) -> tuple[FinetuneConfig, TrainPlan | None]:
    """``config`` with the micro-batch, grad_accum and max_seq_length that fit ``config.gpu``.

    Skipped (returns ``(config, None)``) with ``plan=False``, on a machine
    without a CUDA GPU unless ``gpu`` names a size, or when the architecture
    cannot be read. The effective batch is kept; the micro-batch never goes
    above the requested ``batch_size`` (the estimates are not calibrated to
    back a larger one), and ``max_seq_length`` is capped at the model's
    context length. With the data's ``lengths`` (:func:`check_lengths`) the
    plan is made for the longest row, not for ``max_seq_length`` (and when the
    plan has to cut the length, the rows that cut drops are named again, as
    ``source``). Raises
    ``ValueError`` with the planner's "does not fit: needs X GiB, you have Y"
    and its suggestion when nothing fits. Logs one line with the outcome.
    Under several processes the plan is per GPU: ``config`` holds one
    process's share of the global batch (:func:`share_batch`), and every
    process plans for the smallest GPU among them, so all take the same shape.

    Padding-free batches are planned for the tokens a micro-batch really holds
    (``plan_for_gpu``'s ``micro_batch_tokens``). When that plan has to cut
    ``max_seq_length`` below the longest row, a padding-free layout the kit
    ``chosen`` (:func:`choose_batches`) gives way to padded batches, planned
    again; one the user asked for raises.
    """
    if not _wants_plan(config):
        return config, None
    spec = model_spec(model)
    if spec is None:
        return config, None
    runtime = runtime_of(model[0]) if isinstance(model, tuple) else trains_as(detect_runtime(config.backend),
                                                                               spec.model_type)
    if runtime.backend != "unsloth" and isinstance(model, str) and unsloth_maps_to_dynamic(model):
        # Only Unsloth's mapper swaps a hub id for its dynamic 4-bit repo; transformers quantizes every linear.
        spec = dataclasses.replace(spec, dynamic_quant=False)
    kwargs = training_estimate_kwargs(runtime, config.target_modules, config.load_in_4bit,
                                      config.gradient_checkpointing, config.method, config.train_embeddings)
    if not kwargs["target_modules"]:
        logger.info(f"no memory plan: the estimator does not know target_modules {list(config.target_modules)}")
        return config, None
    cap = min(config.max_seq_length, spec.max_position_embeddings or config.max_seq_length)
    # packed sequences are filled to max_seq_length whatever the rows' lengths; padded micro-batches hold
    # batch_size x the longest row, padding-free ones the rows' own tokens (the batch_size longest rows at most)
    seq = lengths.longest(cap) if lengths is not None and not (config.packing and config.method == "sft") else cap
    padding_free = config.padding_free is True and not config.packing and config.method == "sft"
    if config.method == "grpo":  # the longest prompt plus a whole completion (GRPO's lengths are the prompts')
        seq = min(cap, lengths.longest(cap) + config.max_completion_length) if lengths is not None else cap
    gpu = config.gpu if world_size() == 1 else smallest(resolve_budget_gib(config.gpu))  # every process one plan
    plan = plan_for_gpu(spec, r=config.r, max_seq_length=seq, gpu=gpu, batch_size=config.batch_size,
                        grad_accum=config.grad_accum, max_micro_batch=config.batch_size,
                        micro_batch_tokens=lengths.most_tokens if padding_free and lengths is not None else None,
                        **kwargs)
    if plan.fits and padding_free and lengths is not None and plan.max_seq_length < seq:
        # the plan must cut the rows, and nothing truncates padding-free rows (check_padding_free)
        if chosen:  # the start line gives the reason (quick_finetune)
            return fit_to_gpu(model, dataclasses.replace(config, padding_free=False), lengths, source)
        raise ValueError(f"padding_free=True: {plan.message}, shorter than the longest row ({seq} tokens), and TRL "
                         "does not truncate padding-free rows. Pass packing=True (which truncates), or "
                         "padding_free=False.")
    if not plan.fits:
        cost = ""
        if config.train_embeddings:
            plain = plan_for_gpu(spec, r=config.r, max_seq_length=seq, gpu=gpu, batch_size=config.batch_size,
                                 grad_accum=config.grad_accum, max_micro_batch=config.batch_size,
                                 **{**kwargs, "train_embeddings": False})
            cost = (f" train_embeddings alone needs ~{plan.estimate.trained_embeddings_total_gib:.2f} GiB here (embed_tokens and lm_head in fp32, their "
                    f"gradients and optimizer state); without it the run {plain.message}.")
        raise ValueError(f"{plan.message}. Suggestion: {plan.suggestion}{cost} Or pass plan=False to try anyway "
                         f"(the estimate is not yet calibrated on a GPU).")
    notes = [f"changed: {plan.suggestion}"] if plan.suggestion else []
    if cap < config.max_seq_length:
        notes.append(f"max_seq_length {config.max_seq_length} -> {cap} (the model's context)")
    if lengths is not None:
        notes.append(_planned_length_note(lengths, cap, seq))
    if config.train_embeddings:
        notes.append(f"train_embeddings: embed_tokens and lm_head in fp32 with their gradients and optimizer state "
                     f"(~{plan.estimate.trained_embeddings_total_gib:.2f} GiB)")
    if kwargs["sequences_per_row"] > 1:
        notes.append(f"DPO: {kwargs['sequences_per_row']} sequences per row (chosen + rejected go through the "
                     "model together)")
    if config.method == "grpo":  # the plan sized one SFT-like step; GRPO adds generation (the KV cache) to it
        notes.append(_grpo_note(spec, config, plan, seq, kwargs))
    logger.info(f"memory plan ({runtime.backend}, uncalibrated): {plan.message}" + "".join(f"; {n}" for n in notes))
    keep = cap if plan.max_seq_length >= seq else plan.max_seq_length  # the cap stays unless the plan had to cut
    if lengths is not None and keep < cap:
        check_truncation(lengths, keep, source, _rows_word(config))
    return dataclasses.replace(config, batch_size=plan.micro_batch, grad_accum=plan.grad_accum,
                               max_seq_length=keep), plan


PADDING_FREE_DEFAULT = "the kit's default on transformers: no pad tokens, 2.25x padded's tokens/s in bench/packing.py"
"""Why the kit trains SFT padding-free on the transformers backend unless told otherwise (docs/results.md)."""


def choose_batches(config: FinetuneConfig, runtime: Runtime,
                   *lengths: TokenLengths | None) -> tuple[FinetuneConfig, str]:
    """``config`` with the batch layout the run uses, and the reason in words, for the start line.

    ``padding_free=None`` (the default) leaves the choice to the kit, per backend:

    * **transformers** (a CPU, or a GPU without Unsloth): padding-free
      (:data:`PADDING_FREE_DEFAULT`) when every measured row (``lengths``: the
      training and the eval rows) fits ``max_seq_length``, since TRL does not
      truncate padding-free rows; padded otherwise, saying why.
    * **Unsloth on a GPU**: left unset, so Unsloth 2026.10.9 picks padding-free
      or padded batches for the GPU it runs on (``unsloth/utils/padding_choice.py``:
      padded with its per-block compile where a padded micro-batch is host-bound,
      as on a T4 for short rows). The memory plan is made for padded batches,
      which hold at least as many tokens as padding-free ones.
    * **Unsloth's CPU backend**: padded (it turns padding-free off).

    DPO batches are always padded. ``packing=True`` and an explicit
    ``padding_free`` are kept as asked (and need no reason: ``""``).
    """
    if config.method != "sft":
        return config, ""
    if config.packing or config.padding_free is not None:
        return config, ""  # as asked
    if runtime.unsloth_gpu:
        return config, "Unsloth chooses padding-free or padded batches for this GPU (unsloth/utils/padding_choice.py)"
    if runtime.backend == "unsloth":
        return (dataclasses.replace(config, padding_free=False),
                "Unsloth's CPU backend keeps packed rows apart only with FlashAttention, so it pads")
    measured = [m for m in lengths if m is not None]
    longest = max((max(m.total, default=0) for m in measured), default=0)
    why = ("the rows could not be measured before training" if not measured or len(measured) < len(lengths) else
           "only a sample of the rows was measured" if any(m.sampled for m in measured) else
           f"a row has {longest} tokens, over max_seq_length={config.max_seq_length}"
           if longest > config.max_seq_length else None)
    if why is not None:
        return (dataclasses.replace(config, padding_free=False),
                f"padded: {why}, and padding-free rows are never truncated (packing=True truncates)")
    return dataclasses.replace(config, padding_free=True), PADDING_FREE_DEFAULT


def _grpo_note(spec: Any, config: FinetuneConfig, plan: TrainPlan, seq: int, kwargs: dict) -> str:
    """The GRPO step's estimate at the plan's batch shape (:func:`~rslora_colab.memory.estimate_grpo_vram`);
    raises the planner's kind of ``ValueError`` when it does not fit the budget."""
    prompt = max(seq - config.max_completion_length, 1)
    est = estimate_grpo_vram(spec, r=config.r, num_generations=config.num_generations, prompt_length=prompt,
                             max_completion_length=config.max_completion_length, batch_size=plan.micro_batch,
                             grad_accum=plan.grad_accum, target_modules=kwargs["target_modules"],
                             load_in_4bit=kwargs["load_in_4bit"], optimizer=kwargs["optimizer"],
                             gradient_checkpointing=kwargs["gradient_checkpointing"], dtype_bytes=kwargs["dtype_bytes"])
    said = (f"GRPO step ~{est.total_gib:.1f} GiB (generation {est.generation_gib:.1f}: {est.generation_batch} "
            f"completions of {prompt} + {config.max_completion_length} tokens; training {est.train_gib:.1f})")
    if est.total_gib > plan.budget_gib:
        raise ValueError(f"{said}: does not fit {plan.budget_gib:.2f} GiB. Suggestion: lower max_completion_length, "
                         "num_generations or grad_accum (fewer completions sampled at once). Or pass plan=False to try "
                         "anyway (the estimate is not yet calibrated on a GPU).")
    return said


def _planned_length_note(lengths: TokenLengths, cap: int, seq: int) -> str:
    """One line on where the planned length comes from, e.g. "your longest row is 612 tokens; planning for 612"."""
    sample = f" (in an evenly spaced sample of {len(lengths.rows):,} rows)" if lengths.sampled else ""
    longest = max(lengths.total, default=0)
    if longest > cap:
        return f"your longest row is {longest} tokens{sample}, cut to max_seq_length={cap}; planning for {seq}"
    return f"your longest row is {longest} tokens{sample}; planning for {seq} (max_seq_length={cap} stays the cap)"


def share_batch(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with one process's share of the global batch, under a launcher that started several processes.

    The global batch ``batch_size * grad_accum`` (the rank presets assume the
    default 2 x 4 = 8) is kept: each of the ``N`` processes gets ``1/N`` of it,
    as fewer accumulation steps (:func:`~rslora_colab.memory.plan.split_global_batch`),
    so ``N`` GPUs train the same run as one, faster. Unchanged with one process.
    """
    processes = world_size()
    if processes == 1:
        return config
    micro, accum = split_global_batch(config.batch_size, config.grad_accum, processes)
    logger.info(f"{processes} processes: the global batch of {config.batch_size * config.grad_accum} sequences per "
                f"step is kept, {processes} x micro-batch {micro} x grad_accum {accum}")
    return dataclasses.replace(config, batch_size=micro, grad_accum=accum)


def check_lengths(tokenizer: Any, dataset: Any, fmt: str, config: FinetuneConfig,
                  source: str = "dataset") -> TokenLengths | None:
    """Before the model loads: every row's token length, as TRL will build it; warns about the rows TRL would drop
    at ``config.max_seq_length`` and raises if all would go.

    ``tokenizer`` is what :func:`~rslora_colab.load.load_tokenizer` read (no
    weights); see :mod:`rslora_colab.data.lengths`. Returns None when it is
    None, the tokenizer could not be read before loading (the plan then
    assumes ``max_seq_length``).
    """
    if tokenizer is None:
        return None
    lengths = token_lengths(dataset, fmt, tokenizer, config.method)
    if config.method == "grpo":  # prompts only: TRL neither cuts nor drops them, so say which leave no room
        check_prompt_room(lengths, config.max_seq_length, config.max_completion_length, source)
    else:
        check_truncation(lengths, config.max_seq_length, source, _rows_word(config), _splits(config, fmt))
    return lengths


def _splits(config: FinetuneConfig, fmt: str) -> bool:
    """True when TRL splits long rows into pieces instead of truncating them: packed ``text`` rows
    (:func:`~rslora_colab.train.trainer.packing_strategy`)."""
    return config.packing and config.method == "sft" and packing_strategy(fmt) == "bfd_split"


def _rows_word(config: FinetuneConfig) -> str:
    """What the data's rows are called in messages: "pairs" for DPO, else "rows"."""
    return "pairs" if config.method == "dpo" else "rows"


def split_eval(dataset: Any, config: FinetuneConfig, eval_dataset: Any = None,
               source: str = "dataset") -> tuple[FinetuneConfig, Any, Any]:
    """``(config, train rows, eval rows)``: the held-out split, before any weights load.

    ``eval_dataset`` (already validated, see :func:`~rslora_colab.data.load_eval_dataset`)
    is used as given; otherwise ``config.eval_fraction`` of the rows is held
    out with ``config.seed`` (None: the default of :mod:`rslora_colab.data.split`).
    The returned config records the fraction used. Evaluation settings that
    cannot work with the result raise ``ValueError`` here.
    """
    if config.method == "grpo" and config.eval_fraction is None:  # an evaluation samples completions: opt-in
        config = dataclasses.replace(config, eval_fraction=0.0)
    if eval_dataset is not None and config.eval_fraction:
        raise ValueError(f"eval_fraction={config.eval_fraction} and an eval_dataset: pass one of them (the "
                         "eval_dataset is used whole; eval_fraction holds rows out of the training data).")
    fraction = eval_fraction_for(len(dataset), config.eval_fraction, eval_dataset is not None)
    config = dataclasses.replace(config, eval_fraction=fraction)
    if eval_dataset is None:
        dataset, eval_dataset = hold_out(dataset, fraction, config.seed, source)
    check_evaluation(config, eval_dataset is not None)
    return config, dataset, eval_dataset


@dataclasses.dataclass(frozen=True)
class Rows:
    """A run's data, read and every row checked, before any weights load (:func:`read_rows`)."""

    fmt: str
    """The format detected from the columns (``"alpaca"``, ``"chat"``, ``"preference_chat"``, ``"prompt"``, ...)."""
    every: Any
    """Every row of ``dataset``, held-out ones included (what the length check names by the file's own lines)."""
    train: Any
    """The rows trained on."""
    held: Any
    """The eval rows (held out with ``eval_fraction``, or the ``eval_dataset``), or None."""
    source: str
    """How messages name the data (the file, or "dataset")."""
    eval_source: str | None = None
    """How messages name an ``eval_dataset``; None when the eval rows (if any) are held out of ``dataset``."""


def read_rows(dataset: Any, eval_dataset: Any, config: FinetuneConfig) -> tuple[FinetuneConfig, Rows]:
    """Read and check every row (and every eval row, in the same format), then hold out the eval rows: the config
    with the ``eval_fraction`` used, and the rows (:func:`split_eval`)."""
    source = source_name(dataset)
    every, fmt = load_and_validate(dataset, config.method)
    given = None if eval_dataset is None else load_eval_dataset(eval_dataset, fmt, config.method)
    config, train, held = split_eval(every, config, given, source)
    named = None if eval_dataset is None else source_name(eval_dataset, "eval_dataset")
    return config, Rows(fmt, every, train, held, source, named)


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What the run will be, decided before any weights load (:func:`fit_before_loading`)."""

    config: FinetuneConfig
    """The config with the batch shape the memory plan chose and the batch layout the kit chose."""
    plan: str | None
    """The memory plan's verdict in one line; None without a plan (a CPU, or ``plan=False``)."""
    batches_why: str
    """Why the batches are laid out as they are, for the start line ("" when as asked)."""


def fit_before_loading(model: Any, tokenizer: Any, rows: Rows, config: FinetuneConfig) -> Fitted:
    """Everything decided from the tokenizer and the model's architecture alone, in order: the rows TRL would
    drop (:func:`check_lengths`, eval rows too), the batch layout (:func:`choose_batches`), GRPO's reward
    functions once on sample completions, a padding-free layout asked for that the rows would not fit, and the
    memory plan at the rows' real lengths (:func:`fit_to_gpu`: raises when nothing fits)."""
    lengths = check_lengths(tokenizer, rows.every, rows.fmt, config, rows.source)
    measured = [lengths]
    if rows.eval_source is not None:
        measured.append(check_lengths(tokenizer, rows.held, rows.fmt, config, rows.eval_source))
    asked = config.padding_free
    config, why = choose_batches(config, runtime_before_load(model, config.backend), *measured)
    check_rewards_before_loading(config, rows.every, rows.fmt, tokenizer, rows.source)
    if lengths is not None:
        check_padding_free(config, lengths, rows.source)
    planned, plan = fit_to_gpu(model, config, lengths, rows.source, chosen=asked is None and config.padding_free is True)
    if planned.padding_free != config.padding_free:
        why = (f"padded: the memory plan cut max_seq_length to {planned.max_seq_length}, and padding-free rows "
               "are never truncated")
    return Fitted(planned, plan.message if plan else None, why)


def runtime_before_load(model: Any, backend: str) -> Runtime:
    """The runtime the run will train on, before any weights load: a loaded pair's own, else this machine's."""
    return runtime_of(model[0]) if isinstance(model, tuple) else detect_runtime(backend)


def load_pair(model: Any, config: FinetuneConfig):
    """``(model, tokenizer)``: loaded with :func:`~rslora_colab.load_model` from a name, or the pair as given."""
    if isinstance(model, (str, Path)):
        return load_model(str(model), config.max_seq_length, config.load_in_4bit, config.backend)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise ValueError(f"model: got a {type(model).__name__}; pass a hub id, a local folder, 'demo', "
                     "or a (model, tokenizer) pair from load_model().")
