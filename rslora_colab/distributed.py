"""Several processes, one run: who this process is, who writes, and decisions every process takes together.

Data-parallel training (DDP) is accelerate's and transformers' job: launched
with ``torchrun --nproc_per_node N -m rslora_colab train ...`` or
``accelerate launch --multi_gpu --num_processes N -m rslora_colab train ...``,
every process loads the 4-bit base on its own GPU, adds the same adapter and
trains on its share of every global batch; the gradients are averaged across
processes before each optimizer step, so the adapters stay identical.

The processes' state and collectives are accelerate's too: :func:`start`
creates its ``PartialState`` (which joins the process group and puts the
process on its GPU: ``torch.cuda.current_device()`` is then this process's
GPU), and the decisions below go through ``accelerate.utils``
(``broadcast_object_list``, ``gather_object``, ``reduce``). The kit keeps only
what accelerate lacks (``docs/scale-out.md``):

* **who am I, before any process group** — :func:`rank`, :func:`world_size`
  read the launcher's environment (``RANK``, ``WORLD_SIZE``: torchrun,
  ``accelerate launch --multi_gpu`` and ``accelerate.notebook_launcher`` set
  them, and accelerate reads the same), because creating a ``PartialState``
  creates the process group, with the timeout of whoever creates it first;
* :func:`start` — the state before the trainer exists (the kit needs
  collectives before it: the lock, the manifest), with a collective timeout
  (:func:`timeout_s`), the launch checks, messages and progress bars silenced
  on every process but rank 0, every process dying with its launcher
  (:func:`die_with_launcher`);
* **rank 0 writes** — :func:`run_on_main` runs a function on rank 0 only and
  hands its result, or its exception, to every process;
* **one decision** — :func:`agree` (true on every process when true on any),
  :func:`worst` (the largest of an integer), :func:`smallest`: the checkpoint
  timer, Ctrl-C, the Stop button, the divergence guard and out-of-memory
  recovery decide through them, because a decision one process takes alone
  leaves the others waiting in a collective until the timeout.

With one process (no launcher) every function here returns at once, changes
nothing and creates no ``PartialState``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch

from .logs import set_verbosity

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_ENV = "RSLORA_COLAB_DDP_TIMEOUT"
"""Seconds a collective may wait for the other processes before it fails (default: transformers' ddp_timeout)."""
DEFAULT_TIMEOUT_S = 1800
"""transformers' ``TrainingArguments.ddp_timeout`` default."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """How many processes train this run: the launcher's ``WORLD_SIZE`` (1 without a launcher)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine, the GPU it trains on (0 without a launcher)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on the process that talks and writes: global rank 0, or the only process."""
    return rank() == 0


def timeout_s() -> int:
    """Seconds a collective waits for the other processes: ``RSLORA_COLAB_DDP_TIMEOUT``, default 1800."""
    return max(1, _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def die_with_launcher(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its launcher dies; True when set.

    torchrun (and ``accelerate launch``, which runs torchrun's agent) starts
    every worker in a session of its own, so killing the launcher with SIGKILL
    leaves the workers training and writing on their own, while the user sees
    the run gone and a ``--resume`` would race them. ``prctl(PR_SET_PDEATHSIG)``
    makes the kernel signal the worker when the process that started it dies.
    Only under torchrun's agent (``TORCHELASTIC_RUN_ID`` set) and on Linux.
    """
    if not os.environ.get("TORCHELASTIC_RUN_ID") or not sys.platform.startswith("linux"):
        return False
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    try:
        done = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if done and os.getppid() != parent:  # the launcher died before prctl took effect
        os.kill(os.getpid(), sig)
    return done


def start() -> None:
    """Join the other processes of this run, when a launcher started several; does nothing otherwise.

    Creates accelerate's ``PartialState`` (gloo on CPU, NCCL on CUDA) with
    the collective timeout of :func:`timeout_s`: the process group keeps the
    timeout of whoever creates it first, and the kit needs it before the
    trainer exists. Checks that the launcher's world matches what accelerate
    sees and that every process has a GPU of its own; silences the kit's
    messages below ERROR and the progress bars of datasets and transformers on
    every process but rank 0; makes every process die
    with its launcher. Safe to call more than once.
    """
    if world_size() <= 1:
        return
    die_with_launcher()
    if not is_main():  # rank 0 does the talking
        _quiet()
    fsdp2 = os.environ.get("UNSLOTH_FSDP2", "").strip().lower() in ("1", "true", "yes", "on", "native")
    if fsdp2 and "unsloth" in sys.modules:  # (when its import failed, the kit trains with transformers anyway)
        raise ValueError(
            "UNSLOTH_FSDP2 asks Unsloth to shard the model across the GPUs (FSDP2), for models that do not fit one "
            "GPU; the kit trains data-parallel (DDP: every GPU holds the whole 4-bit model and adapter, which its "
            "checkpoints and divergence guard rely on). Unset UNSLOTH_FSDP2 to train with DDP, or use Unsloth "
            "directly for FSDP2.")
    cuda = torch.cuda.is_available()
    if cuda and local_rank() >= torch.cuda.device_count():
        raise ValueError(
            f"this is process {local_rank()} on this machine (LOCAL_RANK={local_rank()}), but only "
            f"{torch.cuda.device_count()} GPU(s) are visible: start one process per GPU (torchrun --nproc_per_node "
            f"{torch.cuda.device_count()}, accelerate launch --num_processes {torch.cuda.device_count()}).")
    from accelerate import PartialState

    if not cuda:
        # accelerate names each CPU process's device "cpu:<rank>", which transformers 5.17 passes to torch.load as
        # map_location when it resumes (its optimizer state), and torch cannot restore onto "cpu:0" (transformers
        # 5.23 uses plain "cpu"); accelerate's own setting makes it plain "cpu" on every version.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    state = PartialState(cpu=not cuda, timeout=timedelta(seconds=timeout_s()))
    if state.num_processes != world_size():
        raise ValueError(mismatch_message(state.num_processes, str(state.distributed_type)))


def _quiet() -> None:
    """Only errors from this process: the kit's messages and the progress bars of datasets and transformers."""
    import datasets
    import transformers

    set_verbosity("error")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def mismatch_message(seen: int, kind: str) -> str:
    """The error for a launch where the launcher started ``world_size()`` processes but training sees ``seen``."""
    return (f"the launcher started {world_size()} processes (WORLD_SIZE={world_size()}, this is RANK={rank()}), but "
            f"training sees {seen} ({kind}): every process would train alone on all the data and write the same "
            "files. Without a GPU the training arguments need use_cpu=True (the kit sets it; check "
            "ACCELERATE_USE_CPU and your own TrainingArguments); with GPUs, launch with torchrun --nproc_per_node N "
            "or accelerate launch --multi_gpu --num_processes N (not --cpu, which starts one process).")


def check_trainer_world(args: Any) -> None:
    """Raise a ``ValueError`` when the trainer's arguments see another world than the launcher started."""
    if world_size() > 1 and args.world_size != world_size():
        raise ValueError(mismatch_message(args.world_size, f"parallel_mode {args.parallel_mode}"))


def _state() -> Any:
    """accelerate's ``PartialState`` when a process group of more than one process exists, else None.

    The check comes first, so that one process never creates the state (which would fix the device that
    transformers' ``TrainingArguments`` then inherit). A group that exists without the state (a script's own
    ``init_process_group``) gets one built on it, on the group's backend.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    from accelerate import PartialState

    state = PartialState(cpu=dist.get_backend() != "nccl")
    if state.num_processes != dist.get_world_size():  # accelerate's helpers would do nothing: say so instead
        raise ValueError(mismatch_message(state.num_processes, str(state.distributed_type)))
    return state


def _max(value: float) -> float:
    state = _state()
    if state is None:
        return value
    from accelerate.utils import reduce

    return float(reduce(torch.tensor([value], dtype=torch.float64, device=state.device), "max").item())


def worst(value: int) -> int:
    """The largest ``value`` over all processes (every process must call it at the same point)."""
    return int(_max(value))


def smallest(value: float) -> float:
    """The smallest ``value`` over all processes (every process must call it at the same point)."""
    return -_max(-value)


def agree(flag: bool) -> bool:
    """True on every process when ``flag`` is true on at least one (every process must call it)."""
    return bool(worst(1 if flag else 0))


def gather(obj: Any) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if _state() is None:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])  # accelerate joins the processes' lists


def _picklable(obj: Any) -> bool:
    import pickle

    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - anything pickle refuses
        return False
    return True


def run_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 only; every process gets its result, or raises its exception.

    The other processes wait for rank 0, so nothing reads what rank 0 is
    still writing. With one process it simply calls ``fn``. (accelerate's
    ``on_main_process`` runs ``fn`` on rank 0 and returns None elsewhere, and
    rank 0's error would leave the others waiting until the timeout.)
    """
    state = _state()
    if state is None:
        return fn(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    result, error = None, None
    if state.is_main_process:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - raised on every process below
            error = err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")
    result, error = broadcast_object_list([(result, error)])[0]
    if error is not None:
        raise error
    return result
