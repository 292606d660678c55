"""Import Unsloth before transformers, TRL and PEFT when it can run (a CUDA GPU and the package)."""

from __future__ import annotations

import importlib.util
import os
import sys


def import_unsloth_first() -> bool:
    """Import ``unsloth`` now if it is installed and a CUDA GPU is visible; True when it was imported.

    Unsloth patches transformers, TRL and PEFT at import time and warns when
    they were imported first. Set ``RSLORA_COLAB_NO_UNSLOTH=1`` to skip.
    """
    if "unsloth" in sys.modules:
        return True
    if os.environ.get("RSLORA_COLAB_NO_UNSLOTH") or importlib.util.find_spec("unsloth") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    import unsloth  # noqa: F401

    return True
