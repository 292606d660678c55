"""Fine-tune with rsLoRA and save the adapter, metrics.json and loss.png.

With no --model on a machine without a GPU this runs the offline demo: a
tiny Llama built locally, fine-tuned on rows made from Python's manual
(with --method dpo: on pairs of a right and a wrong answer to each question; with --method grpo: on the
questions alone, rewarded for short answers).
Every setting of FinetuneConfig is an option (its help is the field's docstring).

Started by torchrun or accelerate launch in several processes (one per GPU), it trains data-parallel with the
same global batch (--batch x --grad-accum); only rank 0 prints and writes (docs/scale-out.md).

examples:
  python -m rslora_colab train
  python -m rslora_colab train --method dpo
  python -m rslora_colab train --method grpo     # the demo: GRPO with a length penalty, ~10 s on CPU
  python -m rslora_colab train --method grpo --model MODEL --data prompts.jsonl --rank 16 --reward numeric_match --reward answer_format
  python -m rslora_colab train --model unsloth/Llama-3.2-1B-Instruct-bnb-4bit --data data.jsonl --rank 64
  python -m rslora_colab train --resume          # continue the newest checkpoint after a disconnect
  python -m rslora_colab train --method dpo --model MODEL --data HuggingFaceH4/ultrafeedback_binarized --rank 256
  torchrun --nproc_per_node 2 -m rslora_colab train --model MODEL --data data.jsonl --rank 64
  accelerate launch --multi_gpu --num_processes 2 -m rslora_colab train --model MODEL --data data.jsonl --rank 64
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import fields

from ..choices import GPU_DEFAULT_MODEL
from ..config import FinetuneConfig
from ..distributed import is_main, start
from ..rewards import READY_REWARDS, ready_reward
from .common import ALIASES, resolve_job
from .options import config_parser, given

SETTINGS = [f.name for f in fields(FinetuneConfig) if f.name not in ("use_rslora", "reward_funcs", "trl_args")]
"""FinetuneConfig fields offered as options (--lora says use_rslora shorter; --reward names the reward functions;
--trl KEY=VALUE fills trl_args)."""
SAMPLE_PROMPT = "Give the heading of the Python docs topic 'assert'."


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune with rsLoRA", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              parents=[config_parser(FinetuneConfig, SETTINGS, ALIASES)])
    p.add_argument("--model", help=f"hub id, local folder or 'demo' (default: the demo on CPU, "
                                   f"{GPU_DEFAULT_MODEL} on a GPU)")
    p.add_argument("--data", help="a .jsonl/.json/.csv/.parquet file or a hub dataset id (default: the demo rows)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest valid checkpoint in --out (same settings), or start if there is none")
    p.add_argument("--lora", action="store_true", help="classic LoRA scaling alpha/r instead of rsLoRA")
    p.add_argument("--eval-data", help="eval rows: a .jsonl/.json/.csv/.parquet file or a hub dataset id, in the "
                                       "training data's format (default: --eval-fraction of --data)")
    p.add_argument("--reward", action="append", choices=list(READY_REWARDS), metavar="NAME",
                   help=f"with --method grpo: a ready reward from rslora_colab.rewards, by name; repeat for several "
                        f"(their rewards add up). One of: {', '.join(READY_REWARDS)}. exact_match and numeric_match "
                        "compare the answer (inside <answer>...</answer> when there is one) with the data's 'answer' "
                        "column; answer_format rewards that format; length_penalty favours short completions "
                        "(default for the demo: length_penalty with 60 characters)")
    p.add_argument("--trl", action="append", metavar="KEY=VALUE", type=trl_setting,
                   help="a field of TRL's config for the method (SFTConfig, DPOConfig, GRPOConfig) under TRL's own "
                        "name, handed to it untouched and recorded in the manifest; repeat for several, e.g. --trl "
                        "neftune_noise_alpha=5 --trl optim=adamw_8bit. The value is read as a Python literal (5, "
                        "0.1, True, ['a']), else as text")
    p.add_argument("--sample", default=SAMPLE_PROMPT, help="prompt for the before/after sample ('' to skip; after "
                                                           "training, one eval row is asked too)")
    p.set_defaults(func=run)


def trl_setting(text: str) -> tuple[str, object]:
    """``--trl KEY=VALUE`` as ``(key, value)``: the value as a Python literal when it is one, else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. neftune_noise_alpha=5")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def held_out_question(result, max_chars: int = 120) -> tuple[object, str] | None:
    """An eval row to ask after training, and its answer: the one with the shortest answer (so the reply shown
    can be compared whole), among rows whose answer fits ``max_chars``; None without eval rows or for formats
    not trained through the chat template."""
    from ..data import detect_format, prompt_and_answer

    rows = result.eval_dataset
    if rows is None or result.settings.get("method") == "dpo":
        return None
    fmt = detect_format(rows.column_names)
    asked = [pair for row in rows if (pair := prompt_and_answer(row, fmt)) and len(pair[1]) <= max_chars]
    return min(asked, key=lambda pair: len(pair[1]), default=None)


def run(args) -> int:
    from ..chat import SampleCallback, chat
    from ..train import quick_finetune

    start()  # several processes (torchrun, accelerate launch): join them before the first message
    settings = given(args, SETTINGS)
    if args.trl:
        settings["trl_args"] = dict(args.trl)
    if args.reward:
        settings["reward_funcs"] = tuple(ready_reward(name) for name in args.reward)
    method = settings.get("method", "sft")
    model_name, data, overrides = resolve_job(args.model, args.data, settings, method)
    sample = [SampleCallback(args.sample)] if args.sample else []
    result = quick_finetune(model_name, data, use_rslora=not args.lora, resume=args.resume, callbacks=sample,
                            eval_dataset=args.eval_data, **overrides)
    if not is_main():  # several processes: rank 0 reports
        return 0
    if args.sample:
        print(f"\nAfter training, {args.sample!r} ->", flush=True)
        chat(result, None, args.sample, max_new_tokens=40)
        held = held_out_question(result)
        if held is not None:
            prompt, answer = held
            shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            print(f"\nA held-out question (an eval row, never trained on), {shown!r} ->", flush=True)
            chat(result, None, prompt, max_new_tokens=40)
            print(f"(the row's answer: {answer!r})")
    print(f"\n{result.report()}")
    out = result.adapter_path.parent
    print(f"saved: {result.adapter_path}/, {out}/metrics.json, {out}/loss.png")
    return 0
