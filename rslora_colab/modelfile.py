"""An Ollama ``Modelfile`` for a GGUF, from the tokenizer's own chat template and its end-of-turn tokens.

A template mismatch is a top cause of endless or garbled answers after export:
the model was trained on one chat format and is prompted in another, or never
sees the token it learned to stop on. The kit trains through the tokenizer's
chat template, so the Modelfile is derived from that same template, not from a
table of known families.

How: the chat template is rendered with placeholder texts in a few
conversations (a system turn, two user/assistant exchanges; one user turn with
and without the generation prompt), and the text around the placeholders gives
each role's prefix and suffix, the system block the template writes when there
is no system message, and the generation prompt. They become one Go template
(Ollama's ``TEMPLATE``) over ``.System`` and ``.Messages``. The ``stop``
parameters are the special tokens that end an assistant turn, the EOS, and the
special token that opens a user turn. A template whose turns do not render the
same way each time (e.g. one that changes the last turn) cannot be expressed
this way: :func:`ollama_modelfile` raises ``ValueError`` saying which part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODELFILE = "Modelfile"
"""The file name Ollama's ``ollama create NAME -f Modelfile`` reads."""
_SYSTEM, _USER1, _ANSWER1, _USER2, _ANSWER2 = "XSYSTEMX", "XUSERONEX", "XANSWERONEX", "XUSERTWOX", "XANSWERTWOX"


@dataclass(frozen=True)
class TurnPieces:
    """The literal text a chat template puts around each turn (what the Go template is made of)."""

    system_prefix: str
    system_suffix: str
    no_system: str
    """What the template writes in place of a system block when there is no system message (often "")."""
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    """Written after the last user turn, where the model's answer starts."""


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text  # llama.cpp adds the BOS itself


def _cut(text: str, head: str, what: str, *, start: bool) -> str:
    """``text`` without ``head`` at its start (``start``) or end; ValueError naming ``what`` when it is not there."""
    if start and text.startswith(head):
        return text[len(head):]
    if not start and text.endswith(head):
        return text[:len(text) - len(head)]
    raise ValueError(f"the chat template renders {what} differently from turn to turn")


def turn_pieces(tokenizer: Any) -> TurnPieces:
    """Each role's prefix and suffix in ``tokenizer``'s chat template (see the module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: nothing to write an Ollama TEMPLATE from")
    try:
        return _turn_pieces(tokenizer)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 — a Jinja error on these conversations (e.g. a template needing tools)
        raise ValueError(f"the chat template cannot render a plain conversation ({type(err).__name__}: {err})") from err


def _turn_pieces(tokenizer: Any) -> TurnPieces:
    turns = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER1},
             {"role": "assistant", "content": _ANSWER1}, {"role": "user", "content": _USER2},
             {"role": "assistant", "content": _ANSWER2}]
    full = _render(tokenizer, turns, False)
    marks = [full.find(m) for m in (_SYSTEM, _USER1, _ANSWER1, _USER2, _ANSWER2)]
    if -1 in marks or marks != sorted(marks):
        raise ValueError("the chat template does not write the messages' texts in order")
    between = [full[a + len(m):b] for a, m, b in zip(marks, (_SYSTEM, _USER1, _ANSWER1, _USER2), marks[1:])]
    assistant_suffix = full[marks[4] + len(_ANSWER2):]
    alone = _render(tokenizer, turns[1:2], False)
    user_suffix = alone[alone.index(_USER1) + len(_USER1):]
    user_prefix = _cut(between[2], assistant_suffix, "an assistant turn's end", start=True)
    assistant_prefix = _cut(between[1], user_suffix, "a user turn's end", start=True)
    if between[3] != between[1]:
        raise ValueError("the chat template renders the second exchange differently from the first")
    asking = _render(tokenizer, turns[1:2], True)
    generation = _cut(asking[asking.index(_USER1) + len(_USER1):], user_suffix, "the generation prompt", start=True)
    return TurnPieces(
        system_prefix=full[:marks[0]],
        system_suffix=_cut(between[0], user_prefix, "the first user turn", start=False),
        no_system=_cut(alone[:alone.index(_USER1)], user_prefix, "a conversation without a system turn",
                       start=False),
        user_prefix=user_prefix, user_suffix=user_suffix, assistant_prefix=assistant_prefix,
        assistant_suffix=assistant_suffix, generation_prompt=generation)


def stop_tokens(tokenizer: Any, pieces: TurnPieces) -> list[str]:
    """The special tokens ending an assistant turn, the EOS, and the special token opening a user turn."""
    special = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    found = [t for t in special if t in pieces.assistant_suffix]
    opening = [t for t in special if pieces.user_prefix.startswith(t)][:1]
    eos = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    return list(dict.fromkeys(found + eos + opening))


def ollama_template(pieces: TurnPieces) -> str:
    """The Go template (Ollama's ``TEMPLATE``) that renders a conversation as the chat template does."""
    template = (f"{{{{ if .System }}}}{pieces.system_prefix}{{{{ .System }}}}{pieces.system_suffix}"
                f"{{{{ else }}}}{pieces.no_system}{{{{ end }}}}"
                f"{{{{ range .Messages }}}}{{{{ if eq .Role \"user\" }}}}"
                f"{pieces.user_prefix}{{{{ .Content }}}}{pieces.user_suffix}"
                f"{{{{ else if eq .Role \"assistant\" }}}}"
                f"{pieces.assistant_prefix}{{{{ .Content }}}}{pieces.assistant_suffix}"
                f"{{{{ end }}}}{{{{ end }}}}{pieces.generation_prompt}")
    return template


def ollama_modelfile(tokenizer: Any, gguf_file: str) -> str:
    """The text of an Ollama ``Modelfile`` for ``gguf_file`` (a path relative to the Modelfile, or absolute)."""
    pieces = turn_pieces(tokenizer)
    literal = "".join(getattr(pieces, name) for name in TurnPieces.__dataclass_fields__)
    if "{{" in literal or '"""' in literal:
        raise ValueError('the chat template writes "{{" or \'"""\' into its turns, which a Modelfile TEMPLATE '
                         "cannot hold")
    lines = [f"FROM {gguf_file}", f'TEMPLATE """{ollama_template(pieces)}"""']
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens(tokenizer, pieces)]
    return "\n".join(lines) + "\n"


def write_modelfile(tokenizer: Any, folder: str | Path, gguf_file: str | Path | None = None) -> Path | None:
    """Write ``folder/Modelfile`` for ``gguf_file`` (default: the one ``.gguf`` in ``folder``); returns its path.

    Returns None, and one line says why, when there is no single GGUF to name or
    the chat template cannot be written as an Ollama TEMPLATE; the GGUF itself is fine either way.
    """
    folder = Path(folder)
    ggufs = [Path(gguf_file)] if gguf_file is not None else sorted(folder.glob("*.gguf"))
    if len(ggufs) != 1:
        logger.info(f"no Ollama Modelfile written: {folder} holds {len(ggufs)} .gguf files, not one")
        return None
    gguf = ggufs[0]
    try:
        text = ollama_modelfile(tokenizer, f"./{gguf.name}" if gguf.parent.resolve() == folder.resolve() else str(gguf))
    except ValueError as err:
        logger.info(f"no Ollama Modelfile written ({err}); write its TEMPLATE by hand (docs/serving.md)")
        return None
    path = folder / MODELFILE
    path.write_text(text, encoding="utf-8")
    logger.info(f"Ollama Modelfile -> {path.resolve()} (TEMPLATE and stop tokens from the tokenizer's chat "
                f"template): ollama create my-model -f {path}")
    return path
