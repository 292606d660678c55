import pytest

from rslora_colab import chat


def test_chat_streams_a_multi_turn_reply_and_names_bad_input(demo_pair, capsys):
    model, tokenizer = demo_pair
    turns = [{"role": "user", "content": "Heading of 'assert'?"}, {"role": "assistant", "content": "Assert."},
             {"role": "user", "content": "And of 'for'?"}]
    reply = chat(model, tokenizer, turns, max_new_tokens=6)
    assert reply and reply.strip() in capsys.readouterr().out  # streamed as it was generated
    assert not model.training
    with pytest.raises(ValueError, match="the prompt is empty"):
        chat(model, tokenizer, "  ")
    with pytest.raises(ValueError, match=r"prompt_or_messages\[0\].role='robot'"):
        chat(model, tokenizer, [{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="tokenizer: pass the model's tokenizer"):
        chat(model, None, "hi")


def test_chat_puts_the_inputs_where_the_input_embedding_is(demo_pair):
    """Unsloth moves the input embedding to the CPU when VRAM is tight, so the first parameter's device is the wrong
    one for ``input_ids``. Here the model's first parameter sits on another device (meta) than its embedding."""
    import torch

    from rslora_colab.load import input_device

    model, tokenizer = demo_pair
    model.register_parameter("elsewhere", torch.nn.Parameter(torch.zeros(1, device="meta"), requires_grad=False))
    assert next(model.parameters()).device.type == "meta"  # the parameter the old code followed
    assert input_device(model) == model.get_input_embeddings().weight.device == torch.device("cpu")
    assert chat(model, tokenizer, "Heading of 'assert'?", max_new_tokens=4, stream=False)
