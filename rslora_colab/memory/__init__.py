"""GPU memory: will a run fit, before anything is downloaded?

================  ==================================================================
module            job
================  ==================================================================
:mod:`.catalog`   architecture numbers of the models people tune on a T4; any config.json
:mod:`.estimate`  peak memory of one training step, term by term (:class:`Calibration`)
:mod:`.grpo`      peak memory of one GRPO step: generation (KV cache) and the log-prob pass
:mod:`.plan`      the micro-batch and sequence length that fit a GPU, or "does not fit"
:mod:`.gauge`     the control panel's verdict: fits / won't fit, and why
:mod:`.synthetic` real-shaped random-weight models, to measure on a GPU without downloads
================  ==================================================================

Nothing here loads weights or needs a GPU; ``quick_finetune`` applies the plan
before loading (:mod:`rslora_colab.train.setup`). Sources of every constant:
``docs/memory.md``.
"""

from .catalog import CATALOG, ModelSpec, model_spec, resolve_spec
from .estimate import Calibration, VramEstimate, estimate_vram, lora_param_count
from .gauge import FitCheck, check_fit
from .grpo import GrpoEstimate, estimate_grpo_vram
from .plan import (
           T4_GIB,
           TrainPlan,
           catalog_table,
           plan_for_gpu,
           resolve_budget_gib,
           training_estimate_kwargs,
)

__all__ = ["CATALOG", "Calibration", "FitCheck", "GrpoEstimate", "estimate_grpo_vram", "ModelSpec", "T4_GIB", "TrainPlan", "VramEstimate", "catalog_table",
           "check_fit", "estimate_vram", "lora_param_count", "model_spec", "plan_for_gpu", "resolve_budget_gib",
           "resolve_spec", "training_estimate_kwargs"]
