"""The offline demo: a tiny Llama model and a small instruction dataset, built locally.

Nothing here touches the network. The text comes from ``pydoc_data.topics``,
the reference manual that ships inside every Python install:

* :func:`demo_model` trains a byte-level BPE tokenizer on it, builds a tiny
  Llama-architecture model (2 layers, hidden 128, grouped-query attention),
  pre-trains it briefly on the same prose, and saves both to a cache folder.
  Fine-tuning then starts from a model that knows the words, like a real one.
* :func:`demo_dataset` turns the same manual into instruction rows ("give the
  heading of topic X", "explain topic X") in any format the kit reads;
  :func:`demo_data` is the demo's own training data (the heading questions),
  and :data:`DEMO_TRAINING` its own settings.
* :func:`demo_preferences` pairs each of those answers (chosen) with the
  next topic's answer to the other kind of question (rejected), for DPO.

The model is built once per machine (about 40 s on 2 CPU cores) and cached
in ``$RSLORA_COLAB_CACHE`` (default ``~/.cache/rslora_colab``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from .logs import library_bars_off
from .rewards.ready import length_penalty

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
"""Pass this as the model name to get the demo model (``load_model("demo")``)."""
DEMO_VERSION = "v2"
"""Part of the cache folder's name: a new version when the build changes (v2: pre-trained on one thread), so a
model cached by an older build is not reused."""
_SPECIAL = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]

# A ChatML template with {% generation %} markers so TRL can mask everything
# but the assistant's words (``assistant_only_loss=True``).
DEMO_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    """Where demo artefacts live: ``$RSLORA_COLAB_CACHE`` or ``~/.cache/rslora_colab``."""
    return Path(os.environ.get("RSLORA_COLAB_CACHE", Path.home() / ".cache" / "rslora_colab"))


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def _corpus() -> list[str]:
    """The manual as a list of paragraphs."""
    paragraphs = []
    for text in _topics().values():
        paragraphs += [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    return paragraphs


def _heading_and_summary(text: str) -> tuple[str, str]:
    """The topic's heading and its first prose paragraph, cut at a sentence end."""
    lines = text.strip().split("\n")
    heading = lines[0].strip()
    body = [p.strip() for p in "\n".join(lines[2:]).split("\n\n")]
    prose = next((p for p in body if len(p) > 60 and not p.startswith(" ") and "::=" not in p), body[0])
    prose = re.sub(r"\s+", " ", prose)
    cut = prose[:240]
    end = cut.rfind(". ")
    return heading, (cut[: end + 1] if end > 60 else cut.rstrip() + ("" if len(prose) <= 240 else "..."))


DemoFormat = Literal["alpaca", "chat", "sharegpt", "text"]
PreferenceFormat = Literal["chat", "text", "ultrafeedback"]
Questions = Literal["all", "heading", "explain"]


def _qa_pairs() -> list[tuple[str, str]]:
    """(question, answer) pairs: per topic, its heading question then its summary question."""
    pairs = []
    for name, text in _topics().items():
        heading, summary = _heading_and_summary(text)
        pairs.append((f"Give the heading of the Python docs topic '{name}'.", heading))
        pairs.append((f"Explain the Python docs topic '{name}' in a few sentences.", summary))
    return pairs


def demo_dataset(fmt: DemoFormat = "alpaca", n: int | None = None, questions: Questions = "all"):
    """A small instruction dataset (158 rows) built from Python's own manual.

    ``fmt`` picks the layout: ``"alpaca"`` (instruction/input/output),
    ``"chat"`` (messages with role/content), ``"sharegpt"`` (conversations
    with from/value) or ``"text"``. ``questions`` keeps both kinds of question
    (``"all"``: per topic, its heading question then its summary question),
    or only the 79 ``"heading"`` or ``"explain"`` ones. ``n`` keeps the first n rows.

    >>> demo_dataset("chat")[0]["messages"][0]["role"]
    'user'
    >>> len(demo_dataset(questions="heading"))
    79
    """
    from datasets import Dataset

    if questions not in ("all", "heading", "explain"):
        raise ValueError(f"questions={questions!r}: use 'all', 'heading' or 'explain'.")
    pairs = [pair for i, pair in enumerate(_qa_pairs())
             if questions == "all" or (i % 2 == 0) == (questions == "heading")][:n]
    if fmt == "alpaca":
        rows = [{"instruction": q, "input": "", "output": a} for q, a in pairs]
    elif fmt == "chat":
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    elif fmt == "sharegpt":
        rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in pairs]
    elif fmt == "text":
        rows = [{"text": f"Question: {q}\nAnswer: {a}"} for q, a in pairs]
    else:
        raise ValueError(f"fmt={fmt!r} is not a demo format: use alpaca, chat, sharegpt or text.")
    return Dataset.from_list(rows)


_SYLLABLES = ("zor", "blat", "quen", "mire", "vash", "tolk", "prim", "ekk", "sul", "dravo", "nix", "fen", "orbu",
              "glim", "yast", "wemb")
_KINDS = ("a small brass tool", "a kind of harbour boat", "a winter festival", "a bitter green fruit",
          "a unit of river depth", "a folding paper lantern", "a slow dance for four", "a stone used for sharpening")
_USES = ("used by weavers to count threads", "kept near the door for luck", "carried only at night",
         "sold in bundles of seven", "painted blue before the first frost", "measured with a knotted rope",
         "shared between two families", "never lent to strangers")


def demo_glossary(n: int = 48):
    """A made-up glossary the demo model has never seen: ``n`` ``text`` rows such as "A zorquen is a small brass
    tool, used by weavers to count threads." (invented words, fixed for good), for continued pretraining.

    Raw text with new words: what ``train_embeddings=True`` is for. Its held-out counterpart, text the model
    already knows, is :func:`demo_manual_text`.

    >>> demo_glossary(2)[0]["text"].split(" is ")[0]
    'A zorquen'
    """
    from datasets import Dataset

    rows = []
    for i in range(n):
        word = _SYLLABLES[i % 16] + _SYLLABLES[(i * 5 + 2 + i // 16) % 16]
        kind, use = _KINDS[i % len(_KINDS)], _USES[(i * 3 + i // 8) % len(_USES)]
        rows.append({"text": f"A {word} is {kind}, {use}. The word {word} names only this {kind.split()[-1]}."})
    return Dataset.from_list(rows)


def demo_manual_text(n: int = 24):
    """``n`` paragraphs of Python's manual as ``text`` rows: the demo model's own pre-training text, to check that
    continued pretraining on new text (:func:`demo_glossary`) does not make it forget much (every 50th paragraph,
    at most 600 characters)."""
    from datasets import Dataset

    return Dataset.from_list([{"text": p[:600]} for p in _corpus()[::50][:n]])


def _wrong_answer(pairs: list[tuple[str, str]], i: int) -> str:
    """The next topic's answer to the other kind of question: a summary for a heading question, and back."""
    return pairs[(i + 3) % len(pairs)][1]  # pairs alternate heading / summary questions


def demo_preferences(fmt: PreferenceFormat = "chat", n: int | None = None):
    """158 preference pairs for DPO, built from the same manual as :func:`demo_dataset`.

    For each question the chosen answer is the right heading or summary and
    the rejected one is the next topic's answer to the other kind of
    question (a summary where a heading was asked for, and back): wrong in
    topic and in kind, so even the tiny demo model can learn the preference. ``fmt`` picks the layout: ``"chat"``
    (prompt/chosen/rejected as message lists), ``"text"`` (as strings) or
    ``"ultrafeedback"`` (prompt string, chosen/rejected as whole conversations,
    plus a ``messages`` column, like ``HuggingFaceH4/ultrafeedback_binarized``).
    ``n`` keeps the first n pairs.

    >>> demo_preferences("text")[0]["chosen"]
    'The "assert" statement'
    """
    from datasets import Dataset

    all_pairs = _qa_pairs()
    rows = []
    for i, (question, answer) in enumerate(all_pairs[:n]):
        wrong = _wrong_answer(all_pairs, i)
        user = {"role": "user", "content": question}
        if fmt == "chat":
            rows.append({"prompt": [user], "chosen": [{"role": "assistant", "content": answer}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        elif fmt == "text":
            rows.append({"prompt": f"Question: {question}\nAnswer:\n", "chosen": answer, "rejected": wrong})
        elif fmt == "ultrafeedback":
            chosen = [user, {"role": "assistant", "content": answer}]
            rejected = [user, {"role": "assistant", "content": wrong}]
            rows.append({"prompt": question, "chosen": chosen, "rejected": rejected, "messages": chosen})
        else:
            raise ValueError(f"fmt={fmt!r} is not a demo preference format: use chat, text or ultrafeedback.")
    return Dataset.from_list(rows)


def demo_prompts(n: int | None = None, chat: bool = True):
    """79 GRPO prompts, the heading questions of :func:`demo_dataset`, each with its heading as ``answer``.

    ``chat=True``: ``prompt`` is a message list (the user's question); else the text ``"Question: ...\nAnswer:"``.
    ``n`` keeps the first n rows.

    >>> demo_prompts()[0]["answer"]
    'The "assert" statement'
    """
    from datasets import Dataset

    pairs = [pair for i, pair in enumerate(_qa_pairs()) if i % 2 == 0][:n]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": q}] if chat else f"Question: {q}\nAnswer:",
                               "answer": a} for q, a in pairs])


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        chat_template=DEMO_CHAT_TEMPLATE,
        model_max_length=512,
    )


def demo_config(vocab_size: int = 1024) -> dict:
    """The demo model's architecture as ``config.json`` keys (the VRAM estimator reads it without building it)."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }


def _build_model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    arch = {k: v for k, v in demo_config(len(tokenizer)).items() if k != "model_type"}
    config = LlamaConfig(
        **arch,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def _pretrain(model, tokenizer, corpus: list[str], steps: int, seq_len: int = 128, batch: int = 16) -> list[float]:
    """A short causal-LM pre-training on the manual's prose; returns the losses."""
    pieces = tokenizer(corpus, add_special_tokens=False, truncation=False, verbose=False).input_ids
    ids = torch.tensor([t for piece in pieces for t in piece + [tokenizer.eos_token_id]])
    n_chunks = len(ids) // seq_len
    chunks = ids[: n_chunks * seq_len].view(n_chunks, seq_len)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="building the demo model (once)", unit="step", leave=False):
        batch_ids = chunks[torch.randint(0, n_chunks, (batch,), generator=gen)]
        loss = model(input_ids=batch_ids, labels=batch_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def build_demo_model(path: Path, pretrain_steps: int = 300, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Build the demo tokenizer and model into ``path`` (no cache); returns ``path``.

    Pre-training runs on one torch thread whatever the machine or ``OMP_NUM_THREADS``: how a float sum is split
    between threads changes its last bits, so a model built on another thread count has other weights, and every
    number measured on the demo (README, docs/results.md, the tests) would move with it.
    """
    corpus = _corpus()
    tokenizer = _train_tokenizer(corpus, vocab_size)
    model = _build_model(tokenizer, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = _pretrain(model, tokenizer, corpus, pretrain_steps)
    finally:
        torch.set_num_threads(threads)
    model.config.rslora_colab_pretrain = {"steps": pretrain_steps, "first_loss": losses[0], "last_loss": losses[-1]}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def demo_model(pretrain_steps: int = 300) -> str:
    """Path to the cached demo model, building it first if needed (about 40 s on 2 cores).

    The folder holds a normal transformers checkpoint and tokenizer, so every
    function that takes a model name takes this path too.
    """
    target = demo_model_path(pretrain_steps)
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"building the demo model (tiny Llama, {pretrain_steps} pre-training steps) ...")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, library_bars_off():  # one bar: the steps'
        build_demo_model(Path(tmp) / "model", pretrain_steps)
        if not target.exists():  # another process may have won the race
            shutil.move(str(Path(tmp) / "model"), target)
    logger.info(f"demo model ready in {time.perf_counter() - start:.0f} s at {target}")
    return str(target)


def demo_threads() -> int:
    """Train the demo on one torch thread unless ``OMP_NUM_THREADS`` says otherwise; returns the thread count.

    The demo model is tiny: a second thread buys nothing, and torch's default
    (a thread per core) fights any other busy process. On a shared 2-core
    machine a 60-step run took 2-3 min instead of ~10 s (docs/results.md).
    """
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
        logger.info("demo on CPU: training with 1 torch thread (set OMP_NUM_THREADS to choose)")
    return torch.get_num_threads()


def demo_model_path(pretrain_steps: int = 300) -> Path:
    """Where :func:`demo_model` keeps (or will build) the demo model; builds nothing."""
    return cache_dir() / f"demo-model-{DEMO_VERSION}-{pretrain_steps}"


def resolve_model_name(name: str) -> str:
    """Map the alias ``"demo"`` to the demo model's path; other names pass through."""
    return demo_model() if name == DEMO_NAME else name


def portable_model_name(name: str) -> str:
    """``"demo"`` for the demo model (the alias, or its cache folder); other names unchanged.

    Saved adapters record this as their base model, so a pushed demo adapter
    carries no local path and :func:`resolve_model_name` finds the model again.
    """
    if name == DEMO_NAME:
        return name
    return DEMO_NAME if Path(name).expanduser().resolve() == demo_model_path().resolve() else name


DEMO_QUESTIONS: Questions = "heading"
"""The demo's own SFT data: the 79 "Give the heading of the Python docs topic 'X'" rows (:func:`demo_data`).

Measured with :data:`DEMO_TRAINING` (150 steps, 2026-11-30, ``bench/demo_settings.py``): trained on these, the
model answers 70 of its 71 training questions exactly; trained on all 158 rows (the long "explain" answers
take most of each batch's loss) only 12 of the same 71, in more time (docs/results.md)."""

DEMO_TRAINING = {"max_steps": 150, "batch_size": 8, "grad_accum": 1, "max_seq_length": 256, "lr": 1e-3,
                 "eval_fraction": 0.1}
"""Training settings for the demo model, on :func:`demo_data`: about 17 passes over its 71 training rows, with 8
held out for the eval loss (10%, split with the default seed; "assert" is a training row), ~10 s on 2 CPU cores.

``lr=1e-3`` is 10x the r=64 preset: at the preset the tiny model learns the answers' shape but not which
heading goes with which topic in 150 steps (the presets are for 1-8B models). With these settings the
held-out loss falls for the first ~30 steps and then rises while the model memorizes its training rows
(docs/results.md): the demo keeps the last adapter, the default without early stopping, so the sample
answer shows what was learned; ``early_stopping_patience=2`` would stop it and keep step 30's."""

DEMO_DPO_TRAINING = {**DEMO_TRAINING, "max_steps": 60, "lr": 1e-4}
"""DPO settings for the demo: the tiny model's log-probs move little at the DPO preset (2.5e-6 at r=64), so
the demo steps at the SFT rate to show the reward margin grow within a minute (on the held-out 10% of the pairs
too); real models use the preset."""


DEMO_REWARD_CHARS = 60
"""The demo's GRPO reward: ``length_penalty(60)``, 1.0 for an empty answer down to 0.0 at 60 characters."""
DEMO_GRPO_TRAINING = {"max_steps": 40, "batch_size": 8, "grad_accum": 1, "num_generations": 4,
                      "max_completion_length": 24, "max_seq_length": 256, "lr": 1e-3,
                      "reward_funcs": (length_penalty(DEMO_REWARD_CHARS),)}
"""GRPO settings for the demo, on :func:`demo_prompts`: 2 prompts x 4 completions of at most 24 tokens per step,
rewarded for short answers. The tiny model pre-trained on prose rambles on and only sometimes ends a reply early;
short answers are something it can learn in 40 steps (0.14 s a step on 2 CPU cores, docs/grpo.md): the mean reward
on the 15 held-out prompts rose from 0.20 to 0.97 (bench/grpo_demo.py). The lr is the SFT demo's: at the GRPO
preset (1e-5 at r=16) and at 1e-4 the tiny model does not move in that time."""

DEMO_SWEEP_STEPS = 50
"""Steps per run of a rank sweep on the demo model (8 runs: about a minute on 2 CPU cores)."""


def demo_training(method: str = "sft") -> dict:
    """The demo model's training settings for ``method`` (``"sft"``, ``"dpo"`` or ``"grpo"``), as quick_finetune
    keywords."""
    return dict({"dpo": DEMO_DPO_TRAINING, "grpo": DEMO_GRPO_TRAINING}.get(method, DEMO_TRAINING))


def demo_data(method: str = "sft"):
    """The demo's own data, what ``"demo"`` means as a dataset: the 79 heading questions (:data:`DEMO_QUESTIONS`)
    for SFT, the 158 preference pairs (:func:`demo_preferences`) for DPO, the 79 prompts (:func:`demo_prompts`) for
    GRPO."""
    if method == "grpo":
        return demo_prompts()
    return demo_preferences() if method == "dpo" else demo_dataset(questions=DEMO_QUESTIONS)
