"""Fine-tune with rsLoRA and save the adapter, metrics.json and loss.png.

With no --model on a machine without a GPU this runs the offline demo: a
tiny Llama built locally, fine-tuned on rows made from Python's manual
(with --method dpo: on pairs of a right and a wrong answer to each question).

examples:
  python -m rslora_colab train
  python -m rslora_colab train --method dpo
  python -m rslora_colab train --model unsloth/Llama-3.2-1B-Instruct-bnb-4bit --data data.jsonl --rank 64
  python -m rslora_colab train --resume          # continue the newest checkpoint after a disconnect
  python -m rslora_colab train --method dpo --model MODEL --data HuggingFaceH4/ultrafeedback_binarized --rank 256
"""

from __future__ import annotations

import argparse

from ..notebook import GPU_DEFAULT_MODEL
from ..presets import METHODS
from ..runtime import BACKENDS
from .common import resolve_job

TRAIN_KEYS = ("max_steps", "epochs", "batch_size", "grad_accum", "max_seq_length", "seed", "alpha", "lr",
              "output_dir", "checkpoint_every", "checkpoint_minutes", "beta")
"""Options passed on to quick_finetune as FinetuneConfig fields when given."""
SAMPLE_PROMPT = "Give the heading of the Python docs topic 'assert'."


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune with rsLoRA", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"hub id, local folder or 'demo' (default: the demo on CPU, "
                                   f"{GPU_DEFAULT_MODEL} on a GPU)")
    p.add_argument("--data", help="a .jsonl/.json/.csv/.parquet file or a hub dataset id (default: the demo rows)")
    p.add_argument("--method", choices=METHODS, default="sft",
                   help="sft, or dpo: preference tuning on prompt/chosen/rejected rows (default sft)")
    p.add_argument("--beta", type=float, help="DPO beta (default 0.1)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: alpha = rank)")
    p.add_argument("--lr", type=float, help="learning rate (default: lr_for_rank(rank, method))")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default: one epoch; the demo runs 150)")
    p.add_argument("--epochs", type=float, help="passes over the data when --max-steps is not given")
    p.add_argument("--batch-size", type=int, help="micro-batch size")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--seq", dest="max_seq_length", type=int, help="max sequence length in tokens")
    p.add_argument("--out", dest="output_dir",
                   help="output folder (default: Google Drive when mounted on Colab, else outputs/rslora)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest valid checkpoint in --out (same settings), or start if there is none")
    p.add_argument("--checkpoint-every", type=int, help="also save a checkpoint every N steps")
    p.add_argument("--checkpoint-minutes", type=float, help="save a checkpoint every M minutes (default 4)")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="turn off the divergence guard (rollback + lower lr on NaN / loss spikes)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--lora", action="store_true", help="classic LoRA scaling alpha/r instead of rsLoRA")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="training backend (default auto)")
    p.add_argument("--sample", default=SAMPLE_PROMPT, help="prompt for the before/after sample ('' to skip)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..chat import SampleCallback, chat
    from ..train import quick_finetune
    from ..watch import mean_value

    model_name, data, overrides = resolve_job(args, TRAIN_KEYS)
    sample = [SampleCallback(args.sample)] if args.sample else []
    result = quick_finetune(model_name, data, r=args.rank, use_rslora=not args.lora, backend=args.backend,
                            guard=args.guard, method=args.method, resume=args.resume, callbacks=sample, **overrides)
    if args.sample:
        print(f"\nAfter training, {args.sample!r} ->", flush=True)
        chat(result, None, args.sample, max_new_tokens=40)
    print(f"\nloss {result.first_loss:.3f} -> {result.final_loss:.3f} (mean of first/last 5 steps) in "
          f"{result.wall_time_s:.1f} s, {result.tokens_per_s:,.0f} tokens/s")
    if args.method == "dpo":
        print(f"reward margin (chosen - rejected) {mean_value(result.history, 'reward_margin', True):.3f} -> "
              f"{mean_value(result.history, 'reward_margin', False):.3f} (mean of first/last 5 steps)")
    out = result.adapter_path.parent
    print(f"saved: {result.adapter_path}/, {out}/metrics.json, {out}/loss.png")
    return 0
