"""Talk to a model through its chat template, streaming the reply."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from .config import is_number
from .data.rows import ROLES, turn_problems
from .data.sft import check_chat_template
from .load import input_device, runtime_of
from .result import model_and_tokenizer


def _messages(prompt_or_messages: str | list[dict]) -> list[dict]:
    """The conversation to continue; a ``ValueError`` names what is wrong with it."""
    if isinstance(prompt_or_messages, str):
        if not prompt_or_messages.strip():
            raise ValueError("prompt_or_messages: the prompt is empty; pass some text or a list of messages.")
        return [{"role": "user", "content": prompt_or_messages}]
    problems = turn_problems(prompt_or_messages, "prompt_or_messages", "role", "content", ROLES, need_assistant=False)
    if problems:
        raise ValueError("; ".join(problems) + " (e.g. [{'role': 'user', 'content': 'Hi'}])")
    return list(prompt_or_messages)


def chat(result_or_model: Any, tokenizer: Any, prompt_or_messages: str | list[dict], max_new_tokens: int = 128,
         stream: bool = True, temperature: float = 0.0) -> str:
    """Generate the assistant's reply to a prompt (or a message list) and return it.

    ``result_or_model`` is a :class:`~rslora_colab.FinetuneResult` (then
    ``tokenizer`` may be None) or a model from :func:`load_model`,
    :func:`add_rslora` or :func:`load_adapter`. The prompt goes through the
    tokenizer's chat template; on Unsloth the model is switched to
    ``for_inference`` and back. With ``stream=True`` the words are printed as
    they come, in a terminal or a notebook (transformers' ``TextStreamer``).
    ``temperature=0`` decodes greedily, so replies are repeatable.

    >>> chat(result, None, "Give the heading of the Python docs topic 'assert'.")  # doctest: +SKIP
    """
    model, tokenizer = model_and_tokenizer(result_or_model, tokenizer)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: pass a positive integer, e.g. 128.")
    if not is_number(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: pass a finite number >= 0 (0 decodes greedily).")
    messages = _messages(prompt_or_messages)
    check_chat_template(tokenizer, "chat")
    was_training = model.training
    fast = None
    if runtime_of(model).backend == "unsloth":
        from unsloth import FastLanguageModel as fast

        fast.for_inference(model)
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    inputs = {k: v.to(input_device(model)) for k, v in inputs.items()}  # where the input embedding is
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                                    pad_token_id=tokenizer.pad_token_id, **sampling)
    finally:  # leave the model as it was, also after an error or Ctrl-C
        if was_training and fast is not None:
            fast.for_training(model)  # back to Unsloth's training mode
        elif was_training:
            model.train()
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


class SampleCallback(TrainerCallback):
    """Prints the model's reply to ``prompt`` once, as training starts, to compare with the reply after.

    The adapter's B matrices start at zero, so on a fresh run this is the base
    model's own answer; a resumed run answers with the checkpoint's adapter.
    """

    def __init__(self, prompt: str, max_new_tokens: int = 40) -> None:
        self.prompt, self.max_new_tokens, self.shown = prompt, max_new_tokens, False

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.shown or not state.is_world_process_zero:  # train() starts again after an OOM recovery; rank 0 talks
            return
        self.shown = True
        when = f"At step {state.global_step} (resumed)" if state.global_step else "Before training"
        print(f"\n{when}, {self.prompt!r} ->", flush=True)
        chat(model, processing_class, self.prompt, max_new_tokens=self.max_new_tokens)
