"""The notebook's runtime check: which GPU, how much memory, bf16 or fp16 and why, which backend and optimizer.

On CPU it adds a clear notice that the notebooks fall back to the offline demo.
It works the same in Colab, JupyterLab and a plain script.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..runtime import detect_runtime, gpu_capability, precision_reason

logger = logging.getLogger(__name__)

CPU_NOTICE = ("NOTICE: no GPU found, so this runs the offline demo on CPU: a tiny Llama (2 layers) built here "
              "and fine-tuned on rows from Python's manual, in fp32. It shows every step, not real quality. "
              "On Colab pick Runtime -> Change runtime type -> T4 GPU, then run all again.")


@dataclass(frozen=True)
class RuntimeCheck:
    """What :func:`check_runtime` found."""

    gpu: str | None
    """CUDA device name, or None on CPU."""
    vram_gib: float | None
    """Total memory of that GPU in GiB."""
    compute_capability: str | None
    """e.g. ``"7.5"`` for a T4."""
    precision: str
    """``"bf16"``, ``"fp16"`` (GPUs before Ampere, like the T4) or ``"fp32"`` (CPU)."""
    backend: str
    """``"unsloth"`` or ``"transformers"``, and why: see :attr:`reason`."""
    reason: str
    """Why that backend."""
    optimizer: str
    """The transformers ``optim`` training will use (``adamw_8bit`` on a GPU)."""
    precision_reason: str
    """Why that precision, e.g. ``"no bf16 on this GPU (compute capability 7.5 < 8)"``."""
    notice: str
    """The CPU fallback notice; empty on a GPU."""

    def lines(self) -> list[str]:
        """The report, one fact per line."""
        if self.gpu is None:
            head = ["GPU: none (CPU only)"]
        else:
            head = [f"GPU: {self.gpu}, {self.vram_gib:.2f} GiB, compute capability {self.compute_capability}"]
        lines = head + [f"precision: {self.precision} ({self.precision_reason})",
                        f"backend: {self.backend} ({self.reason})", f"optimizer: {self.optimizer}"]
        return lines + ([self.notice] if self.notice else [])


def check_runtime() -> RuntimeCheck:
    """Log and return what this runtime offers: GPU, memory, bf16/fp16, backend; on CPU, the demo notice."""
    runtime = detect_runtime()
    gpu = vram = shown = None
    capability = gpu_capability()
    if capability is not None:
        props = torch.cuda.get_device_properties()
        gpu, vram, shown = props.name, props.total_memory / 2**30, f"{capability[0]}.{capability[1]}"
    check = RuntimeCheck(gpu, vram, shown, runtime.precision, runtime.backend, runtime.reason, runtime.optimizer,
                         precision_reason(runtime.precision, capability), "" if gpu else CPU_NOTICE)
    logger.info("runtime check\n  " + "\n  ".join(check.lines()))
    return check
