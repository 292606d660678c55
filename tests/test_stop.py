"""The model learns to stop: every answer's end-of-turn token is inside the loss TRL builds (data/sft.py).

Each test shapes rows with the kit, builds TRL's real ``SFTTrainer`` on the demo model, and reads the labels TRL
tokenized: the last trained token of each row must be the end-of-turn token ``<|im_end|>``.
"""

from __future__ import annotations

import logging

import pytest

from rslora_colab import FinetuneConfig, add_rslora, load_and_validate
from rslora_colab.load import runtime_of
from rslora_colab.settings import resolve_run
from rslora_colab.train import build_trainer

DROPS_END = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
             "{% if m['role'] != 'assistant' %}<|im_end|>\n{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""A template that never closes an assistant turn: no end-of-turn token to learn from an answer."""
MASKS_END = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
             "{{ m['content'] }}{% endgeneration %}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n"
             "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""A template whose generation span stops before the end-of-turn token: assistant-only masking never trains it."""
STRIPS_END = DROPS_END.replace("{{ m['content'] }}", "{{ m['content'] | replace('<|im_end|>', '') }}")
"""A template that even removes an end-of-turn token written into an answer."""
ALPACA = [{"instruction": f"Give the heading of topic '{t}'.", "output": f"The {t} statement"} for t in ("if", "for")]
CHAT = [{"messages": [{"role": "user", "content": "Heading of 'if'?"}, {"role": "assistant", "content": "If."},
                      {"role": "user", "content": "And of 'for'?"}, {"role": "assistant", "content": "For."}]}]


def _trained_ends(demo_pair, rows, template=None):
    """The last trained token of each row as TRL tokenized it, and the trainer's assistant_only_loss."""
    model, tokenizer = demo_pair
    if template is not None:
        tokenizer.chat_template = template
    dataset, fmt = load_and_validate(rows)
    config = FinetuneConfig(r=8, max_seq_length=256, output_dir="unused")
    trainer = build_trainer(add_rslora(model, r=8), tokenizer, dataset, fmt, resolve_run(config, runtime_of(model)))
    ends = []
    for row in trainer.train_dataset:
        trained = [t for t in row["labels"] if t != -100]
        ends.append(next(tokenizer.decode([t]) for t in reversed(trained) if tokenizer.decode([t]).strip()))
    return ends, trainer.args.assistant_only_loss


@pytest.mark.parametrize("rows", [ALPACA, CHAT], ids=["alpaca", "chat"])
def test_the_demo_template_trains_each_answers_end(demo_pair, rows):
    ends, assistant_only = _trained_ends(demo_pair, rows)
    assert ends == ["<|im_end|>"] * len(rows) and assistant_only is (rows is CHAT)


def test_a_template_that_drops_the_end_gets_eos_appended_and_says_so(demo_pair, caplog):
    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        ends, _ = _trained_ends(demo_pair, ALPACA, DROPS_END)
    assert ends == ["<|im_end|>", "<|im_end|>"]
    assert "<|im_end|> is appended to each answer" in caplog.text


def test_a_template_that_masks_the_end_trains_the_last_turn_as_a_completion(demo_pair, caplog):
    with caplog.at_level(logging.INFO, logger="rslora_colab"):
        ends, assistant_only = _trained_ends(demo_pair, CHAT, MASKS_END)
    assert ends == ["<|im_end|>"] and not assistant_only
    assert "leaves the end-of-turn token out" in caplog.text


def test_a_template_that_cannot_train_any_end_is_refused_with_the_reason(demo_pair):
    with pytest.raises(ValueError, match="model would never learn to stop"):
        _trained_ends(demo_pair, ALPACA, STRIPS_END)
