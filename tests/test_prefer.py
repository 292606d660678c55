import json

import pytest
import torch
from peft import PeftModel

from rslora_colab import (
    FinetuneConfig,
    add_rslora,
    demo_dataset,
    demo_preferences,
    load_and_validate,
    lr_for_rank,
    quick_finetune,
)
from rslora_colab.data.preference import to_dpo_dataset
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train import build_trainer


@pytest.mark.parametrize("fmt, expected", [("chat", "preference_chat"), ("text", "preference"),
                                           ("ultrafeedback", "ultrafeedback")])
def test_preference_layouts_are_detected(fmt, expected):
    assert load_and_validate(demo_preferences(fmt, n=4), "dpo")[1] == expected


def test_ultrafeedback_and_implicit_prompts_are_split_off_like_explicit_ones(demo_pair):
    tokenizer = demo_pair[1]
    explicit = to_dpo_dataset(demo_preferences("chat", n=3), "preference_chat", tokenizer)
    ultrafeedback = to_dpo_dataset(*load_and_validate(demo_preferences("ultrafeedback", n=3), "dpo"), tokenizer)
    implicit_rows = demo_preferences("ultrafeedback", n=3).remove_columns(["prompt", "messages"])
    implicit, fmt = load_and_validate(implicit_rows, "dpo")
    assert fmt == "preference_implicit"
    assert ultrafeedback.to_list() == explicit.to_list() == to_dpo_dataset(implicit, fmt, tokenizer).to_list()
    assert explicit[0]["prompt"][0]["role"] == "user" and explicit[0]["chosen"][0]["role"] == "assistant"


USER = {"role": "user", "content": "Heading of 'assert'?"}


def _said(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("rows, match", [
    ([{"prompt": "q", "chosen": "a", "rejected": "a"}], "row 0: fields 'chosen' and 'rejected' are identical"),
    ([{"prompt": "q", "chosen": "", "rejected": "b"}], "row 0: field 'chosen' must be a non-empty string"),
    ([{"prompt": [USER, _said("x")], "chosen": [_said("a")], "rejected": [_said("b")]}],
     "row 0: field 'prompt' must end with the user's turn"),
    ([{"prompt": [USER], "chosen": [_said("a")], "rejected": "b"}], "row 0: field 'rejected' must be a non-empty list"),
    ([{"chosen": "abc", "rejected": "xyz"}], "row 0: fields 'chosen' and 'rejected' share no beginning"),
    ([{"chosen": [USER, _said("a")], "rejected": [{"role": "user", "content": "other"}, _said("b")]}],
     "row 0: fields 'chosen' and 'rejected' differ first at turn 0, a 'user' turn"),
    ([{"prompt": "q", "chosen": [USER, {"role": "robot", "content": "a"}], "rejected": [USER, _said("b")]}],
     r"row 0: chosen\[1\].role='robot'"),
])
def test_bad_preference_rows_are_named(rows, match):
    with pytest.raises(ValueError, match=match):
        load_and_validate(rows, "dpo")


def test_sft_data_for_dpo_and_preference_data_for_sft_say_which_method(tmp_path):
    with pytest.raises(ValueError, match="not preference data.*alpaca data: train on it with method='sft'"):
        load_and_validate(demo_dataset(n=2), "dpo")
    with pytest.raises(ValueError, match="preference data for DPO, not SFT: pass method='dpo'"):
        load_and_validate(demo_preferences("ultrafeedback", n=2))  # it has a 'messages' column too
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "q", "chosen": "a", "rejected": ""}) + "\n")
    with pytest.raises(ValueError, match="prefs.jsonl line 2: field 'rejected' must be a non-empty string"):
        load_and_validate(str(path), "dpo")


def _dpo_trainer(model, tokenizer, pairs, tmp_path, **overrides):
    config = FinetuneConfig(r=64, method="dpo", batch_size=8, grad_accum=1, max_seq_length=128,
                            output_dir=str(tmp_path), **overrides)
    dataset, fmt = load_and_validate(pairs, "dpo")
    return build_trainer(model, tokenizer, dataset, fmt, resolve_run(config, runtime_of(model)))


def test_dpo_raises_the_reward_margin_against_the_base_as_reference(demo_pair, tmp_path):
    model, tokenizer = demo_pair
    model = add_rslora(model, r=64)
    n_params = sum(p.numel() for p in model.parameters())
    # the demo model is tiny: it needs a larger step than the DPO preset to move within a few steps
    trainer = _dpo_trainer(model, tokenizer, demo_preferences(n=16), tmp_path, lr=1e-4, max_steps=8)
    # the reference is the base with the adapter disabled: no second model, no copy of the adapter
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"]
    assert sum(p.numel() for p in trainer.model.parameters()) == n_params
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    ref_before = trainer.compute_ref_log_probs(trainer.model, batch)
    pairs = to_dpo_dataset(demo_preferences(n=16), "preference_chat", tokenizer)
    before = trainer.evaluate(pairs)  # beta * (policy - reference) log-probs of chosen and rejected, per pair
    trainer.train()
    after = trainer.evaluate(pairs)
    ref_after = trainer.compute_ref_log_probs(trainer.model, batch)
    assert before["eval_rewards/margins"] == 0.0  # a fresh adapter: policy == reference
    assert after["eval_rewards/margins"] > 0.2 and after["eval_rewards/accuracies"] >= 0.75
    assert all(torch.equal(a, b) for a, b in zip(ref_before, ref_after))  # the reference did not move


def test_a_trained_adapter_is_kept_as_its_own_frozen_reference(demo_pair, tmp_path, capsys):
    model, tokenizer = demo_pair
    model = add_rslora(model, r=64)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)  # as after SFT: DPO then starts from, and stays near, this model
    trainer = _dpo_trainer(model, tokenizer, demo_preferences(n=8), tmp_path, max_steps=1)
    assert sorted(trainer.model.peft_config) == ["default", "ref"]
    assert "frozen copy" in capsys.readouterr().out


def test_quick_finetune_dpo_uses_the_dpo_preset_and_records_rewards(demo_path, tmp_path):
    result = quick_finetune(demo_path, demo_preferences("ultrafeedback", n=8), r=64, method="dpo", max_steps=3,
                            batch_size=4, grad_accum=1, max_seq_length=128, output_dir=str(tmp_path))
    s = result.settings
    assert (s["method"], s["beta"], s["lr"]) == ("dpo", 0.1, 2.5e-6) and s["lr"] == lr_for_rank(64) / 40
    assert len(result.history) == 3
    assert all({"loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected"} <= set(h)
               for h in result.history)
    assert json.loads((result.adapter_path / "adapter_config.json").read_text())["use_rslora"] is True
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["method"] == "dpo"


def test_dpo_settings_are_checked():
    with pytest.raises(ValueError) as err:
        FinetuneConfig(method="ppo", beta=0)
    assert "method='ppo'" in str(err.value) and "beta=0" in str(err.value)
