"""Simulated CUDA GPUs: make torch *report* a T4, an H100, ... so every device decision is tested on CPU.

Used through the ``simulated_gpu`` fixture in ``conftest.py``::

    @pytest.mark.parametrize("simulated_gpu", ["T4", "H100"], indirect=True)
    def test_something(simulated_gpu): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch


@dataclass(frozen=True)
class FakeGPU:
    """What torch reports about one CUDA device."""

    name: str
    """``torch.cuda.get_device_name``."""
    capability: tuple[int, int]
    """``torch.cuda.get_device_capability``: (major, minor)."""
    total_gib: float
    """``get_device_properties(0).total_memory`` in GiB."""
    bf16_tensor: bool = True
    """Whether a bf16 tensor can be created (torch's ``is_bf16_supported(including_emulation=True)``): True on
    every CUDA GPU torch 2.x supports, T4 included, which is why that call cannot decide precision."""

    @property
    def native_bf16(self) -> bool:
        """Real bf16 matmuls: compute capability >= 8 (Ampere and newer)."""
        return self.capability >= (8, 0)


GPUS = {
    "T4": FakeGPU("Tesla T4", (7, 5), 14.74),
    "P100": FakeGPU("Tesla P100-PCIE-16GB", (6, 0), 15.89),
    "V100": FakeGPU("Tesla V100-SXM2-16GB", (7, 0), 15.77),
    "L4": FakeGPU("NVIDIA L4", (8, 9), 22.03),
    "A100": FakeGPU("NVIDIA A100-SXM4-40GB", (8, 0), 39.39),
    "H100": FakeGPU("NVIDIA H100 80GB HBM3", (9, 0), 79.19),
}
"""The devices the kit's decisions are tested on (memory as PyTorch reports it)."""


def simulate_gpu(monkeypatch, gpu: FakeGPU) -> FakeGPU:
    """Make torch report ``gpu`` as CUDA device 0. Nothing may run on it: only what torch *says* changes."""
    props = SimpleNamespace(name=gpu.name, major=gpu.capability[0], minor=gpu.capability[1],
                            total_memory=int(gpu.total_gib * 2**30), multi_processor_count=40)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return gpu.native_bf16 or (including_emulation and gpu.bf16_tensor)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu.name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu.capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return gpu
