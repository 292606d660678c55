"""Will it fit? Estimate GPU memory before downloading anything.

With --model: the plan for that model (micro-batch, grad_accum, sequence
length) and the estimate's breakdown; exit status 1 when nothing fits.
Without --model: for every catalog model, the longest sequence and the
largest micro-batch that fit at r = 16, 64 and 256.
The estimates are not yet calibrated on a GPU (docs/memory.md).

With --method grpo and --model: one GRPO step's estimate (generation with its KV cache, then the log-prob pass),
for prompts of --seq minus --max-completion-length tokens; exit status 1 when it does not fit.

examples:
  python -m rslora_colab plan --model Llama-3.1-8B-Instruct --rank 64 --seq 2048 --gpu T4
  python -m rslora_colab plan --gpu T4
  python -m rslora_colab plan --model Qwen2.5-3B-Instruct --method grpo --rank 32 --seq 512 --gpu T4
"""

from __future__ import annotations

import argparse

from ..config import FinetuneConfig
from .common import ALIASES
from .options import config_parser, given

SETTINGS = ["r", "max_seq_length", "batch_size", "grad_accum", "gpu", "num_generations", "max_completion_length",
            "train_embeddings"]
"""FinetuneConfig fields the plan reads (the micro-batch is never raised above ``--batch``; the generation settings
for ``--method grpo``; ``--train-embeddings`` counts continued pretraining's fp32 embeddings)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="estimate GPU memory and pick settings that fit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[config_parser(FinetuneConfig, SETTINGS, ALIASES)])
    p.add_argument("--model", help="catalog id, hub id or path to config.json (default: the catalog table)")
    p.add_argument("--backend", choices=("unsloth", "transformers"), default="unsloth",
                   help="backend that will train (default %(default)s, as on Colab)")
    p.add_argument("--markdown", action="store_true", help="print the catalog table as Markdown")
    p.add_argument("--method", choices=("sft", "grpo"), default="sft",
                   help="grpo: the estimate of one GRPO step for --model (default %(default)s: the plan of an SFT step)")
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
    kwargs = training_estimate_kwargs(Runtime(args.backend, "fp16", "GPU", "planning"),  # a GPU run, as on a T4
                                      train_embeddings=config.train_embeddings)
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
    if args.method == "grpo":
        return _grpo(spec, config, kwargs, resolve_budget_gib(config.gpu))
    plan = plan_for_gpu(spec, r=config.r, max_seq_length=config.max_seq_length, gpu=config.gpu,
                        batch_size=config.batch_size, grad_accum=config.grad_accum, max_micro_batch=config.batch_size,
                        **kwargs)
    print(format_plan(plan))
    return 0 if plan.fits else 1


def _grpo(spec, config: FinetuneConfig, kwargs: dict, budget: float) -> int:
    """Print one GRPO step's estimate (:func:`~rslora_colab.memory.estimate_grpo_vram`); 1 when it does not fit."""
    from ..memory import estimate_grpo_vram

    prompt = config.max_seq_length - config.max_completion_length
    if prompt < 1:
        raise ValueError(f"--max-completion-length {config.max_completion_length} leaves no room for a prompt in "
                         f"--seq {config.max_seq_length}: the prompt and the completion share it.")
    shared = {k: v for k, v in kwargs.items() if k not in ("sequences_per_row", "train_embeddings")}
    est = estimate_grpo_vram(spec, r=config.r, num_generations=config.num_generations, prompt_length=prompt,
                             max_completion_length=config.max_completion_length, batch_size=config.batch_size,
                             grad_accum=config.grad_accum, **shared)
    print(est.table())
    fits = est.total_gib <= budget
    print(f"{'fits' if fits else 'does not fit'} {budget:.2f} GiB (estimate not yet calibrated on a GPU)")
    return 0 if fits else 1
