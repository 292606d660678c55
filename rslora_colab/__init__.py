"""rslora-colab: fine-tune 1–8B open LLMs on a free Colab T4 with rsLoRA.

The public API follows the path a user walks — load → adapt → data → train →
watch → save → chat. The folders show the subsystems: ``data/``, ``train/``,
``memory/``, ``resilience/``, ``notebook/`` (``docs/architecture.md`` draws
the map and the path of one ``quick_finetune`` call):

>>> from rslora_colab import quick_finetune, demo_dataset
>>> result = quick_finetune("demo", demo_dataset(), r=64)        # doctest: +SKIP
>>> result.final_loss, result.adapter_path                       # doctest: +SKIP

Load
    :func:`load_model` — 4-bit base model + tokenizer; Unsloth on a GPU,
    transformers + bitsandbytes elsewhere (also on CPU).
Adapt
    :func:`add_rslora` — rsLoRA adapter, scale alpha/sqrt(r), alpha = r by
    default; :func:`adapter_scales` reads the scale back from every layer.
Presets
    :func:`lr_for_rank`, :func:`preset_for_rank`, :func:`adapter_scale` — the
    rank-dependent learning rate (16 → 2e-4, 32 → 1.5e-4, 64 → 1e-4; DPO a
    40th of that: 5e-6, 3.75e-6, 2.5e-6; GRPO a 20th: 1e-5, 7.5e-6, 5e-6) and
    the one place alpha/sqrt(r) is computed.
Data
    :func:`load_and_validate` — read and check text / Alpaca / prompt-completion
    / chat / ShareGPT data, or with ``method="dpo"`` prompt/chosen/rejected
    preference data (strings, messages, UltraFeedback), with ``method="grpo"``
    prompts (text or messages, plus the columns rewards read), before any model loads;
    :func:`token_lengths` — per-row prompt and total tokens as TRL will build
    them, from the tokenizer alone.
Train
    :func:`quick_finetune` → :class:`FinetuneResult`; :class:`FinetuneConfig`
    lists every setting it takes. ``method="dpo"`` tunes on preference pairs
    with TRL's DPOTrainer, the base (adapter disabled) as the reference;
    ``method="grpo"`` on prompts and ``reward_funcs`` with TRL's GRPOTrainer.
Evaluate
    ``quick_finetune(..., eval_dataset=...)`` or ``eval_fraction=0.1``: the
    eval loss on held-out rows before, during and after training (in the
    history, ``metrics.json`` and ``loss.png``; DPO: held-out reward accuracy
    and margin); ``early_stopping_patience`` and ``save_best`` keep the
    adapter with the lowest eval loss; ``report_to="tensorboard"``.
Memory
    :func:`estimate_vram` → :class:`VramEstimate` — peak GPU memory of a run,
    term by term, from ``config.json`` alone (catalog ids need no network);
    :func:`plan_for_gpu` → :class:`TrainPlan` — the micro-batch, grad_accum
    and sequence length that fit a GPU ("T4", "auto" or GiB), or "does not fit"
    with the nearest setting that does. ``quick_finetune`` plans on a GPU
    before loading, and :func:`train_with_oom_recovery` (which it uses) halves
    the micro-batch after a CUDA out-of-memory error and carries on from the
    same step. Not yet calibrated on a GPU: see ``docs/memory.md``.
Survive
    :class:`DivergenceGuard` — rolls back NaN / exploding steps and halves the
    lr (on by default; :class:`DivergenceError` when it cannot recover);
    checkpoints every few minutes, written atomically
    (:func:`make_checkpoints_atomic`, :class:`CheckpointTimer`,
    :func:`latest_valid_checkpoint`); ``quick_finetune(..., resume=True)``
    continues after a disconnect; :func:`mount_drive` keeps runs on Google Drive.
    One live run per ``output_dir`` (a lock); Ctrl-C stops after the step and
    saves a checkpoint (:class:`TrainingInterrupted`); :class:`OutputWriteError`
    when a checkpoint cannot be written.
Watch
    :class:`LivePlotCallback` — progress bar and loss curve redrawn in the
    notebook during training (``quick_finetune(..., callbacks=[LivePlotCallback()])``);
    :class:`StopCallback` ends a run after the current step.
Compare
    :func:`compare_ranks` → :class:`SweepResult` — LoRA vs rsLoRA across ranks
    (controlled: same alpha, lr and data order; or the kit's presets), with
    per-step loss and adapter gradient norm, the held-out loss beside them
    (``eval_fraction``), a table and a figure.
Save
    :func:`save` — ``how="adapter"`` / ``"merged_16bit"`` / ``"gguf"``;
    :func:`push_to_hub` — the same to the Hugging Face Hub (token from
    ``huggingface_hub.get_token()``: ``$HF_TOKEN`` or Colab secrets, never printed).
Use
    :func:`chat` — generate through the chat template, streamed;
    :func:`load_adapter` — a saved adapter on its base model.
Notebook
    :func:`control_panel` → :class:`ControlPanel` — ipywidgets panel: model,
    rank, learning rate, data (hub id or upload), VRAM gauge, Train / Stop,
    live plot; ``panel.settings`` are ``quick_finetune`` keywords.
    :func:`check_fit` — the gauge's verdict as a :class:`FitCheck`.
    :func:`check_runtime` — GPU, memory, bf16/fp16, or the CPU demo notice.
    :func:`preview_data` — one row formatted and masked as the trainer sees it.
    :func:`save_outputs` — adapter, merged 16-bit or GGUF, chosen by a list.
    :func:`resolve_choices`, :func:`run_defaults`, :func:`sweep_defaults`,
    :func:`preference_data` — what ``"auto"`` means here (the demo on CPU).
GRPO
    ``quick_finetune(model, prompts, method="grpo", reward_funcs=[...])`` — TRL's
    ``GRPOTrainer`` (:mod:`rslora_colab.train.grpo`); ready rewards
    :func:`exact_match`, :func:`numeric_match`, :func:`tag_format`,
    :func:`regex_reward`, :func:`length_penalty`; :func:`check_rewards` (run
    before the first step; a failure raises :class:`RewardError`);
    :func:`mean_reward` — sampled completions scored on held-out prompts;
    :func:`grpo_rewards` — a notebook's reward choice ("auto" or ready names).
Demo
    :func:`demo_model`, :func:`demo_dataset`, :func:`demo_preferences`,
    :func:`demo_prompts` — a tiny Llama, 158 instruction rows, 158 preference
    pairs and 79 GRPO prompts built offline from Python's own manual, the CPU fallback.

Messages
    Everything the kit says goes through ``logging.getLogger("rslora_colab")``
    (INFO by default); :func:`set_verbosity` (``"warning"``) quiets it.

Command line: ``python -m rslora_colab {train,plan,compare,chat,export} --help``.
"""

import logging

from .logs import hide_library_warnings, set_verbosity, show_messages

show_messages()  # INFO to stdout: notebooks and the command line show progress; set_verbosity quiets it
hide_library_warnings()  # the libraries' notices about their own deprecated APIs (RSLORA_COLAB_SHOW_WARNINGS=1 shows)

from .runtime import import_unsloth_first  # noqa: E402

import_unsloth_first()  # Unsloth patches transformers/TRL/PEFT only if imported before them (GPU or CPU backend)
# bitsandbytes logs a harmless notice on CPUs with AVX512-BF16 about an optional hub kernel it cannot fetch.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .adapt import DEFAULT_TARGETS, adapter_scales, add_rslora  # noqa: E402
from .chat import chat  # noqa: E402
from .choices import (  # noqa: E402
                       grpo_rewards,
                       preference_data,
                       resolve_choices,
                       run_defaults,
                       sweep_defaults,
                       try_prompt,
)
from .config import FinetuneConfig  # noqa: E402
from .data import detect_format, load_and_validate  # noqa: E402
from .demo import DEMO_NAME, demo_dataset, demo_model, demo_preferences, demo_prompts  # noqa: E402
from .load import load_adapter, load_model  # noqa: E402
from .memory import (  # noqa: E402
                       FitCheck,
                       TrainPlan,
                       VramEstimate,
                       check_fit,
                       estimate_vram,
                       plan_for_gpu,
)
from .notebook import (  # noqa: E402
                       ControlPanel,
                       DataPreview,
                       LivePlotCallback,
                       RuntimeCheck,
                       check_runtime,
                       control_panel,
                       download,
                       new_run_folder,
                       notebook_output_dir,
                       notebook_run,
                       preview_data,
)
from .presets import RankPreset, adapter_scale, lr_for_rank, preset_for_rank  # noqa: E402
from .resilience.checkpoints import (  # noqa: E402
                       CheckpointTimer,
                       latest_valid_checkpoint,
                       make_checkpoints_atomic,
)
from .resilience.drive import default_output_dir, keep_on_drive, mount_drive  # noqa: E402
from .resilience.guard import DivergenceError, DivergenceGuard  # noqa: E402
from .resilience.oom import train_with_oom_recovery  # noqa: E402
from .result import FinetuneResult  # noqa: E402
from .rewards import (  # noqa: E402
                       RewardError,
                       check_rewards,
                       exact_match,
                       length_penalty,
                       numeric_match,
                       regex_reward,
                       tag_format,
)
from .runtime import Runtime, detect_runtime  # noqa: E402
from .save import push_to_hub, save, save_outputs  # noqa: E402
from .settings import RunSettings  # noqa: E402
from .sweep import SweepResult, compare_ranks  # noqa: E402
from .train import quick_finetune  # noqa: E402
from .train.grpo import mean_reward  # noqa: E402
from .watch import HistoryCallback, StopCallback  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGETS", "DEMO_NAME", "FinetuneConfig", "FinetuneResult", "RankPreset", "Runtime", "RunSettings",
    "SweepResult", "adapter_scale", "adapter_scales", "add_rslora", "chat", "compare_ranks", "demo_dataset",
    "demo_model", "demo_preferences",
    "detect_format", "detect_runtime", "load_adapter", "load_and_validate", "load_model", "lr_for_rank",
    "preset_for_rank", "push_to_hub", "quick_finetune", "save",
    "TrainPlan", "VramEstimate", "estimate_vram", "plan_for_gpu", "train_with_oom_recovery",
    "CheckpointTimer", "DivergenceError", "DivergenceGuard", "default_output_dir", "latest_valid_checkpoint",
    "make_checkpoints_atomic", "mount_drive",
    "ControlPanel", "DataPreview", "FitCheck", "HistoryCallback", "LivePlotCallback", "RuntimeCheck", "StopCallback",
    "check_fit", "check_runtime", "control_panel", "preview_data", "save_outputs",
    "preference_data", "resolve_choices", "run_defaults", "sweep_defaults", "set_verbosity",
    "download", "keep_on_drive", "new_run_folder", "notebook_output_dir", "notebook_run", "try_prompt",
    "RewardError", "check_rewards", "demo_prompts", "grpo_rewards", "exact_match", "length_penalty", "mean_reward", "numeric_match",
    "regex_reward", "tag_format",
]
