"""``python -m rslora_colab <command>``: the kit from a terminal.

    python -m rslora_colab train --help

Errors the kit expects are one line, ``error: ...`` saying what to do, and an exit status:

===  ==========================================================================================
0    done
1    ``plan``: nothing fits the GPU
2    bad settings, data, model name or output folder (also: the folder is in use by a live run);
     nothing was trained
3    training diverged past the divergence guard (the last good adapter is saved)
4    a checkpoint or the final outputs could not be written (read-only folder, full disk);
     fix the folder and run again with ``--resume``
130  interrupted by Ctrl-C: a checkpoint was saved after the current step; ``--resume`` continues
143  stopped by SIGTERM (a container or VM shutting down): the same, a checkpoint after the current step
===  ==========================================================================================
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .commands import COMMANDS
from .distributed import die_with_launcher, rank, world_size
from .resilience.checkpoints import OutputWriteError
from .resilience.guard import DivergenceError
from .resilience.interrupt import INTERRUPTED_EXIT

EXIT_SETTINGS, EXIT_DIVERGED, EXIT_WRITE = 2, 3, 4
"""Exit statuses (see the module docstring); Ctrl-C is ``INTERRUPTED_EXIT`` (130), SIGTERM 143."""
EXIT_STATUS = {ValueError: EXIT_SETTINGS, DivergenceError: EXIT_DIVERGED, OutputWriteError: EXIT_WRITE}
"""The errors whose one line says what to do (the field and the fix; the step, the lr and what to try; the folder
and what ``--resume`` continues from): no traceback, this exit status."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rslora_colab",
                                     description="Fine-tune open LLMs with rsLoRA on a free Colab T4, or a CPU demo.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def say(line: str) -> None:
    """Print ``line`` to stderr on a line of its own, also when a progress bar was left open mid-line."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()  # under torchrun / accelerate launch: go when the launcher goes
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not for CLI users
    error = f"error (process {rank()}): " if world_size() > 1 and rank() > 0 else "error: "
    try:
        return args.func(args)
    except tuple(EXIT_STATUS) as err:
        say(f"{error}{err}")
        return next(status for kind, status in EXIT_STATUS.items() if isinstance(err, kind))
    except KeyboardInterrupt as err:  # the kit's own (TrainingInterrupted) says where the checkpoint is
        status = getattr(err, "exit_status", INTERRUPTED_EXIT)  # 143 after SIGTERM
        if rank() > 0:  # several processes: they stopped together, rank 0 says where
            return status
        say(f"interrupted: {err}" if str(err) else "interrupted (Ctrl-C). What was saved is kept: after `train`, "
            "run the same command with --resume to continue from its newest checkpoint.")
        return status


if __name__ == "__main__":
    sys.exit(main())
