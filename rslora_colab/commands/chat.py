"""Chat with a trained adapter (or a base model): one reply with --prompt, else a conversation.

The base model is the one named in the adapter's adapter_config.json; type
an empty line or 'exit' to leave the conversation.

examples:
  python -m rslora_colab chat --adapter outputs/rslora/adapter --prompt "Explain the Python docs topic 'assert'."
  python -m rslora_colab chat --adapter outputs/rslora/adapter
"""

from __future__ import annotations

import argparse

from ..runtime import BACKENDS


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="chat with a trained adapter", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="adapter folder a run saved, e.g. outputs/rslora/adapter")
    source.add_argument("--model", help="a base model (hub id, folder or 'demo') with no adapter, to compare")
    p.add_argument("--prompt", help="one prompt to answer (default: a conversation on stdin)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="backend (default %(default)s)")
    p.set_defaults(func=run)


def _conversation(model, tokenizer, args) -> None:
    """Read user turns from stdin and answer each, keeping the conversation so far."""
    from ..chat import chat

    messages: list[dict] = []
    while True:
        try:
            text = input("\nyou> ").strip()
        except EOFError:
            return
        if text in ("", "exit", "quit"):
            return
        messages.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        reply = chat(model, tokenizer, messages, args.max_new_tokens, temperature=args.temperature)
        messages.append({"role": "assistant", "content": reply})


def run(args) -> int:
    from ..chat import chat
    from ..load import load_adapter, load_model

    if args.adapter:
        model, tokenizer = load_adapter(args.adapter, backend=args.backend)
    else:
        model, tokenizer = load_model(args.model, backend=args.backend)
    if args.prompt is None:
        _conversation(model, tokenizer, args)
    else:
        chat(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature)
    return 0
