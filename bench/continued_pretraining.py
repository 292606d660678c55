"""Benchmark: continued pretraining on the demo model, teaching it a made-up glossary, one thread.

The demo model (a tiny Llama pre-trained on Python's manual) has never seen the glossary's invented words
(``demo_glossary``: 48 rows such as "A zorquen is a small brass tool, used by weavers to count threads."). It trains
on them with an rsLoRA adapter, once with ``train_embeddings=True`` (embed_tokens and lm_head train too, at a fifth
of the adapter's lr) and once with the adapter alone, same steps, lr and seed, packed. Measured before and after:
the mean loss per token on the glossary (what it is taught) and on 24 paragraphs of its old text
(``demo_manual_text``, also the run's eval loss), which should not rise much. Prints a Markdown table
(docs/results.md, "Continued pretraining"). About 40 s on 2 CPU cores; the first argument sets the steps.

    OMP_NUM_THREADS=1 python bench/continued_pretraining.py        # 60 steps
    OMP_NUM_THREADS=1 python bench/continued_pretraining.py 120
"""

from __future__ import annotations

import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rslora_colab import demo_model, quick_finetune, set_verbosity
from rslora_colab.demo import demo_glossary, demo_manual_text

R, BATCH, LR, SEQ = 16, 8, 3e-4, 256
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 60


def mean_loss(model, tokenizer, texts: list[str]) -> float:
    """Mean next-token loss per token over ``texts``, one text at a time (no padding), without gradients."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt").input_ids[:, :SEQ]
            loss = model(input_ids=ids, labels=ids).loss
            total, count = total + loss.item() * (ids.shape[1] - 1), count + ids.shape[1] - 1
    return total / count


def main() -> int:
    torch.set_num_threads(1)
    set_verbosity("WARNING")
    glossary, manual = demo_glossary(), demo_manual_text()
    tokenizer = AutoTokenizer.from_pretrained(demo_model())
    base = AutoModelForCausalLM.from_pretrained(demo_model())
    before = mean_loss(base, tokenizer, glossary["text"]), mean_loss(base, tokenizer, manual["text"])
    rows = []
    for embeddings in (True, False):
        with tempfile.TemporaryDirectory() as out:
            result = quick_finetune(demo_model(), glossary, r=R, max_steps=STEPS, batch_size=BATCH, grad_accum=1,
                                    lr=LR, max_seq_length=SEQ, packing=True, train_embeddings=embeddings,
                                    eval_dataset=manual, output_dir=out, checkpoint_minutes=0)
        after = mean_loss(result.model, tokenizer, glossary["text"]), mean_loss(result.model, tokenizer, manual["text"])
        rows.append((embeddings, after, result.wall_time_s, result.settings["batches"]))
    print(f"demo model, {len(glossary)} glossary rows, r={R}, lr={LR:g}, {STEPS} steps of {BATCH} "
          f"({rows[0][3]} batches), one thread\n")
    print("| trained | glossary loss (taught) | manual loss (old text) | seconds |")
    print("|---|---|---|---|")
    print(f"| nothing (the demo model) | {before[0]:.3f} | {before[1]:.3f} | - |")
    for embeddings, after, seconds, _ in rows:
        what = "adapter + embed_tokens + lm_head" if embeddings else "adapter only"
        print(f"| {what} | {after[0]:.3f} ({after[0] / before[0] - 1:+.0%}) | {after[1]:.3f} "
              f"({after[1] / before[1] - 1:+.0%}) | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
