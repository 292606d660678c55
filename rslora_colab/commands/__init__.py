"""Sub-commands of ``python -m rslora_colab``; each module has ``register(subparsers)``."""

from . import compare, train

COMMANDS = [train, compare]
