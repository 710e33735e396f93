"""A flag names the option field it sets: ``--batch-size`` stores into ``batch.batch_size``.

A command line declares each flag with ``dest="GROUP.FIELD"``: the group is one of the
command's option dataclasses (``"batch"`` for ``loader.options.BatchOptions``), the field one
of its fields. ``groups(namespace)`` then hands each group its values, and the command builds
its option objects from them, so a reader (or a test, ``tests/test_flags.py``) can follow any
flag by name to the field it sets and from there to where the field is used. A flag whose
``dest`` has no dot belongs to the command itself (``--quiet``, ``--resume``).

    add_flag(p, "--batch-size", field="batch.batch_size", type=int, default=32)
    ...
    values = groups(p.parse_args(argv))
    batch = BatchOptions(**values["batch"])
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from typing import Any


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, field: str, **kwargs: Any
):
    """``parser.add_argument(*names, dest=field, **kwargs)`` for the flag that sets option field
    ``field`` (``"GROUP.FIELD"``). A flag that takes a value shows it as ``FIELD`` in the help
    (unless ``metavar`` is given), as argparse shows a flag whose dest is its own name."""
    if "metavar" not in kwargs and "choices" not in kwargs and "action" not in kwargs:
        kwargs["metavar"] = field.rpartition(".")[2].upper()
    return parser.add_argument(*names, dest=field, **kwargs)


def groups(namespace: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The parsed values by option group: ``{"batch": {"batch_size": 32}, ...}``; the command's
    own flags (no dot in their ``dest``) under ``""``."""
    found: dict[str, dict[str, Any]] = {}
    for dest, value in vars(namespace).items():
        group, _, name = dest.rpartition(".")
        found.setdefault(group, {})[name] = value
    return found


def build(cls: type, values: dict[str, Any], **more: Any) -> Any:
    """``cls(**values, **more)``; a value naming no field of ``cls`` is a bug in the parser."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r} (a flag's dest names it)")
    return cls(**values, **more)


def parser_flags(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """``(command, action)`` for every flag of ``parser`` and of its subcommands ("" for the top),
    help actions aside: what ``tests/test_flags.py`` walks."""
    yield from _walk(parser, "")


def _walk(parser: argparse.ArgumentParser, command: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{command} {name}".strip())
        elif not isinstance(action, argparse._HelpAction):
            yield command, action
