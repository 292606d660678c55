"""Benchmark: GRPO on the CPU demo (demo.DEMO_GRPO_TRAINING), before and after, at three learning rates.

Trains r = 16 on the first 64 demo prompts (40 steps, 2 prompts x 4 completions of at most 24 tokens a step,
rewarded by ``length_penalty(60)``) and measures the mean reward on the 15 held-out prompts before and after
(``mean_reward``: 4 completions each, seed 0), plus seconds per step. Prints a Markdown table (docs/grpo.md).
About a minute on 2 CPU cores.

    OMP_NUM_THREADS=1 python bench/grpo_demo.py
"""

from __future__ import annotations

import sys
import tempfile

import torch

from rslora_colab import demo_model, demo_prompts, load_model, mean_reward, quick_finetune, set_verbosity
from rslora_colab.demo import demo_training

LRS = (1e-5, 1e-4, 1e-3)
"""The r = 16 GRPO preset (1e-5), and 10x and 100x it (the demo's)."""


def measure(lr: float) -> dict:
    settings = {**demo_training("grpo"), "lr": lr}
    rows = demo_prompts()
    train, held = rows.select(range(64)), rows.select(range(64, 79))
    model, tokenizer = load_model(demo_model(), max_seq_length=256)
    before = mean_reward(model, tokenizer, held, settings["reward_funcs"], max_new_tokens=24)
    with tempfile.TemporaryDirectory() as out:
        result = quick_finetune((model, tokenizer), train, r=16, method="grpo", output_dir=out,
                                checkpoint_minutes=0, **settings)
    after = mean_reward(result.model, result.tokenizer, held, settings["reward_funcs"], max_new_tokens=24)
    steps = sum(1 for h in result.history if "loss" in h)
    return {"lr": lr, "backend": result.settings["backend"], "before": before, "after": after,
            "s_per_step": result.wall_time_s / steps, "steps": steps, "report": result.report()}


def main() -> int:
    torch.set_num_threads(1)
    set_verbosity("warning")
    rows = [measure(lr) for lr in LRS]
    print("| backend | lr | held-out reward before | after | s/step (40 steps) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['lr']:g} | {r['before']:.3f} | {r['after']:.3f} | {r['s_per_step']:.3f} |")
    for r in rows:
        print(f"\nlr {r['lr']:g}:\n{r['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
