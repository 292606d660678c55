"""Shared fixtures: the offline demo model (built once per machine, then cached) and a simulated GPU."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from simulated_gpu import GPUS, FakeGPU, simulate_gpu

from rslora_colab import demo_model, load_model
from rslora_colab.runtime import detect_runtime


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One torch thread: on 2 cores a second busy process (a notebook kernel, a CLI run) makes two threads
    several times slower, and one thread gives the same numbers as the OMP_NUM_THREADS=1 subprocesses."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_path() -> str:
    return demo_model()


@pytest.fixture
def demo_pair(demo_path):
    """A fresh 4-bit demo model and its tokenizer."""
    return load_model(demo_path, max_seq_length=256)


@pytest.fixture(scope="session")
def cpu_backend() -> str:
    """The backend this test environment trains with on CPU: "unsloth" (the Colab-stack lane, Unsloth's CPU
    backend) or "transformers" (the CPU lane)."""
    return detect_runtime().backend


@pytest.fixture
def simulated_gpu(monkeypatch, request) -> FakeGPU:
    """A simulated CUDA GPU (see ``simulated_gpu.py``); parametrize indirectly with a key of ``GPUS``, e.g. "T4"."""
    return simulate_gpu(monkeypatch, GPUS[request.param])


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make ``folder`` refuse new files, as a read-only mount does (root ignores chmod: ``chattr +i`` then)."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=False)  # noqa: E731
    else:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        done, undo = True, lambda: folder.chmod(mode)  # noqa: E731
    try:
        probe = folder / ".probe"
        try:
            probe.touch()
            probe.unlink()
        except OSError:
            pass
        else:
            done = False
        if not done:
            pytest.skip("cannot make a folder read-only here")
        yield folder
    finally:
        undo()


@pytest.fixture
def read_only():
    """A context manager making a folder read-only for its duration (skips the test where that is impossible)."""
    return _read_only


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs) mounted at ``tmp_path / "disk"``; skips, saying why, where mounting is not
    allowed (it needs root). Fill it with :func:`fill_disk`."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             text=True) if os.geteuid() == 0 and shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount): "
                    + (mounted.stderr.strip() if mounted is not None else "not root"))
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_disk(disk: Path) -> Path:
    """Fill the filesystem holding ``disk`` to the last byte; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (65536, 4096, 1):  # big writes, then the last page, then the last bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler
