"""Every decision the kit takes about a device, on simulated GPUs: a T4 (no real bf16) up to an H100.

The fixture in ``conftest.py`` only changes what torch *reports* (name,
compute capability, memory, whether a bf16 tensor can be created); nothing
runs on a GPU. What is checked per device: precision, the trainer's
fp16/bf16 flags, the optimizer, the dtype handed to Unsloth, the memory
budget the planner uses, the ``check_runtime`` text and the panel's gauge.
"""

from __future__ import annotations

import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from simulated_gpu import GPUS

from rslora_colab import (
    FinetuneConfig,
    check_fit,
    check_runtime,
    detect_runtime,
    load_model,
)
from rslora_colab.memory.plan import resolve_budget_gib
from rslora_colab.runtime import NO_UNSLOTH_ENV, unsloth_installed
from rslora_colab.settings import resolve_run
from rslora_colab.train import trainer_args
from rslora_colab.train.setup import fit_to_gpu

ALL = list(GPUS)
EXPECTED_PRECISION = {"T4": "fp16", "P100": "fp16", "V100": "fp16", "L4": "bf16", "A100": "bf16", "H100": "bf16"}


@pytest.mark.parametrize("simulated_gpu", ALL, indirect=True)
def test_precision_follows_compute_capability_not_bf16_emulation(simulated_gpu):
    assert torch.cuda.is_bf16_supported()  # what torch says on every one of them, T4 included
    name = next(key for key, gpu in GPUS.items() if gpu == simulated_gpu)
    runtime = detect_runtime()
    assert runtime.precision == EXPECTED_PRECISION[name]
    assert runtime.torch_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[runtime.precision]
    assert runtime.device == simulated_gpu.name and runtime.on_gpu


@pytest.mark.parametrize("simulated_gpu", ALL, indirect=True)
def test_trainer_flags_and_optimizer_agree_with_the_precision(simulated_gpu, tmp_path):
    config = FinetuneConfig(r=16, output_dir=str(tmp_path))
    runtime = detect_runtime()
    settings = resolve_run(config, runtime).as_dict()
    args = trainer_args(resolve_run(config, runtime))
    fp16 = not simulated_gpu.native_bf16
    assert (args["fp16"], args["bf16"]) == (fp16, not fp16)
    assert not args["use_cpu"]
    assert settings["optimizer"] == args["optim"] == "adamw_8bit"
    assert settings["precision"] == runtime.precision


@pytest.mark.parametrize("simulated_gpu", ["T4", "V100"], indirect=True)
def test_asking_for_bf16_on_an_old_gpu_names_the_capability(simulated_gpu):
    with pytest.raises(ValueError, match=r"compute capability >= 8.*has 7\.\d: use 'fp16'"):
        detect_runtime(precision="bf16")


@pytest.mark.parametrize("simulated_gpu", ["H100"], indirect=True)
def test_fp16_can_be_forced_on_a_bf16_gpu_to_emulate_a_t4(simulated_gpu):
    assert detect_runtime(precision="fp16").precision == "fp16"


def _fake_unsloth(calls: list[dict]) -> types.ModuleType:
    """A stand-in ``unsloth`` module that records what the kit hands ``FastLanguageModel.from_pretrained``."""
    def from_pretrained(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(), SimpleNamespace(pad_token="<pad>", eos_token="<eos>")

    module = types.ModuleType("unsloth")
    module.FastLanguageModel = SimpleNamespace(from_pretrained=from_pretrained)
    return module


@pytest.mark.parametrize("simulated_gpu", ALL, indirect=True)
def test_unsloth_gets_the_dtype_the_gpu_supports(simulated_gpu, monkeypatch):
    calls: list[dict] = []
    monkeypatch.setitem(sys.modules, "unsloth", _fake_unsloth(calls))
    monkeypatch.delenv(NO_UNSLOTH_ENV, raising=False)
    model, _ = load_model("unsloth/Llama-3.2-1B-Instruct-bnb-4bit", max_seq_length=2048)
    expected = torch.bfloat16 if simulated_gpu.native_bf16 else torch.float16
    assert calls == [{"model_name": "unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "max_seq_length": 2048,
                      "dtype": expected, "load_in_4bit": True}]
    assert model.rslora_colab_runtime.backend == "unsloth" and model.rslora_colab_runtime.unsloth_gpu


@pytest.mark.parametrize("simulated_gpu", ALL, indirect=True)
def test_the_planner_budgets_the_gpus_own_memory(simulated_gpu, tmp_path):
    assert resolve_budget_gib("auto") == pytest.approx(simulated_gpu.total_gib)
    config = FinetuneConfig(r=16, max_seq_length=1024, output_dir=str(tmp_path))
    planned, plan = fit_to_gpu("Llama-3.2-1B-Instruct", config)  # plans on any CUDA GPU, before loading
    assert plan is not None and plan.budget_gib == pytest.approx(simulated_gpu.total_gib)
    assert planned.batch_size == plan.micro_batch


@pytest.mark.parametrize("simulated_gpu", ALL, indirect=True)
def test_check_runtime_says_what_training_will_use(simulated_gpu, capsys):
    check = check_runtime()
    out = capsys.readouterr().out
    major, minor = simulated_gpu.capability
    assert check.gpu == simulated_gpu.name and check.notice == ""
    assert check.compute_capability == f"{major}.{minor}"
    assert check.precision == detect_runtime().precision and check.optimizer == "adamw_8bit"
    if simulated_gpu.native_bf16:
        assert f"precision: bf16 (compute capability {major}.{minor} >= 8: real bf16)" in out
    else:
        assert f"precision: fp16 (no bf16 on this GPU (compute capability {major}.{minor} < 8))" in out
    assert f"{simulated_gpu.total_gib:.2f} GiB" in out


@pytest.mark.parametrize("simulated_gpu", ALL, indirect=True)
def test_the_gauge_compares_with_this_gpu(simulated_gpu):
    fit = check_fit("Llama-3.2-1B-Instruct", r=16, max_seq_length=1024, batch_size=1, grad_accum=8)
    assert fit.device == simulated_gpu.name and fit.budget_gib == pytest.approx(simulated_gpu.total_gib)
    assert fit.fits and simulated_gpu.name in fit.message
    huge = check_fit("Llama-3.1-8B-Instruct", r=64, max_seq_length=8192, batch_size=8)
    assert huge.fits is (huge.total_gib <= simulated_gpu.total_gib)


def test_a_t4_gauge_without_any_gpu_plans_for_fp16_unsloth():
    fit = check_fit("Llama-3.2-1B-Instruct", r=16, max_seq_length=1024, batch_size=1)
    if torch.cuda.is_available():
        pytest.skip("a real GPU is present")
    assert fit.device == "a T4 (no GPU here)" and fit.budget_gib == pytest.approx(14.74)


# ---------------------------------------------------------------- Unsloth wherever it is installed

def test_no_unsloth_switch_really_switches(monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", _fake_unsloth([]))
    monkeypatch.delenv(NO_UNSLOTH_ENV, raising=False)
    assert detect_runtime().backend == "unsloth"
    monkeypatch.setenv(NO_UNSLOTH_ENV, "1")
    runtime = detect_runtime()
    assert runtime.backend == "transformers" and NO_UNSLOTH_ENV in runtime.reason
    with pytest.raises(ValueError, match=f"backend='unsloth' cannot run here: {NO_UNSLOTH_ENV} is set"):
        detect_runtime("unsloth")


LATE_WARNING = "Unsloth should be imported before"
"""What Unsloth warns when transformers, TRL or PEFT were imported before it."""


def _import_report(env_extra: dict[str, str], first: str = "") -> tuple[bool, bool, str]:
    """In a fresh interpreter: ``import {first}; import rslora_colab`` -> (unsloth imported, late warning, backend)."""
    import os

    code = (f"{first}\nimport sys, rslora_colab\n"
            "print('unsloth' in sys.modules, rslora_colab.detect_runtime().backend)")
    env = {k: v for k, v in os.environ.items() if k != NO_UNSLOTH_ENV}
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env={**env, **env_extra}, timeout=300)
    assert done.returncode == 0, done.stderr
    imported, backend = done.stdout.split()[-2:]
    return imported == "True", LATE_WARNING in done.stderr, backend


def test_importing_the_kit_imports_unsloth_first_when_installed_and_not_switched_off():
    if unsloth_installed():
        assert _import_report({}) == (True, False, "unsloth")  # imported, and before transformers: no warning
        assert _import_report({}, first="import transformers")[1]  # the check can fail: a late import warns
    else:
        assert _import_report({}) == (False, False, "transformers")
    assert _import_report({NO_UNSLOTH_ENV: "1"}) == (False, False, "transformers")


# ---------------------------------------------------------------- families Unsloth trains in float32

def _family_folder(folder, model_type: str):
    """A local model folder holding Llama-3.2-1B's config.json under another ``model_type`` (no weights)."""
    import json

    from rslora_colab.memory.catalog import find_in_catalog

    config = {**find_in_catalog("Llama-3.2-1B-Instruct").to_config_dict(), "model_type": model_type}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_the_float32_families_are_unsloths_own_and_matched_as_its_loader_does():
    from rslora_colab.runtime import UNSLOTH_FP32_TYPES, unsloth_forces_fp32

    forced = ["gemma3", "gemma3_text", "gemma3n", "gemma3n_text", "gemma4", "gemma4_text", "qwen3_moe", "qwen3_5",
              "qwen3_5_moe", "gpt_oss", "glm4_moe", "glm4_moe_lite"]
    kept = ["llama", "qwen2", "qwen3", "gemma2", "gemma", "mistral", "phi3", "glm4"]
    assert [t for t in forced if not unsloth_forces_fp32(t)] == [] and [t for t in kept if unsloth_forces_fp32(t)] == []
    if not unsloth_installed():
        return  # the CPU lane: Unsloth's own list is the Colab lane's to compare
    import ast
    import importlib.util
    from pathlib import Path

    from unsloth_zoo import FORCE_FLOAT32  # the list Unsloth's loader reads (unsloth_zoo.model_lists)

    loader = Path(importlib.util.find_spec("unsloth").submodule_search_locations[0]) / "models" / "loader.py"
    fallback = next(ast.literal_eval(node.value) for node in ast.parse(loader.read_text()).body  # unioned in there
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_FORCE_FLOAT32_FALLBACK")
    effective = list(FORCE_FLOAT32) + [f for f in fallback if not any(f in entry for entry in FORCE_FLOAT32)]
    assert sorted(UNSLOTH_FP32_TYPES) == sorted(effective)


@pytest.mark.parametrize("simulated_gpu", ["T4", "H100"], indirect=True)
def test_a_family_unsloth_forces_to_float32_is_recorded_and_trained_as_fp32(simulated_gpu, monkeypatch, tmp_path,
                                                                             caplog):
    calls: list[dict] = []
    fake = _fake_unsloth(calls)
    load = fake.FastLanguageModel.from_pretrained
    fake.FastLanguageModel.from_pretrained = lambda **kw: (
        (SimpleNamespace(config=SimpleNamespace(model_type="gemma3_text")), load(**kw)[1]))
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.delenv(NO_UNSLOTH_ENV, raising=False)
    with caplog.at_level("INFO", logger="rslora_colab"):
        model, _ = load_model("unsloth/gemma-3-1b-it-unsloth-bnb-4bit")
    runtime = model.rslora_colab_runtime
    config = FinetuneConfig(r=16, output_dir=str(tmp_path))
    args = trainer_args(resolve_run(config, runtime))
    t4 = not simulated_gpu.native_bf16
    assert calls[0]["dtype"] == (torch.float16 if t4 else torch.bfloat16)  # Unsloth still gets what it got before
    assert runtime.precision == ("fp32" if t4 else "bf16") and resolve_run(config, runtime).as_dict()["precision"] \
        == runtime.precision
    assert (args["fp16"], args["bf16"]) == (False, not t4)  # what Unsloth's trainer really runs
    assert ("trains this family in float32" in caplog.text) is t4
    gemma, llama = _family_folder(tmp_path / "gemma", "gemma3_text"), _family_folder(tmp_path / "llama", "llama")
    plans = {name: fit_to_gpu(folder, FinetuneConfig(r=16, max_seq_length=1024, output_dir=str(tmp_path)))[1]
             for name, folder in (("gemma", gemma), ("llama", llama))}
    wider = plans["gemma"].estimate.total_gib > plans["llama"].estimate.total_gib
    assert wider is t4  # planned with fp32 activations where fp32 really runs


def test_the_t4_gauge_plans_fp32_for_a_float32_family(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a real GPU is present")
    gemma, llama = _family_folder(tmp_path / "gemma", "gemma3"), _family_folder(tmp_path / "llama", "llama")
    fits = [check_fit(folder, r=16, max_seq_length=1024, batch_size=2) for folder in (gemma, llama)]
    assert fits[0].total_gib > fits[1].total_gib


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_a_gated_id_is_checked_as_unsloths_mapper_loads_it(simulated_gpu, monkeypatch, demo_path, caplog):
    """On Unsloth's GPU path the tokenizer check reads the repo Unsloth's mapper gives (an ungated unsloth/ copy
    for meta-llama/...), here a stand-in mapper that sends the gated id to the demo model's folder."""
    from rslora_colab.load import load_tokenizer

    asked = []

    def get_model_name(model_name, load_in_4bit=True):
        asked.append((model_name, load_in_4bit))
        return demo_path if model_name == "meta-llama/Llama-3.2-1B-Instruct" else model_name

    fake = _fake_unsloth([])
    fake.models = types.ModuleType("unsloth.models")
    fake.models.loader_utils = types.ModuleType("unsloth.models.loader_utils")
    fake.models.loader_utils.get_model_name = get_model_name
    for name, module in (("unsloth", fake), ("unsloth.models", fake.models),
                         ("unsloth.models.loader_utils", fake.models.loader_utils)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv(NO_UNSLOTH_ENV, raising=False)
    with caplog.at_level("INFO", logger="rslora_colab"):
        tokenizer = load_tokenizer("meta-llama/Llama-3.2-1B-Instruct", "auto", True)
    assert asked == [("meta-llama/Llama-3.2-1B-Instruct", True)] and tokenizer.name_or_path == demo_path
    assert f"Unsloth loads {demo_path} for it" in caplog.text
    assert load_tokenizer(demo_path, "transformers").name_or_path == demo_path and len(asked) == 1  # no mapper


def test_unsloths_mapper_holds_the_catalogs_gated_ids():
    """The mapper the stand-in above plays: Unsloth's own table (a plain-data module) maps each meta-llama id of the
    catalog to an unsloth/ repo."""
    if not unsloth_installed():
        pytest.skip("unsloth is not installed (the Colab lane has it)")
    import importlib.util
    from pathlib import Path

    from rslora_colab.memory.catalog import CATALOG

    mapper = Path(importlib.util.find_spec("unsloth").submodule_search_locations[0]) / "models" / "mapper.py"
    tables: dict = {}
    exec(compile(mapper.read_text(), str(mapper), "exec"), tables)
    gated = [spec.hub_id for spec in CATALOG if spec.hub_id.startswith("meta-llama/")]
    assert gated and all(tables["FLOAT_TO_INT_MAPPER"][g.lower()].startswith("unsloth/") for g in gated)
