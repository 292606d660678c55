import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest

from rslora_colab import cli
from rslora_colab.cli import main
from rslora_colab.resilience.checkpoints import OutputWriteError
from rslora_colab.resilience.guard import DivergenceError

ROOT = Path(__file__).resolve().parents[1]


def test_cli_demo_runs_end_to_end(tmp_path, demo_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rslora_colab", "train", "--max-steps", "30", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "offline demo" in proc.stdout
    assert "Before training" in proc.stdout and "After training" in proc.stdout
    assert "%|" in proc.stderr  # the progress bar
    assert "A held-out question (an eval row, never trained on)" in proc.stdout  # and what it answers
    assert (out / "adapter" / "adapter_config.json").exists()
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 31))
    # the demo holds out 10% of its rows: eval loss before training, every 20% of the steps, and at the end
    assert [h["step"] for h in history if "eval_loss" in h] == [0, 6, 12, 18, 24, 30]
    assert (out / "loss.png").exists()


def test_help_lists_the_options(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as stop:
        assert stop.code == 0
    assert "--rank" in capsys.readouterr().out


def test_bad_data_exits_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"instruction": "hi", "output": "yo"}\n{"instruction": "hi"}\n')
    assert main(["train", "--model", "demo", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl line 2: field 'output' must be a non-empty string" in err


def test_cli_dpo_then_chat_then_export(tmp_path, capsys, demo_path):
    out = tmp_path / "dpo"
    assert main(["train", "--method", "dpo", "--max-steps", "3", "--batch-size", "4", "--seq", "128", "--sample", "",
                 "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "158 preference pairs" in shown and "reward margin (chosen - rejected)" in shown
    assert "on 16 held-out pairs: reward accuracy" in shown  # the demo holds out 10% of its pairs
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert (settings["method"], settings["beta"]) == ("dpo", 0.1)
    adapter = str(out / "adapter")
    assert main(["chat", "--adapter", adapter, "--prompt", "Give the heading of the topic 'assert'.",
                 "--max-new-tokens", "4"]) == 0
    assert main(["export", "--adapter", adapter, "--how", "merged_16bit", "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert "saved merged_16bit" in capsys.readouterr().out


def test_an_unreachable_hub_dataset_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rslora_colab", "train", "--model", "demo", "--data",
                           "no-such-org/no-such-data", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: dataset 'no-such-org/no-such-data': not a local file, and the Hugging Face Hub "
                           "could not provide it")
    assert "check its spelling, the network" in line and "Nothing was trained yet" in line
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("error, status", [(ValueError("bad"), 2), (DivergenceError("bad"), 3),
                                           (OutputWriteError("bad"), 4)])
def test_each_expected_error_is_one_line_with_its_exit_status(error, status, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "build_parser", lambda: SimpleNamespace(parse_args=lambda argv: Namespace(func=fail)))
    assert main([]) == status
    assert capsys.readouterr().err == "error: bad\n"


def test_without_model_the_users_data_gets_the_automatic_split_not_the_demos(caplog):
    """The demo model on the user's file: its training settings, but not the demo data's 10% eval split (on a
    380k-row file that held out 38k rows), and no line about the demo's 79 questions."""
    import logging

    import torch

    from rslora_colab.commands.common import resolve_job
    from rslora_colab.demo import demo_training

    if torch.cuda.is_available():
        pytest.skip("with a GPU, no --model means the GPU default model, not the demo")
    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        model, data, overrides = resolve_job(None, "mine.jsonl", {"r": 8})
    assert (model, data) == ("demo", "mine.jsonl") and "eval_fraction" not in overrides
    assert overrides["lr"] == demo_training("sft")["lr"] and overrides["r"] == 8
    assert "on mine.jsonl" in caplog.text and "79 questions" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        assert resolve_job(None, None, {})[2]["eval_fraction"] == demo_training("sft")["eval_fraction"]
    assert "79 questions" in caplog.text


def test_an_error_while_a_progress_bar_is_open_starts_its_own_line(capsys):
    import re
    import sys

    from tqdm import tqdm

    from rslora_colab.cli import say

    bar = tqdm(total=10, file=sys.stderr)
    bar.update(3)  # training stopped mid-bar: the cursor is at the end of the bar's line
    say("error: the disk is full")
    bar.close()
    err = capsys.readouterr().err
    assert re.search(r"(^|[\r\n])error: the disk is full\n", err), repr(err)
    assert not re.search(r"\]error:", err)


def test_generated_options_default_to_not_given_and_say_what_no_flag_does():
    """The options come from HfArgumentParser, through argparse's public add_argument (commands/options.py): if
    transformers stopped calling it, nothing typed would be told from a default, and this fails."""
    from rslora_colab import FinetuneConfig
    from rslora_colab.commands.options import config_parser, given

    parser = config_parser(FinetuneConfig, ["r", "guard", "max_steps"])
    assert given(parser.parse_args([]), ["r", "guard", "max_steps"]) == {}
    assert given(parser.parse_args(["--r", "8", "--no-guard"]), ["r", "guard", "max_steps"]) == {"r": 8, "guard": False}
    assert "turn guard off" in parser.format_help()
