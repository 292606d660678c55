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


def _gpu(value: str) -> str | float:
    """``--gpu``: a name ("auto", "T4") or GiB as a number."""
    try:
        return float(value)
    except ValueError:
        return value


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="estimate GPU memory and pick settings that fit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="catalog id, hub id or path to config.json (default: the catalog table)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64)")
    p.add_argument("--seq", type=int, default=2048, help="max sequence length in tokens (default 2048)")
    p.add_argument("--batch", type=int, default=2, help="micro-batch; the plan never goes above it (default 2)")
    p.add_argument("--grad-accum", type=int, default=4, help="gradient accumulation steps (default 4)")
    p.add_argument("--gpu", type=_gpu, default="auto",
                   help='"auto" (this machine\'s GPU, else a T4), "T4", or usable GiB (default auto)')
    p.add_argument("--backend", choices=("unsloth", "transformers"), default="unsloth",
                   help="backend that will train (default unsloth, as on Colab)")
    p.add_argument("--markdown", action="store_true", help="print the catalog table as Markdown")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fit import estimate_settings, model_spec
    from ..plan import catalog_table, format_plan, plan_for_gpu, render_catalog_table, resolve_budget_gib
    from ..runtime import Runtime

    config = FinetuneConfig(r=args.rank, max_seq_length=args.seq, batch_size=args.batch,
                            grad_accum=args.grad_accum, gpu=args.gpu)
    runtime = Runtime(args.backend, "fp16", "GPU", "planning")  # a GPU run, as on a T4
    kwargs = estimate_settings(config, runtime)
    if args.model is None:
        budget = resolve_budget_gib(args.gpu)
        print(f"Longest sequence and largest micro-batch that fit {budget:.2f} GiB ({args.backend} backend, "
              f"all 7 projections, estimates not yet calibrated on a GPU):\n")
        print(render_catalog_table(catalog_table(args.gpu, **kwargs), markdown=args.markdown))
        return 0
    spec = model_spec(args.model)
    if spec is None:
        raise ValueError(f"--model {args.model!r}: pass a catalog id (see `python -m rslora_colab plan`), "
                         f"a local folder or a path to config.json.")
    plan = plan_for_gpu(spec, r=args.rank, max_seq_length=args.seq, gpu=args.gpu, batch_size=args.batch,
                        grad_accum=args.grad_accum, max_micro_batch=args.batch, **kwargs)
    print(format_plan(plan))
    return 0 if plan.fits else 1
