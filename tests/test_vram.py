"""CPU tests of the catalog and the VRAM estimator (pure arithmetic, no network)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rslora_colab.memory.catalog import (
    CATALOG,
    STANDARD_MODULES,
    find_in_catalog,
    resolve_spec,
)
from rslora_colab.memory.estimate import (
    DEFAULT_CALIBRATION,
    GIB,
    TERM_LABELS,
    Calibration,
    estimate_vram,
    lora_modules,
    lora_param_count,
)

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def test_llama_8b_r16_lora_params_exact():
    assert lora_param_count(LLAMA_8B, 16) == 41_943_040
    assert lora_param_count(LLAMA_8B, 16, "all-linear") == 41_943_040


def test_llama_8b_total_params_match_published_count():
    assert resolve_spec(LLAMA_8B).total_params == 8_030_261_248


def test_every_term_hand_computed_llama_8b():
    """Each term of Llama-3.1-8B, r=16, s=2048, b=2, 4-bit, adamw_8bit, "unsloth".

    The hub id is what Unsloth maps to the dynamic repo, so the 16-bit layers follow the rule.
    """
    cal = DEFAULT_CALIBRATION
    s, b, h, i, L, V = 2048, 2, 4096, 14336, 32, 128256
    est = estimate_vram(LLAMA_8B, r=16, max_seq_length=s, batch_size=b)

    per_layer = 2 * h * h + 2 * h * 1024 + 3 * h * i  # q,o + k,v (8 kv heads * 128) + MLP
    assert per_layer == 218_103_808
    kept_16bit = round(0.0607 * L * per_layer)  # dynamic-quant rule: 6.07 % of the linears stay 16-bit
    assert kept_16bit == 423_644_837
    base = (L * per_layer - kept_16bit) * 0.516
    dynamic_16bit = kept_16bit * 2
    embeddings = (2 * V * h + (2 * L + 1) * h) * 2  # untied embedding + lm_head, norms, 16-bit
    rope = 2 * 32768 * 128 * 2  # one shared fp16 cos + sin table, min(32768, 131072) rows x head_dim
    lora = 41_943_040
    lora_w = lora * 4.0
    lora_g = lora * 4.0
    optim = lora * 2.0  # every A/B tensor has >= 16*1024 elements: all 8-bit
    full_layer = 34 * s * b * h + 2 * s * b * 16 * 7
    backward = 4 * s * b * i  # that layer's backward: the gate and up gradients, 16-bit
    acts = 2 * (2 * s * b * h) + full_layer + backward  # two resident checkpoints + one recomputed layer
    # Unsloth's fused CE: 4096 rows; 4096*4096/V = 131 -> 128, raised to the 512-row floor
    # (512*151936/V = 607 -> 512); one chunk of 512 x V logits at 8 B + the fp16 hidden gradient.
    logits = 512 * V * 8.0 + b * s * h * 2
    workspace = 2 * h * i * 2
    tensors = base + dynamic_16bit + embeddings + rope + lora_w + lora_g + optim + acts + logits + workspace
    total = tensors * 1.10 + 0.45 * GIB

    assert est.lora_params == lora
    assert est.base_weights_gib == pytest.approx(base / GIB)
    assert est.dynamic_16bit_gib == pytest.approx(dynamic_16bit / GIB)
    assert est.embeddings_gib == pytest.approx(embeddings / GIB)
    assert est.rope_cache_gib == pytest.approx(rope / GIB)
    assert est.lora_weights_gib == pytest.approx(lora_w / GIB)
    assert est.lora_grads_gib == pytest.approx(lora_g / GIB)
    assert est.optimizer_gib == pytest.approx(optim / GIB)
    assert est.activations_gib == pytest.approx(acts / GIB)
    assert est.logits_gib == pytest.approx(logits / GIB)
    assert est.workspace_gib == pytest.approx(workspace / GIB)
    assert est.load_excess_gib == 0.0 and est.load_transient_gib == 0.0  # transformers 5.x casts on the CPU
    assert est.cuda_context_gib == pytest.approx(cal.cuda_context_gib)
    assert est.allocator_margin_gib == pytest.approx(tensors * 0.10 / GIB)
    assert est.total_gib == pytest.approx(total / GIB)
    assert est.offloaded_cpu_gib == pytest.approx(L * 2 * s * b * h / GIB)
    assert est.static_gib == pytest.approx((base + dynamic_16bit + embeddings + rope + lora_w) / GIB)
    terms = sum(getattr(est, name) for name, _ in TERM_LABELS)
    assert terms == pytest.approx(est.total_gib)


def test_checkpointing_modes_and_unfused_loss():
    s, b, h, i, L, V = 1024, 1, 4096, 14336, 32, 128256
    full_layer = 34 * s * b * h + 2 * s * b * 16 * 7
    backward = 4 * s * b * i  # once, whatever the mode: the layer whose backward runs
    off = estimate_vram(LLAMA_8B, r=16, max_seq_length=s, batch_size=b, gradient_checkpointing=False)
    on = estimate_vram(LLAMA_8B, r=16, max_seq_length=s, batch_size=b, gradient_checkpointing=True)
    uns = estimate_vram(LLAMA_8B, r=16, max_seq_length=s, batch_size=b)
    assert off.activations_gib == pytest.approx((L * full_layer + backward) / GIB)
    assert on.activations_gib == pytest.approx((L * 2 * s * b * h + full_layer + backward) / GIB)
    assert off.activations_gib > on.activations_gib > uns.activations_gib
    assert on.logits_gib == pytest.approx(b * s * V * 10.0 / GIB)  # fp16 + fp32 copy + fp32 grad
    assert on.offloaded_cpu_gib == 0.0 and uns.offloaded_cpu_gib > 0


def test_grouped_query_attention_shapes():
    qwen7 = resolve_spec("Qwen/Qwen2.5-7B-Instruct")
    mods = lora_modules(qwen7)
    assert mods["q_proj"] == (3584, 3584)
    assert mods["k_proj"] == (3584, 512) and mods["v_proj"] == (3584, 512)  # 4 kv heads * 128
    gemma = resolve_spec("gemma-2-9b")
    assert lora_modules(gemma)["q_proj"] == (3584, 4096)  # 16 heads * head_dim 256 != hidden
    assert lora_modules(gemma)["o_proj"] == (4096, 3584)


def test_fused_phi_modules_follow_the_resolved_layout():
    fused = resolve_spec("microsoft/Phi-3.5-mini-instruct")
    split = resolve_spec("unsloth/Phi-3.5-mini-instruct-bnb-4bit")
    assert fused.fused_qkv and fused.fused_gate_up and not split.fused_qkv
    assert set(lora_modules(fused)) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert lora_modules(fused)["qkv_proj"] == (3072, 3 * 3072)
    assert lora_param_count(fused, 16) == 32 * 16 * ((3072 + 9216) + 2 * 3072 + (3072 + 16384) + (8192 + 3072))
    assert lora_param_count(split, 16) == 29_884_416
    # q_proj alone on a fused model adapts the whole qkv_proj; qkv_proj on a split one means q, k, v.
    assert lora_modules(fused, ["q_proj"]) == {"qkv_proj": (3072, 9216)}
    assert set(lora_modules(split, ["qkv_proj"])) == {"q_proj", "k_proj", "v_proj"}
    # Same weights either way.
    assert fused.total_params == split.total_params


def test_bnb_keeps_32bit_state_for_small_tensors():
    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}
    est8 = estimate_vram(tiny, r=8, max_seq_length=32, batch_size=1)
    est32 = estimate_vram(tiny, r=8, max_seq_length=32, batch_size=1, optimizer="adamw_torch")
    assert est8.optimizer_gib == pytest.approx(est32.optimizer_gib)  # all tensors < 4096 elements
    big8 = estimate_vram(LLAMA_8B, r=16)
    big32 = estimate_vram(LLAMA_8B, r=16, optimizer="adamw_torch")
    assert big32.optimizer_gib == pytest.approx(4 * big8.optimizer_gib)
    assert estimate_vram(LLAMA_8B, r=16, optimizer="sgd").optimizer_gib == 0.0


@pytest.mark.parametrize("model", ["Llama-3.2-1B-Instruct", LLAMA_8B, "gemma-2-2b", "phi-4"])
def test_monotone_in_rank_seq_and_batch(model):
    totals = [estimate_vram(model, r=r).total_gib for r in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    totals = [estimate_vram(model, r=16, max_seq_length=s).total_gib for s in (128, 256, 512, 1024, 2048, 4096)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    totals = [estimate_vram(model, r=16, batch_size=b).total_gib for b in range(1, 9)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


def test_16bit_base_costs_more_than_4bit():
    q = estimate_vram(LLAMA_8B, r=16)
    f = estimate_vram(LLAMA_8B, r=16, load_in_4bit=False)
    assert f.base_weights_gib == pytest.approx(q.base_weights_gib * 2 / 0.516 + q.dynamic_16bit_gib)
    assert f.dynamic_16bit_gib == 0.0  # a 16-bit load has no quantized layers to skip
    assert f.workspace_gib == 0.0 and f.total_gib > q.total_gib


def test_tied_embeddings_counted_once():
    tied = resolve_spec("Llama-3.2-1B-Instruct")
    assert tied.tie_word_embeddings and tied.embedding_params == 128256 * 2048
    assert resolve_spec(LLAMA_8B).embedding_params == 2 * 128256 * 4096


def test_calibration_is_used():
    base = estimate_vram(LLAMA_8B, r=16)
    lean = estimate_vram(LLAMA_8B, r=16, calibration=Calibration(fragmentation=0.0, cuda_context_gib=0.0))
    assert lean.allocator_margin_gib == 0.0
    assert lean.total_gib == pytest.approx(base.total_gib - base.allocator_margin_gib - base.cuda_context_gib)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_CALIBRATION.fragmentation = 0.5  # type: ignore[misc]


def _fields(est):
    return {k: v for k, v in est.as_dict().items() if k != "model"}


@pytest.mark.parametrize("name", ["Llama-3.1-8B-Instruct", "Qwen3-4B", "Gemma-2-9B-it", "Phi-3.5-mini-instruct"])
def test_dict_config_and_path_inputs_agree(tmp_path, name):
    from transformers import AutoConfig

    # A config.json without a quantization skip list describes a model quantized on the fly: no 16-bit layers.
    spec = dataclasses.replace(resolve_spec(name), dynamic_quant=False)
    data = spec.to_config_dict()
    config = AutoConfig.for_model(data["model_type"], **{k: v for k, v in data.items() if k != "model_type"})
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    assert json.loads(path.read_text())["hidden_size"] == spec.hidden_size
    want = _fields(estimate_vram(spec, r=32, max_seq_length=1024))
    for source in (data, config, str(path), tmp_path, str(tmp_path)):
        assert _fields(estimate_vram(source, r=32, max_seq_length=1024)) == pytest.approx(want)


def test_config_defaults_come_from_transformers():
    spec = resolve_spec({"model_type": "llama", "hidden_size": 512, "intermediate_size": 1024,
                         "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 1000})
    assert spec.head_dim == 64 and spec.num_key_value_heads == 8


def test_catalog_lookup_is_case_insensitive_and_complete():
    assert len(CATALOG) == 16
    for spec in CATALOG:
        assert spec.bnb_4bit_id.startswith("unsloth/") and "4bit" in spec.bnb_4bit_id
        for key in (spec.name, spec.hub_id.upper(), spec.bnb_4bit_id, *spec.aliases, spec.dynamic_4bit_id or spec.name):
            found = find_in_catalog(key)
            assert found is not None and found.name == spec.name
        assert spec.q_dim == spec.num_attention_heads * spec.head_dim
    assert resolve_spec("LLAMA-3.1-8B").name == "Llama-3.1-8B-Instruct"
    assert resolve_spec("unsloth/Qwen3-8B-unsloth-bnb-4bit").name == "Qwen3-8B"


def test_unknown_id_names_close_matches():
    with pytest.raises(ValueError, match="llama-3.1-8b") as err:
        resolve_spec("lama-3.1-8b")
    assert "model='lama-3.1-8b'" in str(err.value)
    with pytest.raises(ValueError, match="qwen3-8b"):
        resolve_spec("Qwen/Qwen3-8")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"r": 0}, "r=0"),
        ({"r": 2048}, "r=2048"),
        ({"r": 16.0}, "r=16.0"),
        ({"max_seq_length": 0}, "max_seq_length=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"optimizer": "adam"}, "optimizer='adam'"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing='yes'"),
        ({"target_modules": ["lm_head"]}, "target_modules="),
        ({"target_modules": []}, "target_modules="),
        ({"dtype_bytes": 3}, "dtype_bytes=3"),
    ],
)
def test_validation_errors_name_field_and_fix(kwargs, field):
    with pytest.raises(ValueError) as err:
        estimate_vram(LLAMA_8B, **kwargs)
    assert field in str(err.value) and "pass" in str(err.value)


def test_rank_error_gives_range():
    with pytest.raises(ValueError, match="from 1 to 1024"):
        lora_param_count(LLAMA_8B, 0)


def test_table_and_dict():
    est = estimate_vram("qwen3-8b", r=64)
    text = est.table()
    for label in ("base weights", "LoRA weights", "optimizer state", "activations", "logits", "total"):
        assert label in text
    assert f"{est.lora_params:,}" in text
    assert est.as_dict()["r"] == 64
    assert all(target in STANDARD_MODULES for target in lora_modules(resolve_spec("qwen3-8b")))
