"""T4 emulation: measured memory vs ``estimate_vram``, and every T4 plan run under the cap.

    python bench/gpu_memory.py --out docs/gpu_memory.json
    python bench/gpu_memory.py --static-only --out docs/gpu_memory_static.json   # load + LoRA only, no training

Each point runs in its own process (a clean CUDA allocator), capped at a
T4's 14.74 GiB, forced to fp16, on a random-weight model of the real shape.
Per point it records two figures:

* the static part: ``torch.cuda.max_memory_reserved()`` after loading the
  model and adding the rsLoRA adapter, before the first step (what Unsloth's
  notebooks print as "X GB of memory reserved."), against
  ``VramEstimate.static_gib`` (issue 16: weights, 16-bit layers, RoPE tables,
  LoRA, load-time transient);
* the training peak after ``STEPS`` steps, against ``total_gib`` minus the
  CUDA context (which lies outside ``max_memory_reserved``).

The estimate is made for the saved folder (``config.json`` of a random model:
quantized on the fly, no dynamic-quant layers) with the settings of the backend
that actually trains (``memory.plan.training_estimate_kwargs``).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

MODELS = ["meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
          "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"]
POINTS = [(16, 1024, 1), (16, 2048, 2), (64, 2048, 2), (256, 1024, 1)]  # (rank, seq, micro-batch)
STEPS = 8
GIB = 2**30


def static_record(estimate_gib: float, reserved_bytes: int, allocated_bytes: int) -> dict:
    """The static figures of one point, in GiB, with the estimate's relative error (+: estimate too high)."""
    reserved = reserved_bytes / GIB
    return {
        "static_reserved_gib": reserved,
        "static_allocated_gib": allocated_bytes / GIB,
        "estimate_static_gib": estimate_gib,
        "static_error": (estimate_gib - reserved) / reserved if reserved else None,
    }


def library_versions() -> dict:
    """Versions that decide the static terms (see ``STACK_CALIBRATIONS`` in ``rslora_colab.memory.estimate``)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "unsloth", "unsloth_zoo"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def run_point(model: str, r: int, seq: int, batch: int, static_only: bool = False) -> dict:
    """Load, add the adapter, record the static part; then train STEPS steps under the T4 cap."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_common import cap_like_t4, long_text_rows, random_model

    from rslora_colab import FinetuneConfig, load_model, quick_finetune
    from rslora_colab.load import runtime_of
    from rslora_colab.memory.estimate import estimate_vram
    from rslora_colab.memory.plan import training_estimate_kwargs
    from rslora_colab.settings import resolve_run
    from rslora_colab.train import attach_adapter

    path = random_model(model)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()  # building the random model is not part of the point
    cap_like_t4()
    record = {"model": model, "r": r, "seq": seq, "batch": batch, "gpu": torch.cuda.get_device_name(0),
              "versions": library_versions()}
    overrides = {"max_steps": STEPS, "batch_size": batch, "grad_accum": 1, "max_seq_length": seq,
                 "output_dir": f"/tmp/bench_out/{r}_{seq}_{batch}"}
    try:
        model_obj, tokenizer = load_model(path, max_seq_length=seq, precision="fp16")
        runtime = runtime_of(model_obj)
        config = FinetuneConfig.from_overrides(r=r, **overrides)
        estimate = estimate_vram(path, r=r, max_seq_length=seq, batch_size=batch,
                                 **training_estimate_kwargs(runtime, config.target_modules))
        record["backend"] = runtime.backend
        record["estimate_gib"] = estimate.total_gib
        record["estimate_no_context_gib"] = estimate.total_gib - estimate.cuda_context_gib
        record["loaded_allocated_gib"] = torch.cuda.memory_allocated() / GIB
        model_obj = attach_adapter(model_obj, resolve_run(config, runtime))  # quick_finetune reuses it
        torch.cuda.synchronize()
        record.update(static_record(estimate.static_gib, torch.cuda.max_memory_reserved(),
                                    torch.cuda.memory_allocated()))
        if static_only:
            record["oom"] = False
            return record
        torch.cuda.reset_peak_memory_stats()
        result = quick_finetune((model_obj, tokenizer), long_text_rows(batch * STEPS, seq), r=r, **overrides)
        record["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        record["tokens_per_s"] = result.tokens_per_s
        record["oom"] = False
    except torch.OutOfMemoryError:
        record["oom"] = True
    return record


def run_plans() -> list[tuple[str, int, int, int]]:
    """The (model, rank, seq, micro-batch) the T4 planner says fit, for the models and ranks above."""
    from rslora_colab.memory.plan import plan_for_gpu

    points = []
    for model in MODELS:
        for r in (16, 64):
            plan = plan_for_gpu(model, r=r, max_seq_length=2048, gpu="T4")
            if plan.fits:
                points.append((model, r, plan.max_seq_length, plan.micro_batch))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/gpu_memory.json")
    parser.add_argument("--static-only", action="store_true",
                        help="record the static part (load + LoRA) of every grid point, without training")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "R", "SEQ", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, r, seq, batch = args.one
        record = run_point(model, int(r), int(seq), int(batch), static_only=args.static_only)
        print("RESULT " + json.dumps(record), flush=True)
        return
    points = [(m, *p) for m in MODELS for p in POINTS]
    plans = [] if args.static_only else run_plans()
    extra = ["--static-only"] if args.static_only else []
    records = []
    for kind, todo in (("grid", points), ("t4_plan", plans)):
        for model, r, seq, batch in todo:
            proc = subprocess.run([sys.executable, __file__, "--one", model, str(r), str(seq), str(batch), *extra],
                                  capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            record = json.loads(line[7:]) if line else {"model": model, "r": r, "seq": seq, "batch": batch,
                                                          "error": proc.stderr[-2000:]}
            record["kind"] = kind
            records.append(record)
            print(json.dumps(record), flush=True)
    Path(args.out).write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
