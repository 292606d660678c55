"""Runs ``python -m rslora_colab ...`` in one process of a launcher (torchrun, accelerate launch) and records, for
the DDP tests (``test_scale_out.py``), what that process did:

    torchrun --standalone --nproc_per_node 2 tests/ddp_probe.py EVIDENCE_DIR train --out OUT ...

* ``EVIDENCE_DIR/rank<R>.json``: this process's final adapter digest (sha256 of every trainable weight), whether
  it is finite, its history, settings and step, and the file ``rslora_colab`` was imported from;
* ``EVIDENCE_DIR/writes_rank<R>.txt``: every file or folder it created, opened for writing, renamed or deleted
  under ``--out`` (a Python audit hook; writes made in C++, like ``torch.save``'s, are not seen).

Injections, from the environment (each fires once): ``PROBE_NAN_STEP`` (NaN activations in that step on
``PROBE_RANK``, default 1), ``PROBE_OOM_STEP`` (an out-of-memory error in that step's forward pass on
``PROBE_RANK``), ``PROBE_SAVE_STEP`` (the checkpoint timer runs out on rank 0 only, in that step),
``PROBE_STOP_STEP`` (the Stop button is pressed on rank 0 only, in that step), ``PROBE_SLOW`` (seconds to
sleep after every step, so that a test can kill the run mid-way).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import runpy
import sys
import time
from pathlib import Path

RANK = int(os.environ.get("RANK", "0"))
EVENTS: list[str] = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
OUT = ""
"""The run's ``--out`` folder, absolute (set by :func:`main`)."""


def _under_out(path) -> str | None:
    try:
        full = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return None
    return os.path.relpath(full, OUT) if full.startswith(OUT + os.sep) or full == OUT else None


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in str(mode) for c in "wax+") if mode is not None else bool((flags or 0) & WRITE_FLAGS)
        where = _under_out(path) if writing and isinstance(path, (str, bytes, os.PathLike)) else None
        if where is not None:
            EVENTS.append(f"write {where}")
    elif event in ("os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree", "os.mkdir"):
        where = _under_out(args[1] if event in ("os.rename", "os.replace") else args[0])
        if where is not None:
            EVENTS.append(f"{event} {where}")


def digest(model) -> tuple[str, bool]:
    """sha256 (16 hex digits) over every trainable weight's bytes in name order, and whether all are finite."""
    import torch

    found, finite = hashlib.sha256(), True
    for name, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        found.update(name.encode())
        found.update(param.detach().float().cpu().contiguous().numpy().tobytes())
        finite = finite and bool(torch.isfinite(param).all())
    return found.hexdigest()[:16], finite


def _env_step(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def injections(stopper, rank: int = RANK) -> list:
    """The callbacks the ``PROBE_*`` variables ask for, acting as process ``rank``."""
    import torch
    from transformers import TrainerCallback

    from rslora_colab.resilience.checkpoints import CheckpointTimer

    nan_step, oom_step = _env_step("PROBE_NAN_STEP"), _env_step("PROBE_OOM_STEP")
    save_step, stop_step = _env_step("PROBE_SAVE_STEP"), _env_step("PROBE_STOP_STEP")
    on_rank, slow = int(os.environ.get("PROBE_RANK", "1")), float(os.environ.get("PROBE_SLOW", "0"))

    class Injector(TrainerCallback):
        def __init__(self) -> None:
            self.step, self.fired = 0, set()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            norm = next(m for n, m in model.named_modules() if n.endswith("model.norm"))  # the final norm
            if not getattr(norm, "probe_hooked", False):
                norm.register_forward_hook(self.hook)
                norm.probe_hooked = True

        def on_step_begin(self, args, state, control, **kwargs):
            self.step = state.global_step + 1
            if self.step == stop_step and rank == 0:
                stopper.stop()

        def on_step_end(self, args, state, control, **kwargs):
            if slow:
                time.sleep(slow)

        def hook(self, module, inputs, output):
            if rank != on_rank or not module.training:
                return None
            if self.step == nan_step and "nan" not in self.fired:
                self.fired.add("nan")
                return output * float("nan")
            if self.step == oom_step and "oom" not in self.fired:
                self.fired.add("oom")
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
            return None

    class RankZeroTimer(CheckpointTimer):
        """The checkpoint timer, running out on rank 0 only (as two processes' clocks can)."""

        def on_step_end(self, args, state, control, **kwargs):
            if rank == 0 and state.global_step == save_step:
                self._last_save = -1e9
            return super().on_step_end(args, state, control, **kwargs)

    return [Injector(), *([RankZeroTimer(1e6)] if save_step else [])]


def main() -> None:
    global OUT
    evidence, argv = Path(sys.argv[1]), sys.argv[2:]
    OUT = os.path.abspath(argv[argv.index("--out") + 1])
    evidence.mkdir(parents=True, exist_ok=True)
    sys.addaudithook(_audit)
    atexit.register(lambda: (evidence / f"writes_rank{RANK}.txt").write_text("".join(f"{e}\n" for e in EVENTS)))
    import rslora_colab  # first: it imports unsloth (when installed) before transformers
    import rslora_colab.train as train
    from rslora_colab.watch import StopCallback

    finetune = train.quick_finetune

    def recorded(*args, callbacks=None, **kwargs):
        stopper = StopCallback()
        result = finetune(*args, callbacks=[*(callbacks or []), stopper, *injections(stopper)], **kwargs)
        found, finite = digest(result.model)
        (evidence / f"rank{RANK}.json").write_text(json.dumps({
            "rank": RANK, "digest": found, "finite": finite, "history": result.history, "settings": result.settings,
            "adapter_step": result.adapter_step,
            "kit": rslora_colab.__file__}, default=str))
        return result

    train.quick_finetune = recorded
    sys.argv = ["rslora_colab", *argv]
    runpy.run_module("rslora_colab", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
