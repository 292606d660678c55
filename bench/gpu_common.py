"""Shared pieces of the GPU benchmarks: random-weight models, full-length data, the T4 memory cap.

Nothing here downloads: models are built from the kit's catalog with random
weights (``rslora_colab.memory.synthetic``), data is random words long enough to
fill every sequence.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

T4_GIB = 14.74
MODEL_DIR = Path("/tmp/rslora_colab_bench_models")


def cap_like_t4() -> float:
    """Limit this process to a T4's 14.74 GiB; returns the fraction used."""
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    fraction = min(1.0, T4_GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


def random_model(catalog_id: str) -> str:
    """Path of a random-weight bf16 checkpoint of ``catalog_id`` (built on the GPU once, then reused)."""
    from rslora_colab.memory.synthetic import build_random_model

    path = MODEL_DIR / catalog_id.replace("/", "__")
    if not (path / "config.json").exists():
        build_random_model(catalog_id, path, dtype=torch.bfloat16, device="cuda")
        torch.cuda.empty_cache()
    return str(path)


def long_text_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    """``n`` text rows of ``words`` random English-ish words: every row fills max_seq_length."""
    rng = random.Random(seed)
    vocab = "the of and to in is that for it as with was on be by this are or from at which an".split()
    return [{"text": " ".join(rng.choice(vocab) for _ in range(words))} for _ in range(n)]
