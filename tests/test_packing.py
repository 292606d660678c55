"""Packed and padding-free batches never let one row attend to another (``packing`` / ``padding_free``).

TRL's collator lays a micro-batch's rows one after another with position ids restarting at 0 for each row;
transformers turns those into a block-diagonal causal mask (without FlashAttention, which a T4 lacks). The test
lays real tokenized rows out as TRL does (its ``pack_dataset`` and collator), computes every token's loss in the
batch, and computes the same rows one at a time: they must agree to 1e-4, on both lanes' transformers.
"""

from __future__ import annotations

import pytest
import torch

from rslora_colab import FinetuneConfig, add_rslora, demo_dataset, load_and_validate, quick_finetune
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train import build_trainer

SAME = 1e-4


def _token_losses(model, input_ids, labels, position_ids=None):
    """Each position's cross-entropy for its label (NaN where the label is -100), without a cache."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits.float()
    shifted = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted.clamp(min=0), reduction="none")
    return torch.where(shifted == -100, torch.nan, losses)


def _trl_batch(trainer, layout: str, rows: int = 6) -> dict:
    """A batch laid out as TRL lays it out for ``layout``: its own ``pack_dataset`` (best-fit decreasing) for packing,
    its collator with ``padding_free=True`` for both. Built from the trainer's tokenized rows, so it does not depend
    on whether the backend kept the flags (Unsloth's CPU backend turns them off in the trainer's config)."""
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenized = trainer.train_dataset.select_columns(["input_ids", "labels"])
    if layout == "packing":
        tokenized = pack_dataset(tokenized, seq_length=256, strategy="bfd")
    collate = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id, padding_free=True)
    return collate([tokenized[i] for i in range(min(rows, len(tokenized)))])


@pytest.mark.parametrize("layout", ["packing", "padding_free"])
def test_a_packed_batch_gives_each_row_the_loss_it_has_alone(demo_pair, layout):
    model, tokenizer = demo_pair
    model = add_rslora(model, r=8)
    generator = torch.Generator().manual_seed(0)  # an adapter that changes the logits, as after some training
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.02
    dataset, fmt = load_and_validate(demo_dataset(n=24))
    config = FinetuneConfig(r=8, batch_size=6, grad_accum=1, max_seq_length=256, output_dir="unused")
    trainer = build_trainer(model, tokenizer, dataset, fmt, resolve_run(config, runtime_of(model)))
    batch = _trl_batch(trainer, layout)
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert "attention_mask" not in batch  # nothing but the position ids keeps the rows apart
    model.eval()
    packed = _token_losses(model, ids, labels, positions)
    rows, compared = 0, 0
    for b in range(ids.shape[0]):
        starts = (positions[b] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        for start, end in zip(starts, starts[1:]):
            if end - start < 2:
                continue
            alone = _token_losses(model, ids[b:b + 1, start:end], labels[b:b + 1, start:end])
            together = packed[b:b + 1, start:end - 1]
            known = ~torch.isnan(alone)
            assert torch.equal(known, ~torch.isnan(together))
            assert (alone[known] - together[known]).abs().max() < SAME
            rows, compared = rows + 1, compared + int(known.sum())
    assert rows >= 6 and compared > 20  # several rows shared a sequence, and their answers were compared


def test_packing_and_padding_free_train_and_record_the_layout_that_runs(demo_path, tmp_path, cpu_backend, caplog):
    """The CPU lane trains packed / padding-free. Unsloth's CPU backend (the Colab lane) turns both off; the run
    then says so and records the padded batches it really trains with."""
    import logging

    for layout in ("packing", "padding_free"):
        with caplog.at_level(logging.INFO, logger="rslora_colab"):
            result = quick_finetune(demo_path, demo_dataset(n=32), r=8, max_steps=4, batch_size=4, grad_accum=1,
                                    max_seq_length=256, eval_fraction=0, output_dir=str(tmp_path / layout),
                                    **{layout: True})
        expected = {"packing": "packed", "padding_free": "padding-free"}[layout]
        if cpu_backend == "unsloth":
            assert result.settings["batches"] == "padded" and "off: training with padded batches" in caplog.text
        else:
            assert result.settings["batches"] == expected
        assert len([h for h in result.history if "loss" in h]) == 4 and result.final_loss < 10


def test_padding_free_without_packing_refuses_rows_it_could_not_truncate(tmp_path):
    with pytest.raises(ValueError, match=r"padding_free=True without packing: TRL does not truncate rows then.*"
                                         r"longest row has \d+ tokens, over max_seq_length=50"):
        quick_finetune("demo", demo_dataset(n=8), r=8, max_steps=2, max_seq_length=50, padding_free=True,
                       output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="packing=.*expected False with method='dpo'"):
        FinetuneConfig(method="dpo", packing=True)


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_the_plan_for_packed_batches_is_for_full_sequences(simulated_gpu, tmp_path):
    """Packed sequences are filled to max_seq_length, so the plan is made for that length, not the longest row."""
    from rslora_colab.data.lengths import TokenLengths
    from rslora_colab.train.setup import fit_to_gpu

    short_rows = TokenLengths(rows=list(range(32)), prompt=[20] * 32, total=[100] * 32, dataset_rows=32)
    base = dict(r=16, max_seq_length=2048, batch_size=4, output_dir=str(tmp_path))
    padded = fit_to_gpu("Llama-3.2-1B-Instruct", FinetuneConfig(**base), short_rows)[1]
    packed = fit_to_gpu("Llama-3.2-1B-Instruct", FinetuneConfig(**base, packing=True), short_rows)[1]
    assert padded.max_seq_length == 100 and packed.max_seq_length == 2048
    assert packed.estimate.total_gib > padded.estimate.total_gib
