import importlib
import json

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM

from rslora_colab import (
    adapter_scale,
    adapter_scales,
    add_rslora,
    chat,
    load_adapter,
    push_to_hub,
    save,
)
from rslora_colab.cli import main

MERGE_TOLERANCE = 0.02
"""Largest |logit| difference allowed between the merged fp16 model and 4-bit base + adapter (logits span about
+-9 here): the merge itself is exact in fp32 (5e-6), storing the weights in fp16 costs ~4e-3. See docs/."""


def _adapted(demo_pair, r=16, alpha=None):
    """An rsLoRA-adapted demo model whose adapter visibly changes the logits (B drawn at random, seeded)."""
    model, tokenizer = demo_pair
    model = add_rslora(model, r=r, alpha=alpha)
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.02
    return model, tokenizer


def _logits(model, tokenizer):
    ids = tokenizer(["The assert statement is used for debugging assertions in a program."], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.input_ids).logits.float()


def test_merged_16bit_matches_base_plus_adapter(demo_pair, tmp_path):
    model, tokenizer = _adapted(demo_pair)
    trained = _logits(model, tokenizer)  # the 4-bit base + adapter, as trained
    with model.disable_adapter():
        base = _logits(model, tokenizer)
    save(model, tmp_path / "merged", how="merged_16bit", tokenizer=tokenizer)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["dtype"] == "float16" and "quantization_config" not in config
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (trained - base).abs().max() > 1.0  # the adapter matters, so agreeing with it means something
    assert (_logits(merged, tokenizer) - trained).abs().max() < MERGE_TOLERANCE


def test_reloaded_adapter_keeps_the_rslora_scale(demo_pair, tmp_path):
    model, tokenizer = _adapted(demo_pair, r=16, alpha=32)
    save(model, tmp_path / "adapter", tokenizer=tokenizer)  # how="adapter"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["use_rslora"], config["r"], config["lora_alpha"]) == (True, 16, 32)
    # the demo is recorded by its portable name, not this machine's cache folder (which a pushed adapter would carry)
    assert config["base_model_name_or_path"] == "demo"
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "base_model: demo" in card and str(demo_pair[0].config._name_or_path) not in card
    reloaded, reloaded_tokenizer = load_adapter(tmp_path / "adapter")  # "demo" resolves to the demo model
    scales = adapter_scales(reloaded)
    assert len(scales) == 7 * reloaded.config.num_hidden_layers
    assert set(scales.values()) == {adapter_scale(32, 16)} == {8.0}  # alpha / sqrt(r), not alpha / r = 2
    assert isinstance(chat(reloaded, reloaded_tokenizer, "hello", max_new_tokens=3, stream=False), str)


def test_gguf_without_unsloth_is_a_clear_error(demo_pair, tmp_path, capsys):
    with pytest.raises(ValueError, match="has no adapter to save"):
        save(demo_pair[0], tmp_path / "plain", tokenizer=demo_pair[1])
    model, tokenizer = _adapted(demo_pair)
    with pytest.raises(ValueError, match="how='gguf' needs a GPU runtime with Unsloth"):
        save(model, tmp_path / "gguf", how="gguf", tokenizer=tokenizer)
    save(model, tmp_path / "adapter", tokenizer=tokenizer)
    code = main(["export", "--adapter", str(tmp_path / "adapter"), "--how", "gguf", "--out", str(tmp_path / "g")])
    assert code == 2 and "needs a GPU runtime with Unsloth" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


SECRET = "hf_kitTestTokenNeverShown123"


def test_hub_token_comes_from_huggingface_hub_and_is_never_shown(demo_pair, monkeypatch, tmp_path, capsys):
    # No network here: only where the token comes from, and that it never appears, can be tested. Where it comes
    # from is huggingface_hub.get_token(): $HF_TOKEN, a saved login, or the Colab secret (Colab's own kernel only).
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert huggingface_hub.get_token() is None
    model, tokenizer = _adapted(demo_pair)
    with pytest.raises(ValueError, match="HF_TOKEN"):
        push_to_hub(model, "me/demo-rslora", tokenizer=tokenizer)
    (tmp_path / "no-token").write_text("hf_savedLoginToken")
    assert huggingface_hub.get_token() == "hf_savedLoginToken"  # a `hf auth login` counts too
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert huggingface_hub.get_token() == SECRET  # the environment wins
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at the first request, offline
    with pytest.raises(RuntimeError, match="push_to_hub\\('me/demo-rslora'.*offline") as err:
        push_to_hub(model, "me/demo-rslora", tokenizer=tokenizer)
    shown = capsys.readouterr()
    assert SECRET not in str(err.value) and SECRET not in shown.out + shown.err
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained error to leak it either


def test_params_16bit_counts_a_4bit_base_at_its_full_size(demo_pair, demo_path):
    from rslora_colab.save import params_16bit

    model, _ = demo_pair
    full = AutoModelForCausalLM.from_pretrained(demo_path, dtype=torch.float32)
    assert params_16bit(add_rslora(model, r=8)) == sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("short", ["RAM", "disk"])
def test_a_merge_this_machine_cannot_hold_stops_before_writing(demo_pair, tmp_path, monkeypatch, short):
    """Simulated small limits: the merge must stop before anything loads or is written, with the numbers."""
    saving = importlib.import_module("rslora_colab.save")  # the module, not the function the package exports

    model, tokenizer = _adapted(demo_pair)
    monkeypatch.setattr(saving, "free_ram_bytes", lambda: 2**20 if short == "RAM" else 2**40)
    monkeypatch.setattr(saving, "free_disk_bytes", lambda path: 2**20 if short == "disk" else 2**40)
    with pytest.raises(ValueError, match=rf"(?s)needs [\d.]+ GiB of free {short}.*has 0\.0 GiB.*Nothing was written"
                                         r".*how='portable_adapter'"):
        save(model, tmp_path / "merged", how="merged_16bit", tokenizer=tokenizer)
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_unsloths_merge_is_checked_first_and_gets_the_shard_size(demo_pair, simulated_gpu, tmp_path, monkeypatch):
    saving = importlib.import_module("rslora_colab.save")  # the module, not the function the package exports
    from rslora_colab.load import RUNTIME_ATTR
    from rslora_colab.runtime import Runtime

    model, tokenizer = _adapted(demo_pair)
    setattr(model, RUNTIME_ATTR, Runtime("unsloth", "fp16", "Tesla T4", "simulated"))
    calls = []
    model.save_pretrained_merged = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setattr(saving, "free_disk_bytes", lambda path: 2**40)
    monkeypatch.setattr(saving, "free_ram_bytes", lambda: 2**20)
    with pytest.raises(ValueError, match="GiB of free RAM"):
        save(model, tmp_path / "merged", how="merged_16bit", tokenizer=tokenizer)
    assert calls == []
    monkeypatch.setattr(saving, "free_ram_bytes", lambda: 2**40)
    save(model, tmp_path / "merged", how="merged_16bit", tokenizer=tokenizer)
    assert calls[0][1] == {"save_method": "merged_16bit", "max_shard_size": saving.MERGE_SHARD}
