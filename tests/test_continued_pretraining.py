"""Continued pretraining (``train_embeddings=True``): embed_tokens and lm_head train beside the rsLoRA adapter, in
fp32, at their own learning rate, are saved with the adapter, and come back from it, through a merge and through
the portable export. Unsloth once dropped them silently (unslothai/unsloth#9326): these tests would catch that."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from rslora_colab import FinetuneConfig, add_rslora, detect_runtime, estimate_vram, load_adapter, quick_finetune
from rslora_colab.adapt import embedding_modules, ties_embeddings
from rslora_colab.demo import demo_glossary, demo_manual_text
from rslora_colab.settings import resolve_run

SAME = 1e-4


def _trained_copies(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().clone() for name, p in model.named_parameters() if ".modules_to_save." in name}


@pytest.fixture(scope="module")
def cpt_run(demo_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpt")
    result = quick_finetune(demo_path, demo_glossary(24), r=8, max_steps=8, batch_size=4, grad_accum=1, lr=5e-4,
                            max_seq_length=128, train_embeddings=True, packing=True, eval_dataset=demo_manual_text(8),
                            output_dir=str(out / "run"), checkpoint_minutes=0,
                            load_in_4bit=False)  # a 16-bit base reloads bit for bit (NF4's double quant does not)
    return result, out


def test_embed_tokens_and_lm_head_train_in_fp32_at_their_own_rate_and_are_saved(cpt_run, demo_pair):
    result, _ = cpt_run
    base, _ = demo_pair
    copies = _trained_copies(result.model)
    assert {name.split(".modules_to_save")[0].rsplit(".", 1)[-1] for name in copies} == {"embed_tokens", "lm_head"}
    assert all(t.dtype == torch.float32 for t in (p for n, p in result.model.named_parameters()
                                                  if ".modules_to_save." in n))
    before = {"embed_tokens": base.get_input_embeddings().weight, "lm_head": base.get_output_embeddings().weight}
    for name, trained in copies.items():
        original = before[name.split(".modules_to_save")[0].rsplit(".", 1)[-1]].detach().float()
        assert (trained - original).abs().max() > 1e-4  # it moved
    settings = result.settings
    assert settings["train_embeddings"] is True and settings["embedding_lr"] == pytest.approx(5e-4 * 0.2)
    saved = load_file(str(result.adapter_path / "adapter_model.safetensors"))
    for name, trained in copies.items():
        key = name.replace(".modules_to_save.default", "")
        assert torch.equal(saved[key].float(), trained)  # saved as trained: nothing silently dropped
    config = json.loads((result.adapter_path / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["embed_tokens", "lm_head"] and config["use_rslora"] is True
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]


def test_loading_the_adapter_gives_the_trained_models_logits(cpt_run):
    result, _ = cpt_run
    ids = torch.tensor([[5, 17, 99, 3, 250, 12]])
    result.model.eval()
    with torch.no_grad():
        trained = result.model(input_ids=ids).logits.float()
    model, _ = load_adapter(result.adapter_path, max_seq_length=128, load_in_4bit=False)
    model.eval()
    with torch.no_grad():
        loaded = model(input_ids=ids).logits.float()
    assert (trained - loaded).abs().max() < SAME


def test_the_merge_and_the_portable_export_carry_the_trained_embeddings(cpt_run, caplog):
    from rslora_colab.save import make_portable, merge_adapter
    from transformers import AutoModelForCausalLM

    result, out = cpt_run
    copies = {name.split(".modules_to_save")[0].rsplit(".", 1)[-1]: t
              for name, t in _trained_copies(result.model).items()}
    merged = AutoModelForCausalLM.from_pretrained(str(merge_adapter(result.adapter_path, out / "merged")))
    for module, name in ((merged.get_input_embeddings(), "embed_tokens"), (merged.get_output_embeddings(), "lm_head")):
        assert torch.equal(module.weight, copies[name].to(module.weight.dtype))  # the trained matrix, in 16-bit
    portable = load_file(str(make_portable(result.adapter_path, out / "portable") / "adapter_model.safetensors"))
    assert any("embed_tokens" in key for key in portable) and any("lm_head" in key for key in portable)
    assert "llama.cpp's convert_lora_to_gguf.py refuses" in caplog.text  # and says where it cannot go


def _tiny_tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def test_a_tied_pair_trains_as_one_matrix():
    """Several catalog models tie lm_head to embed_tokens: the trained copy must be the head's weight too, or the
    two drift apart (or the head silently stays frozen)."""
    model = _tiny_tied_llama()
    assert ties_embeddings(model) and embedding_modules(model) == ["embed_tokens"]
    model = add_rslora(model, r=4, target_modules=["q_proj", "v_proj"], gradient_checkpointing=False,
                       train_embeddings=True)
    trained = [p for n, p in model.named_parameters() if ".modules_to_save." in n and p.requires_grad]
    assert len(trained) == 1
    with torch.no_grad():
        trained[0].add_(1.0)  # a change to the one trained matrix ...
    head = model.get_output_embeddings()
    weight = head.weight if hasattr(head, "weight") else head.modules_to_save["default"].weight
    assert torch.equal(weight, trained[0])  # ... is the head's too


def test_embedding_settings_are_checked():
    with pytest.raises(ValueError) as err:
        FinetuneConfig(method="dpo", train_embeddings=True, embedding_lr=2.0)
    text = str(err.value)
    assert "train_embeddings=True: expected False with method='dpo': continued pretraining" in text and "embedding_lr=2.0" in text
    with pytest.raises(ValueError, match="embedding_lr=1e-05: expected None unless train_embeddings=True"):
        FinetuneConfig(embedding_lr=1e-5)
    run = resolve_run(FinetuneConfig(r=16, train_embeddings=True, output_dir="unused"),
                      detect_runtime())
    assert run.config.embedding_lr == pytest.approx(2e-4 * 0.2) and run.manifest()["train_embeddings"] is True


def test_the_optimizer_gives_the_embeddings_their_own_learning_rate(demo_pair, tmp_path):
    from rslora_colab import load_and_validate
    from rslora_colab.load import runtime_of
    from rslora_colab.train import build_trainer
    from rslora_colab.train.trainer import attach_adapter

    model, tokenizer = demo_pair
    dataset, fmt = load_and_validate(demo_glossary(8))
    run = resolve_run(FinetuneConfig(r=8, lr=1e-4, train_embeddings=True, embedding_lr=3e-5, max_seq_length=128,
                                     output_dir=str(tmp_path)), runtime_of(model))
    trainer = build_trainer(attach_adapter(model, run), tokenizer, dataset, fmt, run)
    groups = trainer.optimizer.param_groups
    embedding_ids = {id(p) for n, p in trainer.model.named_parameters() if ".modules_to_save." in n}
    by_lr = {group["lr"]: {id(p) for p in group["params"]} for group in groups}
    assert by_lr[3e-5] == embedding_ids and not by_lr[1e-4] & embedding_ids


def test_the_plan_counts_the_trained_embeddings():
    """Mistral-7B v0.3 (vocabulary 32,768, untied), r=128 with embed_tokens and lm_head on a T4: two 32768 x 4096
    matrices in fp32 (1.0 GiB), their fp32 gradients (1.0 GiB) and 8-bit AdamW state (0.5 GiB)."""
    kwargs = dict(r=128, max_seq_length=2048, batch_size=2)
    plain = estimate_vram("Mistral-7B-Instruct-v0.3", **kwargs)
    cpt = estimate_vram("Mistral-7B-Instruct-v0.3", train_embeddings=True, **kwargs)
    assert cpt.trained_embeddings_gib == pytest.approx(1.0) and cpt.trained_embeddings_state_gib == pytest.approx(1.5)
    assert cpt.static_gib - plain.static_gib == pytest.approx(1.0)
    assert cpt.total_gib > plain.total_gib + 2.5  # plus the allocator margin on top
    assert "trained embed + head (fp32)" in cpt.table() and "trained embed" not in plain.table()


def test_packed_raw_text_is_split_into_pieces_not_truncated(demo_pair, tmp_path, cpu_backend, caplog):
    """Continued pretraining reads documents longer than max_seq_length: packed, TRL's bfd_split cuts them into
    pieces, so every token is trained on (packed rows with a prompt keep TRL's truncating bfd)."""
    import logging

    from datasets import Dataset

    from rslora_colab import load_and_validate
    from rslora_colab.load import runtime_of
    from rslora_colab.train import build_trainer
    from rslora_colab.train.setup import check_lengths
    from rslora_colab.train.trainer import attach_adapter, packing_strategy

    model, tokenizer = demo_pair
    texts = demo_glossary(12)["text"]
    long_docs = Dataset.from_list([{"text": " ".join(texts[i::3])} for i in range(3)])
    dataset, fmt = load_and_validate(long_docs)
    config = FinetuneConfig(r=8, packing=True, max_seq_length=64, output_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        lengths = check_lengths(tokenizer, dataset, fmt, config)
    assert "will be split into pieces of at most 64 tokens (packing: none of the text is lost)" in caplog.text
    assert packing_strategy("text") == "bfd_split" and packing_strategy("alpaca") == "bfd"
    run = resolve_run(config, runtime_of(model))
    trainer = build_trainer(attach_adapter(model, run), tokenizer, dataset, fmt, run)
    if cpu_backend == "unsloth":  # its CPU backend turns packing off (needs FlashAttention): nothing to split
        return
    assert trainer.args.packing_strategy == "bfd_split"
    pieces = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert max(pieces) <= 64 and sum(pieces) >= sum(lengths.total)  # every token kept (TRL may add an EOS per row)


def test_the_cli_trains_embeddings(tmp_path, capsys):
    from rslora_colab.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--train-embeddings", "--embedding-lr", "5e-5", "--max-steps", "2", "--batch-size", "4",
                 "--out", str(out), "--sample", ""]) == 0
    assert "+ embed_tokens/lm_head in fp32 at lr=5e-05 on" in capsys.readouterr().out  # the start line says so
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["train_embeddings"] is True and settings["embedding_lr"] == 5e-5
    assert "lm_head" in " ".join(load_file(str(out / "adapter" / "adapter_model.safetensors")))


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_on_a_t4_the_plan_says_what_training_the_embeddings_costs(simulated_gpu, tmp_path, caplog):
    """An 8B model with a 128k vocabulary fits a T4 for LoRA but not with its embeddings trained (the complaint in
    unslothai/unsloth#1214): the refusal comes before any weights load and names the cost and the way out."""
    from rslora_colab.train.setup import fit_to_gpu

    config = FinetuneConfig(r=16, max_seq_length=1024, batch_size=1, grad_accum=8, output_dir=str(tmp_path))
    assert fit_to_gpu("Llama-3.1-8B-Instruct", config)[1].fits
    with pytest.raises(ValueError, match=r"does not fit.*train_embeddings alone needs ~\d+\.\d+ GiB here .*without it "
                                         r"the run fits"):
        fit_to_gpu("Llama-3.1-8B-Instruct", dataclasses.replace(config, train_embeddings=True))
    import logging

    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        plan = fit_to_gpu("Mistral-7B-Instruct-v0.3", dataclasses.replace(config, r=128, train_embeddings=True))[1]
    assert plan.fits and "train_embeddings: embed_tokens and lm_head in fp32 with their gradients and optimizer " \
                         "state (~2.50 GiB)" in caplog.text


def test_a_resumed_run_trains_the_embeddings_like_an_uninterrupted_one(demo_path, tmp_path):
    """Stopped after step 4 and resumed from its checkpoint: the optimizer's two groups (adapter, embeddings) and
    their state come back, so the losses and the trained matrices equal a run that never stopped."""
    from callbacks import StopAt

    same = dict(r=8, max_steps=8, batch_size=4, grad_accum=1, lr=5e-4, max_seq_length=128, train_embeddings=True,
                eval_fraction=0, checkpoint_every=2, checkpoint_minutes=0, load_in_4bit=False)
    straight = quick_finetune(demo_path, demo_glossary(24), output_dir=str(tmp_path / "straight"), **same)
    out = tmp_path / "resumed"
    quick_finetune(demo_path, demo_glossary(24), output_dir=str(out), callbacks=[StopAt(4)], **same)
    resumed = quick_finetune(demo_path, demo_glossary(24), output_dir=str(out), resume=True, **same)
    assert [h["step"] for h in resumed.history if "loss" in h] == list(range(1, 9))
    assert [h["loss"] for h in resumed.history if "loss" in h] == pytest.approx(
        [h["loss"] for h in straight.history if "loss" in h], abs=1e-6)
    for (name, a), (_, b) in zip(_trained_copies(straight.model).items(), _trained_copies(resumed.model).items()):
        assert (a - b).abs().max() < 1e-6, name


def test_the_plan_command_counts_the_trained_embeddings(capsys):
    from rslora_colab.cli import main

    main(["plan", "--model", "Mistral-7B-Instruct-v0.3", "--rank", "128", "--seq", "2048", "--train-embeddings"])
    assert "trained embed + head (fp32)" in capsys.readouterr().out
