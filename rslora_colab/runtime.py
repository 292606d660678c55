"""What this machine can do: backend (Unsloth or transformers), precision and optimizer.

Every decision the kit takes about the device is made here, from facts torch
reports, so that tests can simulate any GPU (``tests/conftest.py``):

* **precision** — bf16 on GPUs with compute capability >= 8 (Ampere and
  newer), fp16 below (T4, V100, P100), fp32 on CPU. Not
  ``torch.cuda.is_bf16_supported()``: its default ``including_emulation=True``
  answers True on a T4, where a bf16 tensor can be created but bf16 matmuls
  are not supported; Unsloth's ``is_bfloat16_supported`` uses the same
  ``major >= 8`` rule, and its trainer refuses bf16 arguments on an fp16 model.
* **backend** — Unsloth wherever it is installed and importable (its GPU
  path on CUDA, its CPU backend elsewhere: Unsloth 2026.10.9 runs stock
  transformers + PEFT + TRL on CPU and patches what TRL 1.15 cannot run
  there); transformers + PEFT when it is not installed, failed to import, or
  ``RSLORA_COLAB_NO_UNSLOTH=1`` is set.
* **families Unsloth trains in float32** — where fp16 would run (a T4, or
  ``precision="fp16"``), Unsloth 2026.10.9 loads Gemma 3/3n/4, Qwen3-MoE,
  Qwen3.5, gpt-oss and GLM-4 MoE in bf16 storage and turns the trainer's fp16
  off (float16 NaNs their gradients): :func:`trains_as` records and plans fp32
  for them, as really runs.
* **optimizer** — bitsandbytes' 8-bit AdamW on a GPU; on CPU plain AdamW
  (Unsloth's CPU backend swaps any AdamW for ``adamw_torch_fused``, so the
  kit asks for that one there and records what really runs).

Unsloth patches transformers, TRL and PEFT when it is imported and warns when
they were imported first: :func:`import_unsloth_first` runs as the package is
imported, before any of them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

Backend = Literal["unsloth", "transformers"]
Precision = Literal["bf16", "fp16", "fp32"]
BACKENDS = ("auto", "unsloth", "transformers")
PRECISIONS = ("bf16", "fp16", "fp32")
NO_UNSLOTH_ENV = "RSLORA_COLAB_NO_UNSLOTH"
"""Set to 1 to keep the kit from importing or using Unsloth (the transformers + PEFT branch everywhere)."""
BF16_MIN_CAPABILITY = (8, 0)
"""Compute capability from which a GPU has real bf16 matmuls (Ampere)."""

_unsloth_import_error: str | None = None
"""Why ``import unsloth`` failed, when it was tried and failed (the backend reason quotes it)."""


def unsloth_disabled() -> bool:
    """True when ``RSLORA_COLAB_NO_UNSLOTH`` is set to anything but ``""``/``0``."""
    return os.environ.get(NO_UNSLOTH_ENV, "").strip() not in ("", "0")


def unsloth_installed() -> bool:
    """True when the ``unsloth`` package can be found (without importing it)."""
    return "unsloth" in sys.modules or importlib.util.find_spec("unsloth") is not None


def import_unsloth_first() -> bool:
    """Import ``unsloth`` now, on any device, if it is installed and not switched off; True when imported.

    A broken installation is reported once and the kit carries on with
    transformers + PEFT (:func:`detect_runtime` says why).
    """
    global _unsloth_import_error
    if "unsloth" in sys.modules:
        return True
    if unsloth_disabled() or not unsloth_installed():
        return False
    try:
        import unsloth  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means: no Unsloth here
        _unsloth_import_error = f"{type(err).__name__}: {err}"
        logger.warning(f"unsloth is installed but failed to import ({_unsloth_import_error}); "
                       "using transformers + PEFT")
        return False
    return True


def unsloth_usable() -> tuple[bool, str]:
    """Whether the Unsloth branch can run here, and why not when it cannot."""
    if unsloth_disabled():
        return False, f"{NO_UNSLOTH_ENV} is set"
    if not unsloth_installed():
        return False, "unsloth is not installed"
    if _unsloth_import_error is not None:
        return False, f"unsloth failed to import ({_unsloth_import_error})"
    return True, ""


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of this process's CUDA device (torch's current one: under a launcher accelerate sets
    it to the process's own GPU, :func:`~rslora_colab.distributed.start`), e.g. ``(7, 5)`` for a T4; None without
    a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def has_native_bf16() -> bool:
    """True on a CUDA GPU with real bf16 support (compute capability >= 8.0)."""
    capability = gpu_capability()
    return capability is not None and capability >= BF16_MIN_CAPABILITY


def detect_precision() -> Precision:
    """bf16 on compute capability >= 8, fp16 on older GPUs (T4, V100), fp32 on CPU."""
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if has_native_bf16() else "fp16"


def precision_reason(precision: str, capability: tuple[int, int] | None) -> str:
    """Why this precision, in a few words (for the runtime check)."""
    if capability is None:
        return "CPU"
    shown = f"compute capability {capability[0]}.{capability[1]}"
    if precision == "bf16":
        return f"{shown} >= 8: real bf16"
    if precision == "fp16" and capability < BF16_MIN_CAPABILITY:
        return f"no bf16 on this GPU ({shown} < 8)"
    return f"{precision} requested"


@dataclass(frozen=True)
class Runtime:
    """The backend and precision chosen for this machine, and why."""

    backend: Backend
    """``"unsloth"`` (FastLanguageModel: its GPU path, or its CPU backend) or ``"transformers"``."""
    precision: Precision
    """bf16 on GPUs with compute capability >= 8, fp16 on older GPUs (T4), fp32 on CPU."""
    device: str
    """A human name for the device, e.g. ``"Tesla T4"`` or ``"cpu"``."""
    reason: str
    """One sentence saying why this backend was picked."""

    @property
    def on_gpu(self) -> bool:
        """True when training runs on a CUDA GPU."""
        return self.device != "cpu"

    @property
    def unsloth_gpu(self) -> bool:
        """True on Unsloth's GPU path: its kernels, its trainer patches, its merged and GGUF export."""
        return self.backend == "unsloth" and self.on_gpu

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype matching :attr:`precision`."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    @property
    def optimizer(self) -> str:
        """The transformers ``optim`` the trainer gets: 8-bit AdamW on a GPU, AdamW on CPU."""
        if self.on_gpu:
            return "adamw_8bit"
        return "adamw_torch_fused" if self.backend == "unsloth" else "adamw_torch"


def _check_precision(precision: str, cuda: bool) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known: use 'bf16', 'fp16', 'fp32' or None (automatic).")
    if precision != "fp32" and not cuda:
        raise ValueError(f"precision={precision!r} needs a CUDA GPU; on CPU use None or 'fp32'.")
    if precision == "bf16" and not has_native_bf16():
        major, minor = gpu_capability()
        raise ValueError(f"precision='bf16' needs compute capability >= 8 (Ampere or newer); this GPU has "
                         f"{major}.{minor}: use 'fp16' or None (automatic).")


def detect_runtime(backend: str = "auto", precision: str | None = None) -> Runtime:
    """Pick the backend and precision for this machine.

    ``backend="auto"``: Unsloth wherever it is usable (GPU or CPU), else
    transformers + PEFT. ``precision=None`` picks it from the device;
    ``"fp16"`` forces T4 behaviour on a bigger GPU (for emulation and
    benchmarks). ``backend="unsloth"`` where Unsloth cannot run raises a
    ``ValueError`` saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known: use one of {BACKENDS}.")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    if precision is not None:
        _check_precision(precision, cuda)
    precision = precision or detect_precision()
    usable, why_not = unsloth_usable()
    if backend == "unsloth" and not usable:
        fix = "unset it" if unsloth_disabled() else "pip install -r requirements-colab.txt"
        raise ValueError(f"backend='unsloth' cannot run here: {why_not} ({fix}); use backend='transformers' or 'auto'.")
    if backend == "transformers":
        return Runtime("transformers", precision, device, "transformers backend requested")
    if usable:
        where = f"its GPU path on {device}" if cuda else "its CPU backend (no CUDA GPU)"
        return Runtime("unsloth", precision, device, f"unsloth is installed: {where}")
    return Runtime("transformers", precision, device, f"{why_not}; using transformers + PEFT")


UNSLOTH_FP32_TYPES: tuple[str, ...] = (
    "embedding_gemma2", "embedding_gemma2_text", "gemma3,", "gemma3text", "gemma3n", "gemma4", "gemma4text",
    "glm4_moe", "glm4_moe_lite", "gpt_oss", "qwen3_5", "qwen3_moe",
)
"""``model_type`` entries Unsloth 2026.10.9 will not train in float16 (``unsloth.models.loader.FORCE_FLOAT32``,
from ``unsloth_zoo.FORCE_FLOAT32``), matched as its loader does (:func:`unsloth_forces_fp32`).
tests/test_device_decisions.py fails in the Colab lane when Unsloth's list moves."""


def unsloth_forces_fp32(model_type: str) -> bool:
    """True for a ``config.json`` ``model_type`` that Unsloth trains in float32 where fp16 would run.

    Unsloth's rule: an entry equals the type with ``-``/``_`` removed, or is a
    substring of ``"<type>,"`` (so ``"gemma3,"`` matches ``gemma3`` and not ``gemma3n``).
    """
    joined = f"{model_type.lower()},"
    squashed = model_type.lower().replace("-", "").replace("_", "")
    return any(name == squashed or name in joined for name in UNSLOTH_FP32_TYPES)


def trains_as(runtime: Runtime, model_type: str | None) -> Runtime:
    """The runtime a model of ``model_type`` really trains with: fp32 where Unsloth forces it, else ``runtime``.

    On Unsloth's GPU path an fp16 load of such a family (a T4, or
    ``precision="fp16"``) is stored in bf16 and trained in float32, with the
    trainer's fp16 turned off; the kit's records, trainer flags, guard and
    memory plan follow. The load itself still asks Unsloth for fp16, so
    Unsloth's own handling is unchanged.
    """
    if not (runtime.unsloth_gpu and runtime.precision == "fp16" and model_type and unsloth_forces_fp32(model_type)):
        return runtime
    return dataclasses.replace(runtime, precision="fp32", reason=f"{runtime.reason}; Unsloth trains {model_type} in "
                               "float32 where fp16 would run (float16 NaNs this family's gradients)")
