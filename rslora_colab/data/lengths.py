"""Token lengths: what each row becomes for the trainer, counted with the tokenizer alone, before the model loads.

TRL 1.16 tokenizes every row when it builds the trainer, after the model has
loaded. ``SFTTrainer`` then truncates each row to ``max_length`` keeping its
start, and drops the rows left with no token to learn from (every label
-100): a row whose prompt alone fills ``max_seq_length``. ``DPOTrainer`` drops
the pairs whose prompt alone is ``max_length`` tokens or more. Both drop
silently, and a dataset where every row goes ends in a sampler error
(``num_samples=0``).

:func:`token_lengths` measures the rows the way TRL will tokenize them, from
the tokenizer only: the rows shaped as :func:`~rslora_colab.data.sft.to_trainer_dataset`
(or :func:`~rslora_colab.data.preference.to_dpo_dataset`) hands them to TRL, chat rows
rendered through the chat template (with the generation prompt for the prompt
part), EOS added to plain text as TRL adds it, and the prompt counted up to
where the prompt's and the whole row's tokens part (TRL's
``common_prefix_length``). It returns per-row prompt and total token counts, so
other checks (planning memory from the real lengths) can reuse them.
:func:`check_truncation` turns them into a warning naming the rows TRL would
drop, or a ``ValueError`` when none would remain.

Speed: rendering and tokenizing are batched (the fast tokenizer's batch call);
a dataset of more than :data:`LENGTH_SAMPLE` rows is measured on that many
evenly spaced rows, and counts are scaled up and marked as estimates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trl.data_utils import common_prefix_length

from .preference import to_dpo_dataset
from .read import MAX_REPORTED, row_label
from .sft import to_trainer_dataset

logger = logging.getLogger(__name__)

LENGTH_SAMPLE = 10_000
"""Rows measured at most; larger datasets are measured on this many evenly spaced rows."""


@dataclass(frozen=True)
class TokenLengths:
    """Token counts of the measured rows of a dataset, as TRL will tokenize them."""

    rows: list[int]
    """Indices (in the dataset) of the rows measured: all of them, or an evenly spaced sample."""
    prompt: list[int]
    """Per measured row: tokens before the first one the loss is computed on (0 for plain text)."""
    total: list[int]
    """Per measured row: all its tokens before truncation (DPO: the longer of prompt + chosen and prompt + rejected)."""
    dataset_rows: int
    """Rows in the whole dataset."""

    @property
    def sampled(self) -> bool:
        """True when only a sample of the rows was measured."""
        return len(self.rows) < self.dataset_rows

    def dropped(self, max_length: int) -> list[int]:
        """Rows (dataset indices) TRL drops at this ``max_length``: the prompt alone fills it."""
        return [row for row, prompt in zip(self.rows, self.prompt) if prompt >= max_length]

    def cut(self, max_length: int) -> list[int]:
        """Rows (dataset indices) that are kept but truncated: longer than ``max_length``, prompt shorter."""
        return [row for row, prompt, total in zip(self.rows, self.prompt, self.total)
                if total > max_length > prompt]

    def longest(self, max_length: int) -> int:
        """The longest sequence the trainer will build at this ``max_length``: the longest kept row, truncated.

        TRL's collator pads a batch to its longest row, so a micro-batch holds
        at most ``batch x longest`` tokens: what the memory plan must fit.
        """
        kept = [min(total, max_length) for prompt, total in zip(self.prompt, self.total) if prompt < max_length]
        return max(kept, default=max_length)

    def most_tokens(self, rows: int, max_length: int) -> int:
        """The most tokens ``rows`` kept rows can hold together, each truncated to ``max_length``: the largest
        padding-free micro-batch of ``rows`` rows (its rows laid one after another, no padding)."""
        kept = sorted((min(total, max_length) for prompt, total in zip(self.prompt, self.total)
                       if prompt < max_length), reverse=True)
        return sum(kept[:rows]) if kept else rows * max_length

    def scaled(self, count: int) -> int:
        """``count`` measured rows as a count over the whole dataset (estimated when sampled)."""
        return round(count * self.dataset_rows / len(self.rows)) if self.rows else 0


def sample_rows(n: int, limit: int = LENGTH_SAMPLE) -> list[int]:
    """All ``n`` row indices, or ``limit`` evenly spaced ones."""
    return list(range(n)) if n <= limit else [i * n // limit for i in range(limit)]


def _render(tokenizer: Any, conversations: list[list[dict]], generation_prompt: bool) -> list[list[int]]:
    """Token ids of conversations through the chat template, as ``apply_chat_template(tokenize=True)`` gives them."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of plain texts as TRL tokenizes them (``tokenizer(text)``, special tokens included)."""
    return tokenizer(texts, verbose=False)["input_ids"] if texts else []


def _with_eos(texts: list[str], eos: str | None) -> list[str]:
    return [t if not eos or t.endswith(eos) else t + eos for t in texts]


def _column(dataset: Any, name: str) -> list:
    return list(dataset[name])  # datasets 5 returns a lazy Column; the tokenizer's batch calls want a list


def _prompt_ids(tokenizer: Any, prompt: list) -> list[list[int]]:
    """Each prompt's ids as TRL builds them: a conversation through the chat template with the generation prompt."""
    return _render(tokenizer, prompt, True) if isinstance(prompt[0], list) else _encode(tokenizer, prompt)


def _full_ids(tokenizer: Any, prompt: list, answers: list) -> list[list[int]]:
    """Each prompt + answer's ids as TRL builds them: a conversation through the chat template, text with EOS."""
    if isinstance(prompt[0], list):  # conversational prompt / answer
        return _render(tokenizer, [p + a for p, a in zip(prompt, answers)], False)
    return _encode(tokenizer, [p + a for p, a in zip(prompt, _with_eos(answers, tokenizer.eos_token))])


def _sft_lengths(shaped: Any, tokenizer: Any) -> tuple[list[int], list[int]]:
    columns = set(shaped.column_names)
    eos = tokenizer.eos_token
    if "text" in columns:
        full = _encode(tokenizer, _with_eos(_column(shaped, "text"), eos))
        return [0] * len(full), [len(ids) for ids in full]
    if "messages" in columns:  # assistant-only loss: the prompt runs up to the first assistant turn's text
        conversations = _column(shaped, "messages")
        first = [next(i for i, m in enumerate(c) if m["role"] == "assistant") for c in conversations]
        prompts = _render(tokenizer, [c[:i] for c, i in zip(conversations, first)], True)
        full = _render(tokenizer, conversations, False)
        return [common_prefix_length(p, f) for p, f in zip(prompts, full)], [len(f) for f in full]
    prompt, completion = _column(shaped, "prompt"), _column(shaped, "completion")
    prompts, full = _prompt_ids(tokenizer, prompt), _full_ids(tokenizer, prompt, completion)
    return [common_prefix_length(p, f) for p, f in zip(prompts, full)], [len(f) for f in full]


def _dpo_lengths(shaped: Any, tokenizer: Any) -> tuple[list[int], list[int]]:
    prompt, chosen, rejected = (_column(shaped, k) for k in ("prompt", "chosen", "rejected"))
    prompts = _prompt_ids(tokenizer, prompt)
    chosen, rejected = _full_ids(tokenizer, prompt, chosen), _full_ids(tokenizer, prompt, rejected)
    starts = [min(common_prefix_length(p, c), common_prefix_length(p, r)) for p, c, r in zip(prompts, chosen, rejected)]
    return starts, [max(len(c), len(r)) for c, r in zip(chosen, rejected)]


def token_lengths(dataset: Any, fmt: str, tokenizer: Any, method: str = "sft",
                  sample: int = LENGTH_SAMPLE) -> TokenLengths:
    """Per-row prompt and total token counts of validated data, as TRL's trainer will tokenize it.

    ``dataset`` and ``fmt`` come from :func:`~rslora_colab.data.load_and_validate`
    (``method="dpo"`` for preference pairs); ``tokenizer`` is the model's (no
    weights needed). At most ``sample`` evenly spaced rows are measured.

    >>> lengths = token_lengths(*load_and_validate(demo_dataset()), tokenizer)   # doctest: +SKIP
    >>> max(lengths.total), lengths.dropped(128)                                  # doctest: +SKIP
    """
    picks = sample_rows(len(dataset), sample)
    subset = dataset if len(picks) == len(dataset) else dataset.select(picks)
    if method == "dpo":
        prompt, total = _dpo_lengths(to_dpo_dataset(subset, fmt, tokenizer), tokenizer)
    elif method == "grpo":  # prompts only: the model samples the completions (check_prompt_room)
        prompt = total = [len(ids) for ids in _prompt_ids(tokenizer, _column(subset, "prompt"))]
    else:
        prompt, total = _sft_lengths(to_trainer_dataset(subset, fmt, tokenizer)[0], tokenizer)
    return TokenLengths(rows=picks, prompt=prompt, total=total, dataset_rows=len(dataset))


def check_prompt_room(lengths: TokenLengths, max_seq_length: int, max_completion_length: int,
                      source: str = "dataset") -> None:
    """GRPO: warn about the prompts that leave less than ``max_completion_length`` tokens of ``max_seq_length``
    for the completion; raise ``ValueError`` when every prompt does.

    TRL's ``GRPOTrainer`` (1.15/1.16) neither truncates nor drops a prompt: a longer one is generated from and
    trained on as it is, past the length the model was loaded for and the memory plan counted.
    """
    room = max_seq_length - max_completion_length
    over = [i for i, n in zip(lengths.rows, lengths.prompt) if n > room]
    if not over:
        return
    about = f" (estimated from {len(lengths.rows):,} evenly spaced rows)" if lengths.sampled else ""
    fix = (f"raise max_seq_length (CLI: --seq) to at least {max(lengths.prompt) + max_completion_length}, lower "
           f"max_completion_length, or shorten those prompts")
    if len(over) == len(lengths.rows):
        raise ValueError(f"{source}: every prompt{about} is longer than max_seq_length={max_seq_length} minus "
                         f"max_completion_length={max_completion_length} = {room} tokens: {fix}.")
    logger.warning(f"{lengths.scaled(len(over)):,} of {lengths.dataset_rows:,} prompts{about} are longer than "
                   f"{room} tokens (max_seq_length={max_seq_length} - max_completion_length={max_completion_length}), "
                   f"so prompt and completion may not fit ({_examples(over, source)}); TRL does not cut them: {fix}.")


def _examples(rows: list[int], source: str) -> str:
    named = ", ".join(row_label(source, i) for i in rows[:MAX_REPORTED])
    return named + (", ..." if len(rows) > MAX_REPORTED else "")


def check_truncation(lengths: TokenLengths, max_seq_length: int, source: str = "dataset", unit: str = "rows",
                     splits: bool = False) -> int:
    """Say which rows TRL would drop at ``max_seq_length``; raise ``ValueError`` when none would remain.

    Prints one warning naming the rows whose prompt alone fills
    ``max_seq_length`` (TRL drops them: nothing is left to train on), and one
    note counting the rows that are kept but cut short (``splits``: packed
    raw text, which TRL's ``bfd_split`` splits into pieces instead, losing
    nothing). Returns the (estimated, when sampled) number of rows that will be dropped.
    """
    dropped, cut = lengths.dropped(max_seq_length), lengths.cut(max_seq_length)
    measured = len(lengths.rows)
    about = f" (estimated from {measured:,} evenly spaced {unit})" if lengths.sampled else ""
    longest = max(lengths.prompt, default=0)
    fix = (f"Raise max_seq_length (CLI: --seq) above the longest prompt, {longest} tokens, or shorten those "
           "prompts")
    if dropped and len(dropped) == measured:
        raise ValueError(
            f"{source}: every one of the {lengths.dataset_rows:,} {unit}{about} has a prompt of max_seq_length="
            f"{max_seq_length} tokens or more, so truncation leaves no answer to train on and TRL would drop them "
            f"all. {fix}. Nothing was trained yet.")
    if dropped:
        logger.warning(f"{lengths.scaled(len(dropped)):,} of {lengths.dataset_rows:,} {unit}{about} "
                       f"will be dropped by TRL: the prompt alone is max_seq_length={max_seq_length} tokens or more, so "
                       f"truncation leaves no answer to train on ({_examples(dropped, source)}). {fix}.")
    if cut:
        fate = (f"split into pieces of at most {max_seq_length} tokens (packing: none of the text is lost)" if splits
                else "cut to it")
        logger.info(f"{lengths.scaled(len(cut)):,} of {lengths.dataset_rows:,} {unit}{about} are longer "
                    f"than max_seq_length={max_seq_length} tokens and will be {fate} (longest: "
                    f"{max(lengths.total)} tokens)")
    return lengths.scaled(len(dropped))
