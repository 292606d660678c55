"""Driving the control panel from code, as a user would with the mouse."""

import datetime
import time

import pytest

from rslora_colab import control_panel, lr_for_rank
from rslora_colab.notebook.panel import RANK_MAX, model_choices, save_upload

LLAMA_8B = "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"


def _text(output) -> str:
    """Everything an ipywidgets Output holds as stream text."""
    return "".join(item.get("text", "") for item in output.outputs)


def test_rank_fills_the_learning_rate_until_the_user_types_one():
    panel = control_panel("demo", "demo", r=16)
    assert panel.lr.value == pytest.approx(2e-4) and panel.alpha.value == 16
    panel.rank.value = 64
    assert panel.lr.value == pytest.approx(1e-4) and panel.alpha.value == 64
    panel.lr.value = 5e-4  # the user types their own
    assert panel.lr_auto.value is False
    panel.rank.value = 128
    assert panel.lr.value == pytest.approx(5e-4) and panel.alpha.value == 128  # alpha still follows
    assert panel.settings["lr"] == pytest.approx(5e-4) and panel.settings["r"] == 128
    panel.lr_auto.value = True  # back to the rank's rate
    assert panel.lr.value == pytest.approx(lr_for_rank(128))


def test_8b_at_8192_by_8_does_not_fit_and_says_why():
    panel = control_panel("demo", "demo", gpu="T4")
    assert panel.gauge_bar.bar_style == "success" and "fits" in panel.gauge_text.value
    panel.model.value = LLAMA_8B
    panel.max_seq_length.value = 8192
    panel.batch_size.value = 8
    text = panel.gauge_text.value
    assert panel.gauge_bar.bar_style == "danger" and panel.fit.fits is False
    assert "won't fit" in text and "14.74 GiB" in text
    assert "logits" in text and "8192 x 8" in text  # the reason: what grows with the batch shape
    assert "micro-batch 2" in text  # and what would fit
    assert panel.gauge_bar.value == panel.gauge_bar.max == pytest.approx(14.74)
    panel.model.value = "someone/unknown-model"
    assert panel.gauge_bar.bar_style == "warning" and "no estimate" in panel.gauge_text.value


def test_clicking_train_on_cpu_fills_the_history(tmp_path):
    panel = control_panel("demo", "demo", r=8, max_steps=6, batch_size=2, max_seq_length=64,
                          output_dir=str(tmp_path))
    panel.train_button.click()
    assert panel.running and panel.train_button.disabled and not panel.stop_button.disabled
    result = panel.wait(timeout=240)
    assert result is panel.result and [h["step"] for h in result.history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    # the demo's own 10% held out: the eval loss before, during and after, on the panel's plot and status
    assert panel.eval_split.value == 0.1 and [h["step"] for h in result.history if "eval_loss" in h] == [0, 2, 4, 6]
    assert "eval loss" in panel.status.value and "eval loss" in panel.watch.label.value
    assert panel.watch.bar.value == 6 and panel.watch.bar.bar_style == "success"
    assert panel.watch.draws >= 2 and panel.watch.image.value[:4] == b"\x89PNG"
    assert "done" in panel.status.value and "done at step 6/6" in panel.watch.label.value
    assert "training r=8" in _text(panel.log)  # the thread's prints land in the panel's log
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not panel.train_button.disabled and panel.stop_button.disabled


def test_stop_ends_training_early_and_keeps_the_adapter(tmp_path):
    panel = control_panel("demo", "demo", r=8, max_steps=500, batch_size=2, max_seq_length=64,
                          output_dir=str(tmp_path))
    panel.train_button.click()
    deadline = time.monotonic() + 120
    while len(panel.watch.history) < 2 and panel.running and time.monotonic() < deadline:
        time.sleep(0.05)
    panel.stop_button.click()
    result = panel.wait(timeout=120)
    assert 2 <= len(result.history) < 500
    assert "stopped early" in panel.status.value and panel.watch.bar.bar_style == "warning"
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_train_on_a_folder_in_use_by_a_live_run_shows_the_refusal(tmp_path):
    from rslora_colab.resilience.lock import run_lock

    panel = control_panel("demo", "demo", r=8, max_steps=4, batch_size=2, max_seq_length=64,
                          output_dir=str(tmp_path))
    with run_lock(tmp_path):  # another run (here: this cell's) holds the folder
        panel.train_button.click()
        with pytest.raises(ValueError, match="in use by a live run"):
            panel.wait(timeout=120)
    assert "failed: ValueError: output_dir=" in panel.status.value and "in use by a live run" in panel.status.value
    assert "ERROR: output_dir=" in _text(panel.log) and "Traceback" not in _text(panel.log)  # one line in the log
    assert not panel.train_button.disabled and not (tmp_path / "run_manifest.json").exists()


def test_bad_choices_do_not_start_and_say_what_to_fix():
    panel = control_panel("demo", "demo")
    panel.dataset.value = ""
    assert panel.train() is False and not panel.running
    assert "dataset" in panel.status.value
    with pytest.raises(ValueError, match="r=512"):
        control_panel("demo", "demo", r=RANK_MAX * 2)


def test_upload_is_written_and_becomes_the_dataset(tmp_path):
    panel = control_panel("demo", "demo", output_dir=str(tmp_path))
    rows = b'{"instruction": "hi", "output": "yo"}\n'
    panel.upload.value = ({"name": "mine.jsonl", "type": "application/json", "size": len(rows),
                           "content": memoryview(rows),
                           "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    path = tmp_path / "uploads" / "mine.jsonl"
    assert panel.dataset.value == str(path) and path.read_bytes() == rows
    assert panel.settings["dataset"] == str(path)
    older = save_upload({"old.jsonl": {"metadata": {"name": "old.jsonl"}, "content": rows}}, tmp_path)  # ipywidgets 7
    assert older.read_bytes() == rows


def test_model_list_is_demo_then_the_catalog():
    choices = model_choices()
    assert choices[0] == "demo" and LLAMA_8B in choices
    assert control_panel("demo", "demo").model.options == tuple(choices)
