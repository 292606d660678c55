"""Evaluation on held-out rows: the eval loss, the best adapter, early stopping, resume, tracking, eval data."""

import json
import math
from pathlib import Path

import pytest
import torch
from callbacks import StopAt, batch_rows
from safetensors.torch import load_file
from transformers import TrainerCallback

from rslora_colab import FinetuneConfig, demo_dataset, demo_preferences, quick_finetune
from rslora_colab.data import eval_fraction_for, hold_out, load_and_validate
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train import attach_adapter, build_trainer

QUICK = {"r": 16, "batch_size": 4, "grad_accum": 1, "max_seq_length": 64, "checkpoint_minutes": 0}
OVERFIT = {**QUICK, "lr": 3e-3, "max_steps": 40, "eval_fraction": 0.25, "eval_every": 2}
"""24 heading questions, 6 held out, at a rate that memorizes the 18 others: the eval loss bottoms out around
step 8 of 40 and then rises (measured: 4.26, 3.93, 2.88, 2.45, 2.43, 2.73, 2.82, 2.75 at steps 0-14)."""
WEIGHTS = "adapter_model.safetensors"


def _headings(n: int = 24):
    return demo_dataset(questions="heading", n=n)


def _evals(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]


def _same_curve(a: list[tuple[int, float]], b: list[tuple[int, float]], tolerance: float = 1e-4) -> bool:
    """The same steps, and the same losses within ``tolerance``."""
    return [s for s, _ in a] == [s for s, _ in b] and all(abs(x - y) <= tolerance for (_, x), (_, y) in zip(a, b))


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)



# ---------------------------------------------------------------- the held-out split and its default

def test_the_default_split_holds_out_5_percent_at_most_100_rows_from_1000_rows():
    assert eval_fraction_for(999, None) == 0.0  # small data is left whole
    assert eval_fraction_for(1000, None) == 0.05 and eval_fraction_for(10_000, None) == 0.01  # <= 100 rows
    assert eval_fraction_for(10_000, None, has_eval_dataset=True) == 0.0  # an eval_dataset replaces the split
    assert eval_fraction_for(158, 0.1) == 0.1


def test_the_split_follows_the_seed_and_keeps_every_row_once():
    data = demo_dataset()
    train, held = hold_out(data, 0.1, seed=3407)
    again, held_again = hold_out(data, 0.1, seed=3407)
    _, other = hold_out(data, 0.1, seed=1)
    assert (len(train), len(held)) == (142, 16) and list(held["instruction"]) == list(held_again["instruction"])
    assert list(held["instruction"]) != list(other["instruction"])
    assert sorted([*train["instruction"], *held["instruction"]]) == sorted(data["instruction"])
    assert hold_out(data, 0.0, seed=3407) == (data, None)


def test_eval_rows_are_masked_like_training_rows(demo_pair, tmp_path):
    """TRL shapes the eval rows with the trainer's own settings: the loss is on the answer only."""
    model, tokenizer = demo_pair
    dataset, fmt = load_and_validate(demo_dataset("chat", n=8))
    train, held = hold_out(dataset, 0.25, seed=0)
    config = FinetuneConfig(r=8, max_steps=1, max_seq_length=128, output_dir=str(tmp_path), eval_fraction=0.25)
    run = resolve_run(config, runtime_of(model), eval_rows=len(held))
    trainer = build_trainer(attach_adapter(model, run), tokenizer, train, fmt, run, eval_dataset=held)
    assert len(trainer.eval_dataset) == 2
    for i, row in enumerate(held):
        batch = trainer.data_collator([trainer.eval_dataset[i]])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        trained = tokenizer.decode(ids[labels != -100])
        assert trained == row["messages"][1]["content"] + "<|im_end|>"  # the answer (and its end), not the question
        assert row["messages"][0]["content"] in tokenizer.decode(ids)


# ---------------------------------------------------------------- eval loss recorded, falling, drawn

def test_eval_loss_is_recorded_every_n_steps_and_at_the_end_and_falls(demo_path, tmp_path):
    result = quick_finetune(demo_path, _headings(40), lr=1e-3, max_steps=18, eval_fraction=0.2, eval_every=5,
                            output_dir=str(tmp_path), **QUICK)
    evals = _evals(result.history)
    assert [step for step, _ in evals] == [0, 5, 10, 15, 18]  # before training, every 5 steps, at the end
    assert all(math.isfinite(loss) for _, loss in evals)
    assert evals[-1][1] < evals[0][1] - 0.5  # the held-out loss falls (4.3 -> 2.8 measured)
    assert result.first_eval_loss == evals[0][1] and result.final_eval_loss == evals[-1][1]
    assert len(result.eval_dataset) == 8 and result.settings["eval_rows"] == 8
    assert result.adapter_step == 18  # no early stopping: the last step's adapter, as before
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert _evals(metrics["history"]) == evals
    assert metrics["best_step"] == result.best_eval["step"] and metrics["adapter_step"] == 18
    assert metrics["settings"]["eval_fraction"] == 0.2
    # loss.png draws the eval curve too: its legend names it
    figure = result.plot()
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "eval loss (held out)" in labels and "training loss" in labels


def test_no_eval_rows_no_evaluation(demo_path, tmp_path):
    result = quick_finetune(demo_path, _headings(16), max_steps=2, output_dir=str(tmp_path), **QUICK)
    assert not _evals(result.history) and result.settings["eval_rows"] == 0 and result.eval_dataset is None
    assert math.isnan(result.first_eval_loss) and "best_step" not in result.summary()


# ---------------------------------------------------------------- early stopping and the best adapter

def test_early_stopping_stops_an_overfitting_run_and_saves_the_best_steps_adapter(demo_path, tmp_path):
    result = quick_finetune(demo_path, _headings(), early_stopping_patience=2, output_dir=str(tmp_path), **OVERFIT)
    evals = _evals(result.history)
    best_step, best_loss = min(((s, loss) for s, loss in evals if s > 0), key=lambda e: e[1])
    last_step = max(h["step"] for h in result.history if "loss" in h)
    assert last_step < OVERFIT["max_steps"]  # it stopped early ...
    assert [s for s, _ in evals if s > best_step] == [best_step + 2, best_step + 4]  # ... after 2 evals, no better
    assert all(loss > best_loss for s, loss in evals if s > best_step)
    assert evals[0][1] > best_loss  # the held-out loss did fall first
    assert result.adapter_step == best_step == result.best_eval["step"]
    # the saved adapter holds the best step's weights, not the last step's
    assert _same_weights(tmp_path / "adapter", tmp_path / f"checkpoint-{best_step}")
    assert not _same_weights(tmp_path / "adapter", tmp_path / f"checkpoint-{last_step}")
    saved = dict(result.model.named_parameters())
    best = load_file(str(tmp_path / f"checkpoint-{best_step}" / WEIGHTS))
    name = next(n for n in best if "lora_B" in n)
    assert torch.equal(saved[name.replace(".weight", ".default.weight")].detach().cpu(), best[name])
    # the checkpoints name the best one by its published folder, never the staging folder it was written in
    for checkpoint in tmp_path.glob("checkpoint-*"):
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert state["best_model_checkpoint"] == str(tmp_path / f"checkpoint-{best_step}")
    assert json.loads((tmp_path / "metrics.json").read_text())["adapter_step"] == best_step


def test_a_resumed_run_keeps_its_best_and_its_patience(demo_path, tmp_path):
    settings = {**OVERFIT, "early_stopping_patience": 3}
    straight = quick_finetune(demo_path, _headings(), output_dir=str(tmp_path / "straight"), **settings)
    stopped_at = max(h["step"] for h in straight.history if "loss" in h)
    best = straight.adapter_step
    assert best < stopped_at < settings["max_steps"]
    cut_at = best + 3  # after the best, before early stopping: the newest checkpoint is best + 2
    out = tmp_path / "cut"
    quick_finetune(demo_path, _headings(), output_dir=str(out), callbacks=[StopAt(cut_at)], **settings)
    (out / "adapter").rename(out / "adapter_when_cut")
    resumed = quick_finetune(demo_path, _headings(), output_dir=str(out), resume=True, **settings)
    assert resumed.adapter_step == best  # the best so far survived the resume ...
    assert max(h["step"] for h in resumed.history if "loss" in h) == stopped_at  # ... and so did the patience count
    assert _same_curve(_evals(resumed.history), _evals(straight.history))  # each evaluation once, the same losses
    assert _same_weights(out / "adapter", out / f"checkpoint-{best}")


def test_save_best_without_early_stopping_keeps_the_lowest_eval_loss(demo_path, tmp_path):
    result = quick_finetune(demo_path, _headings(), save_best=True, output_dir=str(tmp_path),
                            **{**OVERFIT, "max_steps": 16})
    best = result.best_eval["step"]
    assert [h["step"] for h in result.history if "loss" in h][-1] == 16 and best < 16
    assert result.adapter_step == best and _same_weights(tmp_path / "adapter", tmp_path / f"checkpoint-{best}")


def test_evaluation_settings_that_cannot_work_are_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience=2: early stopping watches the eval loss, and this "
                                         "run has no eval rows"):
        quick_finetune("no-such-model-is-loaded", _headings(16), early_stopping_patience=2, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint_every=7 with eval_every=5.*a multiple of eval_every"):
        quick_finetune("no-such-model-is-loaded", _headings(16), eval_fraction=0.25, eval_every=5, checkpoint_every=7,
                       save_best=True, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="save_best=True: the best adapter is the one with the lowest eval loss, "
                                         "and this run has no eval rows"):  # was accepted, then ignored
        quick_finetune("no-such-model-is-loaded", _headings(16), save_best=True, eval_fraction=0,
                       output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="early_stopping_patience=2: expected None with save_best=False"):
        FinetuneConfig(early_stopping_patience=2, save_best=False)
    with pytest.raises(ValueError, match="eval_fraction=0.1 and an eval_dataset: pass one of them"):
        quick_finetune("no-such-model-is-loaded", _headings(16), eval_dataset=_headings(4), eval_fraction=0.1,
                       output_dir=str(tmp_path))
    assert not (tmp_path / "run_manifest.json").exists()


# ---------------------------------------------------------------- an eval_dataset of its own

def test_an_eval_file_is_read_checked_and_used_whole(demo_path, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(row) + "\n" for row in demo_dataset(questions="explain", n=5)))
    result = quick_finetune(demo_path, _headings(16), eval_dataset=str(held), max_steps=2,
                            output_dir=str(tmp_path / "run"), **QUICK)
    assert len(result.eval_dataset) == 5 and len(result.history) == 2 + 3  # 2 steps; evals at 0, 1 and 2
    assert result.settings["eval_fraction"] == 0.0  # nothing held out of the training rows
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["eval_rows"] == 5 and manifest["rows"] == 16


def test_eval_data_in_another_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eval_dataset: is chat data, but the training data is alpaca"):
        quick_finetune("no-such-model-is-loaded", _headings(8), eval_dataset=demo_dataset("chat", n=4),
                       output_dir=str(tmp_path))


def test_eval_rows_trl_would_drop_are_checked_like_training_rows(demo_path, tmp_path):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"instruction": "word " * 200, "input": "", "output": "short"}) + "\n")
    with pytest.raises(ValueError, match=rf"{long}: every one of the 1 rows has a prompt of max_seq_length=64"):
        quick_finetune(demo_path, _headings(8), eval_dataset=str(long), output_dir=str(tmp_path / "run"), **QUICK)
    assert not (tmp_path / "run" / "run_manifest.json").exists()  # refused before the model loaded


def test_held_out_rows_that_trl_would_all_drop_are_named(demo_path, tmp_path, capsys):
    rows = [{"instruction": "word " * 100 if i % 5 else f"Heading of topic {i}?", "input": "", "output": "answer"}
            for i in range(10)]  # 8 prompts too long for 64 tokens; with seed 0 the one row held out is one of them
    with pytest.raises(ValueError, match="all 1 eval rows have a prompt of max_seq_length=64 tokens or more"):
        quick_finetune(demo_path, rows, eval_fraction=0.1, seed=0, max_steps=2, output_dir=str(tmp_path), **QUICK)
    assert "8 of 10 rows will be dropped by TRL" in capsys.readouterr().out  # warned, row by row, before loading


# ---------------------------------------------------------------- DPO: held-out reward accuracy and margin

def test_dpo_records_held_out_reward_accuracy_and_margin(demo_path, tmp_path):
    result = quick_finetune(demo_path, demo_preferences(n=24), method="dpo", lr=1e-4, max_steps=4, eval_fraction=0.25,
                            eval_every=2, output_dir=str(tmp_path), **QUICK)
    evals = [h for h in result.history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 2, 4]
    assert all({"eval_reward_accuracy", "eval_reward_margin"} <= h.keys() for h in evals)
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-3)  # before training: no preference yet
    assert evals[0]["eval_reward_margin"] == pytest.approx(0, abs=1e-4)  # the policy is still the reference
    assert evals[-1]["eval_reward_margin"] != 0 and 0 <= evals[-1]["eval_reward_accuracy"] <= 1  # measured, moving
    # (on the demo pairs the held-out margin first goes negative: a held-out pair's rejected answer is the chosen
    # answer of a trained pair, which the model has just learned to prefer; docs/results.md)


# ---------------------------------------------------------------- tracking: tensorboard for real

def test_tensorboard_event_files_hold_the_training_and_eval_losses(demo_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,  # requirements.txt pins tensorboard, for both lanes: no skip when it is missing
    )

    result = quick_finetune(demo_path, _headings(16), max_steps=4, eval_fraction=0.25, eval_every=2,
                            report_to="tensorboard", output_dir=str(tmp_path), **QUICK)
    (run,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    train = [(e.step, e.value) for e in events.Scalars("train/loss")]
    held = [(e.step, e.value) for e in events.Scalars("eval/loss")]
    assert _same_curve(train, [(h["step"], h["loss"]) for h in result.history if "loss" in h])
    assert _same_curve(held, _evals(result.history)) and [s for s, _ in held] == [0, 2, 4]


def test_a_tracker_that_is_not_installed_is_named_before_anything_loads(monkeypatch, tmp_path):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    with pytest.raises(ValueError, match=r"report_to='wandb': expected wandb installed: pip install wandb"):
        quick_finetune("no-such-model-is-loaded", _headings(8), report_to="wandb", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"report_to='mlflow': expected 'none', or some of tensorboard, wandb"):
        FinetuneConfig(report_to="mlflow")
    assert FinetuneConfig(report_to="none").report_to == "none"


# ---------------------------------------------------------------- with the divergence guard and OOM recovery

class PoisonStep(TrainerCallback):
    """NaN input embeddings during one optimizer step (1-based), as in test_guard.py."""

    def __init__(self, step):
        self.step, self.active = step, False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.get_input_embeddings().register_forward_hook(lambda m, i, out: out * math.nan if self.active else None)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.step

    def on_step_end(self, args, state, control, **kwargs):
        self.active = False


def test_a_rolled_back_nan_step_never_becomes_the_best(demo_path, tmp_path):
    result = quick_finetune(demo_path, _headings(), save_best=True, callbacks=[PoisonStep(14)],
                            output_dir=str(tmp_path), **{**OVERFIT, "max_steps": 20, "lr": 1e-3})
    assert [h["event"] for h in result.history if "event" in h] == ["rollback"]
    evals = _evals(result.history)
    assert [s for s, _ in evals] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert all(math.isfinite(loss) for _, loss in evals)  # the guard restored the weights before step 14's eval
    assert result.adapter_step == result.best_eval["step"]
    assert all(torch.isfinite(p).all() for n, p in result.model.named_parameters() if "lora_" in n)


def test_out_of_memory_recovery_keeps_the_best_and_evaluates_once_per_step(demo_path, tmp_path):
    from test_oom import OomInStep

    failing = OomInStep(at=(9,))  # building step 10 fails at micro-batch 4: resumes at micro-batch 2 from step 9
    result = quick_finetune(demo_path, _headings(), save_best=True, callbacks=[failing], output_dir=str(tmp_path),
                            **{**OVERFIT, "max_steps": 16})
    assert [h["event"] for h in result.history if "event" in h] == ["oom"]
    assert [s for s, _ in _evals(result.history)] == [0, 2, 4, 6, 8, 10, 12, 14, 16]  # no repeat after the resume
    assert result.adapter_step == result.best_eval["step"] < 9  # the best from before the recovery was kept
    assert _same_weights(tmp_path / "adapter", tmp_path / f"checkpoint-{result.adapter_step}")
    assert result.settings["batch_size"] == 2


class OomInEval(TrainerCallback):
    """Raises ``torch.OutOfMemoryError`` from the first evaluation forward after step ``step``, once; records the
    batch size of every evaluation forward pass."""

    def __init__(self, step):
        self.step, self.state, self.hooked, self.raised, self.eval_batches = step, None, False, False, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = state
        if not self.hooked:
            model.register_forward_pre_hook(self._hook, with_kwargs=True)
            self.hooked = True

    def _hook(self, module, args, kwargs):
        if module.training:
            return
        if self.state.global_step == self.step and not self.raised:
            self.raised = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.eval_batches.append((self.state.global_step, len(batch_rows(kwargs))))


def test_an_evaluation_out_of_memory_halves_the_eval_batch_too(demo_path, tmp_path):
    failing = OomInEval(step=4)
    result = quick_finetune(demo_path, _headings(), callbacks=[failing], output_dir=str(tmp_path),
                            **{**OVERFIT, "max_steps": 8})
    assert [(h["step"], h["event"]) for h in result.history if "event" in h] == [(4, "oom")]
    assert [s for s, _ in _evals(result.history)] == [0, 2, 6, 8]  # step 4's evaluation is the one skipped
    assert {size for step, size in failing.eval_batches if step < 4} == {4, 2}  # 6 rows: 4 + 2
    assert {size for step, size in failing.eval_batches if step > 4} == {2}  # halved with the micro-batch
    assert [h["step"] for h in result.history if "loss" in h] == list(range(1, 9))


def test_the_guard_gives_up_keeping_the_adapter_with_the_lowest_eval_loss(demo_path, tmp_path):
    from rslora_colab import DivergenceError

    class PoisonFrom(PoisonStep):
        def on_step_begin(self, args, state, control, **kwargs):
            self.active = state.global_step + 1 >= self.step

    with pytest.raises(DivergenceError) as err:
        quick_finetune(demo_path, _headings(), save_best=True, max_rollbacks=0, callbacks=[PoisonFrom(13)],
                       output_dir=str(tmp_path), **{**OVERFIT, "lr": 1e-3})
    best = json.loads((tmp_path / "checkpoint-12" / "trainer_state.json").read_text())["best_global_step"]
    assert f"The adapter with the lowest eval loss (step {best}) is saved in {tmp_path / 'last_good_adapter'}" \
        in str(err.value)
    assert _same_weights(tmp_path / "last_good_adapter", tmp_path / f"checkpoint-{best}")


def test_resuming_a_run_that_had_ended_keeps_its_best_adapter(demo_path, tmp_path):
    """Nothing is left to train, so train() does not run and cannot load the best checkpoint: the kit does."""
    settings = {**OVERFIT, "early_stopping_patience": 3}
    first = quick_finetune(demo_path, _headings(), output_dir=str(tmp_path), **settings)
    last = max(h["step"] for h in first.history if "loss" in h)
    assert first.adapter_step < last  # early stopping kept an earlier step's adapter
    (tmp_path / "adapter").rename(tmp_path / "adapter_first")
    again = quick_finetune(demo_path, _headings(), output_dir=str(tmp_path), resume=True, **settings)
    assert again.adapter_step == first.adapter_step
    assert _same_weights(tmp_path / "adapter", tmp_path / f"checkpoint-{first.adapter_step}")
