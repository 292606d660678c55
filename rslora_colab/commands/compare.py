"""Train LoRA and rsLoRA adapters across ranks and compare them: sweep.json, sweep.png and a table.

Controlled by default: every run has the same alpha, learning rate, schedule
and data order; only the rank and the scaling (alpha/r vs alpha/sqrt(r))
change. --presets instead gives each rank the kit's own rsLoRA settings
(alpha = r, lr_for_rank(r)). With no --model on a machine without a GPU this
runs on the offline demo model (1-2 min on 2 CPU cores, docs/results.md).

examples:
  python -m rslora_colab compare
  python -m rslora_colab compare --presets --ranks 16 64 256
  python -m rslora_colab compare --model unsloth/Llama-3.2-1B-Instruct-bnb-4bit --data data.jsonl --max-steps 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import DEMO_NAME, DEMO_SWEEP_STEPS
from ..runtime import BACKENDS
from .common import resolve_job

SWEEP_FILE = "sweep.json"
PLOT_FILE = "sweep.png"

def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="LoRA vs rsLoRA across ranks", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="hub id, local folder or 'demo' (default: the demo on CPU)")
    p.add_argument("--data", help="a .jsonl/.json/.csv/.parquet file or a hub dataset id (default: the demo rows)")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64, 256], help="ranks (default 4 16 64 256)")
    p.add_argument("--methods", nargs="+", choices=["lora", "rslora"],
                   help="scalings to compare (default: both; rslora with --presets)")
    p.add_argument("--alpha", type=float, help="alpha shared by every run (default 8; not with --presets)")
    p.add_argument("--lr", type=float, help="learning rate shared by every run (default 1e-3; not with --presets)")
    p.add_argument("--max-steps", type=int, help=f"steps per run (default 100; {DEMO_SWEEP_STEPS} on the demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one set of runs per seed (default 0)")
    p.add_argument("--presets", action="store_true", help="alpha = r and lr_for_rank(r) for each rank (rsLoRA)")
    p.add_argument("--batch-size", type=int, help="micro-batch size")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--seq", dest="max_seq_length", type=int, help="max sequence length in tokens")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="training backend (default auto)")
    p.add_argument("--out", default="outputs/compare", help="output folder (default outputs/compare)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sweep import compare_ranks

    model, data, overrides = resolve_job(args, ("batch_size", "grad_accum", "max_seq_length"))
    overrides.pop("max_steps", None)  # the demo's single-run length; the sweep sets its own
    max_steps = args.max_steps or (DEMO_SWEEP_STEPS if model == DEMO_NAME else 100)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = compare_ranks(model, data, ranks=args.ranks, methods=args.methods, alpha=args.alpha, lr=args.lr,
                           max_steps=max_steps, seeds=args.seeds, mode="presets" if args.presets else "controlled",
                           save_to=out / SWEEP_FILE, backend=args.backend, **overrides)
    result.plot(out / PLOT_FILE)
    print("\n" + result.markdown())
    print(f"\nsaved: {out / SWEEP_FILE}, {out / PLOT_FILE}")
    return 0
