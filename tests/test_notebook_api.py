"""API drift: every keyword the notebooks pass to the kit, Unsloth, TRL or PEFT exists in that function's signature.

Each code cell of ``notebooks/*.ipynb`` is turned into plain Python by
IPython's own transformer (so ``%pip`` lines parse), walked with ``ast``, and
every call whose target resolves to ``rslora_colab``, ``unsloth``, ``trl`` or
``peft`` is checked with :func:`inspect.signature` (for the kit, TRL and PEFT)
or with Unsloth's signatures. Names bound from a kit call are followed through
its return annotation (``panel = control_panel()`` -> ``ControlPanel``), so
method calls are checked too. The kit's own source is scanned for Unsloth calls
the same way, since those never run on a CPU.

Unsloth cannot be imported without a GPU, so its signatures are read from its
installed source with ``ast`` when it is installed, else from the pinned record
``tests/data/unsloth_signatures.json``. Refresh the record from a newer
Unsloth with::

    pip download --no-deps unsloth -d /tmp/u && cd /tmp/u && unzip -q unsloth-*.whl
    python tests/test_notebook_api.py /tmp/u
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PACKAGE_FILES = sorted((REPO / "rslora_colab").rglob("*.py"))
UNSLOTH_RECORD = Path(__file__).parent / "data" / "unsloth_signatures.json"
CHECKED = ("rslora_colab", "unsloth", "trl", "peft")
"""Top-level packages whose calls are checked."""
UNSLOTH_MODEL_METHODS = ("save_pretrained_merged", "save_pretrained_gguf")
"""Methods Unsloth attaches to the models it loads; checked on any object."""


def _forwards() -> dict[str, set[str]]:
    """Kit functions whose ``**kwargs`` go on to something else: the names that something accepts."""
    from rslora_colab.config import FinetuneConfig
    from rslora_colab.memory.estimate import estimate_vram

    config_fields = {f.name for f in fields(FinetuneConfig)}
    return {
        "rslora_colab.train.finetune.quick_finetune": config_fields,
        "rslora_colab.notebook.preview.preview_data": config_fields,
        "rslora_colab.memory.plan.plan_for_gpu": set(inspect.signature(estimate_vram).parameters),
    }


# ---------------------------------------------------------------- Unsloth signatures

def _params_of(node: ast.FunctionDef) -> list[list[str]]:
    """``[[name, kind], ...]`` of a function definition, in order."""
    args = node.args
    out = [[a.arg, "POSITIONAL_ONLY"] for a in args.posonlyargs]
    out += [[a.arg, "POSITIONAL_OR_KEYWORD"] for a in args.args]
    if args.vararg:
        out.append([args.vararg.arg, "VAR_POSITIONAL"])
    out += [[a.arg, "KEYWORD_ONLY"] for a in args.kwonlyargs]
    if args.kwarg:
        out.append([args.kwarg.arg, "VAR_KEYWORD"])
    return out


def _find_def(tree: ast.Module, qualname: str) -> ast.FunctionDef | None:
    """The function ``Class.method`` or ``function`` in a parsed module."""
    *owner, name = qualname.split(".")
    scope = tree.body
    for cls in owner:
        scope = next((n.body for n in scope if isinstance(n, ast.ClassDef) and n.name == cls), [])
    return next((n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name), None)


def read_unsloth_source(root: Path, record: dict) -> dict:
    """Signatures of the recorded functions, read from the Unsloth source under ``root``."""
    found = {}
    for key, entry in record["functions"].items():
        file, qualname = entry["where"].split("::")
        path = root / file
        node = _find_def(ast.parse(path.read_text(encoding="utf-8")), qualname) if path.exists() else None
        if node is None:
            raise AssertionError(f"Unsloth moved {key}: {entry['where']} not found under {root}; "
                                 f"update 'where' in {UNSLOTH_RECORD.name}")
        params = _params_of(node)
        if entry.get("bound_method"):
            params = params[1:]  # drop self
        found[key] = {**entry, "params": params}
    return found


def unsloth_signatures() -> tuple[dict[str, inspect.Signature], str]:
    """Unsloth's signatures from its installed source when installed, else from the pinned record."""
    record = json.loads(UNSLOTH_RECORD.read_text())
    spec = importlib.util.find_spec("unsloth")  # finds it without importing it (import needs a GPU)
    if spec is not None and spec.origin:
        functions, source = read_unsloth_source(Path(spec.origin).parents[1], record), "installed unsloth source"
    else:
        functions, source = record["functions"], f"pinned record of unsloth {record['unsloth_version']}"
    kinds = inspect.Parameter
    signatures = {key: inspect.Signature([kinds(name, getattr(kinds, kind)) for name, kind in entry["params"]])
                  for key, entry in functions.items()}
    return signatures, source


# ---------------------------------------------------------------- finding calls

@dataclass
class Call:
    """One call site: what it resolves to and what it passes."""

    where: str
    target: str
    """Dotted path, e.g. ``rslora_colab.notebook.panel.control_panel`` or ``unsloth.FastLanguageModel.from_pretrained``."""
    keywords: list[str]
    positional: int
    bound: bool = False
    """True for a method called on an instance (the instance fills ``self``)."""


def _resolve_object(path: str):
    """Import the longest importable module prefix of ``path`` and getattr the rest (None if missing)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _canonical(obj, fallback: str) -> str:
    """``module.qualname`` of a function or class (so re-exports resolve to where they live)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else fallback


class CallFinder(ast.NodeVisitor):
    """Collect calls into the checked packages, following imports and instances of kit classes."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.names: dict[str, tuple[str, bool]] = {}  # local name -> (dotted path, is an instance)
        self.calls: list[Call] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.names[alias.asname] = (alias.name, False)
            else:
                top = alias.name.split(".")[0]
                self.names[top] = (top, False)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            for alias in node.names:
                self.names[alias.asname or alias.name] = (f"{node.module}.{alias.name}", False)

    def _path(self, node: ast.expr) -> tuple[str, bool] | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._path(node.value)
            return (f"{base[0]}.{node.attr}", base[1]) if base else None
        return None

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call):
            instance_of = self._returns(node.value.func)
            if instance_of:
                self.names[node.targets[0].id] = (instance_of, True)

    def _returns(self, func: ast.expr) -> str | None:
        """Dotted class path of what a call returns, when the callee is a kit class or annotated kit function."""
        resolved = self._path(func)
        if not resolved or resolved[1] or resolved[0].split(".")[0] != "rslora_colab":
            return None
        obj = _resolve_object(resolved[0])
        if inspect.isclass(obj):
            return _canonical(obj, resolved[0])
        if callable(obj):
            returned = typing.get_type_hints(obj).get("return")
            if inspect.isclass(returned):
                return _canonical(returned, "")
        return None

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        keywords = [k.arg for k in node.keywords if k.arg is not None]  # ** unpacking is checked at run time
        positional = sum(not isinstance(a, ast.Starred) for a in node.args)
        resolved = self._path(node.func)
        where = f"{self.where}:{node.lineno}"
        if resolved and resolved[0].split(".")[0] in CHECKED:
            self.calls.append(Call(where, resolved[0], keywords, positional, bound=resolved[1]))
        elif isinstance(node.func, ast.Attribute) and node.func.attr in UNSLOTH_MODEL_METHODS:
            self.calls.append(Call(where, f"unsloth.model.{node.func.attr}", keywords, positional))


def notebook_sources(path: Path) -> list[tuple[str, str]]:
    """``(label, python source)`` of each code cell, IPython magics turned into Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    transform = TransformerManager().transform_cell
    return [(f"{path.name} cell {i}", transform("".join(c["source"]) if isinstance(c["source"], list) else c["source"]))
            for i, c in enumerate(cells) if c["cell_type"] == "code"]


def calls_in(sources: list[tuple[str, str]], shared_names: bool) -> list[Call]:
    """Calls found in the sources; ``shared_names`` carries imports from one cell to the next (notebooks)."""
    calls: list[Call] = []
    finder = CallFinder("")
    for label, source in sources:
        if not shared_names:
            finder = CallFinder(label)
        finder.where, start = label, len(finder.calls)
        finder.visit(ast.parse(source))
        calls += finder.calls[start:]
    return calls


# ---------------------------------------------------------------- checking

def check_call(call: Call, unsloth: dict[str, inspect.Signature]) -> list[str]:
    """What is wrong with one call (empty when every keyword and the positional count fit)."""
    if call.target.startswith("unsloth."):
        key = ".".join(call.target.split(".")[-2:])
        signature = unsloth.get(key)
        if signature is None:
            return [f"{call.where}: {call.target} has no recorded signature; add it to {UNSLOTH_RECORD.name}"]
        forward = None
    else:
        obj = _resolve_object(call.target)
        if obj is None:
            return [f"{call.where}: {call.target} does not exist"]
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            return []  # builtins without a signature
        forward = _forwards().get(_canonical(obj, call.target))
    params = list(signature.parameters.values())
    if call.bound:
        params = params[1:]
    kinds = inspect.Parameter
    named = {p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    takes_kwargs = any(p.kind is kinds.VAR_KEYWORD for p in params)
    problems = []
    for keyword in call.keywords:
        if keyword in named or (forward is not None and keyword in forward):
            continue
        if takes_kwargs and forward is None and not call.target.startswith("unsloth."):
            problems.append(f"{call.where}: {call.target}(**kwargs) takes {keyword}=... unchecked; "
                            f"say where its kwargs go in _forwards()")
        else:
            problems.append(f"{call.where}: {call.target}() has no parameter {keyword!r}")
    slots = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    if call.positional > len(slots) and not any(p.kind is kinds.VAR_POSITIONAL for p in params):
        problems.append(f"{call.where}: {call.target}() takes {len(slots)} positional arguments, "
                        f"{call.positional} given")
    return problems


@pytest.fixture(scope="module")
def unsloth_sigs():
    return unsloth_signatures()[0]


def test_notebooks_exist():
    assert (REPO / "notebooks" / "01_quickstart_t4.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_keywords_exist(notebook, unsloth_sigs):
    calls = calls_in(notebook_sources(notebook), shared_names=True)
    assert len(calls) >= 5, f"{notebook.name}: expected the notebook to call the kit, found {calls}"
    problems = [p for call in calls for p in check_call(call, unsloth_sigs)]
    assert not problems, "\n".join(problems)


def test_package_unsloth_calls_match_unsloth(unsloth_sigs):
    sources = [(str(path.relative_to(REPO)), path.read_text(encoding="utf-8")) for path in PACKAGE_FILES]
    calls = [c for c in calls_in(sources, shared_names=False) if c.target.startswith("unsloth.")]
    targets = {".".join(c.target.split(".")[-2:]) for c in calls}
    assert {"FastLanguageModel.from_pretrained", "FastLanguageModel.get_peft_model",
            "FastLanguageModel.for_inference", "model.save_pretrained_merged"} <= targets
    problems = [p for call in calls for p in check_call(call, unsloth_sigs)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_drift(unsloth_sigs):
    cell = ("from rslora_colab import quick_finetune, control_panel\n"
            "from unsloth import FastLanguageModel\n"
            "from trl import SFTConfig\n"
            "panel = control_panel(rank=8)\n"
            "panel.wait(timeout=1, block=True)\n"
            "quick_finetune('demo', [], r=8, learning_rate=1e-4, max_steps=3)\n"
            "FastLanguageModel.from_pretrained(model_name='x', max_seq_len=2048, load_in_4bit=True)\n"
            "SFTConfig(max_seq_length=512, max_length=512)\n"
            "result.model.save_pretrained_gguf('out', tok, quantization='q4_k_m')\n")
    problems = [p for c in calls_in([("cell", cell)], shared_names=True) for p in check_call(c, unsloth_sigs)]
    wrong = sorted(p.split("no parameter ")[1] for p in problems if "no parameter" in p)
    assert wrong == ["'block'", "'learning_rate'", "'max_seq_len'", "'max_seq_length'", "'quantization'",
                     "'rank'"], problems


def test_panel_settings_are_quick_finetune_keywords():
    from rslora_colab import FinetuneConfig, control_panel, quick_finetune

    settings = control_panel("demo", "demo", r=16).settings
    accepted = set(inspect.signature(quick_finetune).parameters) | {f.name for f in fields(FinetuneConfig)}
    assert set(settings) <= accepted and {"model", "dataset", "r", "lr", "alpha"} <= set(settings)


def _pin(root: str) -> None:
    """Rewrite the pinned record from an unpacked Unsloth wheel / site-packages at ``root``."""
    record = json.loads(UNSLOTH_RECORD.read_text())
    base = Path(root)
    version = re.search(r'__version__ = "([^"]+)"', (base / "unsloth" / "_version.py").read_text())
    record["functions"] = read_unsloth_source(base, record)
    record["unsloth_version"] = version.group(1) if version else "unknown"
    UNSLOTH_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"pinned unsloth {record['unsloth_version']}: {', '.join(record['functions'])}")


if __name__ == "__main__":
    _pin(sys.argv[1])
