"""TRL's own settings pass through under TRL's names (``rslora_colab.trl_args``): they reach the trainer, they are
recorded and held by a resume, and what the kit keeps is refused with the way to ask for it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rslora_colab import FinetuneConfig, demo_dataset, demo_preferences, detect_runtime, quick_finetune
from rslora_colab.cli import main
from rslora_colab.config import HF_NAMES
from rslora_colab.rewards import length_penalty
from rslora_colab.settings import resolve_run
from rslora_colab.train import trainer_args
from rslora_colab.train.grpo import grpo_config
from rslora_colab.train.trainer import dpo_config, sft_config
from rslora_colab.trl_args import KIT_SETS, USER_WINS

from callbacks import Recorder


def test_a_trl_keyword_goes_to_trl_args_under_its_own_name():
    config = FinetuneConfig.from_overrides(r=16, neftune_noise_alpha=5.0, optim="sgd")
    assert config.trl_args == {"neftune_noise_alpha": 5.0, "optim": "sgd"}
    run = resolve_run(config, detect_runtime())
    args = sft_config(run)
    assert args.neftune_noise_alpha == 5.0 and args.optim == "sgd"  # the user's value over the kit's
    assert run.manifest()["trl_args"] == config.trl_args and run.as_dict()["optimizer"] == "sgd"


def test_each_method_hands_its_own_trl_config_the_user_s_fields():
    dpo = resolve_run(FinetuneConfig.from_overrides(method="dpo", loss_type=["ipo"]), detect_runtime())
    assert list(dpo_config(dpo).loss_type) == ["ipo"]
    grpo = resolve_run(FinetuneConfig.from_overrides(method="grpo", reward_funcs=[length_penalty(60)],
                                                     epsilon_high=0.28), detect_runtime())
    assert grpo_config(grpo, trainer_args(grpo)).epsilon_high == 0.28
    with pytest.raises(ValueError, match=r"'epsilon_high' \(a field of GRPOConfig: with method='grpo'\)"):
        FinetuneConfig.from_overrides(epsilon_high=0.28)


@pytest.mark.parametrize("overrides, message", [
    ({"bf16": True}, r"'bf16' \(the kit sets it: precision comes from the GPU"),
    ({"neftune_noise_alph": 5}, r"did you mean 'neftune_noise_alpha'"),
    ({"learning_rate": 1e-4}, r"did you mean 'lr'"),  # the kit's own name for a TRL one: its preset, its plan
    ({"neftune_noise_alpha": "5"}, r"trl_args\['neftune_noise_alpha'\]='5': expected float \| None"),
    ({"trl_args": {"save_strategy": "no"}}, r"trl_args\['save_strategy'\]: the kit sets it: checkpoints"),
    ({"trl_args": {"no_such_field": 1}}, r"trl_args\['no_such_field'\]: SFTConfig \(method='sft'\) has no such"),
    ({"trl_args": {"model_init_kwargs": {"f": print}}}, r"model_init_kwargs.*the run manifest can record"),
    ({"trl_args": ["neftune_noise_alpha", 5]}, r"trl_args=.*expected a dict of TRL config fields"),
])
def test_what_is_not_passed_through_is_refused_naming_the_field_and_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig.from_overrides(**overrides)


def test_a_value_trl_itself_refuses_names_the_settings_passed_through():
    run = resolve_run(FinetuneConfig(trl_args={"logging_strategy": "sometimes"}), detect_runtime())
    with pytest.raises(ValueError, match=r"SFTConfig refused the settings passed through to it "
                                         r"\(logging_strategy='sometimes'\)"):
        sft_config(run)


def test_every_argument_the_kit_sets_is_accounted_for():
    """A new argument in trainer_args must be a kit field, a name the kit keeps (HF_NAMES), refused (KIT_SETS) or
    left to the user (USER_WINS): otherwise a user's value for it would be taken without anyone deciding."""
    kit = {f.name for f in dataclasses.fields(FinetuneConfig)}
    runtime, set_by_kit = detect_runtime(), set()
    for method, extra in (("sft", {"packing": True}), ("dpo", {}), ("grpo", {"reward_funcs": [length_penalty(60)]})):
        run = resolve_run(FinetuneConfig(method=method, early_stopping_patience=2, **extra), runtime, eval_rows=4)
        args = trainer_args(run)
        set_by_kit |= set(args) | ({"use_vllm"} if method == "grpo" else set())
    set_by_kit |= {"assistant_only_loss", "packing_strategy"}  # build_trainer's, from the data's format
    assert set_by_kit - kit - set(HF_NAMES) - set(KIT_SETS) - set(USER_WINS) == set()


def test_a_passed_through_warmup_reaches_the_schedule_and_is_recorded(tmp_path):
    """TRL's warmup_steps replaces the preset's warm-up ratio: the lr climbs for exactly 3 steps, then holds."""
    recorder, out = Recorder(), tmp_path / "run"
    result = quick_finetune("demo", demo_dataset(n=16), r=8, max_steps=6, batch_size=2, grad_accum=1, lr=1e-3,
                            lr_scheduler="constant_with_warmup", warmup_steps=3, output_dir=str(out),
                            max_seq_length=128, callbacks=[recorder])
    lrs = [h["lr"] for h in result.history if "loss" in h]  # the lr each step trained at
    assert lrs == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3]), lrs
    assert recorder.args.warmup_steps == 3
    assert result.settings["trl_args"] == {"warmup_steps": 3} and result.settings["warmup_ratio"] is None
    assert json.loads((out / "metrics.json").read_text())["settings"]["trl_args"] == {"warmup_steps": 3}


def test_a_resume_with_other_trl_settings_is_refused(tmp_path):
    data, out = demo_preferences(n=8), str(tmp_path / "run")
    common = dict(method="dpo", r=8, max_steps=2, batch_size=2, grad_accum=1, max_seq_length=128, output_dir=out)
    quick_finetune("demo", data, loss_type=["ipo"], **common)
    with pytest.raises(ValueError, match=r"differ from the saved run:\n  trl_args"):
        quick_finetune("demo", data, resume=True, loss_type=["hinge"], **common)


def test_the_command_line_passes_trl_settings_through(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--max-steps", "2", "--sample", "", "--out", str(out), "--trl", "neftune_noise_alpha=5",
                 "--trl", "optim=sgd"]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["trl_args"] == {"neftune_noise_alpha": 5, "optim": "sgd"}
    assert settings["optimizer"] == "sgd"


def test_a_setting_is_recorded_and_held_by_a_resume_from_its_field_alone():
    """One place per setting: every FinetuneConfig field is in the manifest of a run it applies to (or is one a
    resume may change, RESUME_MAY_CHANGE), and in the settings shown, with no list of names to extend."""
    from rslora_colab.settings import RESUME_MAY_CHANGE

    runtime, every = detect_runtime(), {f.name for f in dataclasses.fields(FinetuneConfig)}
    sft = FinetuneConfig(packing=True, padding_free=True, train_embeddings=True, eval_fraction=0.1,
                         early_stopping_patience=2, trl_args={"neftune_noise_alpha": 5.0})
    grpo = FinetuneConfig(method="grpo", reward_funcs=[length_penalty(60)])
    runs = [resolve_run(config, runtime, eval_rows=4) for config in (sft, grpo)]
    held = set().union(*(run.manifest() for run in runs))
    assert every - held == set(RESUME_MAY_CHANGE) and not set(RESUME_MAY_CHANGE) & held
    assert every <= set().union(*(run.as_dict() for run in runs))
