"""Fine-tune with rsLoRA and save the adapter, metrics.json and loss.png.

With no --model on a machine without a GPU this runs the offline demo: a
tiny Llama built locally, fine-tuned on rows made from Python's manual.

examples:
  python -m rslora_colab train
  python -m rslora_colab train --model unsloth/Llama-3.2-1B-Instruct-bnb-4bit --data data.jsonl --rank 64
"""

from __future__ import annotations

import argparse

from ..runtime import BACKENDS
from .common import GPU_DEFAULT_MODEL, resolve_job

TRAIN_KEYS = ("max_steps", "epochs", "batch_size", "grad_accum", "max_seq_length", "seed", "alpha", "lr")
"""Options passed on to quick_finetune as FinetuneConfig fields when given."""
SAMPLE_PROMPT = "Give the heading of the Python docs topic 'assert'."


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune with rsLoRA", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"hub id, local folder or 'demo' (default: the demo on CPU, "
                                   f"{GPU_DEFAULT_MODEL} on a GPU)")
    p.add_argument("--data", help="a .jsonl/.json/.csv/.parquet file or a hub dataset id (default: the demo rows)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: alpha = rank)")
    p.add_argument("--lr", type=float, help="learning rate (default: lr_for_rank(rank))")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default: one epoch; the demo runs 150)")
    p.add_argument("--epochs", type=float, help="passes over the data when --max-steps is not given")
    p.add_argument("--batch-size", type=int, help="micro-batch size")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--seq", dest="max_seq_length", type=int, help="max sequence length in tokens")
    p.add_argument("--out", dest="output_dir", default="outputs/rslora", help="output folder")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--lora", action="store_true", help="classic LoRA scaling alpha/r instead of rsLoRA")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="training backend (default auto)")
    p.add_argument("--sample", default=SAMPLE_PROMPT, help="prompt for the before/after sample ('' to skip)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..chat import chat
    from ..config import FinetuneConfig
    from ..data import load_and_validate
    from ..load import load_model
    from ..train import quick_finetune

    model_name, data, overrides = resolve_job(args, TRAIN_KEYS)
    settings = {"r": args.rank, "use_rslora": not args.lora, "output_dir": args.output_dir, "backend": args.backend,
                **overrides}
    config = FinetuneConfig.from_overrides(**settings)  # bad settings fail here, before anything loads
    dataset, _ = load_and_validate(data)  # and so does bad data
    model, tokenizer = load_model(model_name, config.max_seq_length, config.load_in_4bit, config.backend)
    if args.sample:
        print(f"\nBefore training, {args.sample!r} ->", flush=True)
        chat(model, tokenizer, args.sample, max_new_tokens=40)
    result = quick_finetune((model, tokenizer), dataset, **settings)
    if args.sample:
        print(f"\nAfter training, {args.sample!r} ->", flush=True)
        chat(result, None, args.sample, max_new_tokens=40)
    print(f"\nloss {result.first_loss:.3f} -> {result.final_loss:.3f} (mean of first/last 5 steps) in "
          f"{result.wall_time_s:.1f} s, {result.tokens_per_s:,.0f} tokens/s")
    print(f"saved: {result.adapter_path}/, {config.output_dir}/metrics.json, {config.output_dir}/loss.png")
    return 0
