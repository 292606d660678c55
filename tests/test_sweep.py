import json
import math
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from rslora_colab import (
    SweepResult,
    add_rslora,
    compare_ranks,
    demo_dataset,
    lr_for_rank,
)
from rslora_colab.cli import main
from rslora_colab.config import FinetuneConfig
from rslora_colab.data import load_and_validate
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.sweep import SweepConfig
from rslora_colab.train import build_trainer
from rslora_colab.watch import ADAPTER_PARAM_MARK, AdapterGradNormCallback


def test_small_sweep_runs_and_tabulates(demo_path, tmp_path):
    saved = tmp_path / "sweep.json"
    result = compare_ranks(demo_path, demo_dataset(n=20), ranks=(2, 8), max_steps=3, batch_size=4, grad_accum=1,
                           max_seq_length=128, save_to=saved, eval_fraction=0.2)
    assert [(run.method, run.r) for run in result.runs] == [("lora", 2), ("lora", 8), ("rslora", 2), ("rslora", 8)]
    assert all(len(run.history) == 3 for run in result.runs)
    # 4 held-out rows, the same for every run of the seed: the same loss before training, then each its own
    assert all([h["step"] for h in run.eval_history] == [0, 1, 2, 3] for run in result.runs)
    assert len({run.eval_history[0]["eval_loss"] for run in result.runs}) == 1
    assert all(math.isfinite(h["loss"]) and h["adapter_grad_norm"] > 0 for run in result.runs for h in run.history)
    assert result.same_data_order()  # controlled: every run of a seed saw the same batches

    table = result.table()
    assert [(row["method"], row["r"]) for row in table] == [("lora", 2), ("lora", 8), ("rslora", 2), ("rslora", 8)]
    assert all(row["alpha"] == 8.0 and row["lr"] == 1e-3 and row["seeds"] == 1 for row in table)
    assert [row["scale"] for row in table] == [4.0, 1.0, pytest.approx(8 / 2 ** 0.5), pytest.approx(8 / 8 ** 0.5)]
    assert all(math.isfinite(row["final_loss"]) and row["grad_norm"] > 0 for row in table)
    assert [row["eval_loss"] for row in table] == [run.final_eval_loss for run in result.runs]
    assert all(row["lowest_eval_loss"] <= row["eval_loss"] and 1 <= row["lowest_eval_step"] <= 3 for row in table)
    assert set(result.grad_norm_slopes()) == {"lora", "rslora"}
    # Step 1 starts from B = 0 with the same A for both scalings at a rank, so the gradient is the scale times the
    # same matrix: lora / rslora = (alpha/r) / (alpha/sqrt(r)) = r^-1/2, and the log-log slopes differ by -1/2.
    first = {(run.method, run.r): run.history[0]["adapter_grad_norm"] for run in result.runs}
    for r in (2, 8):
        assert first["lora", r] / first["rslora", r] == pytest.approx(r ** -0.5, rel=0.01)
    slopes = result.grad_norm_slopes(step=1)
    assert slopes["lora"] - slopes["rslora"] == pytest.approx(-0.5, abs=0.01)
    lines = result.markdown().splitlines()
    assert sum(line.startswith(("| lora |", "| rslora |")) for line in lines) == 4
    assert "| held-out loss (end) | lowest held-out loss (step) |" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines[1:6])

    on_disk = json.loads(saved.read_text())  # rewritten after every run
    assert len(on_disk["runs"]) == 4 and len(on_disk["table"]) == 4
    again = SweepResult.from_json(saved)
    assert again.table() == table
    fig = result.plot(tmp_path / "sweep.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # lora, rslora, final loss, grad norm
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert "rslora: held-out" in fig.axes[2].get_legend_handles_labels()[1]


def test_a_sweep_saved_before_held_out_rows_still_reads_and_tabulates():
    old = SweepResult.from_json(Path(__file__).resolve().parents[1] / "bench/results/rank_sweep_controlled_fp32.json")
    assert not old.held_out and all(math.isnan(row["eval_loss"]) for row in old.table())
    assert "held-out" not in old.markdown()


def test_recorded_grad_norm_is_the_adapter_norm_before_clipping(demo_pair, tmp_path):
    """One optimizer step of 2 micro-batches x 2 rows, clipped hard; compare with one backward pass by hand."""
    model, tokenizer = demo_pair
    config = FinetuneConfig(r=8, alpha=8, max_steps=1, batch_size=2, grad_accum=2, max_seq_length=128,
                            max_grad_norm=1e-3, warmup_ratio=0.0, output_dir=str(tmp_path))
    dataset, fmt = load_and_validate(demo_dataset(n=4))
    run = resolve_run(config, runtime_of(model))
    model = add_rslora(model, config.r, config.alpha, seed=config.seed)
    recorder = AdapterGradNormCallback()
    trainer = build_trainer(model, tokenizer, dataset, fmt, run, [recorder])

    # By hand: the same 4 rows in one batch; the loss is the mean over their trained tokens, as the trainer's
    # accumulated loss is (it divides each micro-batch's summed loss by the step's total token count).
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.train()
    model(**batch).loss.backward()
    lora = [p for name, p in model.named_parameters() if ADAPTER_PARAM_MARK in name and p.grad is not None]
    by_hand = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in lora))
    model.zero_grad(set_to_none=True)

    trainer.train()
    recorded = recorder.history[0]["adapter_grad_norm"]
    assert by_hand > 100 * config.max_grad_norm  # the step was clipped ...
    assert recorded == pytest.approx(by_hand, rel=0.01)  # ... and the norm from before clipping was kept


def test_sweep_settings_problems_are_collected_into_one_error():
    with pytest.raises(ValueError) as err:
        SweepConfig(ranks=(0, 16), methods=("dora",), mode="presets", lr=1e-3, seeds=())
    message = str(err.value)
    for field in ("ranks=(0, 16)", "methods=('dora',)", "lr=0.001", "None in presets mode", "seeds=()"):
        assert field in message


def test_sweep_rejects_settings_it_owns_and_loaded_models():
    with pytest.raises(ValueError, match="r, seed: set by the sweep"):
        compare_ranks("demo", demo_dataset(n=4), r=16, seed=3)
    with pytest.raises(ValueError, match="pass a name"):
        compare_ranks(("model", "tokenizer"), demo_dataset(n=4))


def test_cli_compare_presets(tmp_path, capsys, monkeypatch, demo_path):
    out = tmp_path / "cmp"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    code = main(["compare", "--presets", "--ranks", "4", "16", "--max-steps", "2", "--batch-size", "4",
                 "--seq", "128", "--out", str(out)])
    assert torch.get_num_threads() == 1  # the demo on CPU trains with one thread unless told otherwise
    assert code == 0
    printed = capsys.readouterr().out
    assert "training with 1 torch thread" in printed
    assert "| rslora | 4 |" in printed and "| rslora | 16 |" in printed and "| lora |" not in printed
    table = json.loads((out / "sweep.json").read_text())["table"]
    expected = [(4, 4.0, lr_for_rank(4)), (16, 16.0, lr_for_rank(16))]
    assert [(row["r"], row["alpha"], row["lr"]) for row in table] == expected
    assert (out / "sweep.png").exists()
    assert main(["compare", "--presets", "--alpha", "8", "--out", str(out)]) == 2
    assert "alpha=8.0: expected None in presets mode" in capsys.readouterr().err


def test_sweep_data_with_no_row_left_after_truncation_fails_before_a_model_loads(demo_path, tmp_path):
    from transformers import AutoTokenizer

    tokenizer_only = tmp_path / "tokenizer-only"  # no weights: loading a model would fail differently
    AutoTokenizer.from_pretrained(demo_path).save_pretrained(tokenizer_only)
    rows = [{"instruction": "Explain the assert statement at length. " * 20, "output": "Assertions."}] * 4
    with pytest.raises(ValueError, match="every one of the 4 rows has a prompt of max_seq_length=64 tokens"):
        compare_ranks(str(tokenizer_only), rows, ranks=(4,), max_steps=2, max_seq_length=64)
