"""One live run per output folder: real processes race for it; a killed holder leaves nothing stuck."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rslora_colab import demo_dataset, quick_finetune
from rslora_colab.resilience.lock import LOCK_FILE, run_lock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
ARGS = ["train", "--max-steps", "3000", "--batch-size", "2", "--grad-accum", "1", "--seq", "64",
        "--checkpoint-every", "3", "--sample", ""]


def _train(out: Path, rank: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rslora_colab", *ARGS, "--rank", str(rank), "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_second_run_on_a_live_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, demo_path):
    out = tmp_path / "X"
    first = _train(out, 8)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-3").is_dir() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / "checkpoint-3").is_dir(), first.stderr.read()[-2000:] if first.poll() is not None else "too slow"
    try:
        second = _train(out, 16)  # the race: another rank into the same folder
        _, errors = second.communicate(timeout=180)
        assert first.poll() is None  # the first run was live all along
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, errors[-3000:]
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in errors
    assert (f"is in use by a live run (pid {first.pid} on host {socket.gethostname()}, started "
            in lines[0]), lines[0]
    assert json.loads((out / "run_manifest.json").read_text())["r"] == 8  # the refused run wrote nothing
    # SIGKILL left the lock file behind, but the kernel dropped the lock: the folder is not stuck. What is left
    # is an unfinished run, and it is reported as one, not as live.
    assert (out / LOCK_FILE).exists()
    with pytest.raises(ValueError, match=r"holds an unfinished run \(newest checkpoint: step \d+ of 3000\)"):
        quick_finetune(demo_path, demo_dataset(n=8), r=8, max_steps=4, batch_size=2, grad_accum=1,
                       max_seq_length=64, output_dir=str(out))


def test_another_thread_is_refused_and_the_holder_may_reenter(tmp_path):
    refused = []

    def other():
        try:
            with run_lock(tmp_path):
                refused.append(None)
        except ValueError as err:
            refused.append(str(err))

    with run_lock(tmp_path):
        with run_lock(tmp_path):  # quick_finetune holds it and calls train_adapter, which takes it again
            thread = threading.Thread(target=other, name="second-run")
            thread.start()
            thread.join()
    assert refused[0] and f"in use by a live run (pid {os.getpid()}: this process, thread 'MainThread')" in refused[0]
    with run_lock(tmp_path):  # released: free again
        pass


@pytest.mark.parametrize("make", ["file", "under-a-file"])
def test_an_output_dir_that_cannot_be_a_folder_fails_before_the_model_loads(tmp_path, make):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    output_dir = blocker if make == "file" else blocker / "run"
    # the model id does not exist and there is no network: reaching the loader would fail differently
    with pytest.raises(ValueError, match="output_dir=.* (is an existing file|cannot be written)"):
        quick_finetune("no-such-org/no-such-model", demo_dataset(n=4), r=8, output_dir=str(output_dir))


def test_a_read_only_output_dir_fails_before_the_model_loads(tmp_path, read_only):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        with pytest.raises(ValueError, match=r"output_dir=.*ro' cannot be written \(PermissionError"):
            quick_finetune("no-such-org/no-such-model", demo_dataset(n=4), r=8, output_dir=str(folder))


def test_a_full_disk_at_start_is_one_clear_error_and_leaks_no_lock(small_disk):
    """A real full filesystem: the lock is taken, writing its owner fails with ENOSPC. The error names the folder,
    and once space is freed the same process takes the folder at once (before, it stayed "in use" until exit)."""
    from conftest import fill_disk

    out = small_disk / "run"
    out.mkdir()
    filler = fill_disk(small_disk)
    with pytest.raises(ValueError, match=r"run' cannot be written \(No space left on device\): free some space"):
        with run_lock(out):
            pass
    filler.unlink()
    with run_lock(out) as folder:
        assert folder == out
