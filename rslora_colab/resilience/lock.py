"""One live run per output folder: a lock held for the whole run, released by the OS when the process dies.

Two runs writing one ``output_dir`` at once mix their checkpoints, manifest,
adapter and metrics. :func:`run_lock` (taken by ``quick_finetune`` and
``train_adapter``) holds an exclusive ``fcntl.flock`` on
``output_dir/.rslora-run.lock`` from before the model loads until the last
file is written, and writes who holds it (pid, host, start time, command) into
that file. A second run on the same folder, in another process or another
thread, is refused with a ``ValueError`` naming the live run. The kernel drops
the lock when the holder exits in any way (SIGKILL, a crashed Colab kernel),
so no stale lock is ever left behind and nothing needs cleaning up; the
owner text left in the file is simply overwritten by the next run.

Why ``flock`` and not the ``filelock`` package: filelock truncates the lock
file when it opens it (a waiting run would erase the holder's details before
it could read them), and its API and re-entrancy rules changed between major
versions that Colab and the pinned stack install. ``flock`` is the primitive
filelock itself uses on Linux.

What is and is not guaranteed (also in ``docs/resilience.md``): on a local
disk, between processes and threads of one machine, exactly one run holds a
folder. On NFS, Linux emulates ``flock`` with POSIX locks, which work across
machines when the server supports locking. Google Drive on Colab is a FUSE
mount: the lock holds between runs of the same runtime, not between two
runtimes (or a laptop) writing the same Drive folder. Where the filesystem
refuses locks altogether the run goes ahead with a warning. Windows has no
``fcntl``: there the folder is checked for writing but not locked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..distributed import run_on_main, world_size

logger = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".rslora-run.lock"
"""The lock file, in ``output_dir``."""



@dataclass
class _Hold:
    """A folder this process holds: which thread, the locked descriptor (None: not lockable), how deeply."""

    thread: threading.Thread
    fd: int | None
    depth: int = 1


_held: dict[str, _Hold] = {}
"""Folders this process holds, by resolved path."""
_held_guard = threading.Lock()


def check_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir`` if needed and check that files can be written there; returns it as a Path.

    Raises a ``ValueError`` naming the folder and the fix when it is a file,
    sits under a file, or is not writable (checked by creating and removing a
    probe file, which also catches read-only mounts).
    """
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output_dir={str(output_dir)!r} is an existing file, not a folder: pass a folder path "
                         "(it is created if missing). Nothing was trained yet.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".rslora-write-test-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output_dir={str(output_dir)!r} cannot be written ({type(err).__name__}: {err}): choose a "
                         "folder you can write to, or fix its permissions (a full disk or a read-only mount gives "
                         "this too). Nothing was trained yet.") from err
    return folder


def describe_owner(text: str) -> str:
    """The holder's details as written in the lock file, in words."""
    try:
        owner = json.loads(text)
        return (f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
                + (f": {owner['command']}" if owner.get("command") else ""))
    except (ValueError, KeyError, TypeError):
        return "its details are not written yet"


def _owner_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "thread": threading.current_thread().name,
                       "command": " ".join(sys.argv)[:300]})


def _refusal(folder: Path, owner: str) -> ValueError:
    return ValueError(f"output_dir={str(folder)!r} is in use by a live run ({owner}). Wait for it to finish or stop "
                      "it, or pass another output_dir. (Once it is gone, resume=True / --resume continues its "
                      "newest checkpoint.)")


def _read_owner(fd: int) -> str:
    for _ in range(10):  # the holder writes its details right after it locks: give it a moment
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if text:
            return describe_owner(text)
        time.sleep(0.02)
    return describe_owner("")


def _acquire(folder: Path) -> int | None:
    """Lock ``folder`` for this thread; returns the descriptor, or None where locking is not possible."""
    if fcntl is None:
        return None
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise _refusal(folder, owner) from None
    except OSError as err:  # ENOLCK, EOPNOTSUPP: a filesystem without locks
        os.close(fd)
        logger.warning(f"cannot lock {folder} ({err.strerror}); another run on the same folder would "
                       "not be stopped")
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_text().encode(), 0)
    except OSError as err:  # ENOSPC: a full disk. Let go of the lock, or this process would hold it until it ends
        os.close(fd)
        raise ValueError(f"output_dir={str(folder)!r} cannot be written ({err.strerror}): free some space there, "
                         "or choose another folder. Nothing was trained yet.") from err
    return fd


@contextlib.contextmanager
def run_lock(output_dir: str | Path) -> Iterator[Path]:
    """Hold ``output_dir`` for one run: checked for writing, then locked until the block ends.

    Re-entrant in the thread that holds it (``quick_finetune`` holds it and
    calls ``train_adapter``, which takes it again). Another thread or process
    gets a ``ValueError`` naming the live run. Under several processes of one
    run (a launcher's), rank 0 takes the lock for all of them and its
    outcome, or its error, holds for every process.
    """
    if world_size() == 1:
        with _lock(output_dir) as folder:
            yield folder
        return
    with contextlib.ExitStack() as held:
        yield run_on_main(lambda: held.enter_context(_lock(output_dir)))  # entered on rank 0 only


@contextlib.contextmanager
def _lock(output_dir: str | Path) -> Iterator[Path]:
    """:func:`run_lock` in this process."""
    folder = check_output_dir(output_dir)
    key = str(folder.resolve())
    with _held_guard:
        hold = _held.get(key)
        if hold is not None and hold.thread is not threading.current_thread():
            raise _refusal(folder, f"pid {os.getpid()}: this process, thread {hold.thread.name!r}")
        if hold is not None:
            hold.depth += 1
        else:
            hold = _held[key] = _Hold(threading.current_thread(), _acquire(folder))
    try:
        yield folder
    finally:
        with _held_guard:
            hold.depth -= 1
            if hold.depth == 0:
                del _held[key]
                if hold.fd is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(hold.fd, 0)  # no stale details; a dead holder's are simply overwritten
                    os.close(hold.fd)  # releases the flock
