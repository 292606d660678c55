"""T4 emulation: measured peak memory vs ``estimate_vram``, and every T4 plan run under the cap.

    python bench/gpu_memory.py --out docs/gpu_memory.json

Each point runs in its own process (a clean CUDA allocator), capped at a
T4's 14.74 GiB, forced to fp16, on a random-weight model of the real shape.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODELS = ["meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
          "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"]
POINTS = [(16, 1024, 1), (16, 2048, 2), (64, 2048, 2), (256, 1024, 1)]  # (rank, seq, micro-batch)
STEPS = 8


def run_point(model: str, r: int, seq: int, batch: int) -> dict:
    """Train STEPS steps at one point under the T4 cap; returns measured and estimated GiB."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_common import cap_like_t4, long_text_rows, random_model
    from rslora_colab import load_model, quick_finetune
    from rslora_colab.vram import estimate_vram

    path = random_model(model)
    cap_like_t4()
    record = {"model": model, "r": r, "seq": seq, "batch": batch, "gpu": torch.cuda.get_device_name(0)}
    estimate = estimate_vram(model, r=r, max_seq_length=seq, batch_size=batch)
    record["estimate_gib"] = estimate.total_gib
    record["estimate_no_context_gib"] = estimate.total_gib - estimate.cuda_context_gib
    try:
        pair = load_model(path, max_seq_length=seq, precision="fp16")
        torch.cuda.reset_peak_memory_stats()
        result = quick_finetune(pair, long_text_rows(batch * STEPS, seq), r=r, max_steps=STEPS, batch_size=batch,
                                grad_accum=1, max_seq_length=seq, output_dir=f"/tmp/bench_out/{r}_{seq}_{batch}")
        record["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        record["tokens_per_s"] = result.tokens_per_s
        record["oom"] = False
    except torch.OutOfMemoryError:
        record["oom"] = True
    return record


def run_plans() -> list[tuple[str, int, int, int]]:
    """The (model, rank, seq, micro-batch) the T4 planner says fit, for the models and ranks above."""
    from rslora_colab.plan import plan_for_gpu

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
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "R", "SEQ", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, r, seq, batch = args.one
        print("RESULT " + json.dumps(run_point(model, int(r), int(seq), int(batch))), flush=True)
        return
    points = [(m, *p) for m in MODELS for p in POINTS]
    plans = run_plans()
    records = []
    for kind, todo in (("grid", points), ("t4_plan", plans)):
        for model, r, seq, batch in todo:
            proc = subprocess.run([sys.executable, __file__, "--one", model, str(r), str(seq), str(batch)],
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
