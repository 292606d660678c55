"""Export a trained adapter: copy it, make it portable, merge it into 16-bit weights, or convert it to GGUF.

merged_16bit runs anywhere (on the CPU without Unsloth: the base is
dequantized and the adapter merged with PEFT); gguf needs a GPU runtime with
Unsloth. The adapter keeps use_rslora: true in its adapter_config.json;
portable_adapter writes the same weights with lora_alpha = alpha*sqrt(r) and
use_rslora: false, for engines that ignore the flag (llama.cpp's LoRA to GGUF
converter, Ollama's ADAPTER, SGLang): docs/serving.md.

examples:
  python -m rslora_colab export --adapter outputs/rslora/adapter --how merged_16bit --out outputs/merged
  python -m rslora_colab export --adapter outputs/rslora/adapter --how portable_adapter --out outputs/portable
  python -m rslora_colab export --adapter outputs/rslora/adapter --how gguf --quantization q4_k_m --out outputs/gguf
"""

from __future__ import annotations

import argparse

from ..runtime import BACKENDS
from ..save import HOW


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export an adapter (adapter, portable_adapter, merged_16bit or gguf)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="adapter folder a run saved, e.g. outputs/rslora/adapter")
    p.add_argument("--how", choices=HOW, default="merged_16bit", help="what to write (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quantization", default="q4_k_m", help="GGUF quantization method (default %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="backend (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..save import export_adapter

    path = export_adapter(args.adapter, args.out, args.how, args.quantization, args.backend)
    print(f"saved {args.how}: {path}/")
    return 0
