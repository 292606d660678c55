"""Benchmark: the LoRA vs rsLoRA rank sweep on the offline demo model, 3 seeds, on CPU.

Writes bench/results/rank_sweep_<mode>.json (every run, step by step, plus the
table) and .png, and prints the table. Controlled mode (default) is the
paper's comparison: alpha 8 and lr 1e-3 for every rank and both scalings,
same schedule and data order. --presets checks the kit's own settings
(rsLoRA, alpha = r, lr_for_rank(r)) up to rank 1024.

Every run trains on all 158 rows of demo_dataset() but the 20% held out with
its seed (32 rows; the runs of one seed share them), and measures the eval
loss on those every 10 steps: the held-out column says whether a lower
training loss at a higher rank carries over to rows the adapter never saw.

    OMP_NUM_THREADS=1 python bench/rank_sweep.py              # 24 runs, ~10 min on 2 shared CPU cores
    OMP_NUM_THREADS=1 python bench/rank_sweep.py --presets    # 15 runs, ~9 min
    OMP_NUM_THREADS=1 python bench/rank_sweep.py --seeds 0 --no-4bit   # the same, fp32 base and adapter
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import sys
import time
from pathlib import Path

import torch

from rslora_colab import DEMO_NAME, compare_ranks, demo_dataset
from rslora_colab.demo import DEMO_TRAINING

RESULTS = Path(__file__).parent / "results"
SHARED = {k: DEMO_TRAINING[k] for k in ("batch_size", "grad_accum", "max_seq_length")}  # 8, no accumulation, 256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", action="store_true", help="alpha = r, lr_for_rank(r), rsLoRA only")
    parser.add_argument("--ranks", type=int, nargs="+", help="default 4 16 64 256 (presets: also 1024)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default 100)")
    parser.add_argument("--no-4bit", dest="load_in_4bit", action="store_false",
                        help="full-precision base: the adapter then trains in fp32 (4-bit: TRL keeps it in bf16)")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="rows held out (default 0.2; 0: none)")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between evaluations (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    mode = "presets" if args.presets else "controlled"
    ranks = args.ranks or ([4, 16, 64, 256, 1024] if args.presets else [4, 16, 64, 256])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"rank_sweep_{mode}{'' if args.load_in_4bit else '_fp32'}"
    start = time.perf_counter()
    result = compare_ranks(DEMO_NAME, demo_dataset(), ranks=ranks, seeds=args.seeds, max_steps=args.steps,
                           mode=mode, save_to=stem.with_suffix(".json"), load_in_4bit=args.load_in_4bit,
                           eval_fraction=args.eval_fraction, eval_every=args.eval_every, **SHARED)
    result.settings["bench"] = {
        "command": "OMP_NUM_THREADS=1 python bench/rank_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), no GPU"
                   if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "date": datetime.date.today().isoformat(), "wall_s": round(time.perf_counter() - start, 1),
        "versions": {"python": platform.python_version(),
                     **{pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformers", "trl", "peft",
                                                                          "bitsandbytes")}},
    }
    result.to_json(stem.with_suffix(".json"))
    result.plot(stem.with_suffix(".png"))
    print("\n" + result.markdown())
    print(f"\nsame data order across runs of a seed: {result.same_data_order()}; "
          f"wall {result.settings['bench']['wall_s']} s; saved {stem}.json/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
