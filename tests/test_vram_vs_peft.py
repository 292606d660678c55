"""The estimator's LoRA counts against PEFT on real architectures (meta device: no memory, no download)."""

import pytest
from peft import LoraConfig, get_peft_model

from rslora_colab.memory.catalog import CATALOG
from rslora_colab.memory.estimate import lora_param_count
from rslora_colab.memory.synthetic import build_random_model, empty_model

FUSED_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
SPLIT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("spec", CATALOG, ids=[s.name for s in CATALOG])
def test_lora_param_count_matches_peft(spec):
    model = empty_model(spec.hub_id)
    targets = FUSED_TARGETS if spec.fused_qkv else SPLIT_TARGETS
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=targets, use_rslora=True))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == lora_param_count(spec.hub_id, 16)
    assert sum(p.numel() for p in model.parameters()) - trainable >= spec.total_params


def test_random_checkpoint_loads_in_4bit_and_adapts(tmp_path):
    from rslora_colab import add_rslora, load_model

    tiny = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "tie_word_embeddings": True,
            "max_position_embeddings": 256}
    path = build_random_model(tiny, tmp_path / "tiny", dtype=None)
    model, _ = load_model(str(path))
    model = add_rslora(model, r=8)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_param_count(tiny, 8)
