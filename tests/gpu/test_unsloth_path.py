"""The Unsloth path on a real GPU: 4-bit load, rsLoRA with "unsloth" checkpointing, 20+ steps, fp16 and bf16.

Run on a CUDA machine with unsloth installed:  pytest -m gpu tests/gpu -q
"""

import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_unsloth_rslora_trains(precision, tmp_path):
    pytest.importorskip("unsloth")
    from rslora_colab.runtime import has_native_bf16

    if precision == "bf16" and not has_native_bf16():
        pytest.skip("this GPU has no real bf16 (compute capability < 8)")
    from gpu_common import long_text_rows, random_model

    from rslora_colab import adapter_scales, load_model, quick_finetune

    pair = load_model(random_model("meta-llama/Llama-3.2-1B-Instruct"), max_seq_length=512, precision=precision)
    result = quick_finetune(pair, long_text_rows(64, 400), r=64, max_steps=24, batch_size=2, grad_accum=1,
                            max_seq_length=512, output_dir=str(tmp_path))
    assert result.settings["backend"] == "unsloth" and result.settings["precision"] == precision
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert result.final_loss < result.first_loss
    scales = adapter_scales(result.model)
    assert scales and all(s == pytest.approx(64 / math.sqrt(64)) for s in scales.values())
    assert result.peak_gpu_memory_gib is not None
