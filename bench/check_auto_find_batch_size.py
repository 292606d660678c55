"""What transformers' ``auto_find_batch_size`` does after an out-of-memory error (see docs/memory.md).

Trains the offline demo model with ``auto_find_batch_size=True``, raises one
real ``torch.OutOfMemoryError`` from a forward pre-hook while step 4 is being
built, and prints the (global step, micro-batch) of every forward pass, the
gradient accumulation after the retry, and a ``lora_B`` norm before and after.

    OMP_NUM_THREADS=1 python bench/check_auto_find_batch_size.py
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from rslora_colab import (
    FinetuneConfig,
    add_rslora,
    demo_dataset,
    demo_model,
    load_model,
)
from rslora_colab.data import load_and_validate, to_trainer_dataset
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train.trainer import sft_config


def main() -> None:
    torch.set_num_threads(1)
    model, tokenizer = load_model(demo_model(), max_seq_length=128)
    config = FinetuneConfig(r=8, max_steps=6, batch_size=4, grad_accum=2, max_seq_length=128,
                            output_dir="/tmp/auto_find_batch_size_check")
    dataset, fmt = load_and_validate(demo_dataset(n=40))
    run = resolve_run(config, runtime_of(model))
    model = add_rslora(model, config.r, run.config.alpha)
    train_dataset, extra = to_trainer_dataset(dataset, fmt, tokenizer)
    trainer = SFTTrainer(model=model, args=sft_config(run, auto_find_batch_size=True, **extra),
                         train_dataset=train_dataset, processing_class=tokenizer)
    lora_b = next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)
    passes: list[tuple[int, int]] = []
    failed: list[float] = []

    def hook(module, args, kwargs):
        step = trainer.state.global_step
        if passes and step == 0 and passes[-1][0] != 0:
            print(f"restart at global step 0: lora_B norm {lora_b.norm().item():.4g} (0 for a fresh adapter)")
        passes.append((step, kwargs["input_ids"].shape[0]))
        if step == 3 and not failed:
            failed.append(lora_b.norm().item())
            print(f"out-of-memory while building step 4: lora_B norm {failed[0]:.4g}")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test)")

    trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
    trainer.train()
    print("forward passes (global step, micro-batch):", passes)
    print(f"final: global step {trainer.state.global_step}, micro-batch {trainer._train_batch_size}, "
          f"gradient_accumulation_steps {trainer.args.gradient_accumulation_steps}")


if __name__ == "__main__":
    main()
