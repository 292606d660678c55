"""What this machine can do: backend (Unsloth or transformers) and precision."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["unsloth", "transformers"]
Precision = Literal["bf16", "fp16", "fp32"]
BACKENDS = ("auto", "unsloth", "transformers")


@dataclass(frozen=True)
class Runtime:
    """The backend and precision chosen for this machine, and why."""

    backend: Backend
    """``"unsloth"`` (FastLanguageModel, GPU only) or ``"transformers"``."""
    precision: Precision
    """bf16 on GPUs that support it, fp16 on older GPUs (T4), fp32 on CPU."""
    device: str
    """A human name for the device, e.g. ``"Tesla T4"`` or ``"cpu"``."""
    reason: str
    """One sentence saying why this backend was picked."""

    @property
    def on_gpu(self) -> bool:
        """True when training runs on a CUDA GPU."""
        return self.device != "cpu"

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype matching :attr:`precision`."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]


def detect_precision() -> Precision:
    """bf16 where the GPU supports it (compute capability >= 8), fp16 on older GPUs, fp32 on CPU."""
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def unsloth_installed() -> bool:
    """True when the ``unsloth`` package can be found (without importing it)."""
    return importlib.util.find_spec("unsloth") is not None


def _check_precision(precision: str, cuda: bool) -> None:
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision={precision!r} is not known: use 'bf16', 'fp16', 'fp32' or None (automatic).")
    if precision != "fp32" and not cuda:
        raise ValueError(f"precision={precision!r} needs a CUDA GPU; on CPU use None or 'fp32'.")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' is not supported by this GPU (compute capability < 8): use 'fp16'.")


def detect_runtime(backend: str = "auto", precision: str | None = None) -> Runtime:
    """Pick the backend: Unsloth when CUDA is present and unsloth is installed, else transformers.

    ``precision=None`` picks it automatically; ``"fp16"`` forces T4 behaviour on
    a bigger GPU (for emulation and benchmarks). ``backend="unsloth"`` on a
    machine without CUDA or without unsloth raises a ``ValueError`` that says
    what is missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known: use one of {BACKENDS}.")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    if precision is not None:
        _check_precision(precision, cuda)
    precision = precision or detect_precision()
    if backend == "unsloth" and not (cuda and unsloth_installed()):
        missing = "a CUDA GPU" if not cuda else "the unsloth package (pip install unsloth)"
        raise ValueError(f"backend='unsloth' needs {missing}; use backend='transformers' or 'auto'.")
    if backend == "transformers":
        return Runtime("transformers", precision, device, "transformers backend requested")
    if cuda and unsloth_installed():
        return Runtime("unsloth", precision, device, f"CUDA GPU found ({device}) and unsloth is installed")
    why = "no CUDA GPU found" if not cuda else "unsloth is not installed"
    return Runtime("transformers", precision, device, f"{why}; using transformers + PEFT")
