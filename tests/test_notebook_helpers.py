"""The package functions notebook 01 calls: runtime check, data preview, live plot, save."""

from types import SimpleNamespace

import pytest
import torch

from rslora_colab import (
    LivePlotCallback,
    check_runtime,
    demo_dataset,
    preview_data,
    quick_finetune,
    resolve_choices,
    save_outputs,
)
from rslora_colab.notebook import CPU_NOTICE


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_check_runtime_on_cpu_prints_the_fallback_notice(capsys):
    check = check_runtime()
    out = capsys.readouterr().out
    assert check.gpu is None and check.precision == "fp32" and check.notice == CPU_NOTICE
    assert "GPU: none" in out and "NOTICE: no GPU" in out and "T4 GPU" in out
    assert resolve_choices("auto", "auto") == ("demo", "demo")
    assert resolve_choices("unsloth/Qwen3-4B-unsloth-bnb-4bit", "auto")[1] == "yahma/alpaca-cleaned"


def test_preview_shows_the_formatted_row_and_only_the_answer_as_trained(demo_path):
    preview = preview_data(demo_path, demo_dataset(), r=8, index=1, max_seq_length=256)
    row = demo_dataset()[1]
    assert preview.format == "alpaca" and preview.rows == 158 and preview.row == row
    assert row["instruction"] in preview.text and "<|im_start|>assistant" in preview.text
    assert row["output"] in preview.trained_text and row["instruction"] not in preview.trained_text
    assert "WHAT THE LOSS IS COMPUTED ON" in str(preview)
    model, tokenizer = preview.settings["model"]
    assert hasattr(model, "peft_config") and preview.settings["r"] == 8
    with pytest.raises(ValueError, match="index=500"):
        preview_data((model, tokenizer), demo_dataset(), r=8, index=500)


def test_live_plot_from_a_plain_cell_and_saving_the_adapter(demo_path, tmp_path):
    watch = LivePlotCallback(every=2, min_interval_s=0)
    result = quick_finetune(demo_path, demo_dataset(n=16), r=8, max_steps=6, batch_size=2, grad_accum=1,
                            max_seq_length=64, output_dir=str(tmp_path), callbacks=[watch])
    assert [h["step"] for h in watch.history] == [h["step"] for h in result.history] == list(range(1, 7))
    assert watch.draws == 4  # steps 2, 4, 6, and the end
    assert watch.bar.value == watch.bar.max == 6 and watch.image.value[:4] == b"\x89PNG"
    assert "done at step 6/6" in watch.label.value
    saved = save_outputs(result, how=["adapter"])
    assert saved == {"adapter": result.adapter_path} and (result.adapter_path / "adapter_config.json").exists()


def test_the_live_view_of_a_grpo_run_shows_the_reward(demo_path, tmp_path):
    from rslora_colab import demo_prompts
    from rslora_colab.demo import demo_training
    from rslora_colab.watch import plot_loss

    watch = LivePlotCallback(every=2, min_interval_s=0)
    labels = []
    watch.label.observe(lambda change: labels.append(change["new"]), names="value")
    settings = {**demo_training("grpo"), "max_steps": 4, "output_dir": str(tmp_path), "checkpoint_minutes": 0}
    result = quick_finetune(demo_path, demo_prompts(n=8), r=8, method="grpo", callbacks=[watch], **settings)
    steps = [h for h in result.history if "loss" in h]
    assert f"step 4/4 &middot; loss {steps[-1]['loss']:.4f} &middot; reward {steps[-1]['reward']:.3f}" in labels[-2]
    assert "done at step 4/4" in labels[-1] and " &middot; reward " in labels[-1]
    assert watch.draws == 3 and watch.image.value[:4] == b"\x89PNG"  # steps 2, 4 and the end
    # what the view draws: the loss, and beside it the reward of the sampled completions (per function too)
    axes = plot_loss(watch.history).axes
    assert axes[1].get_title().startswith("GRPO reward") and axes[1].lines[0].get_label() == "reward (sum)"
    assert list(axes[1].lines[0].get_ydata()) == [h["reward"] for h in steps]


def test_gpu_only_exports_are_refused_with_the_reason():
    cpu_run = SimpleNamespace(model=object(), settings={"backend": "transformers"}, adapter_path="outputs/x/adapter")
    with pytest.raises(ValueError, match="how='gguf' needs a GPU runtime with Unsloth"):
        save_outputs(cpu_run, how=["adapter", "gguf"])
    with pytest.raises(ValueError, match="how='zip' is not known"):
        save_outputs(cpu_run, how=["zip"])


def test_notebook_progress_is_one_bar_with_the_loss_not_a_table_per_step(tmp_path):
    from torch import nn
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments
    from transformers.utils.notebook import NotebookProgressCallback

    from rslora_colab.watch import quiet_progress

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = Trainer(model=nn.Linear(2, 2), args=args, callbacks=[NotebookProgressCallback()])
    quiet_progress(trainer)
    bars = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, NotebookProgressCallback)]
    assert len(bars) == 1 and type(bars[0]) is not NotebookProgressCallback
    state, control = TrainerState(max_steps=3, num_train_epochs=1, epoch=0.5, global_step=1), TrainerControl()
    bar = bars[0]
    bar.on_train_begin(args, state, control)
    bar.on_log(args, state, control, logs={"loss": 1.234, "learning_rate": 1e-4})
    bar.on_step_end(args, state, control)
    assert bar.training_tracker.comment == "loss 1.234, lr 1.00e-04"
    assert bar.training_tracker.inner_table is None  # no table, so no row per log
