"""The notebooks' shape: Colab header, a parameters cell, thin code cells, no dead branches, no stored outputs.

Running them is nbmake's job (``pytest --nbmake notebooks``); keyword drift is
tests/test_notebook_api.py's.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MAX_CODE_LINES = 10
"""Notebooks stay thin: any longer logic belongs in the package, where it is tested."""
QUICKSTART_SECTIONS = ["Install", "Check runtime", "Your data", "Choose", "Data", "Train", "Watch", "Try it", "Save"]


def _cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        cell["text"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    return cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_opens_with_title_badge_and_runtime_instruction(path):
    head = _cells(path)[0]
    assert head["cell_type"] == "markdown" and head["text"].startswith("# ")
    badge = re.search(r"\(https://colab\.research\.google\.com/github/[^)]+/blob/main/notebooks/([^)]+)\)", head["text"])
    assert badge and badge.group(1) == path.name, "Open-in-Colab badge must point at this notebook"
    assert "Runtime → Change runtime type → T4 GPU" in head["text"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_thin_parameterised_and_clean(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell holds the parameters"
    for cell in code:
        assert not re.search(r"\bif\s+(False|0)\s*:", cell["text"]), "choose with parameters, not `if False:`"
        assert len(cell["text"].splitlines()) <= MAX_CODE_LINES, f"move this logic into the package:\n{cell['text']}"
        assert not cell.get("outputs"), "commit notebooks without outputs"


def test_quickstart_has_the_sections_in_order():
    path = next(p for p in NOTEBOOKS if p.name == "01_quickstart_t4.ipynb")
    headings = [line[3:].strip() for c in _cells(path) if c["cell_type"] == "markdown"
                for line in c["text"].splitlines() if line.startswith("## ")]
    assert headings == QUICKSTART_SECTIONS


def _install_cell(path: Path) -> str:
    return next(c["text"] for c in _cells(path) if c["cell_type"] == "code" and "pip" in c["text"])


def test_every_notebook_installs_the_pinned_kit_from_the_one_location():
    import tomllib

    project = tomllib.loads((NOTEBOOKS[0].parents[1] / "pyproject.toml").read_text())
    repo = project["project"]["urls"]["Repository"]
    cells = {_install_cell(p) for p in NOTEBOOKS}
    assert len(cells) == 1, "the three install cells must be the same"
    kit = re.search(r'^KIT = "(.+)"$', cells.pop(), re.M).group(1)
    assert kit == f"rslora-colab[colab] @ git+{repo}"  # [colab]: the extra made of requirements-colab.txt
    extra = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]["colab"]
    assert extra == {"file": ["requirements-colab.txt"]}


def test_a_failed_install_stops_run_all_with_pips_message(monkeypatch):
    import importlib.util
    import subprocess
    import sys
    import types

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rslora_colab" else real_find_spec(name, *a))
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies unsloth")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="(?s)pip install failed.*Could not find a version.*Run all again"):
        exec(_install_cell(NOTEBOOKS[0]), {})
    assert calls and calls[0][1:4] == ["-m", "pip", "install"]


def test_notebooks_use_only_the_public_api():
    import ast

    from IPython.core.inputtransformer2 import TransformerManager

    import rslora_colab

    to_python = TransformerManager().transform_cell
    for path in NOTEBOOKS:
        for cell in (c for c in _cells(path) if c["cell_type"] == "code"):
            for node in ast.walk(ast.parse(to_python(cell["text"]))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rslora_colab"):
                    assert node.module == "rslora_colab", f"{path.name}: import from {node.module}, not the public API"
                    assert {a.name for a in node.names} <= set(rslora_colab.__all__), f"{path.name}: {node.names}"
