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
