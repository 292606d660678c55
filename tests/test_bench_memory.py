"""The CPU-testable pieces of ``bench/gpu_memory.py`` (the GPU part runs only where a GPU is lent)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no torch at module level
    return module


def test_static_record_reports_gib_and_the_estimates_error(bench):
    record = bench.static_record(estimate_gib=5.5, reserved_bytes=5 * 2**30, allocated_bytes=4 * 2**30)
    assert record == {"static_reserved_gib": 5.0, "static_allocated_gib": 4.0, "estimate_static_gib": 5.5,
                      "static_error": pytest.approx(0.10)}


def test_library_versions_names_the_stack(bench):
    versions = bench.library_versions()
    assert versions["torch"] and versions["transformers"] and "unsloth" in versions


def test_the_estimate_it_compares_with_is_the_static_part_of_a_local_random_model(bench, tmp_path):
    from rslora_colab.memory.catalog import resolve_spec
    from rslora_colab.memory.estimate import estimate_vram

    spec = resolve_spec(bench.MODELS[0])
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(__import__("json").dumps(spec.to_config_dict()))
    local = estimate_vram(str(folder), r=16)
    assert local.dynamic_16bit_gib == 0.0  # quantized on the fly: no dynamic-quant layers
    assert local.static_gib < estimate_vram(bench.MODELS[0], r=16).static_gib


def test_cli_help_runs_without_a_gpu():
    out = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--static-only" in out and "static part" in out
