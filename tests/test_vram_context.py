"""The training-time terms of the estimate against a measurement: Unsloth's published maximum context lengths for
Llama-3.1-8B (r=32, batch 1, 8 to 80 GB; ``tests/data/published_context_lengths.json``).

The static terms are checked in ``test_vram_static.py``; here the per-token terms (activations, the backward's MLP
gradients, the loss) are checked by how fast the context grows with memory, which no static term touches.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rslora_colab.memory.catalog import resolve_spec
from rslora_colab.memory.estimate import estimate_vram

PUBLISHED = json.loads((Path(__file__).parent / "data" / "published_context_lengths.json").read_text())
UNSLOTH = {int(gb): tokens for gb, tokens in PUBLISHED["unsloth"].items()}
LLAMA_8B = dataclasses.replace(resolve_spec("Llama-3.1-8B-Instruct"), dynamic_quant=False)  # the plain 4-bit repo
SETUP = {"r": 32, "batch_size": 1, "gradient_checkpointing": "unsloth", "dtype_bytes": 2}


def longest_that_fits(budget_gib: float) -> int:
    """The longest sequence whose estimate fits ``budget_gib`` (bisection; the estimate grows with the length)."""
    fits = lambda seq: estimate_vram(LLAMA_8B, max_seq_length=seq, **SETUP).total_gib <= budget_gib
    low, high = 1, 1 << 20
    assert fits(low) and not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def test_context_grows_with_memory_as_fast_as_unsloth_measured():
    """From 12 to 80 GB Unsloth's context grows by 320,885 tokens (222 KiB a token); the planner's by 282,899 (0.88 x:
    the 10 % allocator margin, and the loss chunk growing from 512 to 4,096 rows on the way). Before the backward's
    MLP gradients were counted it grew 1.2 x as fast, promising contexts that do not fit."""
    ours = longest_that_fits(80) - longest_that_fits(12)
    published = UNSLOTH[80] - UNSLOTH[12]
    assert 0.85 <= ours / published <= 1.0, f"{ours:,} tokens where Unsloth measured {published:,}"


@pytest.mark.parametrize("budget", [12, 16, 24, 40, 48, 80])
def test_the_plan_never_promises_more_context_than_unsloth_measured(budget):
    """Never optimistic, at most 25 % short (measured: 12-19 % short, the allocator margin and the 2026 loss chunk).

    8 GB is left out: there the context is a remainder of the static terms, and the estimate counts the 0.5 GiB
    logit chunk of the current chunked loss, which the December 2024 stack (Apple's Cut Cross Entropy) did not
    have; the estimate allows 461 tokens where Unsloth measured 2,972.
    """
    ratio = longest_that_fits(budget) / UNSLOTH[budget]
    assert 0.75 <= ratio <= 1.0, f"{budget} GB: {ratio:.2f} x the published context"
