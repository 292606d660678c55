"""Built-in catalog of the models people fine-tune on a free Colab T4.

No network is needed: each :class:`ModelSpec` carries the architecture numbers
from the model's published ``config.json`` (checked against public copies of
those files where one was at hand), the Hugging Face hub id, and the
pre-quantized 4-bit (bitsandbytes NF4) repository Unsloth publishes for it.

:func:`resolve_spec` turns whatever the user has into a :class:`ModelSpec`: a
catalog id (hub id, 4-bit id or short alias, any case), a ``config.json`` path
or a folder holding one, a config ``dict`` or a transformers
``PretrainedConfig``.

Fused projections (Phi-3.5, Phi-4)
----------------------------------
The original Phi-3 layout in transformers (``Phi3ForCausalLM``) fuses
``q_proj, k_proj, v_proj`` into one ``qkv_proj`` (h -> (n_heads + 2 n_kv) d)
and ``gate_proj, up_proj`` into one ``gate_up_proj`` (h -> 2 i). A LoRA
adapter on a fused module is one pair (A, B) over the fused shape, which has
fewer parameters than three separate adapters. Unsloth's 4-bit Phi repos are
"Llama-fied" (split into the 7 standard projections). So the layout follows
the id you resolve: the hub id or alias gives the fused layout
(``fused_qkv=True``), the ``unsloth/...-bnb-4bit`` id the split one. See
:func:`rslora_colab.memory.estimate.lora_modules` for how target names map onto modules.

Dynamic 4-bit repos (``-unsloth-bnb-4bit``)
--------------------------------------------
Unsloth's "Dynamic 4-bit Quants" keep some linear layers in 16-bit ("selectively
skips quantizing certain parameters ... <10% more VRAM than BnB 4bit", the
Hugging Face collection ``unsloth/unsloth-4-bit-dynamic-quants``). The repo
declares them in its ``config.json``: ``quantization_config.llm_int8_skip_modules``
lists, after the usual ``lm_head`` and projector names, whole blocks or single
projections such as ``"model.layers.1.mlp"`` (``DeepSeek-R1-Distill-Llama-8B-
unsloth-bnb-4bit``, quoted in vllm-project/vllm#12974) or
``"model.layers.0.self_attn"``, ``"model.layers.2.mlp"``,
``"model.layers.27.mlp.up_proj"`` (``Qwen3-0.6B-unsloth-bnb-4bit``, quoted in
unslothai/unsloth#8968); a plain ``-bnb-4bit`` repo lists only
``["lm_head", "multi_modal_projector", "merger", "modality_projection"]``
(``Qwen3-4B-bnb-4bit``, quoted in unslothai/unsloth#5034). transformers leaves
every module whose name matches an entry as a 16-bit ``nn.Linear``.

Which repo loads: Unsloth's mapper (``unsloth/models/mapper.py`` and
``loader_utils.__get_model_name``, 2026.10.9) sends a hub id with
``load_in_4bit=True`` to the dynamic repo where one exists ("Keep an explicit
-bnb-4bit name; otherwise map to the dynamic version"): all the Llama 3.x,
Qwen2.5, Qwen3 and Phi-4 entries here; Mistral, Gemma-2 and Phi-3.5 have none.
So :func:`find_in_catalog` marks a spec ``dynamic_quant=True`` for a hub id,
name or alias of such a model and for its dynamic id, and False for an explicit
plain ``-bnb-4bit`` id. ``dynamic_16bit_params`` holds the 16-bit weight count
where a source gives it; :func:`rslora_colab.memory.estimate.dynamic_16bit_params` applies
the rule for the others.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

logger = logging.getLogger(__name__)

STANDARD_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)
"""The 7 projections the kit puts LoRA on (PEFT/Unsloth ``target_modules``)."""


@dataclass(frozen=True)
class ModelSpec:
    """Architecture numbers of one decoder-only model, as in its ``config.json``."""

    name: str
    """Display name, e.g. ``"Llama-3.1-8B-Instruct"``."""
    hub_id: str
    """Hugging Face hub id of the original checkpoint (``""`` if unknown)."""
    bnb_4bit_id: str
    """Unsloth's pre-quantized NF4 repo (``""`` if none)."""
    model_type: str
    """transformers ``model_type`` (``"llama"``, ``"qwen3"``, ``"phi3"``...)."""
    hidden_size: int
    """h: width of the residual stream."""
    intermediate_size: int
    """i: width of the gated MLP (gate/up output, down input)."""
    num_hidden_layers: int
    """L: number of decoder layers."""
    num_attention_heads: int
    """Query heads."""
    num_key_value_heads: int
    """Key/value heads (grouped-query attention when < query heads)."""
    head_dim: int
    """Per-head width d; q_proj outputs heads*d, k/v_proj kv_heads*d."""
    vocab_size: int
    """V: rows of the embedding and of lm_head."""
    tie_word_embeddings: bool
    """True when lm_head shares the embedding matrix."""
    max_position_embeddings: int
    """Longest context the config declares (0 when unknown)."""
    fused_qkv: bool = False
    """q/k/v live in one ``qkv_proj`` module (Phi-3 layout in transformers)."""
    fused_gate_up: bool = False
    """gate/up live in one ``gate_up_proj`` module (Phi-3 layout)."""
    eager_attention: bool = False
    """Attention materialises the s x s scores (e.g. Gemma-2's logit soft-capping)."""
    long_rope_rows: int = 0
    """``original_max_position_embeddings`` of a ``"longrope"`` model (Phi-3.5: 4096), else 0.

    Unsloth's ``LongRopeRotaryEmbedding`` keeps a short and a long cos/sin table of
    ``min(original_max_position_embeddings, max_position_embeddings)`` rows each.
    """
    dynamic_4bit_id: str = ""
    """Unsloth's dynamic 4-bit repo (``-unsloth-bnb-4bit``, some linears kept 16-bit); ``""`` if none."""
    dynamic_16bit_params: int | None = None
    """Linear weights that dynamic repo keeps in 16-bit, where a source gives them (None: unknown)."""
    dynamic_quant: bool = False
    """This spec describes the dynamic repo (what Unsloth loads for the hub id or the dynamic id)."""
    aliases: tuple[str, ...] = ()
    """Extra short names accepted by :func:`resolve_spec`."""

    @property
    def q_dim(self) -> int:
        """Output width of q_proj (and input width of o_proj): heads * head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Output width of k_proj and v_proj: kv_heads * head_dim (GQA)."""
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module: (d_in, d_out)}`` of one layer's 7 standard projections."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of one layer's linear projections (fused or not: same count)."""
        return sum(d_in * d_out for d_in, d_out in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Embedding plus lm_head weights: V*h tied, 2*V*h untied."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def norm_params(self) -> int:
        """RMSNorm weights: 2 per layer plus the final one (Gemma-2 has 4, ignored)."""
        return (2 * self.num_hidden_layers + 1) * self.hidden_size

    @property
    def total_params(self) -> int:
        """All weights (biases ignored): linears + embeddings + norms."""
        return self.linear_params_per_layer * self.num_hidden_layers + self.embedding_params + self.norm_params

    def split(self) -> "ModelSpec":
        """The same model with fused projections split into the 7 standard ones."""
        return dataclasses.replace(self, fused_qkv=False, fused_gate_up=False)

    def to_config_dict(self) -> dict[str, Any]:
        """A ``config.json``-style dict transformers can build a model from."""
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            **self._long_rope_config(),
        }

    def _long_rope_config(self) -> dict[str, Any]:
        """The ``"longrope"`` keys (unit factors: the table sizes, not Phi-3.5's values), or none."""
        if not self.long_rope_rows:
            return {}
        unit = [1.0] * (self.head_dim // 2)
        return {"original_max_position_embeddings": self.long_rope_rows,
                "rope_scaling": {"type": "longrope", "short_factor": unit, "long_factor": unit}}


def _spec(name: str, hub_id: str, bnb: str, model_type: str, h: int, i: int, layers: int,
          heads: int, kv: int, head_dim: int, vocab: int, tied: bool, max_pos: int,
          aliases: tuple[str, ...] = (), dynamic: str = "", dynamic_16bit: int | None = None,
          long_rope: int = 0, **flags: bool) -> ModelSpec:
    """Compact constructor for the catalog table below (``dynamic``: the ``-unsloth-bnb-4bit`` repo)."""
    return ModelSpec(name, hub_id, bnb, model_type, h, i, layers, heads, kv, head_dim,
                     vocab, tied, max_pos, aliases=aliases, dynamic_4bit_id=dynamic,
                     dynamic_16bit_params=dynamic_16bit, long_rope_rows=long_rope, **flags)


_PHI3 = {"fused_qkv": True, "fused_gate_up": True}

_QWEN3_14B_16BIT = 3 * 3 * 5120 * 17408
"""Qwen3-14B-unsloth-bnb-4bit keeps 802,160,640 linear weights (three MLP blocks) in 16-bit.

Derived from its published size, not from its skip list (not at hand): the download bars of
``unslothai/notebooks`` ``nb/Qwen3_(14B)-Reasoning-Conversational.ipynb`` (and
``nb/Qwen3_(14B)-Alpaca.ipynb``) show shards of 4.97 + 4.59 + 1.56 GB = 11.12 GB; a plain NF4
layout of the same model is 9.928 GB (13,212,057,600 linear weights at 0.51587 B, embedding
and lm_head 2 * 151936 * 5120 * 2 B, norms). The 1.192 GB difference at (2 - 0.51587) B per
weight is 803 +/- 10 M weights (shard sizes are rounded to 0.01 GB): three MLP blocks
(3 * 3 * 5120 * 17408 = 802.2 M) within 0.1 %.
"""

CATALOG: tuple[ModelSpec, ...] = (
    # name, hub id, Unsloth 4-bit id, model_type,
    #   hidden, inter, layers, heads, kv, head_dim, vocab, tied, max_pos;
    #   dynamic= the -unsloth-bnb-4bit repo Unsloth's mapper loads for the hub id
    _spec("Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct",
          "unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "llama",
          2048, 8192, 16, 32, 8, 64, 128256, True, 131072, ("llama-3.2-1b", "llama3.2-1b"),
          dynamic="unsloth/Llama-3.2-1B-Instruct-unsloth-bnb-4bit"),
    _spec("Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
          "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "llama",
          3072, 8192, 28, 24, 8, 128, 128256, True, 131072, ("llama-3.2-3b", "llama3.2-3b"),
          dynamic="unsloth/Llama-3.2-3B-Instruct-unsloth-bnb-4bit"),
    _spec("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
          "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "llama",
          4096, 14336, 32, 32, 8, 128, 128256, False, 131072,
          ("llama-3.1-8b", "llama3.1-8b", "meta-llama/Meta-Llama-3.1-8B-Instruct",
           "unsloth/Llama-3.1-8B-Instruct-bnb-4bit"),
          dynamic="unsloth/Llama-3.1-8B-Instruct-unsloth-bnb-4bit"),
    _spec("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct",
          "unsloth/Qwen2.5-1.5B-Instruct-bnb-4bit", "qwen2",
          1536, 8960, 28, 12, 2, 128, 151936, True, 32768, ("qwen2.5-1.5b",),
          dynamic="unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit"),
    _spec("Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
          "unsloth/Qwen2.5-3B-Instruct-bnb-4bit", "qwen2",
          2048, 11008, 36, 16, 2, 128, 151936, True, 32768, ("qwen2.5-3b",),
          dynamic="unsloth/Qwen2.5-3B-Instruct-unsloth-bnb-4bit"),
    _spec("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
          "unsloth/Qwen2.5-7B-Instruct-bnb-4bit", "qwen2",
          3584, 18944, 28, 28, 4, 128, 152064, False, 32768, ("qwen2.5-7b",),
          dynamic="unsloth/Qwen2.5-7B-Instruct-unsloth-bnb-4bit"),
    _spec("Qwen3-0.6B", "Qwen/Qwen3-0.6B", "unsloth/Qwen3-0.6B-unsloth-bnb-4bit", "qwen3",
          1024, 3072, 28, 16, 8, 128, 151936, True, 40960,
          dynamic="unsloth/Qwen3-0.6B-unsloth-bnb-4bit"),
    _spec("Qwen3-1.7B", "Qwen/Qwen3-1.7B", "unsloth/Qwen3-1.7B-unsloth-bnb-4bit", "qwen3",
          2048, 6144, 28, 16, 8, 128, 151936, True, 40960,
          dynamic="unsloth/Qwen3-1.7B-unsloth-bnb-4bit"),
    _spec("Qwen3-4B", "Qwen/Qwen3-4B", "unsloth/Qwen3-4B-unsloth-bnb-4bit", "qwen3",
          2560, 9728, 36, 32, 8, 128, 151936, True, 40960,
          dynamic="unsloth/Qwen3-4B-unsloth-bnb-4bit"),
    _spec("Qwen3-8B", "Qwen/Qwen3-8B", "unsloth/Qwen3-8B-unsloth-bnb-4bit", "qwen3",
          4096, 12288, 36, 32, 8, 128, 151936, False, 40960,
          dynamic="unsloth/Qwen3-8B-unsloth-bnb-4bit"),
    _spec("Qwen3-14B", "Qwen/Qwen3-14B", "unsloth/Qwen3-14B-unsloth-bnb-4bit", "qwen3",
          5120, 17408, 40, 40, 8, 128, 151936, False, 40960,
          dynamic="unsloth/Qwen3-14B-unsloth-bnb-4bit", dynamic_16bit=_QWEN3_14B_16BIT),
    _spec("Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3",
          "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "mistral",
          4096, 14336, 32, 32, 8, 128, 32768, False, 32768, ("mistral-7b", "mistral-7b-v0.3")),
    _spec("Gemma-2-2B-it", "google/gemma-2-2b-it", "unsloth/gemma-2-2b-it-bnb-4bit", "gemma2",
          2304, 9216, 26, 8, 4, 256, 256000, True, 8192, ("gemma-2-2b", "gemma2-2b"),
          eager_attention=True),
    _spec("Gemma-2-9B-it", "google/gemma-2-9b-it", "unsloth/gemma-2-9b-it-bnb-4bit", "gemma2",
          3584, 14336, 42, 16, 8, 256, 256000, True, 8192, ("gemma-2-9b", "gemma2-9b"),
          eager_attention=True),
    _spec("Phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct",
          "unsloth/Phi-3.5-mini-instruct-bnb-4bit", "phi3",
          3072, 8192, 32, 32, 32, 96, 32064, False, 131072, ("phi-3.5-mini", "phi3.5"), long_rope=4096,
          **_PHI3),
    _spec("Phi-4", "microsoft/phi-4", "unsloth/phi-4-unsloth-bnb-4bit", "phi3",
          5120, 17920, 40, 40, 10, 128, 100352, False, 16384, ("phi4", "unsloth/phi-4-bnb-4bit"),
          dynamic="unsloth/phi-4-unsloth-bnb-4bit", **_PHI3),
)
"""The built-in models, smallest families first. Numbers from each config.json."""


def _keys(spec: ModelSpec) -> dict[str, str]:
    """Lower-case lookup keys of ``spec`` -> what the key names: ``"hub"``, ``"bnb"`` or ``"dynamic"``.

    ``"hub"`` keys (hub id, name, aliases) are what Unsloth maps to the dynamic repo, ``"bnb"`` an
    explicit plain 4-bit repo, ``"dynamic"`` the ``-unsloth-bnb-4bit`` repo itself.
    """
    keys: dict[str, str] = {}
    for key in (spec.name, spec.hub_id, spec.hub_id.split("/")[-1], *spec.aliases):
        keys.setdefault(key.lower(), "bnb" if key.lower().startswith("unsloth/") else "hub")
    for repo, kind in ((spec.bnb_4bit_id, "bnb"), (spec.dynamic_4bit_id, "dynamic")):
        for key in (repo, repo.split("/")[-1]):
            keys[key.lower()] = kind
    for suffix in ("-instruct", "-it"):
        if spec.name.lower().endswith(suffix):
            keys.setdefault(spec.name.lower()[: -len(suffix)], "hub")
    keys.pop("", None)
    return keys


def catalog_ids() -> list[str]:
    """Every id and alias :func:`resolve_spec` accepts from the catalog (lower case)."""
    return sorted({key for spec in CATALOG for key in _keys(spec)})


def find_in_catalog(model_id: str) -> ModelSpec | None:
    """The catalog entry for ``model_id`` (any case), or None.

    A 4-bit repo id gives the split (Llama-fied) layout; the dynamic repo's id, and a hub id,
    name or alias of a model that has one, give ``dynamic_quant=True`` (see the module docstring).
    """
    wanted = model_id.strip().lower()
    for spec in CATALOG:
        kind = _keys(spec).get(wanted)
        if kind is None:
            continue
        found = spec if kind == "hub" else spec.split()
        dynamic = kind == "dynamic" or (kind == "hub" and bool(spec.dynamic_4bit_id))
        return dataclasses.replace(found, dynamic_quant=dynamic)
    return None


def unsloth_maps_to_dynamic(model_id: str) -> bool:
    """True when ``model_id`` is a catalog hub id, name or alias that Unsloth's mapper sends to a dynamic repo.

    Only then does the layout depend on the backend: transformers quantizes every linear of the hub
    checkpoint, Unsloth loads the ``-unsloth-bnb-4bit`` repo instead.
    """
    wanted = model_id.strip().lower()
    return any(_keys(spec).get(wanted) == "hub" and bool(spec.dynamic_4bit_id) for spec in CATALOG)


def _get(config: Any, *names: str, default: Any = None) -> Any:
    """First attribute of ``config`` among ``names`` that is set (not None)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def spec_from_config(config: Any, name: str = "") -> ModelSpec:
    """A :class:`ModelSpec` read from a transformers ``PretrainedConfig``.

    Multimodal configs contribute their text part (``get_text_config()``).
    ``head_dim`` falls back to ``hidden_size // num_attention_heads`` and
    ``num_key_value_heads`` to ``num_attention_heads`` (transformers' own
    defaults). A config without ``tie_word_embeddings`` counts as untied (the
    larger, safer estimate). A pre-quantized config whose ``llm_int8_skip_modules``
    names decoder layers (a dynamic 4-bit repo) gives ``dynamic_quant=True`` and
    the count of those 16-bit weights (:func:`skip_list_16bit_params`).
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    missing = [f for f in ("hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads", "vocab_size") if _get(config, f) is None]
    if missing:
        raise ValueError(
            f"config {name or '(unnamed)'} lacks {', '.join(missing)}: pass a decoder-only "
            f"causal-LM config.json (Llama, Qwen, Mistral, Gemma, Phi...) or a catalog id."
        )
    heads = int(config.num_attention_heads)
    model_type = str(_get(config, "model_type", default=""))
    fused = model_type == "phi3"
    spec = ModelSpec(
        name=name or str(_get(config, "_name_or_path", "name_or_path", default="")) or model_type or "custom",
        hub_id="",
        bnb_4bit_id="",
        model_type=model_type,
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        num_hidden_layers=int(config.num_hidden_layers),
        num_attention_heads=heads,
        num_key_value_heads=int(_get(config, "num_key_value_heads", default=heads)),
        head_dim=int(_get(config, "head_dim", default=int(config.hidden_size) // heads)),
        vocab_size=int(config.vocab_size),
        tie_word_embeddings=bool(_get(config, "tie_word_embeddings", default=False)),
        max_position_embeddings=int(_get(config, "max_position_embeddings", default=0)),
        fused_qkv=fused,
        fused_gate_up=fused,
        eager_attention=_get(config, "attn_logit_softcapping") is not None,
        long_rope_rows=_long_rope_rows(config),
    )
    kept = _declared_16bit_params(config, spec)
    return dataclasses.replace(spec, dynamic_quant=True, dynamic_16bit_params=kept) if kept else spec


_SKIP_ENTRY = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)(?:\.(\w+))?$")
"""A per-layer ``llm_int8_skip_modules`` entry: ``model.layers.<i>.<block>[.<projection>]``."""

_BLOCK_MODULES = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
_FUSED_NAMES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def skip_list_16bit_params(spec: ModelSpec, skip_modules: Any) -> int:
    """Decoder linear weights that a 4-bit repo's ``llm_int8_skip_modules`` keeps in 16-bit.

    transformers skips every module whose dotted name contains an entry (bitsandbytes
    integration, ``replace_with_bnb_linear``), so ``"model.layers.1.mlp"`` keeps gate, up and down
    of layer 1 and ``"model.layers.27.mlp.up_proj"`` one projection. Entries that are not decoder
    linears (``lm_head``, ``merger``...) add nothing here: lm_head is counted as 16-bit anyway.

    >>> skip_list_16bit_params(find_in_catalog("llama-3.1-8b"), ["lm_head", "model.layers.1.mlp"])
    176160768
    """
    shapes = spec.linear_shapes()
    kept: set[tuple[int, str]] = set()
    for entry in skip_modules or ():
        match = _SKIP_ENTRY.search(str(entry))
        if not match or int(match.group(1)) >= spec.num_hidden_layers:
            continue
        layer, block, projection = int(match.group(1)), match.group(2), match.group(3)
        names = _BLOCK_MODULES[block] if projection is None else _FUSED_NAMES.get(projection, (projection,))
        kept |= {(layer, name) for name in names if name in _BLOCK_MODULES[block]}
    return sum(shapes[name][0] * shapes[name][1] for _, name in kept)


def _long_rope_rows(config: Any) -> int:
    """``original_max_position_embeddings`` when the config's RoPE scaling is ``"longrope"``, else 0."""
    scaling = _get(config, "rope_scaling", "rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, Mapping) else None
    if kind != "longrope":
        return 0
    return int(_get(config, "original_max_position_embeddings", default=0)
               or scaling.get("original_max_position_embeddings", 0) or 0)


def _declared_16bit_params(config: Any, spec: ModelSpec) -> int:
    """16-bit decoder linears declared by a config's ``quantization_config`` skip list (0 if none)."""
    quant = _get(config, "quantization_config")
    if isinstance(quant, Mapping):
        skip = quant.get("llm_int8_skip_modules")
    else:
        skip = getattr(quant, "llm_int8_skip_modules", None)
    return skip_list_16bit_params(spec, skip)


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """A transformers ``PretrainedConfig`` for a ``config.json`` dict.

    Uses ``AutoConfig.for_model`` so the model family's defaults fill missing
    keys; a dict without a known ``model_type`` becomes a plain
    ``PretrainedConfig`` holding the keys as attributes.
    """
    from transformers import AutoConfig, PretrainedConfig

    kwargs = dict(data)
    model_type = kwargs.pop("model_type", None)
    if model_type:
        try:
            return AutoConfig.for_model(model_type, **kwargs)
        except (ValueError, KeyError):
            pass
    config = PretrainedConfig(**kwargs)
    config.model_type = model_type or ""
    return config


def _unknown(model: str) -> ValueError:
    """The error for an id that is neither in the catalog nor a config file."""
    ids = catalog_ids()
    close = difflib.get_close_matches(model.strip().lower(), ids, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"known ids include: {', '.join(s.name for s in CATALOG)}"
    return ValueError(
        f"model={model!r} is not in the built-in catalog and is not a config.json path; "
        f"{hint}. Pass a catalog id, a path to config.json, a config dict or a PretrainedConfig."
    )


def resolve_spec(model: Any) -> ModelSpec:
    """A :class:`ModelSpec` for ``model``.

    ``model`` may be a :class:`ModelSpec`; a catalog id (hub id, Unsloth 4-bit
    id, display name or alias, any case); a path to a ``config.json`` or to a
    folder holding one; a ``dict`` of config.json keys; or a transformers
    ``PretrainedConfig``. Unknown ids raise ``ValueError`` naming close matches.

    >>> resolve_spec("llama-3.1-8b").num_key_value_heads
    8
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        spec = find_in_catalog(model)
        if spec is not None:
            return spec
        path = os.path.join(model, "config.json") if os.path.isdir(model) else model
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
            return spec_from_config(config_from_dict(data), name=name)
        raise _unknown(model)
    if isinstance(model, Mapping):
        return spec_from_config(config_from_dict(model), name=str(model.get("_name_or_path", "")))
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):
        return spec_from_config(model)
    raise ValueError(
        f"model={model!r} has type {type(model).__name__}: pass a catalog id string, a "
        f"config.json path, a dict or a transformers PretrainedConfig."
    )


def model_spec(model: Any) -> ModelSpec | None:
    """Architecture of a hub id, local folder, ``"demo"`` or ``(model, tokenizer)`` pair, without weights.

    Returns None when there is nothing to read (after one line saying why when a
    hub id's ``config.json`` cannot be fetched); loading then reports the real problem.
    """
    if isinstance(model, tuple):
        loaded = getattr(model[0], "config", None) if model else None
        return spec_from_config(loaded) if loaded is not None else None
    if not isinstance(model, (str, os.PathLike)):
        return None  # not a model quick_finetune accepts: loading says so
    from ..demo import resolve_model_name

    name = resolve_model_name(str(model))
    try:
        return resolve_spec(name)  # catalog id, or a local folder / config.json
    except ValueError:
        pass
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)  # fetches config.json only
    except (OSError, ValueError) as err:
        logger.info(f"no memory plan: could not read {name}'s config.json ({err})")
        return None
    return spec_from_config(config, name=name)
