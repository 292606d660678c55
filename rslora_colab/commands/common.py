"""What every sub-command resolves the same way: which model, which data, which settings."""

from __future__ import annotations

from ..demo import DEMO_NAME, demo_dataset, demo_preferences, demo_training
from ..notebook import default_model


def resolve_job(args, keys: tuple[str, ...]) -> tuple[str, object, dict]:
    """Model, data and the setting overrides among ``keys`` for this invocation; prints the demo notice.

    With no --model: the GPU default on a GPU, else the offline demo, whose
    overrides start from its own training settings (``demo_training``).
    """
    method = getattr(args, "method", "sft")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    model = args.model or default_model()
    if model == DEMO_NAME:
        rows = "preference pairs" if method == "dpo" else "rows"
        print("rslora-colab: no GPU and no --model, so this is the offline demo: a tiny Llama (2 layers, hidden 128) "
              f"built here and fine-tuned on 158 {rows} from Python's manual. Pass --model and --data for a real run.",
              flush=True)
        overrides = {**demo_training(method), **overrides}
    if args.data is None and model != DEMO_NAME and args.model is not None:
        raise ValueError("--data is required with --model: pass a .jsonl/.json/.csv/.parquet file or a hub dataset id.")
    return model, (args.data or (demo_preferences() if method == "dpo" else demo_dataset())), overrides
