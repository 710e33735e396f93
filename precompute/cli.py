"""``python -m precompute`` / ``precompute``: the command line, its flags and its exit status.

``build_parser`` declares every flag; a flag's ``dest`` names the option field it sets
(``"run.jobs"``: ``RunOptions.jobs``, ``precompute.cli_options``), and ``main`` hands the values,
by group, to the subcommand's function (``precompute.commands``).

Output: each command's result (a one-line summary, or ``inspect``'s report) on stdout;
progress bars and log lines on stderr (``--quiet`` silences them, never warnings or errors).

Exit status: 0 success; 2 an error you can fix (bad usage or config, missing or invalid
input, a feature set that fails ``verify``, a directory locked by another run): one line on
stderr, no traceback; 3 the feature set was written but some rows or recordings failed (see
``failures.jsonl``); 130 interrupted. Anything else comes with a traceback and is a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, report_error, setup_logging
from commandline.flags import add_flag, groups
from commandline.parser import CommandParser
from melshards.errors import MelShardsError
from precompute.backends import BACKENDS
from precompute.commands import COMMANDS


def _quiet_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or log lines (errors still print)"
    )
    return parent


def _add_config_options(p: argparse.ArgumentParser) -> None:
    from precompute.config_files import preset_names

    g = p.add_argument_group("feature config (preset < --config file < --set)")
    add_flag(
        g,
        "--preset",
        field="config.preset",
        help=f"start from this preset: {', '.join(preset_names())} (`precompute config --list`); "
        "default: the file's, or default",
    )
    add_flag(
        g,
        "--config",
        field="config.file",
        type=Path,
        metavar="TOML",
        help="TOML file: any parameter, may name a preset",
    )
    add_flag(
        g,
        "--set",
        field="config.overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. --set n_mels=96 (repeatable; `precompute config` lists them)",
    )
    add_flag(
        g,
        "--shard-size",
        field="config.shard_size",
        type=int,
        help="examples per shard (same as --set shard_size=N)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    add_flag(
        p, "--jobs", field="run.jobs", type=int, default=None, help="parallel shard jobs (default: all cores)"
    )
    add_flag(
        p,
        "--backend",
        field="run.backend",
        default="loky",
        choices=BACKENDS,
        help="joblib backend; dask and ray run on a cluster (default loky)",
    )
    add_flag(
        p,
        "--scheduler",
        "--address",
        field="run.scheduler",
        metavar="ADDR",
        help="join a running cluster: Dask scheduler (tcp://HOST:8786) or Ray address (HOST:6379); "
        "without it dask and ray start a local cluster of --jobs workers",
    )
    add_flag(
        p,
        "--on-error",
        field="run.on_error",
        default="skip",
        choices=["skip", "fail"],
        help="skip: record bad rows/recordings in failures.jsonl and go on; fail: stop at the first",
    )
    add_flag(
        p,
        "--overwrite",
        field="run.overwrite",
        action="store_true",
        help="replace a feature set of the other kind (labelled or windows) in --out",
    )
    add_flag(
        p,
        "--stage",
        field="run.stage",
        type=Path,
        help="with --out URL: the local directory the shards are built in before they are "
        "uploaded (default $MELSHARDS_CACHE/out/NAME)",
    )


def _add_annotation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("annotations (docs/annotations.md; also an [annotations] table in --config)")
    add_flag(
        g,
        "--tp",
        field="annotations.tp",
        type=Path,
        help="CSV of calls: RFCX columns (train_tp.csv), or any, mapped by --columns",
    )
    add_flag(
        g,
        "--fp",
        field="annotations.fp",
        type=Path,
        help="CSV of confirmed false positives, same columns as --tp",
    )
    add_flag(
        g,
        "--columns",
        field="annotations.columns",
        metavar="MAP",
        help="which column holds each field in --tp/--fp/--clips, e.g. "
        "recording_id=file,species_id=label,t_min=start,t_max=end",
    )
    add_flag(
        g,
        "--raven",
        field="annotations.raven",
        type=Path,
        metavar="PATH",
        help="a Raven selection table, or a folder of them",
    )
    _add_review_options(g)
    add_flag(
        g,
        "--clips",
        field="annotations.clips",
        type=Path,
        metavar="CSV",
        help="clip-level labels: a file column and a label column",
    )
    add_flag(
        g,
        "--class-folders",
        field="annotations.class_folders",
        action="store_true",
        help="one folder of clips per class in --audio-dir; each clip is labelled with its folder",
    )
    add_flag(
        g,
        "--label-column",
        field="annotations.label_column",
        metavar="NAME",
        help="the labels' column in --raven/--reviews/--clips (default: Annotation, Species, label, category, ...)",
    )
    add_flag(
        g,
        "--label-separator",
        field="annotations.label_separator",
        metavar="SEP",
        help="between several labels of one clip (default ;)",
    )
    add_flag(
        g,
        "--classes",
        field="annotations.classes",
        metavar="LIST",
        help="the class list, in order (a,b,c; other labels are rejected), or species_songtype "
        "(a class per species and songtype); default: the labels found, or --set n_classes=N ids",
    )


def _add_review_options(g) -> None:
    add_flag(
        g,
        "--reviews",
        field="annotations.reviews",
        type=Path,
        metavar="PATH",
        help="reviewed Raven tables (a table or a folder): yes -> call, no -> confirmed negative, "
        "a class name -> relabelled, empty -> skipped",
    )
    add_flag(
        g,
        "--review-column",
        field="annotations.review_column",
        metavar="NAME",
        help="the reviewers' verdicts column in --reviews (default Review)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="precompute",
        description="Log-mel feature shards for audio event classifiers.",
        epilog="Exit status: 0 ok, 2 an error you can fix (one line on stderr), 3 written with "
        "failures (see failures.jsonl), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quiet = _quiet_option()
    _add_demo_data_command(sub, quiet)
    _add_features_command(sub, quiet)
    _add_windows_command(sub, quiet)
    _add_reading_commands(sub, quiet)
    return parser


def _add_demo_data_command(sub, quiet: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo-data", parents=[quiet], help="synthesize the embedded RFCX-like demo dataset")
    p.add_argument("out", type=Path, help="output directory, e.g. data/demo")
    add_flag(p, "--seed", field="demo.seed", type=int, default=0)
    add_flag(
        p, "--recordings", field="demo.recordings", type=int, default=96, help="train recordings (default 96)"
    )
    add_flag(
        p,
        "--test-recordings",
        field="demo.test_recordings",
        type=int,
        default=24,
        help="test recordings (default 24)",
    )
    add_flag(
        p,
        "--label-fraction",
        field="demo.label_fraction",
        type=float,
        default=1.0,
        help="share of the train calls listed in train_tp.csv, the rest left unlabelled (default 1)",
    )
    add_flag(
        p, "--jobs", field="demo.jobs", type=int, default=None, help="parallel jobs (default: all cores)"
    )


def _add_features_command(sub, quiet: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "features",
        parents=[quiet],
        help="labelled slices (annotated events) -> shards",
        description="One window per annotated event, from RFCX manifests, event CSVs, Raven selection "
        "tables or clip-level labels (docs/annotations.md). Give at least one of --tp, --raven, "
        "--reviews, --clips, --class-folders; they may be combined.",
    )
    p.add_argument("--audio-dir", type=Path, required=True, help="folder of <recording_id>.flac/.wav/...")
    p.add_argument(
        "--out", required=True, help="feature set directory, or a URL (s3://bucket/prefix, gs://...)"
    )
    _add_annotation_options(p)
    _add_config_options(p)
    _add_run_options(p)


def _add_windows_command(sub, quiet: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "windows", parents=[quiet], help="sliding windows over unlabelled recordings -> shards"
    )
    p.add_argument(
        "--audio-dir",
        type=Path,
        required=True,
        help="folder of recordings, sub-folders included; a recording's id is its path in it "
        "without the extension (site2/rec7)",
    )
    p.add_argument(
        "--out", required=True, help="feature set directory, or a URL (s3://bucket/prefix, gs://...)"
    )
    add_flag(
        p,
        "--step",
        field="windows.step",
        type=float,
        default=5.0,
        help="seconds between window starts (default 5)",
    )
    add_flag(
        p,
        "--files",
        field="windows.files",
        type=Path,
        metavar="LIST.txt",
        help="read only the files this lists: one path per line, relative to --audio-dir "
        "(blank lines and lines starting with # are skipped)",
    )
    _add_config_options(p)
    _add_run_options(p)


def _add_reading_commands(sub, quiet: argparse.ArgumentParser) -> None:
    """``inspect``, ``preview``, ``verify`` and ``config``: the commands that read a feature set
    or a config (``preview`` passes its arguments on)."""
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument(
        "--cache-dir",
        help="for a feature set at a URL: where its shards are cached (default $MELSHARDS_CACHE "
        "or ~/.cache/melshards)",
    )
    where = "feature set directory or URL (s3://, gs://, https://)"
    p = sub.add_parser("inspect", parents=[quiet, cache], help="summary of a feature set (fits 100 columns)")
    p.add_argument("features", help=where)

    # Every argument after "preview" goes to experiments.preview as given (precompute.commands),
    # its --help included: main parses with parse_known_args and hands them on.
    sub.add_parser(
        "preview",
        add_help=False,
        help="pictures: example spectrograms per class, and what augmentation does",
    )

    p = sub.add_parser(
        "verify",
        parents=[quiet, cache],
        help="re-check every shard against the index (a set at a URL: downloading each shard again)",
    )
    p.add_argument("features", help=where)

    p = sub.add_parser(
        "config",
        parents=[quiet],
        help="print a resolved feature config as TOML (or --list the presets)",
        description="Print the feature config that features/windows would use with the same "
        "options, as a TOML file you can edit and pass back with --config.",
    )
    _add_config_options(p)
    p.add_argument("--list", action="store_true", help="list the presets shipped with the package")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "preview":
        args.arguments = rest  # for experiments.preview, as given
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    values = groups(args)
    command = values[""]["command"]
    setup_logging(quiet=values[""].get("quiet", False))  # preview passes its --quiet on
    try:
        return COMMANDS[command](values)
    except BrokenPipeError:
        # The reader went away (`precompute inspect F | head`): not an error; silence the
        # flush at exit that would complain about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (MelShardsError, OSError) as err:
        return report_error(f"precompute {command}", err)
    except KeyboardInterrupt:
        print(
            f"precompute {command}: interrupted; finished shards are kept, run again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
