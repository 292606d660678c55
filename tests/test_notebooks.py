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

    import rslora_colab_install

    project = tomllib.loads((NOTEBOOKS[0].parents[1] / "pyproject.toml").read_text())
    repo = project["project"]["urls"]["Repository"]
    cells = {_install_cell(p) for p in NOTEBOOKS}
    assert len(cells) == 1, "the three install cells must be the same"
    cell = cells.pop()
    kit = re.search(r'^KIT = "([^"]+)"', cell, re.M).group(1)
    assert kit == f"rslora-colab @ git+{repo}"  # first without dependencies: that brings the installer
    assert "rslora_colab_install.install_colab_stack()" in cell  # which adds [colab] around Colab's torch
    assert rslora_colab_install.kit_requirement() == f"rslora-colab[colab] @ git+{repo}"  # here: not from git
    extra = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]["colab"]
    assert extra == {"file": ["requirements-colab.txt"]}  # [colab]: the extra made of requirements-colab.txt


def _run_install_cell(monkeypatch, *, on_colab: bool, installer_there: bool, pip_rc: int = 0) -> tuple[list, list]:
    """Run the install cell as Colab would, without installing anything: ``(pip commands, installer calls)``."""
    import importlib.util
    import subprocess
    import sys
    import types

    import rslora_colab_install

    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if (
        name == "rslora_colab_install" and not installer_there) else real_find_spec(name, *a))
    pips, installs = [], []

    def pip(cmd, **kwargs):
        pips.append(cmd)
        return subprocess.CompletedProcess(cmd, pip_rc, "", "ERROR: Could not find a version that satisfies x")

    monkeypatch.setattr(subprocess, "run", pip)
    monkeypatch.setattr(rslora_colab_install, "install_colab_stack", lambda *a, **k: installs.append((a, k)))
    exec(_install_cell(NOTEBOOKS[0]), {})
    return pips, installs


def test_a_failed_install_stops_run_all_with_pips_message(monkeypatch):
    with pytest.raises(RuntimeError, match="(?s)pip install failed.*Could not find a version.*Run all again"):
        _run_install_cell(monkeypatch, on_colab=True, installer_there=False, pip_rc=1)


def test_the_install_cell_brings_the_installer_then_runs_it_and_again_only_runs_it(monkeypatch):
    """On Colab: pip brings the kit without dependencies (the installer, pure Python), then the installer adds the
    stack around Colab's torch (rslora_colab_install; tests/test_colab_install.py). Run again, only the installer
    runs (and it runs no pip once the stack is there). Elsewhere the cell only imports the kit."""
    pips, installs = _run_install_cell(monkeypatch, on_colab=True, installer_there=False)
    assert len(pips) == 1 and pips[0][1:5] == ["-m", "pip", "install", "--no-deps"]
    assert pips[0][-1].startswith("rslora-colab @ git+") and installs == [((), {})]
    monkeypatch.undo()
    pips, installs = _run_install_cell(monkeypatch, on_colab=True, installer_there=True)
    assert pips == [] and installs == [((), {})]
    monkeypatch.undo()
    assert _run_install_cell(monkeypatch, on_colab=False, installer_there=False) == ([], [])


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
