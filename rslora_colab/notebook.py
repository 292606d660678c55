"""Notebook helpers: what this runtime can do, sensible defaults for it, and the save step.

Used by ``notebooks/01_quickstart_t4.ipynb``; each works the same in Colab,
JupyterLab and a plain script (Colab-only pieces live in :mod:`rslora_colab.colab`):

* :func:`check_runtime` — GPU name, memory, bf16 or fp16, backend; on CPU a
  clear notice that the notebook falls back to the offline demo.
* :func:`default_model` / :func:`default_dataset` / :func:`preference_data` —
  what ``"auto"`` means here; :func:`run_defaults` — the demo's training settings.
* :func:`save_outputs` — the Save step, chosen by a list (``["adapter"]``,
  ``"merged_16bit"``, ``"gguf"``) instead of ``if False:`` blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .demo import DEMO_NAME, DEMO_SWEEP_STEPS, demo_preferences, demo_training
from .runtime import detect_runtime, gpu_capability, precision_reason

GPU_DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct-bnb-4bit"
"""The model ``"auto"`` picks on a GPU: small, instruction-tuned, pre-quantized to 4-bit."""
GPU_DEFAULT_DATASET = "yahma/alpaca-cleaned"
"""The dataset ``"auto"`` picks on a GPU (Alpaca format, the one Unsloth's T4 notebooks use)."""
GPU_DEFAULT_PREFERENCES = "HuggingFaceH4/ultrafeedback_binarized"
"""Preference pairs ``"auto"`` picks on a GPU: the rsLoRA write-up's DPO data (its first 2,000 ``train_prefs``)."""
CPU_NOTICE = ("NOTICE: no GPU found, so this runs the offline demo on CPU: a tiny Llama (2 layers) built here "
              "and fine-tuned on rows from Python's manual, in fp32. It shows every step, not real quality. "
              "On Colab pick Runtime -> Change runtime type -> T4 GPU, then run all again.")


def default_model() -> str:
    """``GPU_DEFAULT_MODEL`` when a CUDA GPU is present, else ``"demo"``."""
    return GPU_DEFAULT_MODEL if torch.cuda.is_available() else DEMO_NAME


def default_dataset(model: str) -> str:
    """``"demo"`` for the demo model, else ``GPU_DEFAULT_DATASET``."""
    return DEMO_NAME if model == DEMO_NAME else GPU_DEFAULT_DATASET


def resolve_choices(model: str = "auto", dataset: str = "auto") -> tuple[str, str]:
    """Replace ``"auto"`` in a model / dataset choice by this machine's default."""
    model = default_model() if model == "auto" else model
    return model, default_dataset(model) if dataset == "auto" else dataset


def run_defaults(model: str, method: str = "sft", max_steps: int | None = None) -> dict:
    """``quick_finetune`` keywords to start from: the demo's own settings for ``"demo"``, plus ``max_steps`` if given."""
    defaults = demo_training(method) if model == DEMO_NAME else {}
    return {**defaults, **({"max_steps": max_steps} if max_steps else {})}


def sweep_defaults(model: str, max_steps: int | None = None) -> dict:
    """``compare_ranks`` keywords to start from: the demo's batch and length with 50 steps a run, else 100 steps."""
    shape = {k: v for k, v in run_defaults(model).items() if k in ("batch_size", "grad_accum", "max_seq_length")}
    return {**shape, "max_steps": max_steps or (DEMO_SWEEP_STEPS if model == DEMO_NAME else 100)}


def preference_data(dataset: str = "auto", model: str = "demo") -> Any:
    """Pairs for DPO: ``"auto"`` is the demo pairs for the demo model, else 2,000 UltraFeedback pairs (hub).

    ``"demo"`` gives the offline pairs; anything else is returned as given
    (a file, a hub id or a Dataset ``quick_finetune`` will read and check).
    """
    if dataset == "auto":
        dataset = DEMO_NAME if model == DEMO_NAME else GPU_DEFAULT_PREFERENCES
    if dataset == DEMO_NAME:
        return demo_preferences()
    if dataset == GPU_DEFAULT_PREFERENCES:
        from datasets import load_dataset

        return load_dataset(GPU_DEFAULT_PREFERENCES, split="train_prefs[:2000]")
    return dataset


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
    """Print and return what this runtime offers: GPU, memory, bf16/fp16, backend; on CPU, the demo notice."""
    runtime = detect_runtime()
    gpu = vram = shown = None
    capability = gpu_capability()
    if capability is not None:
        props = torch.cuda.get_device_properties(0)
        gpu, vram, shown = props.name, props.total_memory / 2**30, f"{capability[0]}.{capability[1]}"
    check = RuntimeCheck(gpu, vram, shown, runtime.precision, runtime.backend, runtime.reason, runtime.optimizer,
                         precision_reason(runtime.precision, capability), "" if gpu else CPU_NOTICE)
    print("rslora-colab runtime check\n  " + "\n  ".join(check.lines()), flush=True)
    return check


def save_outputs(result: Any, how: Sequence[str] = ("adapter",), out_dir: str | Path | None = None,
                 gguf_quantization: str = "q4_k_m") -> dict[str, Path]:
    """Write the trained model in each form listed in ``how``; returns ``{form: path}``.

    * ``"adapter"`` — the rsLoRA adapter ``quick_finetune`` already saved
      (``adapter_config.json`` keeps ``use_rslora``); nothing is rewritten.
    * ``"merged_16bit"`` / ``"gguf"`` — :func:`rslora_colab.export.save` into
      ``out_dir/merged_16bit`` / ``out_dir/gguf`` (GGUF needs Unsloth on a GPU).

    ``out_dir`` defaults to the folder above the adapter. Every choice is
    checked before anything is written.
    """
    from .export import check_how, save
    from .load import runtime_of

    for form in how:
        check_how(form, runtime_of(result.model))
    out = Path(out_dir) if out_dir is not None else Path(result.adapter_path).parent
    saved = {form: Path(result.adapter_path) if form == "adapter" else
             save(result, out / form, how=form, quantization=gguf_quantization) for form in how}
    for form, path in saved.items():
        print(f"rslora-colab: saved {form} -> {path}", flush=True)
    return saved
