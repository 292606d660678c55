"""Step 1 — load: a base model in 4-bit, through Unsloth on a GPU or transformers elsewhere."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from .demo import DEMO_NAME, demo_threads, resolve_model_name
from .distributed import start
from .resilience.atomic import read_json_object
from .runtime import Runtime, detect_runtime, trains_as

logger = logging.getLogger(__name__)

RUNTIME_ATTR = "rslora_colab_runtime"
"""Attribute on a loaded model recording the :class:`Runtime` it was loaded with."""


def runtime_of(model: Any) -> Runtime:
    """The runtime a model was loaded with; models loaded elsewhere count as transformers."""
    runtime = getattr(model, RUNTIME_ATTR, None)
    return runtime if runtime is not None else detect_runtime("transformers")


def _load_unsloth(name: str, max_seq_length: int, load_in_4bit: bool, runtime: Runtime):
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(  # no device_map: under a launcher Unsloth picks cuda:LOCAL_RANK itself
        model_name=name,
        max_seq_length=max_seq_length,
        dtype=runtime.torch_dtype,
        load_in_4bit=load_in_4bit,
    )


def load_transformers(name: str, load_in_4bit: bool, runtime: Runtime):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = None
    if load_in_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=runtime.torch_dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(
        name,
        quantization_config=quant,
        dtype=runtime.torch_dtype,
        device_map={"": torch.cuda.current_device()} if runtime.on_gpu else "cpu",  # this process's GPU (start)
    )
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def load_model(
    model_name: str,
    max_seq_length: int = 2048,
    load_in_4bit: bool = True,
    backend: str = "auto",
    precision: str | None = None,
):
    """Load ``model_name`` (hub id, local folder, or ``"demo"``) and its tokenizer.

    * ``backend="unsloth"``: ``unsloth.FastLanguageModel.from_pretrained``.
    * ``backend="transformers"``: ``AutoModelForCausalLM`` with an NF4,
      double-quantised ``BitsAndBytesConfig`` (4-bit also works on CPU).
    * ``backend="auto"``: Unsloth wherever it is installed (its GPU path on
      CUDA, its CPU backend elsewhere), else transformers. One line says which
      and why (see :mod:`rslora_colab.runtime`).

    Precision is automatic: bf16 on compute capability >= 8, fp16 on older GPUs
    (T4), fp32 on CPU; ``precision="fp16"`` forces T4 behaviour on a bigger GPU.
    The demo model on CPU trains with one torch thread (see :func:`demo_threads`).
    Under a launcher it first joins the other processes
    (:func:`~rslora_colab.distributed.start`), which puts each on its own GPU.
    Returns ``(model, tokenizer)``.

    >>> model, tokenizer = load_model("demo")  # doctest: +SKIP
    """
    if not isinstance(max_seq_length, int) or max_seq_length < 16:
        raise ValueError(f"max_seq_length={max_seq_length!r}: pass an integer >= 16, e.g. 2048.")
    start()  # under a launcher: join the others first, so that accelerate puts this process on its own GPU
    runtime = detect_runtime(backend, precision)
    if model_name == DEMO_NAME and not runtime.on_gpu:
        demo_threads()
    name = resolve_model_name(model_name)
    quant = "4-bit NF4" if load_in_4bit else "16-bit" if runtime.on_gpu else "full precision"
    logger.info(f"loading {model_name} with {runtime.backend} ({runtime.reason}); "
                f"{runtime.precision} on {runtime.device}, {quant}")
    if runtime.backend == "unsloth":
        model, tokenizer = _load_unsloth(name, max_seq_length, load_in_4bit, runtime)
    else:
        model, tokenizer = load_transformers(name, load_in_4bit, runtime)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trains = trains_as(runtime, getattr(getattr(model, "config", None), "model_type", None))
    if trains is not runtime:
        logger.info(f"{model_name}: Unsloth trains this family in float32 on this GPU (fp16 off in its trainer; "
                    "float16 NaNs its gradients), so the run is recorded and planned as fp32")
    setattr(model, RUNTIME_ATTR, trains)
    return model, tokenizer


def unsloth_repo(name: str, runtime: Runtime, load_in_4bit: bool = True) -> str:
    """The repo Unsloth's GPU loader reads for hub id ``name``; other names and backends unchanged.

    Unsloth's mapper (``unsloth.models.loader_utils.get_model_name``, which
    ``FastLanguageModel.from_pretrained`` calls) sends gated ids such as
    ``meta-llama/Llama-3.2-1B-Instruct`` to its ungated ``unsloth/`` copies, so a
    check that reads the id before loading must read what Unsloth will. Unsloth's
    CPU backend loads names as given.
    """
    if not runtime.unsloth_gpu or name.count("/") != 1 or Path(name).expanduser().exists():
        return name
    from unsloth.models.loader_utils import get_model_name

    try:
        mapped = get_model_name(name, load_in_4bit=load_in_4bit)
    except Exception:  # noqa: BLE001 — e.g. NotImplementedError (a newer Unsloth knows it): loading says so
        return name
    return mapped if isinstance(mapped, str) and mapped else name


def load_tokenizer(model: Any, backend: str = "auto", load_in_4bit: bool = True):
    """The tokenizer of a hub id, local folder, ``"demo"`` or ``(model, tokenizer)`` pair, with no model weights.

    On Unsloth's GPU path a hub id is read as Unsloth's mapper will load it
    (:func:`unsloth_repo`: ``meta-llama/...`` becomes its ungated ``unsloth/``
    copy), and one line says so. Raises a ``ValueError`` naming the model when its files cannot be read (a
    misspelt hub id, no network, a wrong folder). Returns None for anything
    else that is not a model name (loading it says what is wrong) and, with a
    notice, when the tokenizer needs more than ``AutoTokenizer`` (the checks
    that need it are then skipped).
    """
    if isinstance(model, tuple) and len(model) == 2:
        return model[1]
    if not isinstance(model, (str, Path)):
        return None
    from transformers import AutoTokenizer

    name = resolve_model_name(str(model))
    repo = unsloth_repo(name, detect_runtime(backend), load_in_4bit)
    if repo != name:
        logger.info(f"{model}: Unsloth loads {repo} for it (its mapper: an ungated copy), so the tokenizer "
                    "check before training reads that one")
    try:
        return AutoTokenizer.from_pretrained(repo)
    except OSError as err:
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"model {str(model)!r}: its tokenizer cannot be read ({type(err).__name__}: {reason}). "
                         "Check the hub id's spelling and the network (offline, HF_HUB_OFFLINE=1 reads only the "
                         "local cache), or the folder's path. Nothing was trained yet.") from err
    except Exception as err:  # noqa: BLE001 — e.g. a tokenizer needing a package AutoTokenizer lacks
        logger.info(f"could not read {model}'s tokenizer before loading ({type(err).__name__}); the row "
                    "lengths are not checked in advance")
        return None


def is_quantized(model: Any) -> bool:
    """True when the model holds bitsandbytes 4-bit (or 8-bit) layers."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def input_device(model: Any) -> torch.device:
    """Where a model's inputs go: the device of its input embedding.

    Not the first parameter's: when VRAM is tight Unsloth moves the input
    embedding to the CPU (and patches ``model.device`` for the same reason), so
    ``input_ids`` must follow the embedding, wherever the rest of the model is.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else model_device(model)


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: str | Path) -> str:
    """The base model a saved adapter belongs to: ``base_model_name_or_path`` in its ``adapter_config.json``."""
    config_file = Path(path) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise ValueError(f"{path}: no {ADAPTER_CONFIG} here; pass the adapter folder a run saved, "
                         "e.g. outputs/rslora/adapter.")
    base = read_json_object(config_file, "Pass the adapter folder a run saved, or save the adapter again.").get(
        "base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ValueError(f"{config_file}: base_model_name_or_path is empty; set it to the base model's hub id "
                         "or folder.")
    return base


@contextlib.contextmanager
def _named_mismatch(path: str | Path) -> Iterator[None]:
    """A weight whose shape the adapter's config does not predict is a ``ValueError`` naming the folder."""
    try:
        yield
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))[:300]
        raise ValueError(f"{path}: its {ADAPTER_CONFIG} and its weights do not belong together ({first}); the r "
                         "in the config must be the rank the weights were trained with. Save the adapter again, or "
                         "put back the config that came with these weights.") from None


def load_adapter(path: str | Path, max_seq_length: int = 2048, load_in_4bit: bool = True, backend: str = "auto"):
    """Load a saved adapter folder onto its base model; returns ``(model, tokenizer)`` ready for :func:`chat`.

    The base comes from the folder's ``adapter_config.json``. On Unsloth,
    ``FastLanguageModel.from_pretrained`` takes the adapter folder itself; on
    transformers the base is loaded like :func:`load_model` and PEFT's
    ``PeftModel.from_pretrained`` adds the adapter, keeping its ``use_rslora``
    scale. The tokenizer is the one saved with the adapter, else the base's.

    >>> model, tokenizer = load_adapter("outputs/rslora/adapter")  # doctest: +SKIP
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = adapter_base(path)
    runtime = detect_runtime(backend)
    with _named_mismatch(path):
        if runtime.backend == "unsloth" and base != DEMO_NAME:  # Unsloth reads the base from the adapter folder
            return load_model(str(path), max_seq_length, load_in_4bit, "unsloth")
        model, tokenizer = load_model(base, max_seq_length, load_in_4bit, backend)
        model = PeftModel.from_pretrained(model, str(path))
    setattr(model, RUNTIME_ATTR, runtime)
    if (Path(path) / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer
