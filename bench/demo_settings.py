"""Benchmark: why the CPU demo trains on the heading questions at lr 1e-3 (demo.DEMO_TRAINING), on CPU.

For each data choice and learning rate, 150 steps with the demo's other settings (r = 64, batch 8, 10% held
out with seed 3407), then counts the training and held-out heading questions answered exactly (greedy), asks
the CLI's sample question, and lists the eval loss at every evaluation. Prints a Markdown table
(docs/results.md, "The demo's own settings"). About 1.5 min on 2 CPU cores.

    OMP_NUM_THREADS=1 python bench/demo_settings.py
"""

from __future__ import annotations

import sys
import tempfile

import torch

from rslora_colab import chat, demo_dataset, demo_model, quick_finetune, set_verbosity
from rslora_colab.commands.train import SAMPLE_PROMPT
from rslora_colab.demo import DEMO_TRAINING

CHOICES = [("all", 1e-4), ("all", 1e-3), ("heading", 1e-4), ("heading", 3e-4), ("heading", 1e-3)]
"""(questions, lr): all 158 rows or the 79 heading questions, at the r = 64 preset and above."""


def measure(questions: str, lr: float) -> dict:
    data = demo_dataset(questions=questions)
    with tempfile.TemporaryDirectory() as out:
        result = quick_finetune(demo_model(), data, r=64, output_dir=out, **{**DEMO_TRAINING, "lr": lr})
    held = set(result.eval_dataset["instruction"])
    headings = [row for row in data if row["instruction"].startswith("Give the heading")]

    def right(rows) -> str:
        ok = sum(chat(result, None, row["instruction"], 20, stream=False).strip() == row["output"] for row in rows)
        return f"{ok}/{len(rows)}"

    return {"questions": questions, "lr": lr, "train": right([r for r in headings if r["instruction"] not in held]),
            "held": right([r for r in headings if r["instruction"] in held]),
            "sample": chat(result, None, SAMPLE_PROMPT, 20, stream=False).strip(),
            "evals": ", ".join(f"{h['eval_loss']:.2f}" for h in result.eval_history), "seconds": result.wall_time_s}


def main() -> int:
    torch.set_num_threads(1)
    set_verbosity("warning")
    print("| data | lr | training headings right | held-out headings right | \"assert\" → | eval loss at each "
          "evaluation | training time |\n|---|---:|---:|---:|---|---|---:|")
    for questions, lr in CHOICES:
        m = measure(questions, lr)
        print(f"| {m['questions']} | {m['lr']:g} | {m['train']} | {m['held']} | {m['sample']} | {m['evals']} | "
              f"{m['seconds']:.1f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
