"""The portable adapter serves right where ``use_rslora`` is ignored (llama.cpp's LoRA->GGUF converter, SGLang, ...).

Trained adapters (SFT and DPO, r = 16, 64, 256) are loaded three ways on one 4-bit demo base:

* PEFT, standard adapter (``use_rslora: true``: scale alpha/sqrt(r));
* PEFT, portable adapter (``lora_alpha`` = alpha*sqrt(r), ``use_rslora: false``);
* as an engine that ignores the flag loads the standard one: scale ``lora_alpha / r`` (its config with
  ``use_rslora`` false, which is exactly what such an engine computes).

PEFT gives the same logits for both adapters; the flag-ignoring loader gives PEFT's logits only with the portable
one (it *is* the portable config), and with the standard one an update about sqrt(r) times weaker.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from rslora_colab import demo_dataset, demo_preferences, load_model, quick_finetune, save
from rslora_colab.presets import portable_alpha
from rslora_colab.save import make_portable

SAME = 1e-6
"""Largest |logit| difference between PEFT on the standard and on the portable adapter."""
TEXT = "The assert statement is used for debugging assertions in a program."


def _train(method: str, r: int, out) -> str:
    data = demo_dataset(n=8) if method == "sft" else demo_preferences(n=8)
    result = quick_finetune("demo", data, r=r, method=method, max_steps=2, lr=2e-3 if method == "sft" else 1e-3,
                            batch_size=4, grad_accum=1, max_seq_length=64, eval_fraction=0, output_dir=str(out))
    return str(result.adapter_path)


def _ignoring_flag(adapter: str, out) -> str:
    """The adapter as an engine that ignores ``use_rslora`` reads it: the scale lora_alpha / r."""
    shutil.copytree(adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": False}))
    return str(out)


def _delta_ratios(model) -> dict[str, float]:
    """For the portable and the flag-ignoring adapter: the largest and smallest per-layer ratio of
    ``|get_delta_weight|`` to the standard adapter's under PEFT, as ``{name: ratio}`` (asserting they agree)."""
    ratios: dict[str, list[float]] = {"portable": [], "ignored": []}
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "get_delta_weight") and "standard" in getattr(module, "scaling", {}):
                standard = module.get_delta_weight("standard").norm()
                for name in ratios:
                    ratios[name].append(float(module.get_delta_weight(name).norm() / standard))
    assert all(values and max(values) - min(values) < 1e-5 for values in ratios.values()), ratios
    return {name: values[0] for name, values in ratios.items()}


def _logits(model, tokenizer, adapter: str | None) -> torch.Tensor:
    ids = tokenizer([TEXT], return_tensors="pt").input_ids
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                return model(input_ids=ids).logits.float()
        model.set_adapter(adapter)
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_the_portable_adapter_gives_peft_logits_where_use_rslora_is_ignored(method, tmp_path, demo_path):
    from peft import PeftModel

    measured = {}
    for r in (16, 64, 256):
        standard = _train(method, r, tmp_path / f"run{r}")
        portable = str(make_portable(standard, tmp_path / f"portable{r}"))
        ignored = _ignoring_flag(standard, tmp_path / f"ignored{r}")
        config = json.loads((tmp_path / f"portable{r}" / "adapter_config.json").read_text())
        assert config["use_rslora"] is False and config["lora_alpha"] == pytest.approx(portable_alpha(r, r))
        base, tokenizer = load_model(demo_path, max_seq_length=64)
        model = PeftModel.from_pretrained(base, standard, adapter_name="standard")
        model.load_adapter(portable, adapter_name="portable")
        model.load_adapter(ignored, adapter_name="ignored")
        model.eval()
        plain, peft_standard = _logits(model, tokenizer, None), _logits(model, tokenizer, "standard")
        peft_portable, flag_ignored = _logits(model, tokenizer, "portable"), _logits(model, tokenizer, "ignored")
        update = (peft_standard - plain).abs().max()
        assert update > 0.1  # the adapter changes the logits, so agreeing means something
        assert (peft_standard - peft_portable).abs().max() < SAME  # PEFT: the same model either way
        missed = float((flag_ignored - peft_standard).abs().max() / update)
        assert missed > 0.5  # the flag-ignoring engine misses most of the update with the standard adapter
        ratios = _delta_ratios(model)  # per layer, |scale * B @ A| over PEFT's: exactly linear, unlike the logits
        assert ratios["portable"] == pytest.approx(1.0, abs=SAME)
        assert ratios["ignored"] == pytest.approx(1 / math.sqrt(r), rel=1e-5)  # sqrt(r) times too weak
        measured[r] = {"max |standard - portable| (PEFT)": float((peft_standard - peft_portable).abs().max()),
                       "max |update|": float(update), "flag ignored: missed share": round(missed, 3),
                       "flag ignored: delta-W ratio": round(ratios["ignored"], 6)}
    print(f"\n{method}: {json.dumps(measured, indent=1)}")


def test_a_dpo_adapters_every_config_is_made_portable_and_save_and_the_cli_write_one(tmp_path, demo_path, capsys):
    from rslora_colab.cli import main

    standard = _train("dpo", 16, tmp_path / "run")
    assert main(["export", "--adapter", standard, "--how", "portable_adapter",
                 "--out", str(tmp_path / "portable")]) == 0
    portable = tmp_path / "portable"
    assert f"saved portable_adapter: {portable}" in capsys.readouterr().out
    assert (portable / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()  # the same weights
    for config_file in portable.rglob("adapter_config.json"):  # DPO's frozen reference copy too, if saved
        config = json.loads(config_file.read_text())
        assert config["use_rslora"] is False and config["lora_alpha"] == pytest.approx(64.0), config_file
    model, tokenizer = load_model(demo_path, max_seq_length=64)
    from rslora_colab import add_rslora

    adapted = add_rslora(model, r=64, alpha=16)
    save(adapted, tmp_path / "saved", how="portable_adapter", tokenizer=tokenizer)
    config = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert (config["use_rslora"], config["lora_alpha"], config["r"]) == (False, 128.0, 64)  # 16/8 = 128/64


def test_make_portable_names_a_folder_that_is_no_adapter(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match=r"x/adapter_config.json: not a LoRA adapter's config"):
        make_portable(tmp_path / "x", tmp_path / "y")
