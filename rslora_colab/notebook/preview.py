"""See one training row the way the trainer does: formatted, tokenized, and which tokens count for the loss.

:func:`preview_data` takes the same arguments as ``quick_finetune``, loads the
model once, builds the very TRL trainer training would use (over the first
rows only) and decodes one row twice with :func:`rslora_colab.train.masked_preview`:
everything the model reads, and only the positions whose label is not -100.
Its :attr:`DataPreview.settings` hand the loaded model on to
``quick_finetune``, so training does not load it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import FinetuneConfig
from ..data import load_and_validate
from ..load import runtime_of
from ..logs import library_bars_off
from ..settings import resolve_run
from ..train import attach_adapter, build_trainer, load_pair, masked_preview


@dataclass
class DataPreview:
    """One row of the training data, before and after TRL's formatting and masking."""

    format: str
    """Detected format: text, alpaca, completion, chat or sharegpt."""
    rows: int
    """Rows in the dataset (all checked)."""
    index: int
    """Which row is shown."""
    row: dict
    """The row as stored."""
    text: str
    """The row as the model reads it: chat template applied, tokenized, decoded."""
    trained_text: str
    """Only the tokens the loss is computed on (labels != -100), decoded."""
    settings: dict
    """``quick_finetune`` keywords this preview was made with, the model replaced by the loaded pair."""

    def __str__(self) -> str:
        rule = "-" * 72
        return (f"{self.format} data, {self.rows} rows, all checked. Row {self.index}:\n{rule}\n"
                f"AS THE MODEL READS IT (after the chat template):\n{self.text}\n{rule}\n"
                f"WHAT THE LOSS IS COMPUTED ON (every other token's label is -100):\n{self.trained_text}\n{rule}")


def preview_data(model: Any, dataset: Any, r: int = 64, index: int = 0, **overrides: Any) -> DataPreview:
    """Row ``index`` of ``dataset`` as formatted and masked for training ``model``.

    Arguments are those of :func:`~rslora_colab.quick_finetune` (``model`` a
    name, ``"demo"`` or a ``(model, tokenizer)`` pair; ``overrides`` any
    :class:`~rslora_colab.FinetuneConfig` field) plus ``index``. The model is
    loaded and given its rsLoRA adapter here; pass ``preview.settings`` to
    ``quick_finetune`` to train it without loading it twice.

    >>> preview = preview_data("demo", demo_dataset(), r=16, max_seq_length=256)  # doctest: +SKIP
    >>> print(preview)                                                           # doctest: +SKIP
    """
    config = FinetuneConfig.from_overrides(r=r, **overrides)
    rows, fmt = load_and_validate(dataset)
    if not isinstance(index, int) or not 0 <= index < len(rows):
        raise ValueError(f"index={index!r}: pass a row number from 0 to {len(rows) - 1}.")
    with library_bars_off():
        pair = load_pair(model, config)
        run = resolve_run(config, runtime_of(pair[0]))
        adapted = attach_adapter(pair[0], run)
        trainer = build_trainer(adapted, pair[1], rows.select(range(index + 1)), fmt, run)
        text, trained = masked_preview(trainer, index)
    handed_on = {"model": (adapted, pair[1]), "dataset": rows, "r": r, **overrides}
    return DataPreview(fmt, len(rows), index, dict(rows[index]), text, trained, handed_on)
