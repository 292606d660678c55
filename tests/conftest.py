"""Shared fixtures: the offline demo model (built once per machine, then cached)."""

from __future__ import annotations

import pytest
import torch

from rslora_colab import demo_model, load_model


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One torch thread: on 2 cores a second busy process (a notebook kernel, a CLI run) makes two threads
    several times slower, and one thread gives the same numbers as the OMP_NUM_THREADS=1 subprocesses."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_path() -> str:
    return demo_model()


@pytest.fixture
def demo_pair(demo_path):
    """A fresh 4-bit demo model and its tokenizer."""
    return load_model(demo_path, max_seq_length=256)
