import math

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from rslora_colab import (
    DEFAULT_TARGETS,
    adapter_scale,
    adapter_scales,
    add_rslora,
    chat,
)


@pytest.mark.parametrize("r, alpha, use_rslora", [(64, None, True), (8, 16, True), (64, 64, False)])
def test_every_adapted_layer_has_the_expected_scale(demo_pair, r, alpha, use_rslora):
    model, _ = demo_pair
    model = add_rslora(model, r=r, alpha=alpha, use_rslora=use_rslora)
    scales = adapter_scales(model)
    n_layers = model.config.num_hidden_layers
    assert len(scales) == len(DEFAULT_TARGETS) * n_layers
    expected = (alpha or r) / (math.sqrt(r) if use_rslora else r)
    assert expected == adapter_scale(alpha or r, r, use_rslora)
    assert all(s == pytest.approx(expected) for s in scales.values())


def test_adapters_wrap_4bit_layers(demo_pair):
    model = add_rslora(demo_pair[0], r=16)
    wrapped = [m for n, m in model.named_modules() if n.endswith("q_proj.base_layer")]
    assert wrapped and all(isinstance(m, Linear4bit) for m in wrapped)


def _lora_a_count(model):
    return sum(1 for n, _ in model.named_modules() if n.endswith("lora_A.default"))


def test_second_call_does_not_stack(demo_pair):
    model = add_rslora(demo_pair[0], r=16)
    once = _lora_a_count(model)
    again = add_rslora(model, r=16)
    assert again is model and _lora_a_count(again) == once
    changed = add_rslora(model, r=32)
    assert _lora_a_count(changed) == once
    assert list(changed.peft_config) == ["default"] and changed.peft_config["default"].r == 32
    assert all(s == pytest.approx(math.sqrt(32)) for s in adapter_scales(changed).values())
    assert not any(".base_model.model.base_model" in n for n, _ in changed.named_modules())


def test_unknown_target_modules_name_the_real_layers(demo_pair):
    with pytest.raises(ValueError, match="q_proj"):
        add_rslora(demo_pair[0], r=8, target_modules=("c_attn",))


def _adapter_grad_norm(model, tokenizer):
    ids = tokenizer("The assert statement is used for debugging assertions.", return_tensors="pt").input_ids
    model.train()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01, generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    return torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


def test_generation_before_training_does_not_corrupt_gradients(demo_path):
    # bitsandbytes repacks 4-bit weights for CPU inference; gradients through repacked layers are wrong.
    from rslora_colab import load_model

    model, tokenizer = load_model(demo_path)
    clean = _adapter_grad_norm(add_rslora(model, r=16), tokenizer)
    model, tokenizer = load_model(demo_path)
    chat(model, tokenizer, "hello", max_new_tokens=3, stream=False)
    after_chat = _adapter_grad_norm(add_rslora(model, r=16), tokenizer)
    assert after_chat == pytest.approx(clean, rel=1e-3)
