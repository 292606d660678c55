"""The kit's Unsloth branch, run for real through Unsloth's CPU backend (the Colab-stack lane of CI).

In the CPU lane Unsloth is not installed and these tests skip; ``.ci/run``'s
second lane installs the Colab pins (``requirements-colab.txt``), where
``backend="auto"`` is Unsloth and every other test file runs through it too.
What only a GPU can show (Unsloth's kernels, fp16, real memory) is in
``tests/gpu/``.
"""

from __future__ import annotations

import json

import pytest

from rslora_colab import (
    adapter_scales,
    add_rslora,
    chat,
    demo_dataset,
    load_model,
    quick_finetune,
    save,
)
from rslora_colab.runtime import unsloth_usable

pytestmark = pytest.mark.skipif(not unsloth_usable()[0], reason="Unsloth is not installed: the colab lane runs these")


def test_fast_language_model_loads_4bit_and_gets_rslora_on_every_layer(demo_path):
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_model(demo_path, max_seq_length=256)
    runtime = model.rslora_colab_runtime
    assert (runtime.backend, runtime.precision, runtime.unsloth_gpu) == ("unsloth", "fp32", False)
    assert hasattr(model, "for_inference")  # Unsloth's loader attached its methods
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 2 * 7
    adapted = add_rslora(model, r=64)
    scales = adapter_scales(adapted)
    assert len(scales) == 2 * 7 and set(scales.values()) == {8.0}  # alpha/sqrt(r) = 64/8
    assert adapted.is_gradient_checkpointing  # "unsloth" checkpointing is plain recomputation on CPU


def test_training_keeps_the_adapters_fp32_and_learns(demo_path, tmp_path):
    result = quick_finetune(demo_path, demo_dataset(n=16), r=16, max_steps=30, batch_size=8, grad_accum=1,
                            max_seq_length=128, lr=1e-3, output_dir=str(tmp_path))
    assert result.settings["backend"] == "unsloth"
    assert result.settings["optimizer"] == "adamw_torch_fused"  # what Unsloth's CPU backend runs
    dtypes = {p.dtype for name, p in result.model.named_parameters() if p.requires_grad}
    assert {str(d) for d in dtypes} == {"torch.float32"}  # TRL's bf16 cast undone
    assert result.final_loss < result.first_loss


def test_merge_of_a_4bit_adapter_goes_through_the_kits_own_merge(demo_path, tmp_path):
    result = quick_finetune(demo_path, demo_dataset(n=16), r=8, max_steps=2, batch_size=4, grad_accum=1,
                            max_seq_length=64, output_dir=str(tmp_path / "run"))
    merged = save(result, tmp_path / "merged", how="merged_16bit")  # Unsloth's CPU merge raises on 4-bit
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and (merged / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="how='gguf' needs a GPU runtime with Unsloth"):
        save(result, tmp_path / "gguf", how="gguf")
    reply = chat(result, None, "Give the heading of the Python docs topic 'assert'.", max_new_tokens=8,
                 stream=False)  # for_inference, then back to training mode
    assert isinstance(reply, str) and result.model.training
