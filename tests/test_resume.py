"""Checkpoints and resume, end to end through the real CLI: SIGKILL mid-save and at random steps, resume.

One scenario, so that the few CLI processes (each pays ~5 s of imports) serve every check:

1. a CLI run is killed while transformers writes checkpoint 10 (a real SIGKILL during a real save, which
   the test slows down with a sleep in transformers' RNG-state save so that the kill lands mid-write);
2. the previous checkpoint is the one found, also past a damaged newer folder; a fresh run over the
   unfinished one, and a resume with another rank or dataset, are refused;
3. ``--resume`` runs are SIGKILLed at random later steps, twice (three times if time allows);
4. a last ``--resume`` finishes all 40 steps, with every step's loss equal to a run never killed, and the
   adapter loads with PEFT.
"""

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from callbacks import StopAt
from safetensors.torch import load_file as safetensors_load
from transformers import TrainerCallback

from rslora_colab import demo_dataset, latest_valid_checkpoint, quick_finetune
from rslora_colab.cli import main
from rslora_colab.demo import demo_data, demo_training
from rslora_colab.resilience.checkpoints import OutputWriteError, checkpoint_problem

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
STEPS = 40
ARGS = ["train", "--max-steps", str(STEPS), "--batch-size", "2", "--grad-accum", "1", "--seq", "128", "--rank", "8",
        "--checkpoint-every", "5", "--sample", "", "--resume"]
SAME = {**demo_training(), "r": 8, "max_steps": STEPS, "batch_size": 2, "grad_accum": 1, "max_seq_length": 128,
        "checkpoint_every": 5}
"""The CLI run's settings (the demo's own under the options typed), for in-process calls on the same output folder;
its data is the demo's own, ``demo_data()``."""

SLOW_SAVE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from transformers import Trainer
    from rslora_colab.cli import main

    save_rng = Trainer._save_rng_state
    def slow_save_rng(self, output_dir):  # mid-checkpoint: adapter and optimizer written, RNG and state not yet
        if self.state.global_step == 10:
            Path(sys.argv[1]).touch()
            time.sleep(60)
        save_rng(self, output_dir)
    Trainer._save_rng_state = slow_save_rng
    main(sys.argv[2:])
""")


def _cli(out: Path, *python: str) -> subprocess.Popen:
    command = [sys.executable, *(python or ["-m", "rslora_colab"]), *ARGS, "--out", str(out)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _kill(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGKILL)
    return proc.communicate()[0]


def _wait_for(done, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _newest_step(out: Path) -> int:
    return max((int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")), default=0)


def test_killed_cli_runs_resume_to_the_full_run(tmp_path, demo_path):
    out, marker = tmp_path / "run", tmp_path / "saving"

    # 1. SIGKILL while checkpoint 10 is being written
    proc = _cli(out, "-c", SLOW_SAVE, str(marker))
    _wait_for(marker.exists, proc)
    assert marker.exists(), "the run never reached the save at step 10"
    printed = _kill(proc)
    staged = out / ".staging-checkpoint-10" / "run" / "checkpoint-10"  # inside, a folder named like the run
    assert (staged / "optimizer.pt").exists() and not (staged / "trainer_state.json").exists()  # half-written
    assert not (out / "checkpoint-10").exists()  # ... and never published

    # 2. the previous checkpoint is used; a damaged newer folder (a non-atomic writer, a bad copy) is skipped
    assert latest_valid_checkpoint(out).name == "checkpoint-5"
    shutil.copytree(out / "checkpoint-5", out / "checkpoint-7")
    weights = out / "checkpoint-7" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "adapter_model.safetensors cannot be loaded" in checkpoint_problem(out / "checkpoint-7")
    assert latest_valid_checkpoint(out).name == "checkpoint-5"
    with pytest.raises(ValueError, match=r"unfinished run .*step 5 of 40.*resume=True \(CLI: --resume\)"):
        quick_finetune(demo_path, demo_data(), output_dir=str(out), **SAME)
    with pytest.raises(ValueError, match=r"r: 8 in the saved run, 16 now") as refused:
        quick_finetune(demo_path, demo_data(), output_dir=str(out), resume=True, **{**SAME, "r": 16})
    assert "alpha: 8.0 in the saved run, 16.0 now" in str(refused.value)
    with pytest.raises(ValueError, match=r"dataset: '\w+' in the saved run.*\n.*rows: 71 in the saved run, 63 now"):
        quick_finetune(demo_path, demo_dataset(questions="heading", n=70), output_dir=str(out), resume=True, **SAME)

    # 3. SIGKILL --resume runs at random later steps
    rng, deadline, kills = random.Random(), time.monotonic() + 15, 0
    while kills < 2 or (kills < 3 and time.monotonic() < deadline):
        proc = _cli(out)
        target = _newest_step(out) + rng.randrange(4, 10)
        _wait_for(lambda: _newest_step(out) >= target, proc)
        time.sleep(rng.uniform(0, 0.3))  # a few steps past that checkpoint (~0.05 s a step), or mid-save
        if proc.poll() is not None:
            break  # it finished first: the last run below resumes the finished run
        printed += _kill(proc)
        kills += 1
    assert kills >= 2 and printed.count("resuming from") >= 2  # each continued a checkpoint, not step 0

    # 4. the last --resume ends at the full step count, exactly like a run that was never killed
    final = subprocess.run([sys.executable, "-m", "rslora_colab", *ARGS, "--out", str(out)], env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-3000:]
    assert latest_valid_checkpoint(out).name == f"checkpoint-{STEPS}" and not list(out.glob(".staging-*"))
    history = [h for h in json.loads((out / "metrics.json").read_text())["history"] if "loss" in h]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))  # every step once, in order
    straight = quick_finetune(demo_path, demo_data(), output_dir=str(tmp_path / "straight"), **SAME)
    # same data order, lr and adapter precision (bf16 adapters stay bf16 after a resume)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in straight.history if "loss" in h],
                                                         abs=1e-6)
    evals = [h for h in json.loads((out / "metrics.json").read_text())["history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 5, 10, 15, 20, 25, 30, 35, 40]  # each once, across four resumes
    assert [h["eval_loss"] for h in evals] == pytest.approx([h["eval_loss"] for h in straight.eval_history], abs=1e-6)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_path), out / "adapter")
    lora = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora and all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in lora)


# ---------------------------------------------------------------- checkpoints that do not load are skipped

QUICK = {"r": 8, "batch_size": 2, "grad_accum": 1, "max_seq_length": 64, "checkpoint_minutes": 0}



def _corrupt_after_header(path: Path) -> None:
    """Overwrite a safetensors file's tensor bytes with 0xFF (NaN in fp32), leaving its header intact."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)
    path.write_bytes(bytes(data))


def _pickled_object(path: Path) -> None:
    torch.save({"state": {}, "hook": Path("not a tensor")}, path)  # loads only by unpickling an arbitrary object


def _no_step(path: Path) -> None:
    path.write_text(json.dumps({"max_steps": 8, "log_history": []}))


def _string_step(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "global_step": "4"}))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, demo_path) -> Path:
    out = tmp_path_factory.mktemp("good")
    quick_finetune(demo_path, demo_dataset(n=16), output_dir=str(out), max_steps=4, checkpoint_every=4, **QUICK)
    return out / "checkpoint-4"


def test_a_published_checkpoint_has_the_runs_model_card_and_arguments(good_checkpoint):
    """Written inside a staging folder, published in the run's: TRL's model card beside it names the run (not the
    staging folder), the checkpoint's ``training_args.bin`` names the run folder, and no staging folder is left."""
    out = good_checkpoint.parent
    card = (out / "README.md").read_text()
    assert f"# Model Card for {out.name}\n" in card and ".staging" not in card
    assert torch.load(good_checkpoint / "training_args.bin", weights_only=False).output_dir == str(out)
    assert not list(out.glob(".staging-*"))


@pytest.mark.parametrize("damage, expected", [
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:-500]),
     "optimizer.pt cannot be loaded (RuntimeError: PytorchStreamReader failed"),
    (lambda c: _corrupt_after_header(c / "adapter_model.safetensors"),
     "adapter_model.safetensors holds NaN or inf values"),
    (lambda c: (c / "scheduler.pt").write_bytes(b"PK\x03\x04 truncated"), "scheduler.pt cannot be loaded"),
    (lambda c: (c / "rng_state.pth").write_bytes(b"\x80\x04garbage"), "rng_state.pth cannot be loaded"),
    (lambda c: _pickled_object(c / "optimizer.pt"), "optimizer.pt cannot be loaded (UnpicklingError: Weights only"),
    (lambda c: _no_step(c / "trainer_state.json"), "trainer_state.json is unreadable (ValueError: it records no step"),
    (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json is unreadable (JSONDecodeError"),
    (lambda c: _string_step(c / "trainer_state.json"),
     "trainer_state.json is unreadable (ValueError: it records no step count (global_step='4'"),
], ids=["truncated-optimizer", "nan-adapter", "bad-scheduler", "bad-rng", "pickled-object", "no-step", "bad-json",
        "string-step"])
def test_a_checkpoint_counts_only_if_every_file_loads_and_is_finite(good_checkpoint, tmp_path, damage, expected):
    assert checkpoint_problem(good_checkpoint) is None
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(good_checkpoint, copy)
    damage(copy)
    assert expected in checkpoint_problem(copy)


def test_resume_falls_back_past_a_truncated_optimizer_and_a_nan_adapter(demo_path, tmp_path, capsys):
    out = tmp_path / "run"
    data = demo_dataset(n=16)
    settings = dict(output_dir=str(out), max_steps=12, checkpoint_every=4, keep_checkpoints=3, **QUICK)
    cut = quick_finetune(demo_path, data, callbacks=[StopAt(8)], **settings)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    optimizer = out / "checkpoint-8" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-1000])  # a copy cut short
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    _corrupt_after_header(out / "checkpoint-6" / "adapter_model.safetensors")  # bytes gone bad, header intact
    capsys.readouterr()
    result = quick_finetune(demo_path, data, resume=True, **settings)
    printed = capsys.readouterr().out
    assert f"skipping {out / 'checkpoint-8'}: optimizer.pt cannot be loaded (RuntimeError: " in printed
    assert f"skipping {out / 'checkpoint-6'}: adapter_model.safetensors holds NaN or inf values" in printed
    assert f"resuming from {out / 'checkpoint-4'} (step 4 of 12)" in printed
    steps = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, 13)) and all(math.isfinite(h["loss"]) for h in steps)
    assert [h["loss"] for h in steps[:4]] == [h["loss"] for h in cut.history[:4]]
    assert not [h for h in result.history if "event" in h]  # no NaN reached training: nothing to roll back


# ---------------------------------------------------------------- saves that fail say how to go on

class ReadOnlyAt(TrainerCallback):
    """Makes the output folder read-only after ``step``, as when a Drive mount goes read-only mid-run."""

    def __init__(self, folder: Path, step: int, stack: contextlib.ExitStack, read_only):
        self.folder, self.step, self.stack, self.read_only = folder, step, stack, read_only

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.stack.enter_context(self.read_only(self.folder))


def test_a_folder_that_turns_read_only_mid_run_stops_with_how_to_resume(demo_path, tmp_path, read_only):
    out = tmp_path / "run"
    settings = dict(output_dir=str(out), max_steps=8, checkpoint_every=2, **QUICK)
    with contextlib.ExitStack() as stack:
        with pytest.raises(OutputWriteError) as err:
            quick_finetune(demo_path, demo_dataset(n=16), callbacks=[ReadOnlyAt(out, 3, stack, read_only)],
                           **settings)
    message = str(err.value)
    assert message.startswith(f"could not write checkpoint-4 to {out} (PermissionError")
    assert "training stopped at step 4" in message and "--resume" in message
    assert f"continues from {out / 'checkpoint-2'}" in message
    result = quick_finetune(demo_path, demo_dataset(n=16), resume=True, **settings)  # writable again
    assert [h["step"] for h in result.history if "loss" in h] == list(range(1, 9))


def test_a_failed_final_save_is_resumed_not_retrained(demo_path, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_manifest.json").write_text("{}")  # an earlier run's folder (its files are the kit's) ...
    (out / "adapter").write_text("a file where the adapter folder goes")  # ... with a file in the way at the end
    args = ["train", "--max-steps", "6", "--batch-size", "2", "--grad-accum", "1", "--seq", "64", "--rank", "8",
            "--sample", "", "--out", str(out)]
    assert main(args) == 4
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in errors[0]  # one line, no traceback
    assert errors[0].startswith("error: training finished, but saving the adapter and metrics to")
    assert "--resume" in errors[0]
    (out / "adapter").unlink()
    with pytest.raises(ValueError, match="finished training .step 6 of 6. but whose adapter and metrics were never "
                                         "saved.*resume=True"):
        quick_finetune(demo_path, demo_dataset(), output_dir=str(out))
    assert (out / "checkpoint-6").is_dir()  # not deleted
    assert main([*args, "--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().out
    from safetensors.torch import load_file

    saved, trained = (load_file(str(folder / "adapter_model.safetensors")) for folder in (out / "adapter",
                                                                                           out / "checkpoint-6"))
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)  # step 6's
    assert any(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)  # a trained adapter, not a fresh one
    assert json.loads((out / "run_manifest.json").read_text())["final_save"] == "done"
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 7))
    assert [h["step"] for h in history if "eval_loss" in h] == [0, 2, 4, 6]  # the demo holds out 10%


# ---------------------------------------------------------------- Ctrl-C

def _read_into(stream, sink: list) -> threading.Thread:
    def pump():
        for chunk in iter(lambda: stream.read1(4096), b""):
            sink.append(chunk)
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum, by, status, steps", [(signal.SIGINT, "Ctrl-C", 130, 400),
                                                     (signal.SIGTERM, "SIGTERM", 143, 60)],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_after_the_step_saves_a_checkpoint_and_resume_finishes(tmp_path, demo_path, signum, by,
                                                                              status, steps):
    """Ctrl-C, and SIGTERM (what Docker, Kubernetes and preemptible VMs send before they kill), to a real CLI run:
    it stops after the current step with a checkpoint there, and ``--resume`` trains every step once."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "rslora_colab", "train", "--max-steps", str(steps), "--batch-size", "1",
               "--grad-accum", "1", "--seq", "64", "--rank", "4", "--sample", "", "--checkpoint-minutes", "60",
               "--out", str(out)]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = [], []
    readers = [_read_into(proc.stdout, stdout), _read_into(proc.stderr, stderr)]
    deadline = time.monotonic() + 120
    third = re.compile(rf"\| +[3-9]/{steps} ".encode())
    while not third.search(b"".join(stderr)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the third step on the progress bar
    sent = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == status
    stopped_in = time.monotonic() - sent
    for reader in readers:
        reader.join(timeout=10)
    printed, errors = b"".join(stdout).decode(), b"".join(stderr).decode()
    assert f"{by}: stopping after this step and saving a checkpoint" in printed
    assert "Traceback" not in errors
    if signum == signal.SIGTERM:
        assert stopped_in < 10  # within Docker's default 10 s grace period here
    stopped = re.search(rf"interrupted: stopped by {by} after step (\d+) of {steps}; the checkpoint (\S+) holds it\. "
                        r"Run the same command with --resume", errors)
    assert stopped, errors[-2000:]
    step = int(stopped.group(1))
    assert 3 <= step < steps and Path(stopped.group(2)) == out / f"checkpoint-{step}"
    assert checkpoint_problem(out / f"checkpoint-{step}") is None
    final = subprocess.run([*command, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'} (step {step} of {steps})" in final.stdout
    history = [h for h in json.loads((out / "metrics.json").read_text())["history"] if "loss" in h]
    assert [h["step"] for h in history] == list(range(1, steps + 1))


def test_the_best_checkpoint_survives_a_resume_from_another_directory(tmp_path, demo_path):
    """The run's folder given relatively, stopped at a checkpoint, resumed from elsewhere by its absolute path: the
    best checkpoint is still the one saved as the adapter, identical to an uninterrupted run's."""
    options = ["--batch-size", "8", "--grad-accum", "1", "--seq", "128", "--rank", "8", "--max-steps", "40",
               "--checkpoint-every", "5", "--save-best", "true", "--keep-checkpoints", "1", "--lr", "0.004",
               "--sample", ""]
    train = [sys.executable, "-m", "rslora_colab", "train", *options]
    whole = subprocess.run([*train, "--out", str(tmp_path / "whole")], env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    here = tmp_path / "here"
    here.mkdir()
    proc = subprocess.Popen([*train, "--out", "run"], cwd=here, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    readers = [_read_into(proc.stdout, []), _read_into(proc.stderr, [])]
    deadline = time.monotonic() + 300
    while not (here / "run" / "checkpoint-25").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # stops after this step, with a checkpoint there
    assert proc.wait(timeout=120) == 143
    for reader in readers:
        reader.join(timeout=10)
    resumed = subprocess.run([*train, "--out", str(here / "run"), "--resume"], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "does not exist anymore" not in resumed.stdout + resumed.stderr
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path / "whole", here / "run")]
    assert metrics[0]["adapter_step"] == metrics[1]["adapter_step"] < 40  # the best, not the last step
    weights = [safetensors_load(folder / "adapter" / "adapter_model.safetensors")
               for folder in (tmp_path / "whole", here / "run")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_folder_holding_the_users_own_files_is_never_overwritten(tmp_path, demo_path, monkeypatch, capsys):
    """The issue's case: `--out .` in a folder with the user's README.md. Refused, naming it; a folder whose files
    have other names trains, and they stay as they were."""
    mine = tmp_path / "p"
    mine.mkdir()
    (mine / "README.md").write_text("# mine\n")
    (mine / "metrics.json").write_text('{"mine": true}')
    monkeypatch.chdir(mine)
    train = ["train", "--max-steps", "3", "--batch-size", "2", "--grad-accum", "1", "--seq", "64", "--rank", "4",
             "--sample", ""]
    assert main([*train, "--out", "."]) == 2
    error = capsys.readouterr().err
    assert "holds README.md, metrics.json, which this kit did not write" in error and "Nothing was trained" in error
    assert (mine / "README.md").read_text() == "# mine\n" and (mine / "metrics.json").read_text() == '{"mine": true}'
    other = tmp_path / "q"
    other.mkdir()
    (other / "data.jsonl").write_text("{}\n")
    assert main([*train, "--out", str(other)]) == 0
    assert (other / "data.jsonl").read_text() == "{}\n" and (other / "adapter" / "adapter_config.json").is_file()
    assert main([*train, "--out", str(other)]) == 0  # the folder is a run's now: a new run may replace that run


@pytest.mark.parametrize("text, expected", [("{not json", r"is damaged, not JSON \(Expecting"),
                                            ("[]", "is damaged: it holds a JSON list, not an object")],
                         ids=["not-json", "a-list"])
def test_a_damaged_manifest_names_the_file_and_the_fix(good_checkpoint, tmp_path, demo_path, text, expected):
    out = tmp_path / "run"
    shutil.copytree(good_checkpoint.parent, out)
    (out / "run_manifest.json").write_text(text)
    for resume in (True, False):
        with pytest.raises(ValueError, match=rf"run_manifest.json: {expected}.*delete it to start over"):
            quick_finetune(demo_path, demo_dataset(n=16), output_dir=str(out), max_steps=4, checkpoint_every=4,
                           resume=resume, **QUICK)


@pytest.mark.parametrize("text, expected", [("garbage", "metrics.json: is damaged, not JSON"),
                                            ('{"settings": "x"}', "metrics.json: is damaged: its 'settings' is a str")],
                         ids=["not-json", "settings-not-an-object"])
def test_export_over_a_damaged_metrics_file_names_it(good_checkpoint, tmp_path, text, expected, capsys):
    out = tmp_path / "run"
    shutil.copytree(good_checkpoint.parent, out)
    (out / "metrics.json").write_text(text)
    assert main(["export", "--adapter", str(out / "adapter"), "--how", "merged_16bit",
                 "--out", str(tmp_path / "merged")]) == 2
    assert expected in capsys.readouterr().err


def test_an_adapter_whose_config_and_weights_disagree_is_named(good_checkpoint, tmp_path):
    from rslora_colab import load_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(good_checkpoint.parent / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": 16}))  # over r=8 weights
    with pytest.raises(ValueError, match=r"adapter_config.json and its weights do not belong together \(size mism"):
        load_adapter(adapter)


def test_resume_checks_every_row_an_edit_to_row_1_of_5000_is_refused(tmp_path, demo_path):
    rows = [{"instruction": f"Give the heading of topic {i}.", "output": f"Topic {i}"} for i in range(5000)]
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=6, checkpoint_every=2, eval_fraction=0, **QUICK)
    quick_finetune(demo_path, rows, callbacks=[StopAt(2)], **settings)
    edited = [dict(row) for row in rows]
    edited[1]["output"] = "Topic one"  # one row, not one an evenly spaced sample of 2,048 would read
    with pytest.raises(ValueError, match=r"(?s)Cannot resume.*dataset"):
        quick_finetune(demo_path, edited, resume=True, **settings)


def test_a_skipped_checkpoint_names_the_real_cause_not_its_first_200_characters(good_checkpoint, tmp_path):
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(good_checkpoint, copy)
    _pickled_object(copy / "optimizer.pt")
    problem = checkpoint_problem(copy)
    assert "Unsupported global: GLOBAL pathlib.PosixPath" in problem and "\x1b[" not in problem
