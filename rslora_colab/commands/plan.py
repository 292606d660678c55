"""Will it fit? Estimate GPU memory before downloading anything.

With --model: the plan for that model (micro-batch, grad_accum, sequence
length) and the estimate's breakdown; exit status 1 when nothing fits.
Without --model: for every catalog model, the longest sequence and the
largest micro-batch that fit at r = 16, 64 and 256.
The estimates are not yet calibrated on a GPU (docs/memory.md).

examples:
  python -m rslora_colab plan --model Llama-3.1-8B-Instruct --rank 64 --seq 2048 --gpu T4
  python -m rslora_colab plan --gpu T4
"""

from __future__ import annotations

import argparse

from ..config import FinetuneConfig
from .common import ALIASES
from .options import config_parser, given

SETTINGS = ["r", "max_seq_length", "batch_size", "grad_accum", "gpu"]
"""FinetuneConfig fields the plan reads (the micro-batch is never raised above ``--batch``)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="estimate GPU memory and pick settings that fit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[config_parser(FinetuneConfig, SETTINGS, ALIASES)])
    p.add_argument("--model", help="catalog id, hub id or path to config.json (default: the catalog table)")
    p.add_argument("--backend", choices=("unsloth", "transformers"), default="unsloth",
                   help="backend that will train (default %(default)s, as on Colab)")
    p.add_argument("--markdown", action="store_true", help="print the catalog table as Markdown")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..memory import (
        catalog_table,
        model_spec,
        plan_for_gpu,
        resolve_budget_gib,
        training_estimate_kwargs,
    )
    from ..memory.plan import format_plan, render_catalog_table
    from ..runtime import Runtime

    config = FinetuneConfig(**given(args, SETTINGS))
    kwargs = training_estimate_kwargs(Runtime(args.backend, "fp16", "GPU", "planning"))  # a GPU run, as on a T4
    if args.model is None:
        budget = resolve_budget_gib(config.gpu)
        print(f"Longest sequence and largest micro-batch that fit {budget:.2f} GiB ({args.backend} backend, "
              f"all 7 projections, estimates not yet calibrated on a GPU):\n")
        print(render_catalog_table(catalog_table(config.gpu, **kwargs), markdown=args.markdown))
        return 0
    spec = model_spec(args.model)
    if spec is None:
        raise ValueError(f"--model {args.model!r}: pass a catalog id (see `python -m rslora_colab plan`), "
                         f"a local folder or a path to config.json.")
    plan = plan_for_gpu(spec, r=config.r, max_seq_length=config.max_seq_length, gpu=config.gpu,
                        batch_size=config.batch_size, grad_accum=config.grad_accum, max_micro_batch=config.batch_size,
                        **kwargs)
    print(format_plan(plan))
    return 0 if plan.fits else 1
