"""Talk to a model through its chat template, streaming the reply."""

from __future__ import annotations

from typing import Any

import torch

from .load import runtime_of


def _messages(prompt_or_messages: str | list[dict]) -> list[dict]:
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    return list(prompt_or_messages)


def chat(model: Any, tokenizer: Any, prompt_or_messages: str | list[dict], max_new_tokens: int = 128,
         stream: bool = True, temperature: float = 0.0) -> str:
    """Generate the assistant's reply to a prompt (or a message list) and return it.

    ``model`` may also be a :class:`~rslora_colab.FinetuneResult`. With
    ``stream=True`` the words are printed as they come (terminal or
    notebook). ``temperature=0`` decodes greedily, so replies are repeatable.
    """
    if hasattr(model, "adapter_path") and hasattr(model, "model"):  # a FinetuneResult
        model, tokenizer = model.model, tokenizer or model.tokenizer
    fast = None
    if runtime_of(model).backend == "unsloth":
        from unsloth import FastLanguageModel as fast

        fast.for_inference(model)
    inputs = tokenizer.apply_chat_template(_messages(prompt_or_messages), add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    inputs = {k: v.to(next(model.parameters()).device) for k, v in inputs.items()}
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                                pad_token_id=tokenizer.pad_token_id, **sampling)
    if was_training:
        model.train()
    if fast is not None:
        fast.for_training(model)  # back to Unsloth's training mode
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
