"""rslora-colab: fine-tune 1–8B open LLMs on a free Colab T4 with rsLoRA.

The public API follows the path a user walks — load → adapt → data → train →
watch → save:

>>> from rslora_colab import quick_finetune, demo_dataset
>>> result = quick_finetune("demo", demo_dataset(), r=64)        # doctest: +SKIP
>>> result.final_loss, result.adapter_path                       # doctest: +SKIP

Load
    :func:`load_model` — 4-bit base model + tokenizer; Unsloth on a GPU,
    transformers + bitsandbytes elsewhere (also on CPU).
Adapt
    :func:`add_rslora` — rsLoRA adapter, scale alpha/sqrt(r), alpha = r by
    default; :func:`adapter_scales` reads the scale back from every layer.
Presets
    :func:`lr_for_rank`, :func:`preset_for_rank`, :func:`adapter_scale` — the
    rank-dependent learning rate (16 → 2e-4, 32 → 1.5e-4, 64 → 1e-4) and the
    one place alpha/sqrt(r) is computed.
Data
    :func:`load_and_validate` — read and check text / Alpaca / prompt-completion
    / chat / ShareGPT data before any model loads.
Train
    :func:`quick_finetune` → :class:`FinetuneResult`; :class:`FinetuneConfig`
    lists every setting it takes.
Compare
    :func:`compare_ranks` → :class:`SweepResult` — LoRA vs rsLoRA across ranks
    (controlled: same alpha, lr and data order; or the kit's presets), with
    per-step loss and adapter gradient norm, a table and a figure.
Use
    :func:`chat` — generate through the chat template, streamed.
Demo
    :func:`demo_model`, :func:`demo_dataset` — a tiny Llama and 158
    instruction rows built offline from Python's own manual, the CPU fallback.

Command line: ``python -m rslora_colab train --help``, ``python -m rslora_colab compare --help``.
"""

import logging

from ._unsloth_first import import_unsloth_first

import_unsloth_first()  # Unsloth patches transformers/TRL/PEFT only if imported before them
# bitsandbytes logs a harmless notice on CPUs with AVX512-BF16 about an optional hub kernel it cannot fetch.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .adapt import DEFAULT_TARGETS, adapter_scales, add_rslora  # noqa: E402
from .chat import chat  # noqa: E402
from .config import FinetuneConfig  # noqa: E402
from .data import detect_format, load_and_validate  # noqa: E402
from .demo import DEMO_NAME, demo_dataset, demo_model  # noqa: E402
from .load import load_model  # noqa: E402
from .presets import RankPreset, adapter_scale, lr_for_rank, preset_for_rank  # noqa: E402
from .runtime import Runtime, detect_runtime  # noqa: E402
from .sweep import compare_ranks  # noqa: E402
from .sweep_result import SweepResult  # noqa: E402
from .train import FinetuneResult, quick_finetune  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGETS", "DEMO_NAME", "FinetuneConfig", "FinetuneResult", "RankPreset", "Runtime", "SweepResult",
    "adapter_scale", "adapter_scales", "add_rslora", "chat", "compare_ranks", "demo_dataset", "demo_model",
    "detect_format", "detect_runtime", "load_and_validate", "load_model", "lr_for_rank", "preset_for_rank",
    "quick_finetune",
]
