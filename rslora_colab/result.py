"""What a run produced: :class:`FinetuneResult`, and the (model, tokenizer) pair that chat and save take."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .watch import best_eval, eval_records, mean_value, plot_loss


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
    """One record per logged step (step, loss, lr, grad_norm, num_tokens); one per evaluation on the eval rows
    (``{"step", "eval_loss", ...}``, the first at step 0, before training; DPO adds ``eval_reward_accuracy`` and
    ``eval_reward_margin``); and events: the divergence guard's (``{"step", "event": "rollback" | "scaler_skip"
    | "gave_up", "reason", "lr", ...}``) and out-of-memory recoveries (``{"step", "event": "oom",
    "micro_batch", "grad_accum"}``). A resumed run includes the records before the checkpoint."""
    wall_time_s: float = 0.0
    """Seconds spent in ``trainer.train()``."""
    tokens_per_s: float = 0.0
    """Training tokens processed per second."""
    peak_gpu_memory_gib: float | None = None
    """Peak reserved CUDA memory in GiB; None on CPU."""
    adapter_step: int | None = None
    """The step whose adapter weights ``model`` holds (and ``quick_finetune`` saves): with eval rows and
    ``save_best``, the evaluation with the lowest eval loss; otherwise the last step trained."""
    eval_dataset: Any = None
    """The rows the eval loss was measured on (held out with ``eval_fraction``, or the ``eval_dataset`` given), as
    validated, before TRL shaped them; None without evaluation. Not written to ``metrics.json``."""

    @property
    def first_loss(self) -> float:
        """Mean loss of the first 5 logged steps."""
        return self.mean_of("loss", first=True)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 5 logged steps."""
        return self.mean_of("loss", first=False)

    @property
    def eval_history(self) -> list[dict]:
        """The evaluations, in order: ``{"step", "eval_loss", ...}`` (the first at step 0 on a fresh run)."""
        return eval_records(self.history)

    @property
    def first_eval_loss(self) -> float:
        """The first evaluation's loss (step 0 on a fresh run: the model before training); NaN without evals."""
        evals = self.eval_history
        return evals[0]["eval_loss"] if evals else math.nan

    @property
    def final_eval_loss(self) -> float:
        """The last evaluation's loss (at the step training ended); NaN without evals."""
        evals = self.eval_history
        return evals[-1]["eval_loss"] if evals else math.nan

    @property
    def best_eval(self) -> dict | None:
        """The evaluation with the lowest eval loss after training began (its ``step`` and ``eval_loss``)."""
        return best_eval(self.history)

    def mean_of(self, key: str, first: bool, n: int = 5) -> float:
        """Mean of the first (or last) ``n`` finite values of ``key`` in the history, e.g. ``"reward_margin"``."""
        return mean_value(self.history, key, first, n)

    def _window(self, key: str, n: int = 5) -> str:
        """What a first/last mean of ``key`` averages, in words: ``mean of first/last 5 steps`` or fewer."""
        logged = sum(1 for h in self.history if key in h and math.isfinite(h[key]))
        shown = min(n, logged)
        return f"mean of first/last {shown} step{'s' if shown != 1 else ''}"

    def summary(self) -> dict:
        """The JSON-ready part of the result (everything but model and tokenizer)."""
        best = self.best_eval
        evaluation = {} if not self.eval_history else {
            "first_eval_loss": self.first_eval_loss, "final_eval_loss": self.final_eval_loss,
            "best_eval_loss": best["eval_loss"] if best else None, "best_step": best["step"] if best else None}
        if self.eval_history and "eval_reward" in self.eval_history[0]:  # GRPO: "best" is the highest reward
            evaluation.update(first_eval_reward=self.eval_history[0]["eval_reward"],
                              final_eval_reward=self.eval_history[-1]["eval_reward"],
                              best_eval_reward=best["eval_reward"] if best else None)
        return {"adapter_path": str(self.adapter_path), "settings": self.settings, "history": self.history,
                "wall_time_s": self.wall_time_s, "tokens_per_s": self.tokens_per_s,
                "peak_gpu_memory_gib": self.peak_gpu_memory_gib,
                "first_loss": self.first_loss, "final_loss": self.final_loss, "adapter_step": self.adapter_step,
                **evaluation}

    def report(self) -> str:
        """What the run did, in a few lines, as ``python -m rslora_colab train`` ends: the loss, for DPO the
        reward margin and the held-out reward accuracy, for GRPO the reward (each function's too) and the
        completion length. (The eval loss line is logged when training ends.)"""
        lines = [f"loss {self.first_loss:.3f} -> {self.final_loss:.3f} ({self._window('loss')}) in "
                 f"{self.wall_time_s:.1f} s, {self.tokens_per_s:,.0f} tokens/s"]
        if self.settings.get("method") == "grpo":  # the loss is a policy-gradient surrogate: the reward is the news
            per_function = [f"{name} {self.mean_of(f'reward/{name}', True):.3f} -> "
                            f"{self.mean_of(f'reward/{name}', False):.3f}" for name in self.settings["reward_funcs"]]
            lines.append(f"reward {self.mean_of('reward', True):.3f} -> {self.mean_of('reward', False):.3f} "
                         f"({self._window('reward')}; {', '.join(per_function)}), completion length "
                         f"{self.mean_of('completion_length', True):.1f} -> "
                         f"{self.mean_of('completion_length', False):.1f} tokens")
            held = [h for h in self.eval_history if "eval_reward" in h]
            if held:
                lines.append(f"on {self.settings['eval_rows']} held-out prompts: reward {held[0]['eval_reward']:.3f} "
                             f"(step {held[0]['step']}) -> {held[-1]['eval_reward']:.3f} (step {held[-1]['step']})")
            return "\n".join(lines)
        if self.settings.get("method") != "dpo":
            return lines[0]
        lines.append(f"reward margin (chosen - rejected) {self.mean_of('reward_margin', True):.3f} -> "
                     f"{self.mean_of('reward_margin', False):.3f} ({self._window('reward_margin')})")
        held = self.eval_history
        if held:
            lines.append(f"on {self.settings['eval_rows']} held-out pairs: reward accuracy "
                         f"{held[0]['eval_reward_accuracy']:.2f} -> {held[-1]['eval_reward_accuracy']:.2f}, margin "
                         f"{held[0]['eval_reward_margin']:.3f} -> {held[-1]['eval_reward_margin']:.3f}")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None):
        """The loss curve (and the eval loss, with the step of the saved adapter) as a matplotlib figure."""
        return plot_loss(self.history, path, title=f"rsLoRA r={self.settings['r']}, lr={self.settings['lr']:.2g}",
                         adapter_step=self.adapter_step if self.eval_history else None)


def model_and_tokenizer(result_or_model: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a :class:`FinetuneResult`, or from a model and its tokenizer."""
    if isinstance(result_or_model, FinetuneResult):
        return result_or_model.model, tokenizer or result_or_model.tokenizer
    if tokenizer is None:
        raise ValueError("tokenizer: pass the model's tokenizer (or pass a FinetuneResult, which carries it).")
    return result_or_model, tokenizer
