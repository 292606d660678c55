"""Sub-commands of ``python -m rslora_colab``; each module has ``register(subparsers)``."""

from . import chat, export, train

COMMANDS = [train, chat, export]
