"""Divergence guard: catch a NaN or exploding loss, roll back, lower the learning rate, go on.

:class:`DivergenceGuard` is a ``TrainerCallback`` that ``quick_finetune`` adds
by default (``guard=False`` turns it off). It judges every logged step with
:func:`judge_step`:

* **Diverged** when the loss is NaN/inf; when the gradient norm is NaN/inf and
  the update went through (the adapter weights are no longer finite); or when
  the loss spikes: above ``spike_factor`` (3) times the median of the last
  ``window`` (20) healthy losses *and* at least ``spike_margin`` (1.0 nat)
  above it, once ``min_history`` (10) healthy losses are known. Batch-to-batch
  noise in fine-tuning moves the loss by tens of percent; a 3x jump is what a
  blow-up looks like (diverged models head for ln(vocab), 10+ nats). The
  median ignores one odd batch, the 10-step minimum leaves the first steep
  fall alone, and the 1-nat margin keeps a run that has memorised its data
  (loss 0.05 -> 0.2) from counting as diverged.
* **Diverged early**, before those 10 healthy losses exist: when the loss
  rises above ``early_factor`` (2) times the run's starting loss (its first
  healthy one) *and* at least ``early_margin`` (2 nats) above it. Too high a
  learning rate blows up within a few steps (lr=0.9 at r=256: 3.4 -> 10.0 at
  step 3), long before a median of 10 steps exists. The rule is looser than
  the spike rule (one starting loss is a noisier yardstick than a median of
  ten) but catches a jump of that size.
* **GRPO: no spike rules** (``loss_spikes=False``). GRPO's loss is a policy-gradient surrogate (the
  advantage-weighted probability ratio), not a log-likelihood: it starts at 0 and its scale follows the
  rewards, so "3x the median" and "2 nats above the start" mean nothing there. Non-finite losses and gradient
  norms are still caught, and a collapse of the reward has its own rule (next); the kit's reward
  wrapper raises on a NaN reward before it can reach the loss (:mod:`rslora_colab.rewards`).
* **GRPO: a reward collapse** (``reward_collapse=True``, :func:`judge_reward`). Once ``min_history`` (10)
  steps' mean rewards are known, a step is *low* when its mean reward is below the median of the last
  ``window`` (20) healthy ones by more than ``collapse_noise`` (3) times the step-to-step noise *and* by more
  than ``collapse_share`` (25%) of the range of step rewards the run has seen; ``collapse_steps`` (3) low steps
  in a row are a collapse. The noise is the median absolute difference of consecutive step rewards divided by
  0.954 (``0.6745 * sqrt(2)``: the standard deviation of one step's mean, were they normal): differences, so a
  rising reward does not count as noise, and a median, so one odd step does not either. One normal step lies
  3 sigma below the median with probability 1.3e-3, three in a row with 2e-9: that is not sampling. Not used:
  TRL's ``reward_std``, one completion's spread, the wrong scale (a 0/1 reward at p=0.5 has 0.5, so "2 x
  reward_std below" could never fire). The 25%-of-range floor keeps a run whose steps all score alike (noise
  0) from rolling back over a small dip. The reward logged at step N is that of completions sampled with the
  weights after step N-1, so a snapshot is only trusted once a step that is not low follows it, and the
  weights restored are from before the first low step. fp16: a loss-scaler skip leaves the weights alone and
  its completions were sampled before it, so its reward is judged as any other step's. Measured on the demo
  (``tests/test_grpo.py``): a run rising 0.05 -> 0.93 and one wandering around 0.2 are never low for 3 steps;
  the rising one with its adapter scrambled at step 24 (reward 0) is rolled back at step 27 to step 20.
* **Not divergence: fp16 loss-scaler skips.** With fp16 (a T4), the loss
  scaler starts high and skips the optimizer step whenever the scaled
  gradients overflow — mostly in the first few steps. Such a step has a
  finite loss, an inf/NaN gradient norm, and unchanged (finite) weights. It is
  recorded as a ``scaler_skip`` event and training goes on; only more than
  ``max_skips`` (10) skips in a row count as divergence. In bf16 and fp32
  there is no loss scaler, so nothing skips the step: a non-finite gradient
  norm there is divergence. Events name the run's real precision.

On divergence the guard restores the last good adapter weights and optimizer
state (kept in CPU memory, taken every ``snapshot_every`` steps and trusted
once the next step's loss is healthy), multiplies the learning rate by
``lr_factor`` (0.5) in the optimizer and in the scheduler's ``base_lrs`` so the
schedule continues lower, and lets training go on. After ``max_rollbacks``
rollbacks the next divergence stops training with a :class:`DivergenceError`
naming the step, the learning rate and what to try; the model then holds the
last good weights (:attr:`DivergenceGuard.last_good_step`), which
``train_adapter`` saves to ``output_dir/last_good_adapter``. Every event goes
into ``history`` and the trainer's ``log_history`` (so it is in every checkpoint).

Under several processes (``docs/scale-out.md``) the guard decides once for
all of them (:func:`agreed_verdict`): every process restores the same
snapshot and cuts the learning rate by the same factor, so the adapters,
identical before, stay identical.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from typing import Any, Callable, Literal

import torch
from transformers import TrainerCallback

from ..distributed import worst

logger = logging.getLogger(__name__)

Verdict = Literal["ok", "skip", "diverged"]


class DivergenceError(RuntimeError):
    """Training kept diverging after every allowed rollback."""


def judge_step(loss: float, grad_norm: float | None, recent: list[float], weights_finite: Callable[[], bool],
               spike_factor: float = 3.0, spike_margin: float = 1.0, min_history: int = 10,
               start: float | None = None, precision: str = "fp16", early_factor: float = 2.0,
               early_margin: float = 2.0) -> tuple[Verdict, str]:
    """Judge one logged step: ``("ok" | "skip" | "diverged", reason)``.

    ``recent`` holds the last healthy losses; ``start`` the run's starting
    loss (its first healthy one), which the first ``min_history`` steps are
    judged against; ``precision`` the run's (``"fp16"``, ``"bf16"`` or
    ``"fp32"``): only fp16 has a loss scaler that skips overflowing steps.
    ``weights_finite`` is only called for an fp16 step whose gradient norm is
    not finite (to tell a scaler skip, which leaves the weights alone, from an
    update that broke them).
    """
    if not math.isfinite(loss):
        return "diverged", f"loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm):
        if precision != "fp16":
            return "diverged", (f"grad norm is {grad_norm} in {precision}, which has no loss scaler to skip the "
                                "step: the gradients overflowed")
        if weights_finite():
            return "skip", f"grad norm is {grad_norm} with a finite loss: the fp16 loss scaler skipped this update"
        return "diverged", f"grad norm is {grad_norm} and the adapter weights are no longer finite"
    if len(recent) >= min_history:
        median = statistics.median(recent)
        if loss > spike_factor * median and loss > median + spike_margin:
            return "diverged", (f"loss spiked to {loss:.4g}, over {spike_factor:g}x the median {median:.4g} "
                                f"of the last {len(recent)} steps")
    elif start is not None and loss > early_factor * start and loss > start + early_margin:
        return "diverged", (f"loss rose to {loss:.4g} in the first steps, over {early_factor:g}x the starting "
                            f"loss {start:.4g}")
    return "ok", ""


def judge_reward(reward: float, recent: list[float], seen: tuple[float, float], collapse_noise: float = 3.0,
                 collapse_share: float = 0.25, min_history: int = 10) -> str:
    """Why a GRPO step's mean ``reward`` is *low* (far below the run's recent level), or ``""`` when it is not.

    ``recent``: the last healthy steps' mean rewards, in order; ``seen``: the lowest and highest step reward of
    the run so far. Low: below ``median(recent)`` by more than ``collapse_noise`` times the step-to-step noise
    (``median |r[i] - r[i-1]| / 0.954``) and by more than ``collapse_share`` of ``seen``'s range (thresholds
    argued in the module docstring).

    >>> judge_reward(0.0, [0.5, 0.55, 0.6, 0.58, 0.62, 0.6, 0.65, 0.63, 0.7, 0.68], (0.1, 0.7))[:22]
    'reward 0 is 0.61 below'
    >>> judge_reward(0.5, [0.5, 0.55, 0.6, 0.58, 0.62, 0.6, 0.65, 0.63, 0.7, 0.68], (0.1, 0.7))
    ''
    """
    if len(recent) < max(min_history, 2) or not math.isfinite(reward):
        return ""
    median = statistics.median(recent)
    noise = statistics.median(abs(b - a) for a, b in zip(recent, recent[1:])) / (0.6745 * math.sqrt(2))
    needed = max(collapse_noise * noise, collapse_share * (seen[1] - seen[0]))
    if median - reward > needed:
        return (f"reward {reward:.3g} is {median - reward:.3g} below the median {median:.3g} of the last "
                f"{len(recent)} steps (more than {needed:.3g}: {collapse_noise:g}x the step-to-step noise "
                f"{noise:.3g}, and {collapse_share:.0%} of the range {seen[0]:.3g}-{seen[1]:.3g} seen)")
    return ""


VERDICTS: tuple[Verdict, ...] = ("ok", "skip", "diverged")
"""From mild to severe: several processes take the most severe verdict any of them reached."""


def agreed_verdict(verdict: Verdict, reason: str) -> tuple[Verdict, str]:
    """The most severe verdict of every process training this run, so that all roll back (or skip) together.

    Each process judges the same numbers (the logged loss is averaged over
    the processes, the gradient norm is taken after they are averaged), so
    the verdicts agree already; this one integer per logged step makes sure,
    because a rollback on one process only would leave the adapters apart
    for good. With one process it returns its arguments.
    """
    agreed = VERDICTS[worst(VERDICTS.index(verdict))]
    if agreed == verdict:
        return verdict, reason
    return agreed, f"another process judged this step {agreed!r}"


def _copy(tree: Any, device: str | None = "cpu") -> Any:
    """A deep copy of a (nested) state dict with every tensor copied (to ``device``, or in place when None)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True) if device else tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _copy(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_copy(v, device) for v in tree)
    return tree


class Snapshot:
    """The trainable weights and optimizer state at one step, copied to CPU memory."""

    def __init__(self, step: int, model: Any, optimizer: Any) -> None:
        self.step = step
        self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = _copy(optimizer.state_dict()) if optimizer is not None else None

    def restore(self, model: Any, optimizer: Any) -> None:
        """Copy the weights back in place and reload the optimizer state (from a fresh copy)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, saved in self.weights.items():
                params[name].copy_(saved)
        if optimizer is not None and self.optimizer is not None:
            optimizer.load_state_dict(_copy(self.optimizer, device=None))  # loading may alias CPU tensors


def scale_lr(optimizer: Any, scheduler: Any, factor: float) -> float:
    """Multiply the current learning rate and the scheduler's ``base_lrs`` by ``factor``; returns the new lr.

    transformers' schedules are ``LambdaLR`` (lr = base_lr x lambda(step)): with ``base_lrs`` scaled, the
    scheduler recomputes the current step's lr through its public ``step()`` (``last_epoch`` set back one first, so
    it is the same step), which sets the optimizer's lr and what ``get_last_lr()`` (the lr the trainer logs) says.
    """
    last = scheduler.get_last_lr() if scheduler is not None and hasattr(scheduler, "get_last_lr") else None
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = (last[i] if last else group["lr"]) * factor
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        scheduler.last_epoch -= 1
        scheduler.step()
    elif scheduler is not None and hasattr(scheduler, "base_lrs"):  # another schedule: the later steps' base
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    return optimizer.param_groups[0]["lr"]


def _weights_finite(model: Any) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(flags).all()) if flags else True


class DivergenceGuard(TrainerCallback):
    """Roll back to the last good adapter and lower the learning rate when training diverges.

    ``history``: a list to append events to (``quick_finetune`` passes its
    :class:`~rslora_colab.watch.HistoryCallback` list). Thresholds are
    documented in :mod:`rslora_colab.resilience.guard`. Use with any ``Trainer``:

    >>> guard = DivergenceGuard(max_rollbacks=3).attach(trainer)  # doctest: +SKIP

    It needs the trainer itself (not only the callback arguments): after a
    NaN step transformers' running loss sum stays NaN (``tr_loss -= tr_loss``
    keeps a NaN), so every later logged loss would read NaN too; the guard
    zeroes that sum when it recovers.
    """

    def __init__(self, max_rollbacks: int = 3, history: list[dict] | None = None, lr_factor: float = 0.5,
                 spike_factor: float = 3.0, spike_margin: float = 1.0, window: int = 20, min_history: int = 10,
                 snapshot_every: int = 10, max_skips: int = 10, early_factor: float = 2.0,
                 early_margin: float = 2.0, loss_spikes: bool = True, reward_collapse: bool = False,
                 collapse_noise: float = 3.0, collapse_share: float = 0.25, collapse_steps: int = 3) -> None:
        self.max_rollbacks = max_rollbacks
        self.history = history if history is not None else []
        self.lr_factor, self.spike_factor, self.spike_margin = lr_factor, spike_factor, spike_margin
        self.window, self.min_history, self.snapshot_every, self.max_skips = window, min_history, snapshot_every, max_skips
        self.early_factor, self.early_margin = early_factor, early_margin
        self.loss_spikes = loss_spikes
        """Judge loss spikes (the spike and early rules); False for GRPO, whose loss is not a likelihood."""
        self.reward_collapse = reward_collapse
        """Judge GRPO's mean reward (:func:`judge_reward`): ``collapse_steps`` low steps in a row roll back."""
        self.collapse_noise, self.collapse_share = collapse_noise, collapse_share
        self.collapse_steps = collapse_steps
        self._rewards: deque[float] = deque(maxlen=window)
        self._seen: tuple[float, float] | None = None
        self._low: list[float] = []  # the rewards of the current run of low steps
        self.rollbacks = 0
        self.failure: str | None = None
        self.precision = "fp32"
        """The run's precision, read from the trainer's arguments when training begins."""
        self._start: float | None = None
        self._recent: deque[float] = deque(maxlen=window)
        self._skips = 0
        self._good: Snapshot | None = None
        self._pending: Snapshot | None = None
        self._trainer: Any = None

    def attach(self, trainer: Any) -> "DivergenceGuard":
        """Add this guard to ``trainer``'s callbacks; returns the guard."""
        self._trainer = trainer
        trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Start from the weights training begins with (a fresh adapter, or a resumed checkpoint)."""
        if self._trainer is None:
            raise RuntimeError("DivergenceGuard needs its trainer: use DivergenceGuard(...).attach(trainer) "
                               "instead of passing it in callbacks=[...].")
        past = state.log_history
        self.rollbacks = sum(1 for h in past if h.get("event") == "rollback")
        self.precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
        healthy = [h["loss"] for h in past if "loss" in h and math.isfinite(h["loss"])]
        self._recent.extend(healthy[-self.window:])
        self._start = healthy[0] if healthy else None
        rewards = [h["reward"] for h in past if "reward" in h and "loss" in h and math.isfinite(h["reward"])]
        self._rewards.extend(rewards[-self.window:])
        self._seen = (min(rewards), max(rewards)) if rewards else None
        self._low = []
        self._good, self._pending = Snapshot(state.global_step, model, optimizer), None

    @property
    def last_good_step(self) -> int | None:
        """The step of the weights the guard restores (and holds after giving up); None before training."""
        return self._good.step if self._good is not None else None

    def on_log(self, args, state, control, logs=None, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if not logs or "loss" not in logs or self.failure:
            return control
        loss, grad_norm = float(logs["loss"]), logs.get("grad_norm")
        verdict, reason = judge_step(loss, None if grad_norm is None else float(grad_norm),
                                     list(self._recent) if self.loss_spikes else [], lambda: _weights_finite(model),
                                     self.spike_factor, self.spike_margin, self.min_history,
                                     self._start if self.loss_spikes else None, self.precision, self.early_factor,
                                     self.early_margin)
        verdict, reason = agreed_verdict(verdict, reason)
        if verdict == "skip":
            self._skips += 1
            self._record(state, "scaler_skip", reason, optimizer.param_groups[0]["lr"])
            if self._skips > self.max_skips:
                verdict, reason = "diverged", f"the fp16 loss scaler skipped {self._skips} updates in a row"
        else:
            self._skips = 0
        low = False
        if verdict != "diverged" and self.reward_collapse and logs.get("reward") is not None:
            verdict, reason, low = self._judge_reward(float(logs["reward"]))
        if verdict == "diverged":
            self._low = []
            return self._recover(state, control, reason, model, optimizer, lr_scheduler)
        self._recent.append(loss)
        if self._start is None:
            self._start = loss
        if low:  # maybe a collapse starting: the pending weights are not trusted yet, and no new snapshot is taken
            return control
        if self._pending is not None:  # this healthy loss (and reward) was computed with the pending weights
            self._good, self._pending = self._pending, None
        if state.global_step - self._good.step >= self.snapshot_every:
            self._pending = Snapshot(state.global_step, model, optimizer)
        return control

    def _judge_reward(self, reward: float) -> tuple[Verdict, str, bool]:
        """``(verdict, reason, low)`` for a step's mean reward. The ``collapse_steps``-th low step in a row is
        ``"diverged"``; a low step before that is held back (kept out of the window, ``low`` True); a healthy
        step ends the run of low ones, which then join the window as noise."""
        why = judge_reward(reward, list(self._rewards), self._seen or (reward, reward), self.collapse_noise,
                           self.collapse_share, self.min_history)
        collapsed = bool(why) and len(self._low) + 1 >= self.collapse_steps
        verdict, reason = agreed_verdict("diverged" if collapsed else "ok", why)
        if verdict == "diverged":
            return verdict, (f"the reward collapsed, {len(self._low) + 1} logged steps in a row far below the run's "
                             f"level: {reason}"), True
        if why:
            self._low.append(reward)
            return "ok", "", True
        for value in [*self._low, reward]:
            self._rewards.append(value)
            lo, hi = self._seen or (value, value)
            self._seen = (min(lo, value), max(hi, value))
        self._low = []
        return "ok", "", False

    def _recover(self, state, control, reason: str, model, optimizer, lr_scheduler):
        step, lr = state.global_step, optimizer.param_groups[0]["lr"]
        lrs = [group["lr"] for group in optimizer.param_groups]  # each group's own (embeddings have theirs)
        self._good.restore(model, optimizer)
        self._pending = None
        self._trainer._tr_loss.zero_()  # drop the NaN from the trainer's running loss sum
        if self.rollbacks >= self.max_rollbacks:
            for group, current in zip(optimizer.param_groups, lrs):
                group["lr"] = current  # the restored state carries an older lr; keep the current one
            fp16 = ("on fp16 (a T4), a lower lr usually stops the overflow, or use a bf16 GPU (L4, A100); "
                    if self.precision == "fp16" else "")
            self.failure = (
                f"Training diverged at step {step} ({reason}) after {self.rollbacks} rollback(s), each cutting the "
                f"learning rate by {self.lr_factor:g}x (now {lr:.3g}). The model holds the last good weights "
                f"(step {self._good.step}). Try: a lower lr (e.g. lr={lr * self.lr_factor:.1e}) or a lower rank r; "
                f"{fp16}check the data for empty, huge or garbled rows. Start that run in a new output_dir (resuming "
                "keeps the old settings).")
            self._record(state, "gave_up", reason, lr, restored_step=self._good.step)
            control.should_training_stop, control.should_save = True, False
            return control
        self.rollbacks += 1
        lr = scale_lr(optimizer, lr_scheduler, self.lr_factor)
        self._record(state, "rollback", reason, lr, restored_step=self._good.step)
        logger.info(f"step {step}: {reason}; rolled back to step {self._good.step} and cut the learning rate "
                    f"to {lr:.3g} (rollback {self.rollbacks} of {self.max_rollbacks})")
        return control

    def _record(self, state, event: str, reason: str, lr: float, **extra: Any) -> None:
        record = {"step": state.global_step, "event": event, "reason": reason, "lr": lr, **extra}
        self.history.append(record)
        state.log_history.append(dict(record))  # saved with every checkpoint, read back on resume

    def on_train_end(self, args, state, control, **kwargs):
        if self.failure:
            raise DivergenceError(self.failure)
