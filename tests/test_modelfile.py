"""The Ollama Modelfile written beside a GGUF renders conversations exactly as the tokenizer's chat template does.

Ollama runs the ``TEMPLATE`` as a Go ``text/template``. The test executes the Modelfile's TEMPLATE with a small
evaluator of the Go constructs the kit writes (``if``/``else``/``else if``/``end``, ``range .Messages``,
``eq .Role "..."``, ``.System``, ``.Content``) and compares it with ``apply_chat_template(...,
add_generation_prompt=True)`` (without the BOS, which llama.cpp adds) for conversations with and without a system
turn and with several exchanges: on the demo model's template and on Llama 3.2 Instruct's real one
(``tests/data/llama3_2_chat_template.jinja``, TRL 1.16's copy of meta-llama/Llama-3.2-1B-Instruct's template).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rslora_colab.modelfile import MODELFILE, ollama_modelfile, write_modelfile

LLAMA_TEMPLATE = Path(__file__).parent / "data" / "llama3_2_chat_template.jinja"
CONVERSATIONS = [
    [{"role": "user", "content": "What is assert?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is assert?"}],
    [{"role": "user", "content": "What is if?"}, {"role": "assistant", "content": "A branch."},
     {"role": "user", "content": "And for?"}],
    [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is if?"},
     {"role": "assistant", "content": "A branch."}, {"role": "user", "content": "And while?"},
     {"role": "assistant", "content": "A loop."}, {"role": "user", "content": "And for?"}],
]


def go_render(template: str, system: str, messages: list[dict]) -> str:
    """Execute the subset of Go's text/template that the kit's TEMPLATE uses."""
    tokens = re.split(r"(\{\{.*?\}\})", template)

    def block(i: int, scope: dict) -> tuple[str, int, str]:
        out = []
        while i < len(tokens):
            token = tokens[i]
            if not token.startswith("{{"):
                out.append(token)
                i += 1
                continue
            action = token[2:-2].strip()
            if action in ("end", "else") or action.startswith("else if"):
                return "".join(out), i, action
            if action.startswith("range "):
                start, body = i + 1, []
                for message in messages:
                    text, i, _ = block(start, {**scope, **message})
                    body.append(text)
                if not messages:
                    _, i, _ = block(start, scope)
                out.append("".join(body))
                i += 1
            elif action.startswith("if "):
                taken, chosen = False, ""
                condition, i = action[3:], i + 1
                while True:
                    text, i, stop = block(i, scope)
                    if not taken and _true(condition, scope):
                        taken, chosen = True, text
                    if stop == "end":
                        break
                    condition = "true" if stop == "else" else stop[len("else if "):]
                    i += 1
                out.append(chosen)
                i += 1
            else:
                out.append(str(scope[action.lstrip(".").lower() if action != ".System" else "system"]))
                i += 1
        return "".join(out), i, ""

    def _true(condition: str, scope: dict) -> bool:
        if condition == "true":
            return True
        if condition == ".System":
            return bool(scope["system"])
        role = re.fullmatch(r'eq \.Role "(\w+)"', condition)
        assert role, condition
        return scope.get("role") == role.group(1)

    return block(0, {"system": system})[0]


def _template_and_stops(modelfile: str) -> tuple[str, list[str]]:
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)
    return template, re.findall(r'^PARAMETER stop "(.*)"$', modelfile, re.M)


def _llama_tokenizer(demo_pair):
    tokenizer = demo_pair[1]
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                  "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tokenizer.chat_template = LLAMA_TEMPLATE.read_text()
    return tokenizer


@pytest.mark.parametrize("which", ["demo", "llama-3.2"])
def test_the_modelfile_renders_every_conversation_as_the_chat_template(demo_pair, which):
    tokenizer = demo_pair[1] if which == "demo" else _llama_tokenizer(demo_pair)
    modelfile = ollama_modelfile(tokenizer, "./model-Q4_K_M.gguf")
    assert modelfile.startswith("FROM ./model-Q4_K_M.gguf\n")
    template, stops = _template_and_stops(modelfile)
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = expected.removeprefix(tokenizer.bos_token)
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        assert go_render(template, system, turns) == expected, messages
    expected_stops = {"demo": ["<|im_end|>", "<|im_start|>"], "llama-3.2": ["<|eot_id|>", "<|start_header_id|>"]}
    assert stops == expected_stops[which]


def test_write_modelfile_names_the_gguf_and_skips_what_it_cannot_write(demo_pair, tmp_path):
    tokenizer = demo_pair[1]
    (tmp_path / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    path = write_modelfile(tokenizer, tmp_path)
    assert path == tmp_path / MODELFILE and path.read_text().startswith("FROM ./model-Q4_K_M.gguf\n")
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    assert write_modelfile(tokenizer, tmp_path / "nowhere") is None  # no GGUF there
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
    assert write_modelfile(tokenizer, tmp_path, tmp_path / "other.gguf") is None  # the last turn differs


@pytest.mark.parametrize("simulated_gpu", ["T4"], indirect=True)
def test_a_gguf_save_gets_a_modelfile_beside_unsloths_files(demo_pair, simulated_gpu, tmp_path):
    """Unsloth writes the GGUF into ``<path>_gguf`` and returns where: the Modelfile goes there, and save says so."""
    from rslora_colab import add_rslora, save
    from rslora_colab.load import RUNTIME_ATTR
    from rslora_colab.runtime import Runtime

    model, tokenizer = demo_pair
    model = add_rslora(model, r=8)
    setattr(model, RUNTIME_ATTR, Runtime("unsloth", "fp16", "Tesla T4", "simulated"))

    def save_pretrained_gguf(directory, tokenizer, quantization_method):
        folder = Path(f"{directory}_gguf")
        folder.mkdir()
        (folder / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
        return {"gguf_directory": str(folder), "gguf_files": [str(folder / "model.Q4_K_M.gguf")]}

    model.save_pretrained_gguf = save_pretrained_gguf
    saved = save(model, tmp_path / "gguf", how="gguf", tokenizer=tokenizer)
    assert saved == tmp_path / "gguf_gguf"
    assert (saved / MODELFILE).read_text().startswith("FROM ./model.Q4_K_M.gguf\n")
