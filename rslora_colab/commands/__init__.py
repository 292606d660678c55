"""Sub-commands of ``python -m rslora_colab``; each module has ``register(subparsers)``."""

from . import chat, compare, export, plan, train

COMMANDS = [train, plan, compare, chat, export]
