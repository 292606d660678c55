"""Train LoRA and rsLoRA adapters across ranks and compare them: sweep.json, sweep.png and a table.

Controlled by default: every run has the same alpha, learning rate, schedule
and data order; only the rank and the scaling (alpha/r vs alpha/sqrt(r))
change. --presets instead gives each rank the kit's own rsLoRA settings
(alpha = r, lr_for_rank(r)). Each run also measures the loss on rows held out
with its seed (--eval-fraction; the demo holds out 10%), printed beside the
training loss. With no --model on a machine without a GPU this runs on the
offline demo model (1-2 min on 2 CPU cores, docs/results.md).

examples:
  python -m rslora_colab compare
  python -m rslora_colab compare --presets --ranks 16 64 256
  python -m rslora_colab compare --model unsloth/Llama-3.2-1B-Instruct-bnb-4bit --data data.jsonl --max-steps 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import sweep_defaults
from ..config import FinetuneConfig
from ..sweep import SweepConfig
from .common import ALIASES, resolve_job
from .options import config_parser, given

SWEEP_FILE = "sweep.json"
PLOT_FILE = "sweep.png"
SWEEP_OPTIONS = ["ranks", "methods", "alpha", "lr", "max_steps", "seeds"]
"""SweepConfig fields offered as options (``--presets`` sets its ``mode``)."""
RUN_OPTIONS = ["batch_size", "grad_accum", "max_seq_length", "backend", "eval_fraction", "eval_every"]
"""FinetuneConfig fields shared by every run of the sweep."""


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="LoRA vs rsLoRA across ranks", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[config_parser(SweepConfig, SWEEP_OPTIONS),
                                       config_parser(FinetuneConfig, RUN_OPTIONS, ALIASES)])
    p.add_argument("--model", help="hub id, local folder or 'demo' (default: the demo on CPU)")
    p.add_argument("--data", help="a .jsonl/.json/.csv/.parquet file or a hub dataset id (default: the demo rows)")
    p.add_argument("--presets", action="store_true", help="alpha = r and lr_for_rank(r) for each rank (rsLoRA)")
    p.add_argument("--out", default="outputs/compare", help="output folder (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sweep import compare_ranks

    sweep = given(args, SWEEP_OPTIONS)
    model, data, _ = resolve_job(args.model, args.data, {})
    shared = {**sweep_defaults(model, sweep.pop("max_steps", None)), **given(args, RUN_OPTIONS)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = compare_ranks(model, data, mode="presets" if args.presets else "controlled", save_to=out / SWEEP_FILE,
                           **sweep, **shared)
    result.plot(out / PLOT_FILE)
    print("\n" + result.markdown())
    print(f"\nsaved: {out / SWEEP_FILE}, {out / PLOT_FILE}")
    return 0
