"""Throughput: the kit's Unsloth path vs its transformers path vs plain PEFT + TRL QLoRA.

    python bench/gpu_throughput.py --out docs/gpu_throughput.json

Same random-weight model, rank, sequence length, batch and steps for all
three; each runs in its own process. The transformers and plain runs set
RSLORA_COLAB_NO_UNSLOTH=1 so Unsloth's import-time patches stay out of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODEL = "meta-llama/Llama-3.2-1B-Instruct"
R, SEQ, BATCH, STEPS = 16, 1024, 2, 30
SETUPS = ("kit_unsloth", "kit_transformers", "plain_peft_trl")


def _kit(backend: str, path: str, rows: list[dict]) -> dict:
    from rslora_colab import load_model, quick_finetune

    pair = load_model(path, max_seq_length=SEQ, backend=backend)
    result = quick_finetune(pair, rows, r=R, max_steps=STEPS, batch_size=BATCH, grad_accum=1, max_seq_length=SEQ,
                            output_dir=f"/tmp/bench_tp/{backend}")
    return {"tokens_per_s": result.tokens_per_s, "wall_s": result.wall_time_s, "precision": result.settings["precision"]}


def _plain(path: str, rows: list[dict]) -> dict:
    """The QLoRA recipe as PEFT's and TRL's docs write it, without the kit."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from rslora_colab.runtime import has_native_bf16

    bf16 = has_native_bf16()  # not torch.cuda.is_bf16_supported(): that says True on a T4 (emulation)
    dtype = torch.bfloat16 if bf16 else torch.float16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype, device_map={"": 0})
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=R, use_rslora=True, task_type="CAUSAL_LM",
                                             target_modules="all-linear"))
    args = SFTConfig(output_dir="/tmp/bench_tp/plain", per_device_train_batch_size=BATCH, max_steps=STEPS,
                     max_length=SEQ, bf16=bf16, fp16=not bf16, optim="adamw_8bit", report_to="none",
                     logging_steps=1, save_strategy="no")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(path))
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return {"tokens_per_s": trainer.state.num_input_tokens_seen / wall if trainer.state.num_input_tokens_seen
            else BATCH * SEQ * STEPS / wall, "wall_s": wall, "precision": "bf16" if bf16 else "fp16"}


def run_setup(setup: str) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_common import long_text_rows, random_model

    path, rows = random_model(MODEL), long_text_rows(BATCH * STEPS, SEQ)
    torch.cuda.reset_peak_memory_stats()
    if setup == "plain_peft_trl":
        record = _plain(path, rows)
    else:
        record = _kit(setup.removeprefix("kit_"), path, rows)
    record.update(setup=setup, peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                  gpu=torch.cuda.get_device_name(0), model=MODEL, r=R, seq=SEQ, batch=BATCH, steps=STEPS)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/gpu_throughput.json")
    parser.add_argument("--one", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_setup(args.one)), flush=True)
        return
    records = []
    for setup in SETUPS:
        env = dict(os.environ, **({} if setup == "kit_unsloth" else {"RSLORA_COLAB_NO_UNSLOTH": "1"}))
        proc = subprocess.run([sys.executable, __file__, "--one", setup], capture_output=True, text=True, env=env)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        records.append(json.loads(line[7:]) if line else {"setup": setup, "error": proc.stderr[-2000:]})
        print(json.dumps(records[-1]), flush=True)
    base = next((r["tokens_per_s"] for r in records if r.get("setup") == "plain_peft_trl" and "tokens_per_s" in r), None)
    for record in records:
        if base and "tokens_per_s" in record:
            record["speedup_vs_plain"] = record["tokens_per_s"] / base
    Path(args.out).write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
