"""Step 6 — save: the adapter, merged 16-bit weights or GGUF, on disk or on the Hugging Face Hub.

=================  =========================================  ==============================================
``how``            Unsloth on a GPU                           elsewhere (transformers, or Unsloth's CPU backend)
=================  =========================================  ==============================================
``adapter``        PEFT ``save_pretrained``                   PEFT ``save_pretrained``
``merged_16bit``   ``model.save_pretrained_merged(...,        PEFT ``merge_and_unload`` into the base,
                   save_method="merged_16bit")``              dequantized (see below)
``portable_        the adapter, its config rewritten          the same
adapter``          (:func:`make_portable`)
``gguf``           ``model.save_pretrained_gguf(...,          a ``ValueError``: GGUF needs a GPU runtime
                   quantization_method=quantization)``, into  with Unsloth
                   ``<path>_gguf``, plus an Ollama
                   ``Modelfile`` (:mod:`~rslora_colab.modelfile`)
=================  =========================================  ==============================================

The adapter's ``adapter_config.json`` keeps ``use_rslora: true``, so PEFT and
vLLM apply alpha/sqrt(r) when they load it; :func:`save` checks that it did.
Engines that ignore ``use_rslora`` (llama.cpp's ``convert_lora_to_gguf.py``,
hence ``llama-server --lora`` and Ollama's ``ADAPTER``; SGLang; vLLM's MoE
expert adapters) apply alpha/r to it, sqrt(r) times too weak (8x at r=64),
without an error. The **portable adapter** holds the same weights with
``lora_alpha`` = alpha*sqrt(r) and ``use_rslora: false``: the same scale under
PEFT, and the right one wherever alpha/r is computed (docs/serving.md).

Unsloth 2026.10.9's CPU backend raises ``NotImplementedError`` when asked to
merge into a 4-bit model ("not supported on CPU yet"), so off the GPU the kit
always merges itself, as described next.

Merging without Unsloth: PEFT can merge into a 4-bit layer, but it re-quantizes
the sum to NF4, which rounds most of the adapter's change away. The kit instead
loads a second copy of the base on the CPU, quantized exactly as in training,
dequantizes it to 16-bit with transformers' ``model.dequantize()`` — the very
weights the adapter was trained against — applies the adapter with PEFT's
``PeftModel.from_pretrained`` and calls ``merge_and_unload()``. Merging into the
original unquantized checkpoint instead would add the NF4 rounding error back
in. The merged weights keep the base checkpoint's 16-bit dtype (fp16 when the
checkpoint is fp32, like the demo's). Measured errors: ``docs/dpo_chat_export.md``.

Hub token: ``token=``, else ``huggingface_hub.get_token()`` (the
``HF_TOKEN`` environment variable, a ``hf auth login`` token, or the Colab
secret ``HF_TOKEN``). It is passed to ``huggingface_hub`` only: never printed,
logged, or written to disk (no ``huggingface_hub.login``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .adapt import is_peft_model
from .demo import DEMO_NAME, portable_model_name, resolve_model_name
from .load import (
    ADAPTER_CONFIG,
    adapter_base,
    is_quantized,
    load_adapter,
    load_transformers,
    runtime_of,
)
from .modelfile import write_modelfile
from .presets import portable_alpha
from .resilience.atomic import read_json_object
from .result import model_and_tokenizer
from .runtime import Runtime, detect_runtime

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
"""Where ``quick_finetune`` saves the adapter, in ``output_dir``."""
LAST_GOOD_DIR = "last_good_adapter"
"""Where a run the divergence guard gave up on keeps its last good adapter (in ``output_dir``)."""
METRICS_FILE = "metrics.json"
"""The run's settings, history and timings, in ``output_dir``."""
LOSS_PLOT_FILE = "loss.png"
"""The run's loss curve, in ``output_dir``."""
HOW = ("adapter", "portable_adapter", "merged_16bit", "gguf")
"""What :func:`save` can write."""
TOKEN_NAME = "HF_TOKEN"
"""The environment variable and the Colab secret the Hub token is read from."""


def save_adapter(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save the PEFT adapter (its config keeps ``use_rslora``) and the tokenizer.

    The demo model is recorded as its base under the portable name ``"demo"``
    (in ``adapter_config.json`` and the model card), not this machine's cache
    folder, so a pushed demo adapter carries no local path and
    :func:`~rslora_colab.load_adapter` still finds its base.
    """
    path = Path(path)
    with portable_base_name(model) as demo:
        # PEFT's "auto" would look "demo" up on the Hub to see whether the vocabulary grew; the demo's never does
        model.save_pretrained(path, **({"save_embedding_layers": False} if demo else {}))
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def portable_base_name(model: Any) -> Iterator[bool]:
    """While saving, name a demo base model ``"demo"`` wherever PEFT reads the base's name; yields True if it did.

    PEFT takes ``adapter_config.json``'s ``base_model_name_or_path`` from its
    config and the model card's ``base_model`` from the base model's
    ``name_or_path`` and ``config._name_or_path``; all three are put back after.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    config = getattr(base, "config", None)
    if base is None or config is None or portable_model_name(config._name_or_path or "") != DEMO_NAME:
        yield False
        return
    peft_configs = list(getattr(model, "peft_config", {}).values())
    saved = ([c.base_model_name_or_path for c in peft_configs], config._name_or_path, base.__dict__.get("name_or_path"))
    try:
        for peft_config in peft_configs:
            peft_config.base_model_name_or_path = DEMO_NAME
        config._name_or_path = base.name_or_path = DEMO_NAME
        yield True
    finally:
        for peft_config, name in zip(peft_configs, saved[0]):
            peft_config.base_model_name_or_path = name
        config._name_or_path, base.name_or_path = saved[1], saved[2]


def check_how(how: str, runtime: Runtime) -> None:
    """Raise a clear ``ValueError`` for an unknown ``how``, or ``gguf`` outside Unsloth."""
    if how not in HOW:
        raise ValueError(f"how={how!r} is not known: use one of {HOW}.")
    if how == "gguf" and not runtime.unsloth_gpu:
        raise ValueError("how='gguf' needs a GPU runtime with Unsloth, which converts through llama.cpp (on Colab: "
                         "Runtime > Change runtime type > T4 GPU, then pip install -r requirements-colab.txt). Here "
                         f"the backend is {runtime.backend} on {runtime.device}: save how='merged_16bit' and convert "
                         "that folder with llama.cpp's convert_hf_to_gguf.py.")


def _model_and_tokenizer(result_or_model: Any, tokenizer: Any) -> tuple[Any, Any]:
    model, tokenizer = model_and_tokenizer(result_or_model, tokenizer)
    if not is_peft_model(model):
        raise ValueError(f"result_or_model: this {type(model).__name__} has no adapter to save; pass what "
                         "quick_finetune returned, or a model from add_rslora() or load_adapter().")
    return model, tokenizer


def _check_rslora_kept(model: Any, path: Path) -> None:
    expected = model.peft_config["default"].use_rslora
    saved = json.loads((path / ADAPTER_CONFIG).read_text()).get("use_rslora", False)
    if saved != expected:
        raise RuntimeError(f"{path / ADAPTER_CONFIG}: use_rslora={saved}, but the adapter was trained with "
                           f"use_rslora={expected}; the scale would be wrong when it loads.")


def make_portable(adapter_dir: str | Path, path: str | Path) -> Path:
    """Copy a saved adapter to ``path`` so that every engine applies its scale: returns ``path``.

    An rsLoRA adapter (``use_rslora: true``) gets ``lora_alpha`` = alpha*sqrt(r)
    (:func:`~rslora_colab.presets.portable_alpha`; per module for ``rank_pattern`` /
    ``alpha_pattern`` entries) and ``use_rslora: false``: PEFT's scale alpha/r then
    equals the trained alpha/sqrt(r), and so does that of an engine that ignores
    the flag. The weights are the same files. Every ``adapter_config.json`` in the
    folder is rewritten (PEFT saves a second adapter, such as DPO's frozen
    reference, in a subfolder); a plain LoRA adapter is copied as it is.
    """
    source, path = Path(adapter_dir), Path(path)
    config = _lora_config(source / ADAPTER_CONFIG)
    if config is None:
        raise ValueError(f"{source / ADAPTER_CONFIG}: not a LoRA adapter's config (no integer r and lora_alpha); "
                         "pass the adapter folder a run saved, e.g. outputs/rslora/adapter.")
    if config.get("modules_to_save"):
        logger.warning(f"{source} also holds whole {', '.join(config['modules_to_save'])} matrices (continued "
                       "pretraining, train_embeddings=True): PEFT and vLLM load them with the portable adapter, but "
                       "llama.cpp's convert_lora_to_gguf.py refuses any tensor that is not lora_A/lora_B "
                       "(ggml-org/llama.cpp#11554), so for llama.cpp and Ollama save the merged model instead "
                       "(how='merged_16bit', or 'gguf' on a GPU)")
    shutil.copytree(source, path, dirs_exist_ok=True)
    for config_file in sorted(path.rglob(ADAPTER_CONFIG)):
        config = _lora_config(config_file)
        if config is None or not config.get("use_rslora"):
            continue
        r, alpha = config["r"], config["lora_alpha"]
        ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        config["alpha_pattern"] = {key: portable_alpha(alphas.get(key, alpha), ranks.get(key, r))
                                   for key in {**ranks, **alphas}}
        config.update(lora_alpha=portable_alpha(alpha, r), use_rslora=False)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        logger.info(f"portable adapter {config_file.parent.resolve()}: lora_alpha {alpha} -> "
                    f"{config['lora_alpha']:.6g}, use_rslora false (scale {config['lora_alpha'] / r:.6g} everywhere)")
    return path


def _lora_config(config_file: Path) -> dict | None:
    """An ``adapter_config.json`` with an integer ``r`` and a ``lora_alpha``, else None."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(config, dict) and isinstance(config.get("r"), int) and "lora_alpha" in config
    return config if ok else None


GIB = 2**30
MERGE_SHARD = 5 * GIB
"""The largest safetensors shard a merged save writes, in bytes (Unsloth's ``save_pretrained_merged`` default,
"5GB", which it reads as GiB; the kit's CPU merge passes it to ``save_pretrained``, whose own default, 50GB,
would hold a whole 8B model in one shard)."""


def params_16bit(model: Any) -> int:
    """Weights of the base model at full size: a 4-bit layer counts its original shape, adapter weights not at all."""
    total = 0
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        total += math.prod(shape) if shape is not None else param.numel()
    return total


def free_ram_bytes() -> int:
    """Memory this machine can still give (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def free_disk_bytes(path: Path) -> int:
    """Free space on the filesystem ``path`` will be written to (its nearest existing folder)."""
    folder = Path(path).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_merge_room(params: int, path: Path) -> None:
    """Stop before a merged 16-bit save that this machine's free RAM or disk cannot hold, with the numbers.

    The merge needs the base in 16-bit (2 bytes per weight) in RAM plus the shard
    being written (at most :data:`MERGE_SHARD`), and the base in 16-bit on disk.
    """
    base = 2 * params
    shard = min(base, MERGE_SHARD)
    ram, disk = free_ram_bytes(), free_disk_bytes(path)
    short = [f"{need / GIB:.1f} GiB of free {what} ({why}), this machine has {have / GIB:.1f} GiB"
             for need, have, what, why in ((base + shard, ram, "RAM", f"the base in 16-bit, {base / GIB:.1f} GiB, "
                                            f"plus the shard being written, {shard / GIB:.1f} GiB"),
                                           (base, disk, f"disk at {Path(path).resolve()}", "the merged weights"))
             if need > have]
    if short:
        raise ValueError(f"how='merged_16bit' would run out of memory part way: it needs {'; and '.join(short)}. "
                         "Nothing was written. Instead save the adapter (how='adapter'), or the portable adapter for "
                         "llama.cpp / Ollama / SGLang (how='portable_adapter'), and merge it on a machine with more "
                         "room: python -m rslora_colab export --adapter <that folder> --how merged_16bit --out "
                         "<folder>.")


def merged_dtype(base: str) -> torch.dtype:
    """The dtype merged weights are saved in: the base checkpoint's own 16-bit dtype, else fp16."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def _run_settings(adapter_dir: str | Path) -> dict:
    """The settings of the run that saved ``adapter_dir`` (its ``metrics.json`` one folder up), or {}."""
    metrics = Path(adapter_dir).parent / METRICS_FILE
    if not metrics.is_file():
        return {}
    fix = ("It is the run's record; pass quantized= and precision= to merge_adapter, or delete the file to assume a "
           "4-bit base in this machine's precision.")
    settings = read_json_object(metrics, fix).get("settings", {})
    if not isinstance(settings, dict):
        raise ValueError(f"{metrics}: is damaged: its 'settings' is a {type(settings).__name__}, not an object. {fix}")
    return settings


def merge_adapter(adapter_dir: str | Path, path: str | Path, quantized: bool | None = None,
                  precision: str | None = None) -> Path:
    """Merge a saved adapter into its base, dequantized to 16-bit on the CPU, and save the result to ``path``.

    ``quantized`` and ``precision`` describe how the base was loaded for
    training (4-bit or not, and in which dtype: the NF4 values depend on it);
    ``None`` reads them from the run's ``metrics.json``, else assumes 4-bit in
    this machine's precision. Needs CPU memory for the whole model at 2 bytes
    per parameter. See the module docstring.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    run = _run_settings(adapter_dir) if quantized is None or precision is None else {}
    quantized = run.get("load_in_4bit", True) if quantized is None else quantized
    precision = precision or run.get("precision") or detect_runtime("transformers").precision
    base = adapter_base(adapter_dir)
    files = resolve_model_name(base)  # "demo" is the demo model's cache folder
    dtype = merged_dtype(files)
    name = str(dtype).removeprefix("torch.")
    logger.info(f"merging {adapter_dir} into {base}, dequantized to {name} on the CPU")
    model, tokenizer = load_transformers(files, quantized, Runtime("transformers", precision, "cpu", "merge"))
    path = Path(path)
    check_merge_room(params_16bit(model), path)
    if is_quantized(model):  # trained in 4-bit, or a pre-quantized checkpoint
        model = model.dequantize(dtype=dtype)
    merged = PeftModel.from_pretrained(model.to(dtype), str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(path, max_shard_size=MERGE_SHARD)
    if (Path(adapter_dir) / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(path)
    return path


def save(result_or_model: Any, path: str | Path, how: str = "adapter", quantization: str = "q4_k_m",
         tokenizer: Any = None) -> Path:
    """Save a trained model as ``how`` (one of :data:`HOW`); returns the folder written.

    That is ``path``, except for ``"gguf"``: Unsloth writes the GGUF beside it,
    into ``<path>_gguf``, where the kit adds an Ollama ``Modelfile`` whose
    TEMPLATE and stop tokens come from the tokenizer's chat template.

    ``result_or_model`` is a :class:`~rslora_colab.FinetuneResult` or an
    adapted model (then pass ``tokenizer``). ``quantization`` is the GGUF
    method (``q4_k_m``, ``q8_0``, ``f16``, ...). See the module docstring for
    what runs where.

    >>> save(result, "outputs/merged", how="merged_16bit")  # doctest: +SKIP
    """
    model, tokenizer = _model_and_tokenizer(result_or_model, tokenizer)
    runtime = runtime_of(model)
    check_how(how, runtime)
    path = Path(path)
    if how == "adapter":
        save_adapter(model, tokenizer, path)
        _check_rslora_kept(model, path)
    elif how == "portable_adapter":
        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(model, tokenizer, tmp)
            make_portable(tmp, path)
    elif runtime.unsloth_gpu and how == "merged_16bit":
        check_merge_room(params_16bit(model), path)
        model.save_pretrained_merged(str(path), tokenizer, save_method="merged_16bit", max_shard_size=MERGE_SHARD)
    elif how == "gguf":
        out = model.save_pretrained_gguf(str(path), tokenizer, quantization_method=quantization)
        if isinstance(out, dict) and out.get("gguf_directory"):  # Unsloth writes beside path: path + "_gguf"
            path = Path(out["gguf_directory"])
        files = out.get("gguf_files") if isinstance(out, dict) else None
        write_modelfile(tokenizer, path, files[0] if files else None)  # from the chat template it was trained with
    else:
        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(model, tokenizer, tmp)
            merge_adapter(tmp, path, quantized=is_quantized(model), precision=runtime.precision)
    return path


def export_adapter(adapter_dir: str | Path, path: str | Path, how: str = "adapter", quantization: str = "q4_k_m",
                   backend: str = "auto") -> Path:
    """Export a saved adapter folder (what ``python -m rslora_colab export`` runs).

    ``adapter`` copies the folder; ``merged_16bit`` on transformers merges
    straight from the folder; everything else loads it with
    :func:`load_adapter` and calls :func:`save`.
    """
    runtime = detect_runtime(backend)
    check_how(how, runtime)  # fail before anything loads
    adapter_base(adapter_dir)  # and for a folder that is not an adapter
    if how == "adapter":
        shutil.copytree(adapter_dir, path, dirs_exist_ok=True)
        return Path(path)
    if how == "portable_adapter":
        return make_portable(adapter_dir, path)
    if not runtime.unsloth_gpu:  # Unsloth's CPU backend cannot merge into 4-bit: the kit's merge works everywhere
        return merge_adapter(adapter_dir, path)
    model, tokenizer = load_adapter(adapter_dir, backend=backend)
    return save(model, path, how, quantization, tokenizer)


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***")


def push_to_hub(result_or_model: Any, repo_id: str, how: str = "adapter", private: bool = True,
                token: str | None = None, quantization: str = "q4_k_m", tokenizer: Any = None) -> str:
    """Upload the model to the Hugging Face Hub as ``how`` (see :func:`save`); returns the repo URL.

    The token is ``token``, else ``huggingface_hub.get_token()`` (``$HF_TOKEN``,
    a saved login, or the Colab secret ``HF_TOKEN``); it is never printed or
    written to disk. The repo is
    created (private by default) if it does not exist.

    >>> push_to_hub(result, "me/llama-rslora-dpo")  # doctest: +SKIP
    """
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError(f"No Hugging Face token: set the {TOKEN_NAME} environment variable, or on Colab add a secret "
                         f"named {TOKEN_NAME} (key icon, left bar) and let this notebook use it, or pass token=...")
    model, tokenizer = _model_and_tokenizer(result_or_model, tokenizer)
    runtime = runtime_of(model)
    check_how(how, runtime)
    try:
        return _push(model, tokenizer, repo_id, how, private, token, quantization, runtime)
    except Exception as err:  # redact: a library error must not carry the token into a traceback or a log
        raise RuntimeError(f"push_to_hub({repo_id!r}, how={how!r}) failed: "
                           f"{_redact(f'{type(err).__name__}: {err}', token)}") from None


def _push(model, tokenizer, repo_id, how, private, token, quantization, runtime) -> str:
    if runtime.unsloth_gpu and how == "merged_16bit":
        model.push_to_hub_merged(repo_id, tokenizer, save_method="merged_16bit", token=token, private=private)
        return f"https://huggingface.co/{repo_id}"
    if how == "gguf":
        model.push_to_hub_gguf(repo_id, tokenizer, quantization_method=quantization, token=token, private=private)
        return f"https://huggingface.co/{repo_id}"
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)  # fails fast on a bad token or no network
    with tempfile.TemporaryDirectory() as tmp:
        save(model, tmp, how, quantization, tokenizer)
        api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=f"rslora-colab: {how}")
    logger.info(f"pushed {how} to {url}")
    return str(url)


def save_outputs(result: Any, how: Sequence[str] = ("adapter",), out_dir: str | Path | None = None,
                 gguf_quantization: str = "q4_k_m") -> dict[str, Path]:
    """Write the trained model in each form listed in ``how``; returns ``{form: path}``.

    * ``"adapter"`` — the rsLoRA adapter ``quick_finetune`` already saved
      (``adapter_config.json`` keeps ``use_rslora``); nothing is rewritten.
    * ``"portable_adapter"`` — the same adapter for engines that ignore
      ``use_rslora`` (:func:`make_portable`), in ``out_dir/portable_adapter``.
    * ``"merged_16bit"`` / ``"gguf"`` — :func:`save` into
      ``out_dir/merged_16bit`` / ``out_dir/gguf`` (GGUF needs Unsloth on a GPU).

    ``out_dir`` defaults to the folder above the adapter. Every choice is
    checked before anything is written.
    """
    for form in how:
        check_how(form, runtime_of(result.model))
    out = Path(out_dir) if out_dir is not None else Path(result.adapter_path).parent
    saved = {form: Path(result.adapter_path) if form == "adapter" else
             make_portable(result.adapter_path, out / form) if form == "portable_adapter" else
             save(result, out / form, how=form, quantization=gguf_quantization) for form in how}
    for form, path in saved.items():
        logger.info(f"saved {form} -> {Path(path).resolve()}")
    return saved
