"""Install the kit's Colab stack around the runtime's own torch, never replacing it.

The notebooks' install cell calls :func:`install_colab_stack` on Colab, right after
``pip install --no-deps "rslora-colab @ git+..."`` has put this package (and the kit, without its
dependencies) on the runtime. It must work before the kit's heavy imports do, so it is a separate
top-level package that uses the standard library only, and ``rslora_colab`` never imports it.

Why it exists: ``unsloth==2026.10.9`` (requirements-colab.txt) requires ``torch>=2.4,<2.15`` and an
unpinned ``xformers``, whose newest release (0.0.35) needs torch >= 2.10. Left alone, pip's resolver
answers ``rslora-colab[colab]`` over Colab's torch 2.9.0 by *replacing* it with torch 2.14.1, a CUDA 13
build plus torchvision, triton and 15 ``nvidia-*`` wheels, which the runtime's driver may not run (then
``import unsloth`` fails and a T4 trains the CPU demo); over torch 2.15 it downgrades to 2.14.1. So:

1. read the installed torch (and torchvision / torchaudio when present), exact versions with their
   local label (``2.9.0+cu126``);
2. if torch is missing or outside :data:`UNSLOTH_TORCH`, stop with one error saying what to do, before pip;
3. else write a pip constraints file pinning each of them to its installed version and run
   ``pip install -c <constraints> "rslora-colab[colab] @ git+<repository>"``: pip then only adds packages
   and backtracks xformers to a release built for that torch (0.0.33.post1 for 2.9.0).

tests/test_colab_install.py runs this through pip's resolver (``--dry-run --report``) over throwaway
environments holding torch 2.9.0 … 2.15.0; docs/colab-install.md has the measured results.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "UNSLOTH_TORCH",
    "HELD",
    "ColabInstallError",
    "Installed",
    "inspect_python",
    "torch_problem",
    "constraints_text",
    "kit_requirement",
    "pip_command",
    "install_colab_stack",
]

UNSLOTH_TORCH: tuple[tuple[int, ...], tuple[int, ...]] = ((2, 4), (2, 15))
"""The torch releases the pinned Unsloth accepts, as ``(floor, ceiling)``: ``floor <= torch < ceiling``.

From unsloth 2026.10.9's own metadata, ``Requires-Dist: torch<2.15.0,>=2.4.0`` (read with
``importlib.metadata.requires("unsloth")``). tests/test_colab_install.py fails in the Colab lane, which has
that unsloth installed, when this disagrees with it: change both with requirements-colab.txt's pin."""

HELD = ("torch", "torchvision", "torchaudio")
"""The runtime's packages pinned to their installed versions (torch's companions are built for one torch)."""

TAIL_CHARS = 3000
"""How much of pip's output a failed install shows (its last lines hold the reason)."""

# Runs under the target interpreter, which may be another environment's: stdlib only, prints one JSON object.
# "kit_pins": the `name==version` pins of the installed kit's [colab] extra, "versions" of those and of HELD.
# The working directory is left out of the search path, as for pip's (a checkout's *.egg-info is not installed).
_INSPECT = r"""
import importlib.metadata as md, json, os, re, sys
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != os.getcwd()]
held = sys.argv[1:]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
pins = {}
try:
    requires = md.requires("rslora-colab") or []
except md.PackageNotFoundError:
    requires = []
for line in requires:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;,]+)\s*;\s*extra\s*==\s*[\"']colab[\"']\s*$", line)
    if m:
        pins[m.group(1)] = m.group(2)
names = list(held) + [n for n in pins if n not in held]
print(json.dumps({"versions": {n: version(n) for n in names}, "kit_pins": pins}))
"""


class ColabInstallError(RuntimeError):
    """The Colab install stopped: an unsupported or missing torch, or pip failed. The message says what to do."""


class Installed:
    """What one Python environment holds, as read by :func:`inspect_python`."""

    def __init__(self, versions: Mapping[str, str | None], kit_pins: Mapping[str, str]) -> None:
        self.versions: dict[str, str | None] = dict(versions)
        """Installed version of each name asked about (None: not installed), exact, local label included."""
        self.kit_pins: dict[str, str] = dict(kit_pins)
        """The installed kit's ``[colab]`` pins, ``{name: version}`` (empty when the kit is not installed)."""

    @property
    def held(self) -> dict[str, str]:
        """The installed members of :data:`HELD`, ``{name: version}``."""
        return {n: v for n in HELD if (v := self.versions.get(n))}

    def stack_complete(self) -> bool:
        """True when the kit is installed with every one of its ``[colab]`` pins at its pinned version."""
        return bool(self.kit_pins) and all(
            (self.versions.get(n) or "").split("+")[0] == v for n, v in self.kit_pins.items())


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a PEP 440 version: ``"2.9.0+cu126"`` -> ``(2, 9, 0)``, ``"2.15.0rc1"`` -> (2, 15, 0)."""
    match = re.match(r"\s*v?(?:\d+!)?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def inspect_python(python: str = sys.executable) -> Installed:
    """Read what ``python``'s environment holds: :data:`HELD`'s versions and the installed kit's ``[colab]`` pins.

    Runs ``python`` once (a fraction of a second), so the same code reads the running interpreter on Colab and a
    throwaway environment in the tests.
    """
    try:
        done = subprocess.run([python, "-c", _INSPECT, *HELD], capture_output=True, text=True, timeout=120)
    except OSError as err:
        raise ColabInstallError(f"cannot run the Python to install into ({python!r}): {err}") from err
    if done.returncode != 0:
        raise ColabInstallError(f"cannot read the packages of {python!r}:\n{done.stderr[-TAIL_CHARS:]}")
    found = json.loads(done.stdout)
    return Installed(found["versions"], found["kit_pins"])


def torch_problem(torch_version: str | None) -> str | None:
    """Why the pinned Unsloth cannot install over this torch, with the fix; None when it can.

    >>> torch_problem("2.9.0+cu126") is None
    True
    >>> print(torch_problem("2.15.0+cu128").splitlines()[0])
    This runtime's torch is 2.15.0+cu128, but Unsloth 2026.10.9 (the kit's pinned Unsloth) needs torch >=2.4,<2.15.
    """
    floor, ceiling = UNSLOTH_TORCH
    needs = f"torch >={_dotted(floor)},<{_dotted(ceiling)}"
    fix = ("Fix: Runtime -> Disconnect and delete runtime, then Run all again; if the new runtime's torch is still "
           "outside that range, pick an older 'Runtime version' under Runtime -> Change runtime type. Outside "
           "Colab: install a CUDA build of torch in that range first.")
    if torch_version is None:
        return (f"torch is not installed in this runtime. The kit installs around the runtime's own CUDA build of "
                f"torch and never brings one, and Unsloth 2026.10.9 needs {needs}.\n{fix}")
    if floor <= _release(torch_version) < ceiling:
        return None
    return (f"This runtime's torch is {torch_version}, but Unsloth 2026.10.9 (the kit's pinned Unsloth) needs "
            f"{needs}.\nInstalling it would replace the runtime's torch with another CUDA build, which the "
            f"runtime's driver may not run, so nothing was installed.\n{fix}")


def constraints_text(held: Mapping[str, str]) -> str:
    """A pip constraints file pinning each held package to its installed version.

    >>> print(constraints_text({"torch": "2.9.0+cu126", "torchvision": "0.24.0+cu126"}), end="")
    torch==2.9.0+cu126
    torchvision==0.24.0+cu126
    """
    return "".join(f"{name}=={version}\n" for name, version in held.items())


def kit_requirement(extra: str = "colab") -> str:
    """The requirement that installs the kit with ``extra``, from where the installed kit came from.

    The commit ``pip install "rslora-colab @ git+..."`` fetched (PEP 610's ``direct_url.json``), so the second
    install finds the same version already there and only adds its dependencies; else the repository URL of the
    project's metadata (pyproject's ``[project.urls] Repository``).
    """
    from importlib import metadata

    dist = metadata.distribution("rslora-colab")
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    vcs = origin.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and origin.get("url"):
        return f"rslora-colab[{extra}] @ git+{origin['url']}@{vcs['commit_id']}"
    urls = dict(line.split(", ", 1) for line in dist.metadata.get_all("Project-URL") or [] if ", " in line)
    if "Repository" not in urls:
        raise ColabInstallError("the installed rslora-colab names no Repository URL in its metadata; pass the "
                                "requirement yourself: install_colab_stack('rslora-colab[colab] @ git+<url>')")
    return f"rslora-colab[{extra}] @ git+{urls['Repository']}"


def pip_command(requirement: str, constraints: str | os.PathLike[str], *, python: str = sys.executable,
                report: str | os.PathLike[str] | None = None, quiet: bool = True) -> list[str]:
    """The pip command that installs ``requirement`` into ``python``'s environment under ``constraints``.

    With ``report``, a dry run that installs nothing and writes pip's installation report (JSON) there. A
    ``python`` other than the running one is reached with pip's ``--python`` (pip >= 22.3), so the target
    needs no pip of its own.

    >>> pip_command("kit[colab]", "c.txt", python=sys.executable)[1:]
    ['-m', 'pip', 'install', '-q', '-c', 'c.txt', 'kit[colab]']
    """
    command = [sys.executable, "-m", "pip"]
    if os.path.abspath(python) != os.path.abspath(sys.executable):  # not realpath: a venv's python is a symlink
        command += ["--python", str(python)]
    command += ["install"] + (["-q"] if quiet else [])
    if report is not None:
        command += ["--dry-run", "--report", str(report)]
    return command + ["-c", str(constraints), requirement]


def install_colab_stack(requirement: str | None = None, *, python: str = sys.executable,
                        report: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Install ``requirement`` (default: this kit with its ``[colab]`` extra) around the installed torch.

    Returns the held versions (``{"torch": "2.9.0+cu126", ...}``), which the install left as they were. Cheap
    to call again: when the kit and every ``[colab]`` pin are already installed it runs no pip. With ``report``,
    pip only resolves (``--dry-run``) and writes its report there (the tests use that).

    Raises:
        ColabInstallError: torch is missing or outside :data:`UNSLOTH_TORCH` (before pip runs), or pip failed
            (with the end of pip's output).
    """
    found = inspect_python(python)
    problem = torch_problem(found.versions.get("torch"))
    if problem:
        raise ColabInstallError(problem)
    held = found.held
    kept = ", ".join(f"{n} {v}" for n, v in held.items())
    if report is None and found.stack_complete():
        print(f"rslora-colab: the Colab stack is already installed, around {kept}.")
        return held
    requirement = requirement or kit_requirement()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rslora-colab-install-") as tmp:
        constraints = os.path.join(tmp, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as file:
            file.write(constraints_text(held))
        done = subprocess.run(pip_command(requirement, constraints, python=python, report=report, quiet=False),
                              capture_output=True, text=True)  # not -q: a failure's tail says why
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-TAIL_CHARS:]
        raise ColabInstallError(f"pip install failed (exit {done.returncode}) for {requirement}, holding {kept}:\n"
                                f"{tail}\nFix that, then Runtime -> Run all again.")
    if report is None:
        print(f"rslora-colab: installed the Colab stack around {kept} (kept) in {time.monotonic() - started:.0f} s.")
    return held


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rslora_colab_install [REQUIREMENT]``: the same install from a shell."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        install_colab_stack(args[0] if args else None)
    except ColabInstallError as err:
        print(f"rslora-colab: {err}", file=sys.stderr)
        return 1
    return 0
