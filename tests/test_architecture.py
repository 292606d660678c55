"""The package's shape: no import cycle (function-local imports included), no module importing another's private
name, no bare ``print`` outside the command line, and the subsystems in their folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rslora_colab"
SUBSYSTEMS = ("data", "train", "memory", "resilience", "notebook", "commands")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` for every ``import`` / ``from ... import`` anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            found += [(m, []) for m in submodules] or [(target, names)]
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return [(m, names) for m, names in found if m in modules]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = {m for m, _ in _imports(name, path, modules)}
        # importing a.b.c runs a/b/__init__ first, unless that package is one this module already sits in
        parents = {m.rpartition(".")[0] for m in edges} & set(modules)
        graph[name] = (edges | {p for p in parents if not name.startswith(p + ".")}) - {name}
    return graph


def test_no_import_cycle():
    graph, state, path = _graph(), {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_imports_another_modules_private_name():
    modules = _modules()
    private = [f"{name} imports {target}.{n}" for name, path in modules.items()
               for target, names in _imports(name, path, modules) for n in names
               if n.startswith("_") and not n.startswith("__") and target != name]
    assert not private, "\n".join(private)


def test_messages_go_through_the_logger():
    """Bare print is for the command line's own report, the chat reply and the sample answers."""
    allowed = {"rslora_colab.cli", "rslora_colab.chat"} | {n for n in _modules() if n.startswith("rslora_colab.commands")}
    printing = []
    for name, path in _modules().items():
        if name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
    assert not printing, "use logging.getLogger(__name__): " + ", ".join(printing)


def test_subsystems_live_in_their_folders():
    assert all((PACKAGE / folder / "__init__.py").is_file() for folder in SUBSYSTEMS)
    flat = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(flat) <= 20, f"{len(flat)} flat modules: {flat}"


def test_the_colab_installer_stands_alone():
    """rslora_colab_install runs on Colab before the kit's dependencies are installed: the standard library only,
    and the kit never imports it (it is a separate top-level package for that reason)."""
    import sys

    imported = set()
    for path in (PACKAGE.parent / "rslora_colab_install").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) <= {"rslora_colab_install"}, imported
    users = [name for name, path in _modules().items() if "rslora_colab_install" in path.read_text()]
    assert not users, f"the kit imports its Colab installer: {users}"
