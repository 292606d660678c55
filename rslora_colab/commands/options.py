"""Command-line options generated from a settings dataclass: its fields, types, defaults and docstrings.

transformers' ``HfArgumentParser`` (what TRL's ``TrlParser`` builds on) turns
a dataclass into options: ``--max-steps`` and ``--max_steps``, ``--guard`` /
``--no-guard`` for a boolean that defaults to True, choices for a ``Literal``,
``int``/``float`` parsing, ``Optional`` types. The kit's settings carry their
help as attribute docstrings (litgpt's ``args.py`` style) rather than
``field(metadata={"help": ...})``, so :func:`config_parser` hands
``HfArgumentParser`` a copy of the dataclass whose fields carry that help, the
real default and the short aliases, with types argparse can parse
(``tuple[str, ...]`` -> a list, ``str | float`` -> text).

Every option defaults to "not given" (``argparse.SUPPRESS``), so a command
knows what the user typed and can layer it over other defaults (the demo's
own settings). The help shows the dataclass's real default, so it cannot
drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, Iterable, Mapping

NOT_GIVEN = argparse.SUPPRESS


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: ``{field: the string literal right after its annotation}``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _cli_type(annotation: Any) -> Any:
    """A type ``HfArgumentParser`` can turn into an option: tuples become lists, ``str | float`` text."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return list[args[0]]
    if origin in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        optional = len(real) < len(args)
        if len(real) > 1:  # e.g. gpu: str | float -> text; the config turns "14.74" into a number
            return str | None if optional else str
        return _cli_type(real[0]) | None if optional else _cli_type(real[0])
    return annotation


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, (tuple, list)):
        value = " ".join(map(str, value))
    return "none" if value is None else str(value)


def _cli_dataclass(cls: type, names: Iterable[str], aliases: Mapping[str, str]) -> type:
    """A copy of ``cls`` restricted to ``names``, with help, aliases and parseable types in field metadata."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    specs = []
    for field in (f for f in dataclasses.fields(cls) if f.name in names):
        helptext = f"{docs.get(field.name, '')} (default: {_default_text(field)})"
        metadata = {"help": helptext.replace("%", "%%")}
        if field.name in aliases:
            metadata["aliases"] = [aliases[field.name]]
        # config_parser replaces every default with NOT_GIVEN; what is left to say here: a True flag gets a --no-<flag>
        default = field.default if isinstance(field.default, bool) else None
        specs.append((field.name, _cli_type(hints[field.name]), dataclasses.field(default=default, metadata=metadata)))
    return dataclasses.make_dataclass(f"{cls.__name__}Options", specs)


def config_parser(cls: type, names: Iterable[str], aliases: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """A parent parser with one option per field of ``cls`` in ``names`` (``--field-name``, its aliases).

    Use as ``subparsers.add_parser(..., parents=[config_parser(...)])``. Every
    option defaults to :data:`NOT_GIVEN`; :func:`given` reads back what was typed.
    """
    from transformers import HfArgumentParser

    class OptionsParser(HfArgumentParser):
        """``HfArgumentParser`` whose options default to "not given", and whose ``--no-<flag>`` says what it does:
        both through argparse's public ``add_argument``, which ``HfArgumentParser`` calls once per option."""

        def add_argument(self, *names, **kwargs):
            kwargs["default"] = NOT_GIVEN
            if kwargs.get("action") == "store_false":  # HfArgumentParser's --no-<flag> for a True default
                kwargs["help"] = f"turn {names[-1].removeprefix('--no-')} off"
            return super().add_argument(*names, **kwargs)

    return OptionsParser(_cli_dataclass(cls, list(names), aliases or {}), add_help=False)


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` the user typed, as settings keywords (lists back to what the config takes)."""
    values = vars(args)
    return {name: values[name] for name in names if name in values}
