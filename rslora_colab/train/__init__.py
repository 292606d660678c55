"""Step 4 — train: one call from a model name and data to a saved rsLoRA adapter.

==================  ===============================================================
module              job
==================  ===============================================================
:mod:`.setup`       before any weights load: the eval split, the memory plan, the rows measured
:mod:`.trainer`     TRL's ``SFTTrainer`` / ``DPOTrainer`` from one :class:`RunSettings`
:mod:`.evaluation`  eval loss, best adapter, early stopping: transformers' own arguments
:mod:`.finetune`    ``quick_finetune`` and ``train_adapter``: the run, start to end
==================  ===============================================================
"""

from .finetune import quick_finetune, save_final_outputs, train_adapter
from .setup import check_lengths, fit_to_gpu, load_pair, split_eval
from .trainer import attach_adapter, build_trainer, masked_preview, trainer_args

__all__ = ["attach_adapter", "build_trainer", "check_lengths", "fit_to_gpu", "load_pair", "masked_preview",
           "quick_finetune", "save_final_outputs", "split_eval", "train_adapter", "trainer_args"]
