"""Benchmark: what ``quick_finetune`` costs over plain PEFT + TRL, on the same model, data and settings, one thread.

Both train the demo model (fp32, no 4-bit: plain PEFT cannot train bitsandbytes' CPU 4-bit weights, which the
kit unpacks first) with a rank-64 rsLoRA adapter on all attention and MLP projections, on the demo's 71
training questions, for the same optimizer steps at batch 8, padding-free, lr 1e-3, gradient checkpointing:

* **plain**: ``AutoModelForCausalLM`` -> ``get_peft_model(LoraConfig(use_rslora=True))`` -> TRL's
  ``SFTTrainer(SFTConfig(..., gradient_checkpointing=True))`` -> ``train()``, as PEFT's and TRL's docs write it
  (non-reentrant checkpointing, as the kit's);
* **kit**: ``quick_finetune`` with its defaults: the divergence guard (a snapshot of the adapter each step), the
  step history, the checkpoint timer, Ctrl-C handling, out-of-memory recovery, the run manifest.

The time compared is the training loop's (``trainer.train()``; the kit's ``wall_time_s`` is the same span), so
loading and the final save are left out of both. The two alternate, ``--pairs`` times, so a drift in the
machine's speed falls on both, after one untimed run of each; the median of each is reported. ``OMP_NUM_THREADS=1`` (the kit's own choice on
CPU) keeps the two from sharing cores differently.

    OMP_NUM_THREADS=1 python bench/overhead.py --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from rslora_colab import demo_dataset, demo_model, load_and_validate, quick_finetune, set_verbosity
from rslora_colab.adapt import DEFAULT_TARGETS
from rslora_colab.data import to_trainer_dataset
from rslora_colab.demo import DEMO_QUESTIONS

STEPS, BATCH, SEQ, R, LR, SEED = 150, 8, 256, 64, 1e-3, 3407


def rows():
    """The demo's 71 training questions (its own data less the 8 it holds out)."""
    return demo_dataset(questions=DEMO_QUESTIONS).select(range(71))


def plain(path: str, out: str) -> float:
    """Seconds of ``trainer.train()`` with transformers, PEFT and TRL alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=R, use_rslora=True, target_modules=list(DEFAULT_TARGETS),
                                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    dataset, extra = to_trainer_dataset(*load_and_validate(rows(), "sft"), tokenizer)  # the rows the kit trains on
    args = SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0.05, max_steps=STEPS,
                     weight_decay=0.01, optim="adamw_torch", padding_free=True, max_length=None, use_cpu=True,
                     logging_steps=1, save_strategy="no", report_to=[], seed=SEED, gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": False}, **extra)  # the kit's checkpointing
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    began = time.perf_counter()
    trainer.train()
    return time.perf_counter() - began


def kit(path: str, out: str) -> float:
    """Seconds of the kit's training loop (``FinetuneResult.wall_time_s``)."""
    result = quick_finetune(path, rows(), r=R, max_steps=STEPS, batch_size=BATCH, grad_accum=1, max_seq_length=SEQ,
                            lr=LR, load_in_4bit=False, padding_free=True, eval_fraction=0, output_dir=out)
    return result.wall_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="plain/kit runs, alternating (default 3)")
    pairs = parser.parse_args().pairs
    set_verbosity("warning")
    torch.set_num_threads(1)
    path = demo_model()
    times = {"plain": [], "kit": []}
    for run in (plain, kit):  # one untimed run each first: the caches, the allocator, the lazy imports
        with tempfile.TemporaryDirectory() as out:
            run(path, out + "/run")
    for _ in range(pairs):
        for name, run in (("plain", plain), ("kit", kit)):
            with tempfile.TemporaryDirectory() as out:
                times[name].append(run(path, out + "/run"))
            print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    p, k = statistics.median(times["plain"]), statistics.median(times["kit"])
    print(f"\n| | median of {pairs} | runs (s) |\n|---|---|---|")
    for name, median in (("plain PEFT + TRL", p), ("quick_finetune", k)):
        runs = ", ".join(f"{t:.2f}" for t in times["plain" if name.startswith("plain") else "kit"])
        print(f"| {name} | {median:.2f} s | {runs} |")
    print(f"\nquick_finetune's overhead: {100 * (k / p - 1):+.1f}% ({STEPS} steps, batch {BATCH}, r={R}, one thread)")


if __name__ == "__main__":
    main()
