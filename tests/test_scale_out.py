"""Data-parallel training (DDP) on CPU: two gloo processes started by torchrun, accelerate launch and
accelerate.notebook_launcher, each training its share of every global batch (``docs/scale-out.md``).

Every launch runs the real command line through ``tests/ddp_probe.py``, which records per process the final adapter
digest, the history and every file it wrote (a Python audit hook), and can inject a NaN, an out-of-memory error, a
checkpoint-timer decision or a Stop press on one process only. The runs are tiny (the demo model, 128 rows, seq 128,
one torch thread per process) so the module takes about 2 minutes on 2 cores; every launch has a timeout, and
``RSLORA_COLAB_DDP_TIMEOUT=60`` turns a hang in a collective into an error within a minute.

Why 128 rows: a multiple of the global batch (8). With another row count, DDP pads the last batch of an epoch with
rows from its start (accelerate's ``even_batches``) where one process takes a short last batch, so the curves part at
the epoch boundary (measured: 4.6 % at step 20 with the 158 demo rows).

The tolerance of the loss curves, rtol 1e-5: the two runs see the same rows in the same order (accelerate's
seedable sampler draws the same permutation on every process and gives process r the batches k*2 + r), and the
gradient is the same sum over the same tokens divided by the same count (``average_tokens_across_devices``); only
the order of the floating-point sums can differ. Measured: bitwise equal against one process with the same
micro-batch and grad_accum doubled (this module's reference), ~1.5e-7 relative (1-2 fp32 ulps) against one process
with micro-batch 8. 1e-5 leaves ~60x room over that and is 10^4 below what a wrong batch split gives (0.12 relative,
two processes each taking the whole global batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_probe import injections
from safetensors.torch import load_file

from rslora_colab import FinetuneConfig, demo_dataset, quick_finetune
from rslora_colab.distributed import start
from rslora_colab.memory.estimate import estimate_vram
from rslora_colab.memory.plan import split_global_batch, training_estimate_kwargs
from rslora_colab.resilience.checkpoints import checkpoint_problem
from rslora_colab.runtime import detect_runtime
from rslora_colab.train.setup import fit_to_gpu, share_batch
from rslora_colab.watch import StopCallback

ROOT = Path(__file__).resolve().parents[1]
PROBE = str(Path(__file__).with_name("ddp_probe.py"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RSLORA_COLAB_DDP_TIMEOUT": "60"}
STEPS = 30
SETTINGS = {"r": 16, "max_steps": STEPS, "batch_size": 4, "grad_accum": 2, "max_seq_length": 128, "lr": 2e-4,
            "eval_fraction": 0.0}
"""Global batch 8: one process runs 4 x 2, two processes 4 x 1 each (the kit halves grad_accum). The CLI runs
start from the demo's own settings (``demo_training()``: lr 1e-3, 10% held out), the in-process runs from the
kit's: lr is the r = 16 preset for both, and no row is held out, so all 128 rows train."""
RTOL = 1e-5
LAUNCH_TIMEOUT = 240


def _args(out: Path, data: Path, **extra) -> list[str]:
    settings = {**SETTINGS, "checkpoint_minutes": 0, **extra}
    flags = ["--rank" if k == "r" else f"--{k.replace('_', '-')}" for k in settings]  # torchrun takes --r for --role
    pairs = [str(x) for flag, v in zip(flags, settings.values()) for x in (flag, v)]
    return ["train", "--data", str(data), "--out", str(out), "--sample", "", *pairs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(kind: str) -> list[str]:
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


def _launch(kind: str, evidence: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*_launcher(kind), PROBE, str(evidence), *args], env={**ENV, **env},
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, f"{kind} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _evidence(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def _losses(history: list[dict]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


def _events(history: list[dict]) -> list[dict]:
    return [h for h in history if "event" in h]


def _assert_same_curve(got: list[dict], want: list[dict]) -> None:
    got_losses, want_losses = _losses(got), _losses(want)
    assert len(got_losses) == len(want_losses)
    worst = max(abs(a - b) / abs(b) for a, b in zip(got_losses, want_losses))
    assert worst <= RTOL, f"loss curves differ by {worst:.3g} (relative) > {RTOL}"


@pytest.fixture(scope="module")
def data128(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "rows128.jsonl"
    demo_dataset(n=128).to_json(str(path))
    return path


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, demo_path, data128) -> dict:
    """One uninterrupted run of 30 steps in 2 processes under ``accelerate launch --multi_gpu``."""
    base = tmp_path_factory.mktemp("ddp")
    out, evidence = base / "out", base / "evidence"
    done = _launch("accelerate", evidence, _args(out, data128, checkpoint_every=10))
    return {"out": out, "evidence": evidence, "ranks": _evidence(evidence), "log": done.stdout}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, demo_path, data128):
    """The same run in this process: micro-batch 4, grad_accum 2."""
    out = tmp_path_factory.mktemp("single") / "out"
    return quick_finetune("demo", str(data128), output_dir=str(out), checkpoint_minutes=0, **SETTINGS)


@pytest.mark.ddp
def test_two_processes_train_one_adapter_with_the_loss_curve_of_one_process(two_processes, one_process):
    ranks = two_processes["ranks"]
    assert all(Path(r["kit"]).parent == ROOT / "rslora_colab" for r in ranks)  # the workers ran this checkout
    assert ranks[0]["settings"]["world_size"] == 2
    assert (ranks[0]["settings"]["batch_size"], ranks[0]["settings"]["grad_accum"]) == (4, 1)
    assert ranks[0]["settings"]["global_batch"] == one_process.settings["global_batch"] == 8
    assert ranks[0]["digest"] == ranks[1]["digest"] and ranks[0]["finite"], "the processes' adapters drifted apart"
    assert ranks[0]["history"] == ranks[1]["history"]
    _assert_same_curve(ranks[0]["history"], one_process.history)
    two = load_file(str(two_processes["out"] / "adapter" / "adapter_model.safetensors"))
    one = load_file(str(one_process.adapter_path / "adapter_model.safetensors"))
    assert two.keys() == one.keys()
    assert all(torch.allclose(two[k], one[k], rtol=1e-4, atol=1e-6) for k in two)


@pytest.mark.ddp
def test_rank_0_alone_talks_and_writes_and_checkpoints_hold_every_process_rng(two_processes):
    out, evidence, log = two_processes["out"], two_processes["evidence"], two_processes["log"]
    others = (evidence / "writes_rank1.txt").read_text().split("\n")
    # process 1 writes only its RNG state into the checkpoint being staged (torch.save: not seen by the audit hook)
    assert all(not line or (line.startswith("os.mkdir .staging-checkpoint-")) for line in others), others
    writes = (evidence / "writes_rank0.txt").read_text().split("\n")
    for once in ("write adapter/adapter_config.json", "write loss.png"):
        assert writes.count(once) == 1, once
    assert sum(line.startswith("write metrics.json") for line in writes) == 1
    assert log.count("training r=16") == 1 and log.count("saved: ") == 1  # one voice
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-20", "checkpoint-30"]
    for path in checkpoints:
        assert (path / "rng_state_0.pth").is_file() and (path / "rng_state_1.pth").is_file(), path
        assert checkpoint_problem(path) is None
    assert not list(out.glob(".staging-*")) and not list(out.glob("*.tmp"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["world_size"] == 2
    assert json.loads((out / "run_manifest.json").read_text())["global_batch"] == 8


EVAL = {"eval_fraction": 1 / 3, "eval_every": 5, "early_stopping_patience": 1, "lr": 1e-3}
"""48 rows: 16 held out, 32 train (4 global batches), and each process evaluates whole batches of 4, so DDP pads
nothing. At lr 1e-3 the eval loss falls until step 15 and rises at step 20 (measured: 3.537, 3.340, 3.224, 3.187,
3.196), so early stopping ends the run at step 20 and the kept adapter is step 15's, a checkpoint, not the last
weights."""


@pytest.mark.ddp
def test_evaluation_early_stopping_and_the_best_adapter_under_two_processes_match_one_process(tmp_path, demo_path):
    data, out = tmp_path / "rows48.jsonl", tmp_path / "out"
    demo_dataset(n=48).to_json(str(data))
    _launch("accelerate", tmp_path / "evidence", _args(out, data, **EVAL))
    ranks = _evidence(tmp_path / "evidence")
    single = quick_finetune("demo", str(data), output_dir=str(tmp_path / "single"), checkpoint_minutes=0,
                            **{**SETTINGS, **EVAL})
    assert ranks[0]["history"] == ranks[1]["history"]  # every process evaluated, stopped and chose alike
    _assert_same_curve(ranks[0]["history"], single.history)
    evals = [h for h in ranks[0]["history"] if "eval_loss" in h]
    want = [h for h in single.history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [h["step"] for h in want] == [0, 5, 10, 15, 20]
    assert all(math.isclose(a["eval_loss"], b["eval_loss"], rel_tol=RTOL) for a, b in zip(evals, want))
    assert ranks[0]["history"][-1]["step"] == single.history[-1]["step"] == 20  # stopped early, at the same step
    assert ranks[0]["adapter_step"] == ranks[1]["adapter_step"] == single.adapter_step == 15
    assert ranks[0]["digest"] == ranks[1]["digest"]  # both processes loaded the same best checkpoint
    assert json.loads((out / "metrics.json").read_text())["adapter_step"] == 15
    two = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    one = load_file(str(single.adapter_path / "adapter_model.safetensors"))
    assert two.keys() == one.keys() and all(torch.allclose(two[k], one[k], rtol=1e-4, atol=1e-6) for k in one)
    assert not list(out.glob(".staging-*")) and not list(out.glob("*.tmp"))


@pytest.mark.ddp
def test_a_nan_on_one_process_is_rolled_back_on_both(tmp_path, demo_path, data128, monkeypatch):
    _launch("torchrun", tmp_path / "evidence", _args(tmp_path / "out", data128), PROBE_NAN_STEP="15",
            PROBE_RANK="1")
    ranks = _evidence(tmp_path / "evidence")
    for rank in ranks:
        assert [(e["step"], e["event"], e["restored_step"]) for e in _events(rank["history"])] == [(15, "rollback", 10)]
    assert ranks[0]["history"] == ranks[1]["history"]  # the same lr cut on both
    assert ranks[0]["digest"] == ranks[1]["digest"] and ranks[0]["finite"]
    # the same NaN in one process: the same rollback, the same curve after it
    monkeypatch.setenv("PROBE_NAN_STEP", "15")
    monkeypatch.setenv("PROBE_RANK", "0")
    single = quick_finetune("demo", str(data128), output_dir=str(tmp_path / "single"), checkpoint_minutes=0,
                            callbacks=injections(StopCallback(), rank=0), **SETTINGS)
    assert _events(single.history)[0]["lr"] == pytest.approx(_events(ranks[0]["history"])[0]["lr"])
    _assert_same_curve(ranks[0]["history"], single.history)


@pytest.mark.ddp
def test_one_process_s_timer_out_of_memory_and_stop_button_are_decided_for_both(tmp_path, demo_path, data128):
    _launch("torchrun", tmp_path / "evidence", _args(tmp_path / "out", data128, max_steps=20),
            PROBE_SAVE_STEP="5", PROBE_OOM_STEP="12", PROBE_STOP_STEP="16", PROBE_RANK="1")
    ranks = _evidence(tmp_path / "evidence")
    # the checkpoint timer ran out on process 0 only: both saved checkpoint-5, complete
    assert checkpoint_problem(tmp_path / "out" / "checkpoint-5") is None
    assert (tmp_path / "out" / "checkpoint-5" / "rng_state_1.pth").is_file()
    for rank in ranks:
        # out of memory in process 1's forward pass: both halve the micro-batch from the same step
        assert _events(rank["history"]) == [{"step": 11, "event": "oom", "micro_batch": 2, "grad_accum": 2}]
        assert (rank["settings"]["batch_size"], rank["settings"]["grad_accum"]) == (2, 2)
        assert rank["settings"]["global_batch"] == 8
        # Stop pressed on process 0 only: both stopped after step 16
        assert _losses(rank["history"]) and rank["history"][-1]["step"] == 16
    assert ranks[0]["digest"] == ranks[1]["digest"]


@pytest.mark.ddp
def test_a_killed_launcher_takes_its_processes_along_and_resume_continues_on_both(tmp_path, demo_path, data128,
                                                                                  two_processes):
    out, evidence = tmp_path / "out", tmp_path / "evidence"
    args = _args(out, data128, checkpoint_every=5)
    launcher = subprocess.Popen([*_launcher("torchrun"), PROBE, str(evidence), *args], env={**ENV, "PROBE_SLOW": "0.3"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (out / "checkpoint-10").is_dir() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "checkpoint-10").is_dir(), "the run never reached checkpoint-10"
        workers = [int(pid) for pid in subprocess.run(["ps", "-o", "pid=", "--ppid", str(launcher.pid)],
                                                      capture_output=True, text=True).stdout.split()]
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "the workers outlived their launcher"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    newest = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert 10 <= newest < STEPS
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    done = _launch("torchrun", evidence, [*args, "--resume"])
    assert f"resuming from {out}/checkpoint-{newest} (step {newest} of {STEPS})" in done.stdout
    ranks = _evidence(evidence)
    uninterrupted = two_processes["ranks"][0]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    _assert_same_curve(ranks[1]["history"], uninterrupted["history"])

    # the same checkpoint in one process: another split of the same global batch is the same run; another global
    # batch is refused
    with pytest.raises(ValueError, match="global_batch: 8 in the saved run, 16 now"):
        quick_finetune("demo", str(data128), output_dir=str(copy), resume=True, checkpoint_minutes=0,
                       **{**SETTINGS, "grad_accum": 4})
    single = quick_finetune("demo", str(data128), output_dir=str(copy), resume=True, checkpoint_minutes=0,
                            checkpoint_every=5, **{**SETTINGS, "batch_size": 8, "grad_accum": 1})
    _assert_same_curve(single.history, uninterrupted["history"])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.ddp
def test_torchrun_where_each_process_would_train_alone_is_refused(tmp_path, demo_path):
    script = tmp_path / "alone.py"
    script.write_text(
        "import rslora_colab\n"
        "from rslora_colab.distributed import check_trainer_world, start\n"
        "from transformers import TrainingArguments\n"
        "start()\n"
        f"check_trainer_world(TrainingArguments(output_dir={str(tmp_path / 'out')!r}, use_cpu=False, "
        "report_to='none'))\n")
    # Unsloth's CPU backend forces use_cpu=True on every TrainingArguments, so the transformers branch shows it
    done = subprocess.run([*_launcher("torchrun"), str(script)], env={**ENV, "RSLORA_COLAB_NO_UNSLOTH": "1"},
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode != 0
    assert "the launcher started 2 processes (WORLD_SIZE=2" in done.stdout + done.stderr
    assert "would train alone on all the data" in done.stdout + done.stderr


@pytest.mark.ddp
def test_the_notebook_launcher_recipe_trains_in_two_processes(tmp_path, demo_path, data128):
    recipe = tmp_path / "cell.py"  # the cell of docs/scale-out.md, in a fresh interpreter (a fresh kernel)
    recipe.write_text(
        "from accelerate import notebook_launcher\n\n"
        "def train():\n"
        "    from rslora_colab import quick_finetune  # inside: importing the kit in the parent stops the launcher\n"
        f"    result = quick_finetune('demo', {str(data128)!r}, r=16, max_steps=6, batch_size=4, grad_accum=2,\n"
        f"                            max_seq_length=128, output_dir={str(tmp_path / 'out')!r})\n"
        "    # one string, one flush: both processes share stdout, and print's separate pieces can interleave\n"
        "    settings = result.settings\n"
        "    print(f\"processes {settings['world_size']} global batch {settings['global_batch']}\", flush=True)\n\n"
        "notebook_launcher(train, num_processes=2)\n")
    done = subprocess.run([sys.executable, str(recipe)], env=ENV, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("processes 2 global batch 8") == 2
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["settings"]["world_size"] == 2
    assert math.isfinite(json.loads((tmp_path / "out" / "metrics.json").read_text())["final_loss"])


# ---- without launching: the arithmetic and the refusals, in this process with a launcher's environment


@pytest.mark.parametrize("batch, accum, processes, expected", [
    (2, 4, 1, (2, 4)), (2, 4, 2, (2, 2)), (2, 4, 4, (2, 1)), (2, 4, 8, (1, 1)), (8, 1, 2, (4, 1)), (4, 2, 2, (4, 1)),
    (6, 2, 4, (3, 1)),
])
def test_the_global_batch_is_shared_by_the_processes(batch, accum, processes, expected):
    micro, per_process = split_global_batch(batch, accum, processes)
    assert (micro, per_process) == expected
    assert processes * micro * per_process == batch * accum and micro <= batch


def test_a_global_batch_the_processes_cannot_share_says_what_can():
    with pytest.raises(ValueError, match=r"8 sequences per optimizer step .* cannot be shared evenly by 3 processes.*"
                                         r"grad_accum=3 \(6 sequences\) or grad_accum=6 \(12 sequences\)"):
        split_global_batch(2, 4, 3)


def test_the_memory_plan_fits_each_gpu_with_its_share_of_the_global_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = share_batch(FinetuneConfig(r=16, batch_size=2, grad_accum=4, max_seq_length=2048, gpu="T4"))
    assert (config.batch_size, config.grad_accum) == (2, 2)
    planned, plan = fit_to_gpu("Llama-3.2-1B-Instruct", config)
    assert plan.fits and 2 * planned.batch_size * planned.grad_accum == 8
    kwargs = training_estimate_kwargs(detect_runtime(), config.target_modules)  # how quick_finetune trains here
    one, two = (estimate_vram("Llama-3.2-1B-Instruct", r=16, max_seq_length=2048, batch_size=b, **kwargs).total_gib
                for b in (1, 2))
    tight, plan = fit_to_gpu("Llama-3.2-1B-Instruct", dataclasses.replace(config, gpu=(one + two) / 2))
    assert plan.fits and (tight.batch_size, tight.grad_accum) == (1, 4)  # micro-batch 1 on each GPU, still 8 in all


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_a_process_without_a_gpu_of_its_own_is_refused(simulated_gpu, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1\), but only 1 GPU\(s\) are visible.*--nproc_per_node 1"):
        start()


def test_unsloth_fsdp2_is_refused_with_the_variable_to_unset(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("UNSLOTH_FSDP2", "1")
    monkeypatch.setitem(sys.modules, "unsloth", sys.modules.get("unsloth", object()))
    with pytest.raises(ValueError, match="UNSLOTH_FSDP2 asks Unsloth to shard the model.*Unset UNSLOTH_FSDP2"):
        start()
