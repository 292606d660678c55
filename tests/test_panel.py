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
    panel = control_panel("demo", "demo", output_dir=str(tmp_path / "run"))  # uploads go beside the run folders
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


SMALL = {"r": 8, "batch_size": 2, "max_seq_length": 64}


def _adapter_bytes(folder) -> bytes:
    return (folder / "adapter" / "adapter_model.safetensors").read_bytes()


def test_run_all_then_train_never_replaces_the_finished_adapter(tmp_path):
    base = tmp_path / "01_quickstart"
    panel = control_panel("demo", "demo", max_steps=4, output_dir=str(base), **SMALL)
    first = panel.run()  # the notebook's Train cell, under Run all
    assert panel.folder == base and first.adapter_path == base / "adapter" and not panel.train_button.disabled
    assert "done" in panel.status.value and str(base.resolve()) in panel.status.value  # the full path
    assert "done at step 4/4" in panel.watch.label.value  # the panel followed the Run-all run
    before = _adapter_bytes(base)
    panel.train_button.click()  # then the user clicks Train
    second = panel.wait(timeout=240)
    assert panel.folder == tmp_path / "01_quickstart-2" and second.adapter_path == panel.folder / "adapter"
    assert str(panel.folder.resolve()) in panel.status.value
    assert _adapter_bytes(base) == before  # the finished run is untouched
    panel.run()  # Run all again: a third folder, never over the finished ones
    assert panel.folder == tmp_path / "01_quickstart-3" and _adapter_bytes(base) == before


def test_run_all_again_continues_an_unfinished_run_and_train_does_not(tmp_path):
    from callbacks import StopAt

    from rslora_colab import quick_finetune
    from rslora_colab.notebook import folder_state
    base = tmp_path / "nb"
    panel = control_panel("demo", "demo", max_steps=4, output_dir=str(base), **SMALL)
    quick_finetune(**panel.settings, checkpoint_every=1, callbacks=[StopAt(2)])  # cut off at step 2 of 4
    assert folder_state(base) == "unfinished" and folder_state(tmp_path / "none") == "empty"
    assert panel.train() and panel.wait(timeout=240) is not None  # a click is a new run, in a new folder
    assert panel.folder == tmp_path / "nb-2" and folder_state(base) == "unfinished"
    result = panel.run()  # Run all continues the unfinished one
    assert panel.folder == base and max(h["step"] for h in result.history if "loss" in h) == 4
    assert folder_state(base) == "taken"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not the kit's")
    assert folder_state(tmp_path / "mine") == "taken"


def test_a_click_made_while_cells_ran_starts_nothing(tmp_path, monkeypatch):
    import rslora_colab.notebook.panel as panel_module

    panel = control_panel("demo", "demo", max_steps=2, output_dir=str(tmp_path / "run"), **SMALL)
    monkeypatch.setitem(panel_module._cell_ended, "at", time.monotonic())  # a cell (Run all) has just finished
    panel.train_button.click()  # the click the kernel could only read now
    assert not panel.running and panel.result is None and not (tmp_path / "run").exists()
    assert "ignored" in panel.status.value and "click <b>Train</b> again" in panel.status.value
    monkeypatch.setitem(panel_module._cell_ended, "at", time.monotonic() - 10)  # the user clicks again, later
    panel.train_button.click()
    assert panel.wait(timeout=240) is not None and (tmp_path / "run" / "adapter").is_dir()


def test_a_red_gauge_asks_for_a_second_click(tmp_path):
    panel = control_panel("demo", "demo", max_steps=2, output_dir=str(tmp_path / "run"), gpu=0.001, **SMALL)
    assert panel.fit.fits is False
    assert panel.train() is False and not panel.running and "won't fit" in panel.status.value
    assert "click <b>Train</b> again" in panel.status.value
    panel.batch_size.value = 1  # a change: the gauge is read again, and asks again
    assert panel.train() is False and not panel.running
    assert panel.train() is True  # the second click goes ahead
    assert panel.wait(timeout=240) is not None


def test_switching_to_a_real_model_takes_its_batch_and_steps_not_the_demos():
    panel = control_panel("demo", "demo")
    assert (panel.batch_size.value, panel.grad_accum.value) == (8, 1)  # the demo's own
    panel.model.value = LLAMA_8B
    assert (panel.batch_size.value, panel.grad_accum.value, panel.max_steps.value) == (2, 4, 60)
    assert panel.max_seq_length.value == 2048 and panel.eval_split.value is None
    panel.model.value = "demo"
    assert (panel.batch_size.value, panel.max_steps.value) == (8, 150)


def test_the_train_embeddings_box_reaches_the_run_and_the_gauge():
    """Ticking "train embeddings" (continued pretraining) adds the fp32 embed_tokens and lm_head, their gradients
    and optimizer state to the gauge, and passes train_embeddings to quick_finetune."""
    panel = control_panel("unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "demo", r=128, max_seq_length=2048,
                          batch_size=2, grad_accum=8)
    plain = panel.fit.total_gib
    assert panel.settings["train_embeddings"] is False
    panel.train_embeddings.value = True
    assert panel.settings["train_embeddings"] is True
    assert panel.fit.total_gib - plain > 2.5  # two 32768 x 4096 matrices: 1 GiB fp32, 1 GiB grads, 0.5 GiB 8-bit Adam
    assert control_panel(train_embeddings=True).train_embeddings.value is True
