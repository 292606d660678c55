"""Sub-commands of ``python -m rslora_colab``; each module has ``register(subparsers)``."""

from . import chat, export, plan, train

COMMANDS = [train, plan, chat, export]
