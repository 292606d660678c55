"""Packed and padding-free batches never let one row attend to another (``packing`` / ``padding_free``).

TRL's collator lays a micro-batch's rows one after another with position ids restarting at 0 for each row;
transformers turns those into a block-diagonal causal mask (without FlashAttention, which a T4 lacks). The test
lays real tokenized rows out as TRL does (its ``pack_dataset`` and collator), computes every token's loss in the
batch, and computes the same rows one at a time: they must agree to 1e-4, on both lanes' transformers.
"""

from __future__ import annotations

import dataclasses

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


def _lengths(totals: list[int], sampled: bool = False):
    from rslora_colab.data.lengths import TokenLengths

    return TokenLengths(rows=list(range(len(totals))), prompt=[min(10, t) for t in totals], total=totals,
                        dataset_rows=len(totals) * (10 if sampled else 1))


def test_the_kit_chooses_the_batch_layout_per_backend_and_says_why():
    from rslora_colab.runtime import Runtime
    from rslora_colab.train.setup import PADDING_FREE_DEFAULT, choose_batches

    transformers = Runtime("transformers", "fp32", "cpu", "test")
    unsloth_cpu, unsloth_t4 = Runtime("unsloth", "fp32", "cpu", "test"), Runtime("unsloth", "fp16", "Tesla T4", "t")
    config = FinetuneConfig(max_seq_length=256, output_dir="unused")
    fits, too_long = _lengths([40, 200, 90]), _lengths([40, 300, 90])

    chosen, why = choose_batches(config, transformers, fits)
    assert chosen.padding_free is True and why == PADDING_FREE_DEFAULT and "bench/packing.py" in why
    for lengths, reason in ((too_long, "a row has 300 tokens, over max_seq_length=256"),
                            (_lengths([40, 90], sampled=True), "only a sample of the rows was measured"),
                            (None, "the rows could not be measured")):
        chosen, why = choose_batches(config, transformers, lengths)
        assert chosen.padding_free is False and why.startswith(f"padded: {reason}") and "never truncated" in why
    assert choose_batches(config, transformers, fits, too_long)[0].padding_free is False  # the eval rows count too
    chosen, why = choose_batches(config, unsloth_cpu, fits)
    assert chosen.padding_free is False and "Unsloth's CPU backend" in why
    chosen, why = choose_batches(config, unsloth_t4, fits)  # Unsloth's own choice for the GPU: left unset
    assert chosen.padding_free is None and "unsloth/utils/padding_choice.py" in why
    for asked in (dict(padding_free=False), dict(padding_free=True), dict(packing=True)):
        chosen, why = choose_batches(dataclasses.replace(config, **asked), transformers, too_long)
        assert (chosen.packing, chosen.padding_free) == (asked.get("packing", False), asked.get("padding_free"))
        assert why == ""  # as asked: no reason needed
    assert choose_batches(FinetuneConfig(method="dpo", output_dir="unused"), transformers, fits)[0].padding_free is None


def test_sft_config_leaves_padding_free_open_for_unsloth_to_choose(cpu_backend):
    """Unsloth's SFTConfig defaults padding_free to None, which is what lets it choose on a GPU: the kit must not
    set it then."""
    from rslora_colab.runtime import Runtime
    from rslora_colab.train.trainer import sft_config

    run = resolve_run(FinetuneConfig(output_dir="unused"), Runtime("transformers", "fp32", "cpu", "test"))
    assert run.config.padding_free is None
    from trl import SFTConfig

    default = SFTConfig.__dataclass_fields__["padding_free"].default
    assert sft_config(run).padding_free == default  # the class's own default, untouched
    run = dataclasses.replace(run, config=dataclasses.replace(run.config, padding_free=True))
    asked = sft_config(run)
    assert asked.max_length is None  # padding-free rows are not truncated: TRL wants no max_length then
    assert asked.padding_free is (cpu_backend != "unsloth")  # Unsloth's CPU backend's SFTConfig turns it off


def test_the_default_run_says_which_batches_it_trains_with(demo_path, tmp_path, cpu_backend, caplog):
    """With padding_free left open the CPU lane trains padding-free and says why; Unsloth's CPU backend pads."""
    import logging

    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        result = quick_finetune(demo_path, demo_dataset(n=16), r=8, max_steps=2, batch_size=4, grad_accum=1,
                                max_seq_length=256, eval_fraction=0, output_dir=str(tmp_path / "default"))
    start = next(line for line in caplog.messages if line.startswith("training r=8"))
    if cpu_backend == "unsloth":
        assert result.settings["batches"] == "padded" and "padded batches (Unsloth's CPU backend" in start
    else:
        assert result.settings["batches"] == "padding-free" and result.settings["padding_free"] is True
        assert f"padding-free batches (the kit's default on transformers" in start
        assert result.settings["batches_why"] in start
    # a row longer than max_seq_length: padded batches, and the start line says why
    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        caplog.clear()
        result = quick_finetune(demo_path, demo_dataset(n=16), r=8, max_steps=1, batch_size=4, grad_accum=1,
                                max_seq_length=40, eval_fraction=0, output_dir=str(tmp_path / "long"))
    start = next(line for line in caplog.messages if line.startswith("training r=8"))
    assert result.settings["batches"] == "padded" and "padded batches (" in start
    if cpu_backend != "unsloth":
        assert "over max_seq_length=40" in start


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_the_plan_for_padding_free_batches_counts_the_tokens_they_hold(simulated_gpu, tmp_path):
    """A padded micro-batch is rows x its longest row; a padding-free one holds the rows' own tokens, at most its
    batch_size longest rows'. On long-tailed rows the padding-free plan is smaller, and says how many tokens."""
    from rslora_colab.train.setup import fit_to_gpu

    tail = _lengths([2000] + [300] * 63)  # one long row; the rest short, like instruction data
    assert tail.most_tokens(4, 2048) == 2000 + 3 * 300 and tail.most_tokens(4, 1024) == 1024 + 3 * 300
    base = dict(r=16, max_seq_length=2048, batch_size=4, output_dir=str(tmp_path))
    padded = fit_to_gpu("Llama-3.2-1B-Instruct", FinetuneConfig(**base, padding_free=False), tail)[1]
    free = fit_to_gpu("Llama-3.2-1B-Instruct", FinetuneConfig(**base, padding_free=True), tail)[1]
    assert padded.micro_batch_tokens is None and free.micro_batch_tokens == 2900
    assert "padding-free: at most 2,900 tokens per micro-batch" in free.message
    assert free.estimate.total_gib < padded.estimate.total_gib
    # the same tokens as padded rows of their mean length: the same estimate
    even = fit_to_gpu("Llama-3.2-1B-Instruct", FinetuneConfig(**base, padding_free=False), _lengths([725] * 64))[1]
    same = even.estimate
    assert free.estimate.total_gib == pytest.approx(same.total_gib)


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_a_plan_that_must_cut_the_rows_gives_up_the_kits_padding_free_choice(simulated_gpu, tmp_path):
    """Nothing truncates padding-free rows: when memory forces a shorter max_seq_length, the kit's own padding-free
    choice becomes padded batches (planned again), and a padding_free=True the user asked for is refused."""
    from rslora_colab.train.setup import fit_to_gpu

    long_rows = _lengths([8192] * 8)
    base = dict(r=64, max_seq_length=8192, batch_size=2, backend="transformers", output_dir=str(tmp_path))
    config, plan = fit_to_gpu("Llama-3.1-8B-Instruct", FinetuneConfig(**base, padding_free=True), long_rows,
                              chosen=True)
    assert config.padding_free is False and plan.micro_batch_tokens is None and config.max_seq_length < 8192
    with pytest.raises(ValueError, match="padding_free=True: fits: .*shorter than the longest row .*packing=True"):
        fit_to_gpu("Llama-3.1-8B-Instruct", FinetuneConfig(**base, padding_free=True), long_rows)
