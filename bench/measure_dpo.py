"""DPO on the demo preference pairs: reward margin by rank and learning rate, and how much of lora_A moves.

    OMP_NUM_THREADS=1 python bench/measure_dpo.py

Each run: 158 pairs, batch 8, 60 steps (about 3 passes), rsLoRA alpha = r.
The margin and accuracy are TRL's, measured after training on all 158 pairs
(policy vs reference log-probs). Results: docs/dpo_chat_export.md.
"""

import tempfile
import time

import torch

from rslora_colab import (
    FinetuneConfig,
    add_rslora,
    demo_model,
    demo_preferences,
    load_and_validate,
    load_model,
)
from rslora_colab.data.preference import to_dpo_dataset
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train import build_trainer

RUNS = [(64, None), (64, 1e-4), (16, 1e-4)]  # (rank, lr); None = the DPO preset lr_for_rank(r, "dpo")


def run(r: int, lr: float | None) -> str:
    model, tokenizer = load_model(demo_model(), max_seq_length=256)
    model = add_rslora(model, r=r)
    with tempfile.TemporaryDirectory() as tmp:
        config = FinetuneConfig(r=r, method="dpo", lr=lr, max_steps=60, batch_size=8, grad_accum=1,
                                max_seq_length=256, output_dir=tmp)
        pairs, fmt = load_and_validate(demo_preferences(), "dpo")
        run_settings = resolve_run(config, runtime_of(model))
        settings = run_settings.as_dict()
        trainer = build_trainer(model, tokenizer, pairs, fmt, run_settings)
        # after TRL built the trainer: it stores the adapter of a 4-bit model in bf16
        lora_a = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        after = trainer.evaluate(to_dpo_dataset(pairs, fmt, tokenizer))
    moved = [(lora_a[n] != p).float().mean().item() for n, p in model.named_parameters() if n in lora_a]
    dtype = str(next(iter(lora_a.values())).dtype).removeprefix("torch.")
    return (f"| {r} | {settings['lr']:.2g} | {after['eval_rewards/margins']:.3f} | "
            f"{after['eval_rewards/accuracies']:.2f} | {sum(moved) / len(moved):.1%} ({dtype}) | {wall:.0f} s |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    lines = [run(r, lr) for r, lr in RUNS]
    print("\n| r | lr | reward margin | reward accuracy | lora_A entries changed | train time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))
