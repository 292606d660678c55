"""Evaluation: the held-out loss every few steps, the best adapter, early stopping — transformers' own machinery.

With eval rows (``eval_fraction``, or an ``eval_dataset``) the trainer gets:

* ``eval_strategy="steps"``: an evaluation every ``eval_every`` steps (None:
  every ``checkpoint_every`` steps when set, else every 20% of the steps, a
  ratio transformers turns into steps), one at the last step (transformers
  adds it), and one before the first step of a fresh run
  (``eval_on_start``: the base model's loss, where the curve starts).
  Each lands in the history as ``{"step", "eval_loss", ...}``; DPO adds the
  held-out reward accuracy and margin.
* ``metric_for_best_model="eval_loss"``: the Trainer keeps the best loss,
  its step and its checkpoint in ``TrainerState`` (``best_metric``,
  ``best_global_step``, ``best_model_checkpoint``), which every checkpoint
  saves, so a run resumed after a disconnect or an out-of-memory recovery
  keeps its best so far; ``save_total_limit`` never deletes that checkpoint.
* ``save_best`` (by default: with early stopping) -> ``load_best_model_at_end``:
  when training ends (at the last step, by early stopping, Stop or Ctrl-C)
  the best checkpoint's adapter is loaded back, so that is what
  ``quick_finetune`` saves, and :func:`adapter_step` names its step. It is
  off otherwise, as in transformers, LLaMA-Factory and axolotl: the last
  step's adapter is saved, and the log names the step with the lowest eval
  loss. transformers needs a checkpoint at
  every evaluation for this (``save_steps`` a multiple of ``eval_steps``), so
  ``save_steps`` becomes ``eval_steps``; the kit's timer checkpoints
  (``checkpoint_minutes``) come on top. A checkpoint is written atomically
  like every other (:mod:`rslora_colab.resilience.checkpoints` also keeps
  ``best_model_checkpoint`` pointing at the published folder, not the
  staging one it was written in).
* ``early_stopping_patience`` -> transformers' ``EarlyStoppingCallback``:
  training stops after that many evaluations in a row that did not beat the
  best by more than ``early_stopping_threshold``. Its counter is saved in
  the checkpoints too (``stateful_callbacks``) and restored on a resume
  (``restore_callback_states_from_checkpoint``), so a resumed run stops where
  an uninterrupted one would.

Alternatives not taken:

* ``save_strategy="best"`` (a checkpoint only when the eval loss improves,
  and no alignment of save and eval steps): at an evaluation step the Trainer
  then replaces every other save request with "is this a new best", which
  drops the end-of-run checkpoint a failed final save resumes from
  (``docs/resilience.md``) and the timer's saves that fall on an evaluation.
* Keeping the best adapter in memory: lost with the runtime, so a resumed
  run could not keep its best; the Trainer's state already records it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from ..config import FinetuneConfig
from ..resilience.checkpoints import load_checkpoint_adapter
from ..settings import RunSettings
from ..watch import best_eval, best_key, eval_records

logger = logging.getLogger(__name__)

EVAL_RATIO = 0.2
"""With no ``eval_every`` and no ``checkpoint_every``: evaluate every 20% of the steps (5 times a run)."""
BEST_METRIC = "eval_loss"
"""What "best" means: the lowest held-out loss (DPO's loss for ``method="dpo"``)."""
GRPO_BEST_METRIC = "eval_reward"
"""What "best" means for GRPO: the highest mean reward of completions sampled for the held-out prompts (TRL's
``GRPOTrainer`` evaluates by sampling ``num_generations`` completions per prompt and scoring them as in
training; its eval loss is the policy-gradient surrogate, about 0, and says nothing)."""


def eval_steps(config: FinetuneConfig) -> int | float:
    """Steps between evaluations: ``eval_every``, else ``checkpoint_every``, else the ratio :data:`EVAL_RATIO`."""
    return config.eval_every or config.checkpoint_every or EVAL_RATIO


def check_evaluation(config: FinetuneConfig, has_eval_rows: bool) -> None:
    """Raise ``ValueError`` (before any model loads) for evaluation settings that cannot work with this data."""
    if config.early_stopping_patience is not None and not has_eval_rows:
        watched = "held-out reward" if config.method == "grpo" else "eval loss"
        raise ValueError(f"early_stopping_patience={config.early_stopping_patience}: early stopping watches the "
                         f"{watched}, and this run has no eval rows; pass eval_fraction (e.g. 0.1) or an eval_dataset.")
    best = "highest held-out reward" if config.method == "grpo" else "lowest eval loss"
    if config.save_best and not has_eval_rows:
        raise ValueError(f"save_best=True: the best adapter is the one with the {best}, and this run has "
                         "no eval rows; pass eval_fraction (e.g. 0.1) or an eval_dataset, or leave save_best unset.")
    every, checkpoint = config.eval_every, config.checkpoint_every
    if has_eval_rows and config.keeps_best and every and checkpoint and checkpoint % every:
        raise ValueError(f"checkpoint_every={checkpoint} with eval_every={every}: to keep the best adapter "
                         "(save_best) a checkpoint is saved at every evaluation, so checkpoint_every must be a "
                         f"multiple of eval_every (e.g. {every * max(1, round(checkpoint / every))}), or leave it "
                         "unset, or pass save_best=False.")


def eval_args(run: RunSettings) -> dict:
    """``TrainingArguments`` fields for evaluation (none when the run has no eval rows); see the module docstring."""
    config = run.config
    if not run.eval_rows:
        return {}
    steps = eval_steps(config)
    args = dict(eval_strategy="steps", eval_steps=steps, per_device_eval_batch_size=config.batch_size,
                eval_on_start=True, metric_for_best_model=BEST_METRIC, greater_is_better=False)
    if config.method == "grpo":  # a whole step's completions at once: all of a prompt's in one batch, as TRL needs
        args.update(per_device_eval_batch_size=config.batch_size * config.grad_accum,
                    metric_for_best_model=GRPO_BEST_METRIC, greater_is_better=True)
    if config.keeps_best:
        args.update(load_best_model_at_end=True, save_steps=steps)
    if config.early_stopping_patience:
        args.update(restore_callback_states_from_checkpoint=True)  # a resumed run keeps counting its patience
    return args


class EvalOnFreshStart(TrainerCallback):
    """Evaluates before the first step only when training starts at step 0, once.

    ``eval_on_start`` would evaluate again whenever ``train()`` starts, also
    when it resumes a checkpoint (``--resume``, or after an out-of-memory
    error): a repeated record, and a repeat early stopping would count as
    one more evaluation without improvement.
    """

    def __init__(self) -> None:
        self.done = False

    def on_train_begin(self, args, state, control, **kwargs):
        args.eval_on_start = args.eval_on_start and state.global_step == 0 and not self.done
        self.done = True


def eval_callbacks(run: RunSettings) -> list:
    """Callbacks evaluation needs: the fresh-start evaluation, and ``EarlyStoppingCallback`` when asked for."""
    config = run.config
    if not run.eval_rows:
        return []
    stopping = [EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold)] \
        if config.early_stopping_patience else []
    return [EvalOnFreshStart(), *stopping]


def checkpoint_step(path: str | Path) -> int:
    """The step in a ``checkpoint-<step>`` folder's name."""
    return int(Path(path).name.rsplit("-", 1)[-1])


def _best_checkpoint(trainer: Any) -> str | None:
    """The best checkpoint's folder when ``load_best_model_at_end`` loads it (and it is still there), else None."""
    best = trainer.state.best_model_checkpoint
    return best if trainer.args.load_best_model_at_end and best and Path(best).is_dir() else None


def adapter_step(trainer: Any) -> int:
    """The step whose adapter weights the trainer's model holds after training: the best checkpoint's when
    ``load_best_model_at_end`` loaded it, else the last step trained."""
    best = _best_checkpoint(trainer)
    return checkpoint_step(best) if best else int(trainer.state.global_step)


def load_best(trainer: Any) -> None:
    """Load the best checkpoint's adapter, as transformers does at the end of ``train()`` (for a run whose last
    checkpoint is its end: resuming it trains nothing, so ``train()`` never gets there)."""
    best = _best_checkpoint(trainer)
    if best:
        load_checkpoint_adapter(trainer, best)


def describe_best(history: list[dict], adapter_at: int | None, last_step: int) -> str | None:
    """One line about the held-out loss: where it went, and which step's adapter is kept; None without evals."""
    key = best_key(history)
    evals = [h for h in eval_records(history) if math.isfinite(h.get(key, math.nan))]
    if not evals:
        return None
    first, last = evals[0], evals[-1]
    best = best_eval(history) or last
    name, most = ("held-out reward", "highest") if key == "eval_reward" else ("eval loss", "lowest")
    line = (f"{name} {first[key]:.3f} (step {first['step']}) -> {last[key]:.3f} (step "
            f"{last['step']}), {most} {best[key]:.3f} at step {best['step']}")
    if adapter_at is not None and adapter_at != last_step:
        line += f"; the adapter kept is step {adapter_at}'s ({most} {name}), not the last step {last_step}'s"
    return line
