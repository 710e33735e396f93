"""``CommandParser``: the ``argparse.ArgumentParser`` every command line of the project uses.

It differs from argparse's in two ways a user sees:

- flags are taken by their exact names only (no ``--epoch`` for ``--epochs``: a prefix that
  happens to match is as often a typo), and a flag the command does not have is the first thing
  said, with the closest real one, before any check of what is missing::

      precompute features: error: unknown flag --audio-dri; did you mean --audio-dir?

  instead of ``the following arguments are required: --audio-dir``. A command with
  subcommands checks its own flags up to the subcommand's name, and the subcommand's parser
  (a ``CommandParser`` too) the rest. A parser with no arguments at all (``precompute
  preview``, which hands everything on) checks nothing.
- ``--verbose`` given on the command line with a level of 1 or more (and no ``--quiet``) also
  prints TensorFlow's start-up lines, held back otherwise (``commandline.native_logs``).

Adopt it where the parser is made: ``p = CommandParser(prog=..., description=...)``, the same
keywords as ``argparse.ArgumentParser``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence

from commandline import native_logs


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with exact flag names, unknown flags named first with the
    closest real one, and TensorFlow's start-up lines shown on ``--verbose`` (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        tokens = sys.argv[1:] if args is None else list(args)
        unknown = self.unknown_flag(tokens)
        if unknown is not None:
            self.error(unknown)
        parsed, rest = super().parse_known_args(tokens, namespace)
        if self._asks_verbose(tokens, parsed):
            native_logs.show_held()
        return parsed, rest

    def unknown_flag(self, tokens: Sequence[str]) -> str | None:
        """``"unknown flag --x; did you mean --y?"`` for the first flag in ``tokens`` that this
        parser does not have (up to ``--`` or a subcommand's name), or None."""
        if not self._actions:
            return None
        for token in self._own_tokens(tokens):
            if not token.startswith("-") or token == "-" or " " in token:
                continue
            if self._negative_number_matcher.match(token):
                continue
            name = token.partition("=")[0] if token.startswith("--") else token[:2]
            if name in self._option_string_actions:
                continue
            return f"unknown flag {name}{self._closest(name)}"
        return None

    def _own_tokens(self, tokens: Sequence[str]) -> list[str]:
        """The tokens this parser reads itself: those before ``--`` and before a subcommand."""
        commands: set[str] = set()
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands |= set(action.choices)
        own = []
        for token in tokens:
            if token == "--" or token in commands:
                break
            own.append(token)
        return own

    def _closest(self, name: str) -> str:
        """``"; did you mean --y?"`` for the flag nearest ``name``, or ``""`` when none is near."""
        flags = {flag.lstrip("-"): flag for flag in self._option_string_actions if flag.startswith("--")}
        match = difflib.get_close_matches(name.lstrip("-"), list(flags), n=1, cutoff=0.6)
        return f"; did you mean {flags[match[0]]}?" if match else ""

    def _asks_verbose(self, tokens: Sequence[str], parsed: argparse.Namespace) -> bool:
        """Whether ``--verbose`` is on the command line, with a level of 1 or more, without ``--quiet``."""
        verbose = self._option_string_actions.get("--verbose")
        if verbose is None or not _given(verbose, self._own_tokens(tokens)):
            return False
        quiet = self._option_string_actions.get("--quiet")
        if quiet is not None and getattr(parsed, quiet.dest, False):
            return False
        return bool(getattr(parsed, verbose.dest, False))


def _given(action: argparse.Action, tokens: Sequence[str]) -> bool:
    return any(token.partition("=")[0] in action.option_strings for token in tokens)
