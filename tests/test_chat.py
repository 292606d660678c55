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
