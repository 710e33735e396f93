"""Every command-line flag can be followed by name to the option field it sets.

For each command line of the project, each flag is given a value of its own (one that differs
from its default), the command line is parsed, the option objects are built from the parsed
values as the command builds them (``commandline.flags``), and the field the flag's ``dest``
names must hold that value. A flag with no group in its ``dest`` is the command's own (its
inputs, output, verbosity), and must be listed as such here: a new flag is either an option
field or a deliberate exception.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from commandline.flags import build, groups, parser_flags
from experiments import predict, preview, pseudo, review, review_loop, sweep, thresholds, train_flags
from experiments.train_options import GROUP_TYPES, TrainOptions
from precompute import cli as precompute_cli
from precompute.cli_options import (
    AnnotationOptions,
    ConfigOptions,
    DemoDataOptions,
    RunOptions,
    WindowOptions,
)

# command -> (parser, group types, the arguments every parse needs: positionals last)
PRECOMPUTE_GROUPS = {
    "config": ConfigOptions,
    "annotations": AnnotationOptions,
    "run": RunOptions,
    "windows": WindowOptions,
    "demo": DemoDataOptions,
}
COMMANDS = {
    "precompute demo-data": (precompute_cli.build_parser, PRECOMPUTE_GROUPS, ["demo-data", "o"]),
    "precompute features": (
        precompute_cli.build_parser,
        PRECOMPUTE_GROUPS,
        ["features", "--audio-dir", "a", "--out", "o"],
    ),
    "precompute windows": (
        precompute_cli.build_parser,
        PRECOMPUTE_GROUPS,
        ["windows", "--audio-dir", "a", "--out", "o"],
    ),
    "precompute inspect": (precompute_cli.build_parser, PRECOMPUTE_GROUPS, ["inspect", "f"]),
    "precompute verify": (precompute_cli.build_parser, PRECOMPUTE_GROUPS, ["verify", "f"]),
    "precompute config": (precompute_cli.build_parser, PRECOMPUTE_GROUPS, ["config"]),
    "experiments.train": (train_flags.build_parser, GROUP_TYPES, ["--features", "f", "--out", "o"]),
    "experiments.predict": (
        predict.build_parser,
        {"predict": predict.PredictOptions},
        ["--model", "m", "--features", "f", "--out", "o"],
    ),
    "experiments.pseudo": (
        pseudo.build_parser,
        {"inputs": pseudo.Inputs, "plan": pseudo.Rounds},
        ["--features", "f", "--windows", "w", "--out", "o"],
    ),
    "experiments.preview": (preview.build_parser, {"preview": preview.PreviewOptions}, ["--out", "o", "f"]),
    "experiments.sweep": (sweep.build_parser, {}, ["g"]),
    "experiments.thresholds": (thresholds.build_parser, {}, ["r"]),
    "experiments.review pick": (
        review.build_parser,
        {"pick": review.PickOptions},
        ["pick", "--model", "m", "--windows", "w", "--n", "5", "--out", "o"],
    ),
    "experiments.review_loop": (
        review_loop.build_parser,
        {"inputs": review_loop.Inputs, "plan": review_loop.Plan},
        ["--data", "d", "--out", "o", "--test", "t", "--truth", "g"],
    ),
}
# Flags that belong to the command itself, by command (dest without a group).
OWN = {
    "precompute demo-data": {"quiet", "out"},
    "precompute features": {"quiet", "audio_dir", "out"},
    "precompute windows": {"quiet", "audio_dir", "out"},
    "precompute inspect": {"quiet", "features", "cache_dir"},
    "precompute verify": {"quiet", "features", "cache_dir"},
    "precompute config": {"quiet", "list"},
    "experiments.train": {"resume"},
    "experiments.predict": set(),
    "experiments.pseudo": {"recipe", "verbose", "quiet"},
    "experiments.preview": {"quiet"},
    "experiments.sweep": {"grid", "out", "verbose", "quiet"},
    "experiments.thresholds": {"run", "rule", "min_positives", "quiet"},
    "experiments.review pick": set(),
    "experiments.review_loop": {"recipe", "measure_cost", "quiet"},
}


# Flags whose text is checked beyond its type, with a value of their own that passes.
CHECKED_TEXT = {"keep.threshold_rule": "precision:0.9"}


def own_value(action: argparse.Action) -> tuple[list[str], object]:
    """Command-line words that give ``action`` a value other than its default, and that value."""
    flag = action.option_strings[-1] if action.option_strings else None
    if action.dest in CHECKED_TEXT:
        return [flag, CHECKED_TEXT[action.dest]], CHECKED_TEXT[action.dest]
    if isinstance(action, argparse.BooleanOptionalAction):  # option_strings: --x, --no-x
        value = not action.default
        return [action.option_strings[0 if value else 1]], value
    if action.nargs == 0:  # store_true / store_false
        return [flag], action.const
    if action.choices:
        value = next(c for c in action.choices if c != action.default)
        return [flag, str(value)], value
    kind = action.type or str
    raw = {int: "3", float: "0.25"}.get(kind, f"v-{action.dest.rpartition('.')[2]}")
    if action.default == kind(raw):
        raw = {int: "4", float: "0.75"}.get(kind, raw + "-2")
    value = kind(raw)
    words = [flag, raw] if flag else [raw]
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        return words, [value]
    return words, value


def flags_of(command: str) -> list[argparse.Action]:
    make_parser = COMMANDS[command][0]
    sub = command.partition(" ")[2]  # a subcommand: "precompute features", "experiments.review pick"
    return [action for where, action in parser_flags(make_parser()) if where == sub]


def option_flags() -> list[tuple[str, str]]:
    return [
        (command, action.dest) for command in COMMANDS for action in flags_of(command) if "." in action.dest
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_sets_an_option_field_or_is_the_commands_own(command):
    _, types, _ = COMMANDS[command]
    own, unknown = set(), []
    for action in flags_of(command):
        group, _, name = action.dest.rpartition(".")
        if not group:
            own.add(name)
        elif group not in types or name not in {f for f in types[group].__dataclass_fields__}:
            unknown.append(action.dest)
    assert unknown == []
    assert own == OWN[command]


@pytest.mark.parametrize(("command", "dest"), option_flags())
def test_a_flag_reaches_the_field_it_names(command, dest):
    make_parser, types, base = COMMANDS[command]
    action = next(a for a in flags_of(command) if a.dest == dest)
    words, value = own_value(action)
    if not action.option_strings:  # a positional: its own value replaces the base's
        base = base[:-1]
    parsed = make_parser().parse_args([*base, *words])
    group, _, name = dest.rpartition(".")
    # A flag left at None keeps the field's default, as the commands do with a recipe's plan.
    given = {k: v for k, v in groups(parsed)[group].items() if v is not None}
    options = build(types[group], given)
    assert plain(getattr(options, name)) == plain(value)


def plain(value: object) -> object:
    """Paths as text, sequences as lists: an option type may keep a flag's value as either."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def test_train_flags_build_the_options_train_runs_with():
    # experiments.train's own builder: the flag's value lands in the TrainOptions group it names.
    args = train_flags.build_parser().parse_args(
        [
            "--features",
            "f",
            "--out",
            "o",
            "--batch-size",
            "48",
            "--fold",
            "2",
            "--workers",
            "3",
            "--lr",
            "0.01",
        ]
    )
    options = train_flags.options_of(args)
    assert isinstance(options, TrainOptions)
    assert (options.batch.batch_size, options.split.fold, options.build.workers, options.optim.lr) == (
        48,
        2,
        3,
        0.01,
    )
