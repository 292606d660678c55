"""Benchmark: how much of the adapter moves in training, with a 4-bit base and with a full-precision one.

With a quantized base, TRL's SFTTrainer casts the LoRA weights to bf16. At a small learning rate Adam's step
(~lr) can be smaller than half the bf16 spacing of an entry, which then never changes; the kit therefore
casts the adapter back to fp32 (``adapt.keep_adapter_fp32``), and this checks that it trains. This trains the demo
model with the kit's presets (rsLoRA, alpha = r, lr_for_rank(r)) through ``train_adapter`` and reports the
share of lora_A / lora_B entries that changed, and the final loss.

    OMP_NUM_THREADS=1 python bench/bf16_adapter.py     # 4 runs of 30 steps, ~1 min on 2 CPU cores
"""

from __future__ import annotations

import sys
import tempfile

from transformers import TrainerCallback

from rslora_colab import DEMO_NAME, demo_dataset, load_model
from rslora_colab.config import FinetuneConfig
from rslora_colab.data import load_and_validate
from rslora_colab.train import train_adapter


class MovedEntries(TrainerCallback):
    """Share of lora_A and lora_B entries that differ after training from their values at the start."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        self.dtype = next(iter(self.before.values())).dtype

    def on_train_end(self, args, state, control, model=None, **kwargs):
        after = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
        self.moved = {part: sum((self.before[n] != after[n]).float().mean().item() for n in after if part in n)
                      / sum(part in n for n in after) for part in ("lora_A", "lora_B")}


def main() -> int:
    dataset, fmt = load_and_validate(demo_dataset())
    print("| base | adapter dtype | r | lr | lora_A entries moved | lora_B entries moved | final loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for four_bit in (True, False):
        for r in (16, 256):
            with tempfile.TemporaryDirectory() as out:
                config = FinetuneConfig(r=r, max_steps=30, batch_size=8, grad_accum=1, max_seq_length=256,
                                        load_in_4bit=four_bit, output_dir=out)
                model, tokenizer = load_model(DEMO_NAME, config.max_seq_length, four_bit)
                moved = MovedEntries()
                result = train_adapter(model, tokenizer, dataset, fmt, config, [moved])
            print(f"| {'4-bit' if four_bit else 'fp32'} | {str(moved.dtype).removeprefix('torch.')} | {r} "
                  f"| {result.settings['lr']:.2g} | {moved.moved['lora_A']:.1%} | {moved.moved['lora_B']:.1%} "
                  f"| {result.final_loss:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
