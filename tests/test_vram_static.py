"""The static part (resident after load + LoRA) term by term, and against published T4 figures (issue 16).

Each new term is pinned to a hand-worked figure from its source; the last test compares the static
estimate with the figures Unsloth's own T4 notebooks print (``tests/data/published_t4_static.json``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rslora_colab.memory.catalog import (
    CATALOG,
    find_in_catalog,
    resolve_spec,
    skip_list_16bit_params,
)
from rslora_colab.memory.estimate import (
    DEFAULT_CALIBRATION,
    GIB,
    STACK_CALIBRATIONS,
    TERM_LABELS,
    dynamic_16bit_params,
    estimate_vram,
    fused_ce_rows,
    logits_bytes,
    rope_cache_bytes,
)

PUBLISHED = Path(__file__).resolve().parent / "data" / "published_t4_static.json"
MIB = 2**20


def _nf4_bytes(n: int) -> float:
    """On-disk bytes of n NF4 weights with double quantization (QLoRA): 0.5 + 1/64 + 4/16384 per weight."""
    return n * 0.5 + n / 64 + n / 64 / 256 * 4


# --- 16-bit layers of Unsloth's dynamic 4-bit repos ---------------------------------------------

def test_skip_list_entries_keep_whole_blocks_or_single_projections_16bit():
    llama = find_in_catalog("llama-3.1-8b")
    # DeepSeek-R1-Distill-Llama-8B-unsloth-bnb-4bit (vllm-project/vllm#12974): one MLP, 3 * 4096 * 14336.
    distill = ["lm_head", "multi_modal_projector", "merger", "modality_projection", "model.layers.1.mlp"]
    assert skip_list_16bit_params(llama, distill) == 176_160_768
    # A plain -bnb-4bit repo (Qwen3-4B-bnb-4bit, unslothai/unsloth#5034) names no decoder layer.
    assert skip_list_16bit_params(llama, ["lm_head", "multi_modal_projector", "merger", "modality_projection"]) == 0
    # The entries quoted from Qwen3-0.6B-unsloth-bnb-4bit (unslothai/unsloth#8968), h=1024, q=2048, kv=1024, i=3072:
    qwen = find_in_catalog("Qwen/Qwen3-0.6B")
    attention = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024  # q, k, v, o
    quoted = ["lm_head", "model.layers.24.self_attn", "model.layers.0.self_attn", "model.layers.2.mlp",
              "model.layers.27.mlp.up_proj", "model.layers.2.mlp.up_proj"]  # the last one is inside layer 2's mlp
    assert skip_list_16bit_params(qwen, quoted) == 2 * attention + 3 * 1024 * 3072 + 1024 * 3072 == 25_165_824
    # "model.layers.1.mlp" matches layer 1 only, not layer 10 (transformers matches by substring of the name).
    assert skip_list_16bit_params(qwen, ["model.layers.1.mlp", "model.layers.99.mlp"]) == 3 * 1024 * 3072


def test_a_config_declaring_a_skip_list_is_a_dynamic_quant():
    config = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "quantization_config": {"load_in_4bit": True, "llm_int8_skip_modules": ["lm_head", "model.layers.1.mlp"]}}
    spec = resolve_spec(config)
    assert spec.dynamic_quant and spec.dynamic_16bit_params == 176_160_768
    est = estimate_vram(spec, r=16)
    assert est.dynamic_16bit_gib == pytest.approx(176_160_768 * 2 / GIB)
    plain = resolve_spec({k: v for k, v in config.items() if k != "quantization_config"})
    assert not plain.dynamic_quant and estimate_vram(plain, r=16).dynamic_16bit_gib == 0.0


def test_qwen3_14b_dynamic_layers_match_its_published_shard_sizes():
    spec = resolve_spec("unsloth/Qwen3-14B-unsloth-bnb-4bit")
    mlp = 3 * 5120 * 17408
    assert dynamic_16bit_params(spec) == 3 * mlp == 802_160_640
    linears = spec.linear_params_per_layer * spec.num_hidden_layers
    assert linears == 13_212_057_600
    plain = _nf4_bytes(linears) + (spec.embedding_params + spec.norm_params) * 2
    assert plain / 1e9 == pytest.approx(9.928, abs=0.001)
    dynamic = _nf4_bytes(linears - 3 * mlp) + 3 * mlp * 2 + (spec.embedding_params + spec.norm_params) * 2
    # nb/Qwen3_(14B)-Reasoning-Conversational.ipynb downloads shards of 4.97G + 4.59G + 1.56G.
    assert dynamic / 1e9 == pytest.approx(4.97 + 4.59 + 1.56, abs=0.015)


def test_plain_repo_sizes_match_nf4_arithmetic():
    """Unsloth's plain repos: the weights are exactly QLoRA's NF4 plus 16-bit embeddings (no hidden overhead)."""
    for name, published in (("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", 5.70), ("Qwen2.5-7B-Instruct", 5.55)):
        spec = find_in_catalog(name)
        weights = _nf4_bytes(spec.linear_params_per_layer * spec.num_hidden_layers)
        weights += (spec.embedding_params + spec.norm_params) * 2
        assert weights / 1e9 == pytest.approx(published, abs=0.005), name  # model.safetensors 5.70G / 5.55G


def test_dynamic_rule_and_which_ids_load_a_dynamic_repo():
    qwen8 = resolve_spec("Qwen/Qwen3-8B")
    assert qwen8.dynamic_quant and qwen8.dynamic_16bit_params is None
    assert dynamic_16bit_params(qwen8) == round(0.0607 * 36 * qwen8.linear_params_per_layer)
    # Unsloth's mapper: a hub id goes to the dynamic repo, an explicit -bnb-4bit id stays.
    assert find_in_catalog("meta-llama/Llama-3.1-8B-Instruct").dynamic_quant
    assert find_in_catalog("unsloth/Llama-3.1-8B-Instruct-unsloth-bnb-4bit").dynamic_quant
    assert not find_in_catalog("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit").dynamic_quant
    # Mistral, Gemma-2 and Phi-3.5 have no dynamic repo in the mapper.
    for name in ("mistral-7b", "gemma-2-2b", "gemma-2-9b", "phi3.5"):
        spec = find_in_catalog(name)
        assert not spec.dynamic_quant and dynamic_16bit_params(spec) == 0, name
    assert all(not s.dynamic_4bit_id or s.dynamic_4bit_id.endswith("-unsloth-bnb-4bit") for s in CATALOG)
    # A 16-bit load or the transformers layout of a hub id has nothing kept back.
    assert estimate_vram(qwen8, r=16, load_in_4bit=False).dynamic_16bit_gib == 0.0
    assert dynamic_16bit_params(dataclasses.replace(qwen8, dynamic_quant=False)) == 0


# --- RoPE tables (Unsloth's LlamaRotaryEmbedding) ---------------------------------------------------

def test_rope_tables_shared_now_and_per_layer_in_unsloth_2024():
    llama = resolve_spec("llama-3.1-8b")  # max_position_embeddings 131072 -> min(32768, .) rows, head_dim 128
    table_pair = 2 * 32768 * 128 * 2  # cos + sin, fp16
    assert table_pair == 16 * MIB
    assert rope_cache_bytes(llama) == table_pair
    legacy = STACK_CALIBRATIONS["unsloth-2024"]
    assert rope_cache_bytes(llama, legacy) == (32 + 1) * 16 * MIB  # every attention layer + the model's
    # Llama-3-8B: the same shapes with an 8192-token context -> 8192 rows.
    llama3 = dataclasses.replace(llama, max_position_embeddings=8192)
    assert rope_cache_bytes(llama3, legacy) == 33 * 2 * 8192 * 128 * 2 == 33 * 4 * MIB
    # Phi-3.5's "longrope": a short and a long table pair of original_max_position_embeddings (4096) rows.
    assert rope_cache_bytes(resolve_spec("phi3.5")) == 2 * (2 * 4096 * 96 * 2) == 3 * MIB
    # Only the Unsloth backend builds them; stock transformers computes cos/sin per forward.
    assert estimate_vram(llama, r=16, gradient_checkpointing=True).rope_cache_gib == 0.0
    assert estimate_vram(llama, r=16).rope_cache_gib == pytest.approx(16 * MIB / GIB)


# --- Unsloth's fused cross-entropy --------------------------------------------------------------------

@pytest.mark.parametrize("name, tokens, rows", [
    ("llama-3.1-8b", 2 * 2048, 512),   # 4096*4096/128256 = 131 -> 128; floor: 512*151936/128256 = 607 -> 512
    ("Qwen3-14B", 8 * 2048, 512),      # 16384*5120/151936 = 552 -> 512
    ("Qwen3-14B", 64 * 1024, 2048),    # 65536*5120/151936 = 2208 -> 2048
    ("Qwen3-14B", 1 << 20, 3533),      # 35336 -> 32768, capped at 4096 rows, then at 2 GiB: 2**31 // (151936*4)
    ("gemma-2-2b", 2 * 2048, 512),     # 4096*2304/256000 = 36.9 -> 32; floor 512*151936/256000 = 304 -> 256 -> 512
    ("gemma-2-2b", 1 << 20, 2097),     # 9437 -> 8192 -> 4096, capped at 2 GiB: 2**31 // (256000*4)
    ("llama-3.1-8b", 100, 100),        # never more rows than tokens
])
def test_fused_ce_chunk_rows_follow_unsloth(name, tokens, rows):
    assert fused_ce_rows(resolve_spec(name), tokens) == rows


def test_fused_ce_keeps_one_chunk_not_all_logits():
    spec = resolve_spec("llama-3.1-8b")
    tokens, V, h = 2 * 2048, 128256, 4096
    assert logits_bytes(spec, tokens, True, 2) == 512 * V * 8 + tokens * h * 2  # 0.52 GiB
    assert logits_bytes(spec, tokens, False, 2) == tokens * V * 10  # transformers: every logit, 4.9 GiB
    # Doubling the batch keeps the chunk; only the hidden-state gradient grows.
    assert logits_bytes(spec, 2 * tokens, True, 2) - logits_bytes(spec, tokens, True, 2) == tokens * h * 2


# --- load-time transient (transformers 4.51 casts on the GPU) ----------------------------------------

def test_load_transient_is_one_lm_head_and_counts_only_above_the_step():
    cal = STACK_CALIBRATIONS["transformers-4.51"]
    spec = resolve_spec("Qwen3-14B")
    head = 151936 * 5120 * 2  # the bf16 lm_head (last shard) and its fp16 copy coexist: one extra 1.45 GiB
    est = estimate_vram(spec, r=16, calibration=cal)
    assert est.load_transient_gib == pytest.approx(head / GIB)
    assert est.load_excess_gib == 0.0  # the first step allocates more than 1.45 GiB into the freed block
    resident = est.base_weights_gib + est.dynamic_16bit_gib + est.embeddings_gib + est.rope_cache_gib
    assert est.static_gib == pytest.approx(resident + head / GIB)  # LoRA (0.24 GiB) fits in the freed block
    tiny = estimate_vram(spec, r=1, max_seq_length=16, batch_size=1, calibration=cal)
    after_load = sum(getattr(tiny, f) for f in ("lora_weights_gib", "lora_grads_gib", "optimizer_gib",
                                                "activations_gib", "logits_gib", "workspace_gib"))
    assert tiny.load_excess_gib == pytest.approx(head / GIB - after_load)
    assert sum(getattr(tiny, name) for name, _ in TERM_LABELS) == pytest.approx(tiny.total_gib)
    # A tied embedding loads first, with nothing else resident; transformers 5.x casts on the CPU.
    assert estimate_vram("Qwen3-4B", r=16, calibration=cal).load_transient_gib == 0.0
    assert estimate_vram(spec, r=16).load_transient_gib == 0.0


# --- against the published figures -------------------------------------------------------------------

def _published():
    return json.loads(PUBLISHED.read_text())["figures"]


@pytest.mark.parametrize("figure", _published(), ids=lambda f: f"{f['notebook'].split()[1]}")
def test_static_estimate_within_10_percent_of_published_t4_figures(figure):
    """Llama and Qwen only: the Mistral, Gemma and Phi figures are held out to check the terms later."""
    spec = resolve_spec(figure["model"])
    assert spec.model_type in ("llama", "qwen2", "qwen3")
    est = estimate_vram(spec, r=figure["r"], max_seq_length=figure["max_seq_length"],
                        calibration=STACK_CALIBRATIONS[figure["stack"]])
    assert est.static_gib == pytest.approx(figure["reserved_gib"], rel=0.10)


def test_published_figures_are_recorded_with_their_source():
    figures = _published()
    assert len(figures) >= 5
    for figure in figures:
        assert figure["notebook"].startswith("unslothai/notebooks nb/") and "@" in figure["notebook"]
        assert figure["printed"] == f"{figure['reserved_gib']:.3f} GB of memory reserved."
        assert "T4" in figure["gpu"] and figure["stack"] in STACK_CALIBRATIONS
    assert STACK_CALIBRATIONS["current"] is DEFAULT_CALIBRATION
