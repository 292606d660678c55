"""Benchmark: padded vs padding-free vs packed batches on long-tailed data, one thread, through quick_finetune.

The data is instruction data with a long tail, as real instruction sets have: the demo's 158 questions (twice),
each answered with a stretch of the manual's text whose length is drawn from a log-normal distribution (seeded),
so that in a batch the mean row is well under half the longest. Every layout trains the
same adapter (r = 16) for the same number of optimizer steps at batch 8 (packing: 8 packed sequences of at most
``max_seq_length`` tokens). Real tokens are those that are not padding (TRL's own ``num_tokens`` count: the
attention mask's sum, or the padding-free sequence length). Prints a Markdown table (docs/results.md,
"Padded, padding-free and packed batches"). About 2 min on 2 CPU cores.

    OMP_NUM_THREADS=1 python bench/packing.py
"""

from __future__ import annotations

import math
import random
import sys
import tempfile

import torch
from transformers import AutoTokenizer

from rslora_colab import demo_dataset, demo_model, quick_finetune, set_verbosity

STEPS, BATCH, SEQ = 30, 8, 512
LAYOUTS = {"padded": {"padding_free": False}, "padding-free": {"padding_free": True}, "packed": {"packing": True}}


def long_tailed_rows(seed: int = 0) -> list[dict]:
    """The demo's questions, each answered with a log-normal number of words (median 3, sigma 2.2, at most 200,
    so every row fits the demo model's 512 positions) taken from the manual's explanations: mostly short
    answers, a few long ones, as in instruction data."""
    rng = random.Random(seed)
    rows = list(demo_dataset(questions="all"))
    manual = " ".join(row["output"] for row in rows).split()
    out = []
    for row in rows * 2:
        keep = max(1, min(200, int(math.exp(rng.gauss(math.log(3), 2.2)))))
        start = rng.randrange(len(manual) - keep)
        out.append({"instruction": row["instruction"], "input": "", "output": " ".join(manual[start:start + keep])})
    rng.shuffle(out)
    return out


def batch_shape(rows: list[dict]) -> float:
    """The mean row's length as a share of the longest row's, averaged over batches of BATCH rows (in tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(demo_model())
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                                  {"role": "assistant", "content": r["output"]}], tokenize=True,
                                                 return_dict=True)["input_ids"]) for r in rows]
    batches = [lengths[i:i + BATCH] for i in range(0, len(lengths) - BATCH + 1, BATCH)]
    return sum(sum(b) / len(b) / max(b) for b in batches) / len(batches)


def measure(rows: list[dict], layout: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = quick_finetune(demo_model(), rows, r=16, max_steps=STEPS, batch_size=BATCH, grad_accum=1,
                                max_seq_length=SEQ, eval_fraction=0, lr=1e-3, output_dir=out, **LAYOUTS[layout])
    tokens = max(h.get("num_tokens", 0) for h in result.history)
    return {"layout": layout, "seconds": result.wall_time_s, "tokens": tokens,
            "tokens_per_s": tokens / result.wall_time_s, "first": result.first_loss, "final": result.final_loss}


def main() -> int:
    torch.set_num_threads(1)
    set_verbosity("WARNING")
    rows = long_tailed_rows()
    share = batch_shape(rows)
    results = [measure(rows, layout) for layout in LAYOUTS]
    base = results[0]["tokens_per_s"]
    print(f"{len(rows)} rows; in a batch of {BATCH}, the mean row is {share:.0%} of the longest (mean over batches)\n")
    print("| layout | steps | real tokens trained | seconds | real tokens/s | vs padded | loss per real token, "
          "first/last 5 steps |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {STEPS} | {r['tokens']:,.0f} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / base:.2f}x | {r['first']:.3f} -> {r['final']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
