"""``python -m rslora_colab <command>``: the kit from a terminal.

    python -m rslora_colab train --help
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .commands import COMMANDS
from .guard import DivergenceError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rslora_colab",
                                     description="Fine-tune open LLMs with rsLoRA on a free Colab T4, or a CPU demo.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not for CLI users
    try:
        return args.func(args)
    except ValueError as err:  # our errors name the field and the fix: no traceback needed
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:  # the guard's message names the step, the lr and what to try
        print(f"error: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
