"""What every sub-command resolves the same way: which model, which data, which settings."""

from __future__ import annotations

import torch

from ..demo import DEMO_NAME, DEMO_TRAINING, demo_dataset

GPU_DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct-bnb-4bit"
"""The model used when no --model is given on a machine with a GPU."""


def resolve_job(args, keys: tuple[str, ...]) -> tuple[str, object, dict]:
    """Model, data and the setting overrides among ``keys`` for this invocation; prints the demo notice.

    With no --model: the GPU default on a GPU, else the offline demo, whose
    overrides start from ``DEMO_TRAINING``.
    """
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    model = args.model or (GPU_DEFAULT_MODEL if torch.cuda.is_available() else DEMO_NAME)
    if model == DEMO_NAME:
        print("rslora-colab: no GPU and no --model, so this is the offline demo: a tiny Llama (2 layers, hidden 128) "
              "built here and fine-tuned on 158 rows from Python's manual. Pass --model and --data for a real run.",
              flush=True)
        overrides = {**DEMO_TRAINING, **overrides}
    if args.data is None and model != DEMO_NAME and args.model is not None:
        raise ValueError("--data is required with --model: pass a .jsonl/.json/.csv/.parquet file or a hub dataset id.")
    return model, (args.data or demo_dataset()), overrides
