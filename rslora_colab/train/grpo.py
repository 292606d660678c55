"""GRPO: TRL's ``GRPOTrainer`` over an rsLoRA-adapted model, read from :class:`RunSettings`.

``quick_finetune(model, prompts, method="grpo", reward_funcs=[...])`` samples ``num_generations`` completions
per prompt, scores each with the reward functions, and moves the adapter towards the completions that scored
above their group's mean (Shao et al. 2024, arXiv:2402.03300). What the kit sets, and TRL would otherwise
default to (``GRPOConfig``, TRL 1.15/1.16):

* **precision**: ``fp16`` / ``bf16`` passed explicitly from the runtime (fp16 below compute capability 8: a
  T4). ``GRPOConfig`` turns bf16 on unless fp16 is set, which fails on a T4.
* **no vLLM** (``use_vllm=False``, TRL's default too): TRL generates with the training model itself. vLLM on a
  T4 needs versions that conflict with the kit's pins.
* **sizes for a T4**: ``num_generations=4`` and ``max_completion_length=256`` (TRL: 8 and 512). A step takes
  ``batch_size * grad_accum`` completions, all of a prompt's in one step (checked by
  :class:`~rslora_colab.FinetuneConfig`).
* **beta** 0.0 (TRL's default): no reference model, no KL term. With ``beta > 0`` the reference is the base
  with the adapter disabled (TRL does this itself for a PEFT model), so no second copy is loaded; an adapter
  already trained by SFT is then pulled towards the bare base, not towards the SFT model.
* **learning rate**: ``lr_for_rank(r, "grpo")`` (:mod:`rslora_colab.presets`, sources there).
* **rewards**: checked on sample completions before the trainer is built and wrapped so a failure names the
  function (:mod:`rslora_colab.rewards`); :class:`NoSignalCallback` warns when the rewards stop telling the
  completions apart; :class:`CompletionSamples` logs a prompt and its completions every 10 steps.
* ``max_length`` (the SFT/DPO truncation) is not a ``GRPOConfig`` argument: TRL neither cuts nor drops a prompt,
  so the kit checks before loading that each prompt leaves ``max_completion_length`` tokens of
  ``max_seq_length`` (:func:`~rslora_colab.data.check_prompt_room`).

Unsloth: on a GPU, ``import unsloth`` swaps TRL's ``GRPOTrainer`` for its own, which the same call builds. Its CPU
backend (2026.10.9) only patches ``GRPOConfig``'s defaults and leaves TRL's ``GRPOTrainer`` in place; that
trainer runs there (``tests/test_grpo.py`` trains on both).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from transformers import TrainerCallback

from ..data import row_label, to_grpo_dataset
from ..load import input_device, runtime_of
from ..rewards import check_rewards, named_rewards, reward_arguments
from ..settings import RunSettings
from ..trl_args import trl_config

logger = logging.getLogger(__name__)

NOT_GRPO_ARGS = ("max_length",)
"""Arguments SFT and DPO share that ``GRPOConfig`` does not take (see the module docstring)."""
NO_SIGNAL_STEPS = 10
"""Logged steps in a row with no reward spread before :class:`NoSignalCallback` warns."""


class NoSignalCallback(TrainerCallback):
    """Warns once when, for :data:`NO_SIGNAL_STEPS` logged steps in a row, every prompt's completions scored
    alike (TRL's ``frac_reward_zero_std`` = 1): GRPO's advantages are then all zero and the adapter does not
    move. A reward that always says 0 (too hard) or always 1 (too easy) does that, and so does a model whose
    completions collapsed to one answer. A warning, not a stop: it can pass (the sampling is random)."""

    def __init__(self, steps: int = NO_SIGNAL_STEPS) -> None:
        self.steps, self.flat, self.warned = steps, 0, False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "frac_reward_zero_std" not in logs:
            return
        self.flat = self.flat + 1 if logs["frac_reward_zero_std"] >= 1.0 else 0
        if self.flat >= self.steps and not self.warned:
            self.warned = True
            logger.warning(f"steps {state.global_step - self.steps + 1}-{state.global_step}: every prompt's "
                           f"completions got the same reward (mean {logs.get('reward', float('nan')):.3g}), so GRPO "
                           "has nothing to learn from: check that the rewards can tell completions apart (a partial "
                           "score, a format reward beside the correctness one), or that the task is neither far too "
                           "hard nor already solved.")


SAMPLE_EVERY = 10
"""Logged steps between two completion samples in the log (:class:`CompletionSamples`)."""
SAMPLE_CHARS = 160
"""A sampled completion is cut to this many characters in the log."""


class CompletionSamples(TrainerCallback):
    """Every :data:`SAMPLE_EVERY` steps, one prompt of the step and its completions, each with its reward, in
    the log (``logging.getLogger("rslora_colab.train.grpo")``, INFO), so a user sees what the model says:

    .. code-block:: text

        step 10, prompt 'Give the heading for ...': 4 completions, reward (sum of length_penalty)
          1.00  ''
          0.45  'The "assert" statement is ...'

    The kit's reward wrappers hand it each checked call (:func:`~rslora_colab.rewards.named_rewards`'s
    ``observe``); it keeps the first prompt of the latest generation and its completions. Plain log lines
    instead of TRL's ``log_completions`` (a rich table each logging step, or a wandb table): one short block
    every 10 steps reads in a terminal and a notebook alike, and the level silences it. Rank 0 logs.
    """

    def __init__(self, every: int = SAMPLE_EVERY, chars: int = SAMPLE_CHARS) -> None:
        self.every, self.chars = every, chars
        self.latest: dict | None = None
        """The newest sample: ``{"step", "prompt", "completions", "rewards": {name: [...]}}``."""
        self.logged: list[int] = []
        """The steps whose sample was logged."""

    def observe(self, name: str, kwargs: dict, rewards: list) -> None:
        """One reward function's checked call on a generation (the step it trains is the next one)."""
        prompts, completions = kwargs.get("prompts") or [], kwargs.get("completions") or []
        state = kwargs.get("trainer_state")
        if not prompts or state is None:
            return
        step = state.global_step + 1
        if self.latest is None or self.latest["step"] != step:
            first = [k for k, prompt in enumerate(prompts) if prompt == prompts[0]]
            self.latest = {"step": step, "prompt": prompts[0], "indices": first,
                           "completions": [completions[k] for k in first], "rewards": {}}
        self.latest["rewards"][name] = [rewards[k] for k in self.latest["indices"]]

    def on_log(self, args, state, control, logs=None, **kwargs):
        sample = self.latest
        if (not logs or "loss" not in logs or sample is None or sample["step"] != state.global_step
                or state.global_step % self.every or not state.is_world_process_zero):
            return
        names = list(sample["rewards"])
        totals = [sum(0.0 if v is None else float(v) for v in values)
                  for values in zip(*sample["rewards"].values())]
        lines = [f"step {state.global_step}, prompt {self._short(sample['prompt'])}: {len(totals)} completions, "
                 f"reward (sum of {', '.join(names)})"]
        lines += [f"  {total:5.2f}  {self._short(text)}" for total, text in zip(totals, sample["completions"])]
        logger.info("\n".join(lines))
        self.logged.append(state.global_step)

    def _short(self, text: Any) -> str:
        if not isinstance(text, str):  # chat turns: the last turn's text
            text = text[-1].get("content", "") if text else ""
        return repr(text if len(text) <= self.chars else text[:self.chars] + "...")


class SeededEvaluation(TrainerCallback):
    """Every evaluation samples the held-out completions from the same seed, and training's random state is
    left as it was: so two evaluations differ only by the adapter (as :func:`mean_reward` measures), and a run
    with evaluation samples its training completions as one without.

    TRL's ``GRPOTrainer`` samples eval completions from torch's global generator. This seeds it when an
    evaluation is due (``on_step_end`` sees ``control.should_evaluate``, which transformers' flow callback, first
    in the list, has set; ``on_train_begin`` sees ``eval_on_start``) and puts the saved state back in
    ``on_evaluate``, before any checkpoint saves the state."""

    def __init__(self, seed: int) -> None:
        self.seed, self.saved = seed, None

    def _seed(self) -> None:
        import torch

        self.saved = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        torch.manual_seed(self.seed)

    def on_train_begin(self, args, state, control, **kwargs):
        if args.eval_on_start:  # after EvalOnFreshStart (earlier in the list) decided
            self._seed()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            self._seed()

    def on_evaluate(self, args, state, control, **kwargs):
        import torch

        if self.saved is not None:
            cpu, cuda = self.saved
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            self.saved = None


def check_rewards_before_loading(config: Any, dataset: Any, fmt: str, tokenizer: Any, source: str = "dataset") -> None:
    """GRPO runs: every reward function once on sample completions of the first rows, before any weights load
    (:func:`~rslora_colab.rewards.check_rewards`, rows named as the data checks name them); nothing otherwise."""
    if config.method == "grpo":
        check_rewards(config.reward_funcs, dataset, fmt, tokenizer, source, row_label=functools.partial(row_label, source))


def grpo_args(run: RunSettings, shared: dict) -> dict:
    """``GRPOConfig``'s arguments: those SFT and DPO share (``shared``, ``trainer_args(run)``: precision, batch,
    schedule, checkpoints) less :data:`NOT_GRPO_ARGS`, plus the generation settings, beta and no vLLM."""
    c = run.config
    args = {key: value for key, value in shared.items() if key not in NOT_GRPO_ARGS}
    return {**args, "num_generations": c.num_generations, "max_completion_length": c.max_completion_length,
            "beta": c.beta, "use_vllm": False}


def grpo_config(run: RunSettings, shared: dict):
    """TRL's ``GRPOConfig`` from :func:`grpo_args`, then the user's ``trl_args``."""
    return trl_config("grpo", grpo_args(run, shared), run.config.trl_args)


def grpo_trainer(model: Any, tokenizer: Any, dataset: Any, fmt: str, run: RunSettings, callbacks: list,
                 shared: dict, eval_dataset: Any = None):
    """TRL's ``GRPOTrainer`` over an rsLoRA-adapted model and validated prompt data (``fmt``: ``"prompt"`` or
    ``"prompt_chat"``); the reward functions are checked on the data first (:func:`~rslora_colab.rewards.check_rewards`).
    With ``eval_dataset`` (held-out prompts, validated the same way) TRL samples and scores completions for
    them at every evaluation (``evaluation.GRPO_BEST_METRIC``), seeded by :class:`SeededEvaluation`."""
    from trl import GRPOTrainer

    funcs, samples = run.config.reward_funcs, CompletionSamples()
    check_rewards(funcs, dataset, fmt, tokenizer)  # again here: train_adapter's path, and a cheap one
    held = [] if eval_dataset is None else [SeededEvaluation(run.config.seed)]
    return GRPOTrainer(model=model, reward_funcs=named_rewards(funcs, samples.observe),
                       args=grpo_config(run, shared), train_dataset=to_grpo_dataset(dataset, fmt, tokenizer),
                       eval_dataset=None if eval_dataset is None else to_grpo_dataset(eval_dataset, fmt, tokenizer),
                       processing_class=tokenizer, callbacks=[*callbacks, *held, NoSignalCallback(), samples])


def mean_reward(model: Any, tokenizer: Any, dataset: Any, reward_funcs: Any, num_generations: int = 4,
                max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0) -> float:
    """The mean summed reward of ``num_generations`` completions sampled for every prompt of ``dataset``.

    Measures a GRPO run on prompts it did not train on, before and after: the completions are sampled as
    training samples them (``temperature`` 1, at most ``max_new_tokens``), with ``seed`` fixed so two
    measurements differ only by the model. ``dataset`` is prompt data (a ``prompt`` column, text or chat
    turns, plus the columns the rewards read); rewards of None count as 0. On Unsloth the model is switched to
    ``for_inference`` and back, as :func:`~rslora_colab.chat` does.
    """
    import torch

    from ..data import load_and_validate

    rows, fmt = load_and_validate(dataset, "grpo")
    funcs = named_rewards(reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs])
    was_training, fast = model.training, None
    if runtime_of(model).backend == "unsloth":
        from unsloth import FastLanguageModel as fast

        fast.for_inference(model)
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.random.fork_rng():  # the caller's random state is left as it was (CUDA's too)
            torch.manual_seed(seed)
            for row in rows:
                if fmt == "prompt_chat":
                    inputs = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                           return_tensors="pt", return_dict=True)
                else:
                    inputs = tokenizer(row["prompt"], return_tensors="pt")
                inputs = {k: v.to(input_device(model)) for k, v in inputs.items()}
                with torch.no_grad():
                    out = model.generate(**inputs, do_sample=True, temperature=temperature,
                                         max_new_tokens=max_new_tokens, num_return_sequences=num_generations,
                                         pad_token_id=tokenizer.pad_token_id)
                texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                kwargs = reward_arguments(row, fmt, tokenizer, texts)  # what TRL passes the rewards in training
                scores = [sum(0.0 if v is None else float(v) for v in values)
                          for values in zip(*(func(**kwargs) for func in funcs))]
                total, count = total + sum(scores), count + len(scores)
    finally:
        if was_training and fast is not None:
            fast.for_training(model)
        elif was_training:
            model.train()
    return total / count if count else float("nan")
