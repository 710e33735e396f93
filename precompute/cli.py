"""``python -m precompute`` / ``precompute``: the command line.

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
import time
from pathlib import Path

from commandline.console import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USER_ERROR,
    log,
    report_error,
    setup_logging,
)
from melshards.errors import ConfigError, MelShardsError
from melshards.names import EVENT_FP
from precompute.backends import BACKENDS


def _quiet_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or log lines (errors still print)"
    )
    return parent


def _add_config_options(p: argparse.ArgumentParser) -> None:
    from precompute.config_files import preset_names

    g = p.add_argument_group("feature config (preset < --config file < --set)")
    g.add_argument(
        "--preset",
        help=f"start from this preset: {', '.join(preset_names())} (`precompute config --list`); "
        "default: the file's, or default",
    )
    g.add_argument("--config", type=Path, metavar="TOML", help="TOML file: any parameter, may name a preset")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one parameter, e.g. --set n_mels=96 (repeatable; `precompute config` lists them)",
    )
    g.add_argument("--shard-size", type=int, help="examples per shard (same as --set shard_size=N)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=None, help="parallel shard jobs (default: all cores)")
    p.add_argument(
        "--backend",
        default="loky",
        choices=BACKENDS,
        help="joblib backend; dask and ray run on a cluster (default loky)",
    )
    p.add_argument(
        "--scheduler",
        "--address",
        dest="scheduler",
        metavar="ADDR",
        help="join a running cluster: Dask scheduler (tcp://HOST:8786) or Ray address (HOST:6379); "
        "without it dask and ray start a local cluster of --jobs workers",
    )
    p.add_argument(
        "--on-error",
        default="skip",
        choices=["skip", "fail"],
        help="skip: record bad rows/recordings in failures.jsonl and go on; fail: stop at the first",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a feature set of the other kind (labelled or windows) in --out",
    )
    p.add_argument(
        "--stage",
        type=Path,
        help="with --out URL: the local directory the shards are built in before they are "
        "uploaded (default $MELSHARDS_CACHE/out/NAME)",
    )


def _add_annotation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("annotations (docs/annotations.md; also an [annotations] table in --config)")
    g.add_argument(
        "--tp", type=Path, help="CSV of calls: RFCX columns (train_tp.csv), or any, mapped by --columns"
    )
    g.add_argument("--fp", type=Path, help="CSV of confirmed false positives, same columns as --tp")
    g.add_argument(
        "--columns",
        metavar="MAP",
        help="which column holds each field in --tp/--fp/--clips, e.g. "
        "recording_id=file,species_id=label,t_min=start,t_max=end",
    )
    g.add_argument("--raven", type=Path, metavar="PATH", help="a Raven selection table, or a folder of them")
    g.add_argument(
        "--clips", type=Path, metavar="CSV", help="clip-level labels: a file column and a label column"
    )
    g.add_argument(
        "--class-folders",
        action="store_true",
        help="one folder of clips per class in --audio-dir; each clip is labelled with its folder",
    )
    g.add_argument(
        "--label-column",
        metavar="NAME",
        help="the labels' column in --raven/--clips (default: Annotation, Species, label, category, ...)",
    )
    g.add_argument("--label-separator", metavar="SEP", help="between several labels of one clip (default ;)")
    g.add_argument(
        "--classes",
        metavar="LIST",
        help="the class list, in order (a,b,c; other labels are rejected), or species_songtype "
        "(a class per species and songtype); default: the labels found, or --set n_classes=N ids",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precompute",
        description="Log-mel feature shards for audio event classifiers.",
        epilog="Exit status: 0 ok, 2 an error you can fix (one line on stderr), 3 written with "
        "failures (see failures.jsonl), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quiet = _quiet_option()
    _add_input_commands(sub, quiet)
    _add_reading_commands(sub, quiet)
    return parser


def _add_input_commands(sub, quiet: argparse.ArgumentParser) -> None:
    """``demo-data``, ``features`` and ``windows``: the commands that read audio."""
    p = sub.add_parser("demo-data", parents=[quiet], help="synthesize the embedded RFCX-like demo dataset")
    p.add_argument("out", type=Path, help="output directory, e.g. data/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recordings", type=int, default=96, help="train recordings (default 96)")
    p.add_argument("--test-recordings", type=int, default=24, help="test recordings (default 24)")
    p.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="share of the train calls listed in train_tp.csv, the rest left unlabelled (default 1)",
    )
    p.add_argument("--jobs", type=int, default=None, help="parallel jobs (default: all cores)")

    p = sub.add_parser(
        "features",
        parents=[quiet],
        help="labelled slices (annotated events) -> shards",
        description="One window per annotated event, from RFCX manifests, event CSVs, Raven selection "
        "tables or clip-level labels (docs/annotations.md). Give at least one of --tp, --raven, "
        "--clips, --class-folders; they may be combined.",
    )
    p.add_argument("--audio-dir", type=Path, required=True, help="folder of <recording_id>.flac/.wav/...")
    p.add_argument(
        "--out", required=True, help="feature set directory, or a URL (s3://bucket/prefix, gs://...)"
    )
    _add_annotation_options(p)
    _add_config_options(p)
    _add_run_options(p)

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
    p.add_argument("--step", type=float, default=5.0, help="seconds between window starts (default 5)")
    p.add_argument(
        "--files",
        type=Path,
        metavar="LIST.txt",
        help="read only the files this lists: one path per line, relative to --audio-dir "
        "(blank lines and lines starting with # are skipped)",
    )
    _add_config_options(p)
    _add_run_options(p)


def _add_reading_commands(sub, quiet: argparse.ArgumentParser) -> None:
    """``inspect``, ``preview``, ``verify`` and ``config``: the commands that read a feature set
    or a config."""
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument(
        "--cache-dir",
        help="for a feature set at a URL: where its shards are cached (default $MELSHARDS_CACHE "
        "or ~/.cache/melshards)",
    )
    where = "feature set directory or URL (s3://, gs://, https://)"
    p = sub.add_parser("inspect", parents=[quiet, cache], help="summary of a feature set (fits 100 columns)")
    p.add_argument("features", help=where)

    p = sub.add_parser(
        "preview",
        parents=[quiet, cache],
        help="pictures: example spectrograms per class, and what augmentation does",
        description="Write two PNG pictures of a feature set: OUT, a grid of example spectrograms "
        "(one row per class, --per-class examples each, on true axes: seconds and Hz; dashed lines "
        "mark the crop the model sees, a box the labelled call), and OUT-augment.png (or "
        "--augment-out), the same few examples before and after the loader's default augmentation "
        "(loader.Augment(): time shift, gain, SpecAugment masks).",
    )
    p.add_argument("features", help=where)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write, e.g. preview.png")
    p.add_argument("--per-class", type=int, default=3, help="examples per class (default 3)")
    p.add_argument("--classes", help="classes to show, e.g. 0-5,9 (default: all)")
    p.add_argument(
        "--augment-out",
        type=Path,
        help="where to write the augmentation picture (default: OUT's name + -augment.png)",
    )
    p.add_argument("--no-augment", action="store_true", help="skip the augmentation picture")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws (default 0)")
    p.add_argument("--dpi", type=int, default=100, help="pixels per inch (default 100)")

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


def _config(args: argparse.Namespace):
    from precompute.config_files import load_config, parse_set

    overrides = parse_set(args.overrides)
    return load_config(args.config, preset=args.preset, shard_size=args.shard_size, overrides=overrides)


def _run_options(args: argparse.Namespace) -> dict:
    return {
        "jobs": args.jobs,
        "backend": args.backend,
        "scheduler": args.scheduler,
        "on_error": args.on_error,
        "progress": not args.quiet,
        "overwrite": args.overwrite,
        "stage": args.stage,
    }


def _report(summary) -> int:
    for failure in summary.failures[:10]:
        log.warning(f"  failed: {failure['message']}")
    if len(summary.failures) > 10:
        log.warning(f"  ... and {len(summary.failures) - 10} more in {summary.failures_path}")
    print(summary.line())
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader went away (`precompute inspect F | head`): not an error; silence the
        # flush at exit that would complain about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (MelShardsError, OSError) as err:
        return report_error(f"precompute {args.command}", err)
    except KeyboardInterrupt:
        print(
            f"precompute {args.command}: interrupted; finished shards are kept, run again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def demo_data_command(args: argparse.Namespace) -> int:
    from precompute.demo import synthesize

    log.info(f"synthesizing {args.recordings} train + {args.test_recordings} test recordings into {args.out}")
    result = synthesize(
        args.out,
        seed=args.seed,
        recordings=args.recordings,
        test_recordings=args.test_recordings,
        label_fraction=args.label_fraction,
        jobs=args.jobs or os.cpu_count() or 1,
        progress=not args.quiet,
    )
    print(
        f"wrote {result['train_recordings']} train recordings ({result['tp_rows']} TP rows "
        f"for {result['train_calls']} calls, "
        f"{result['fp_rows']} FP rows) and {result['test_recordings']} test recordings "
        f"({result['bytes'] / 1e6:.0f} MB) to {args.out} in {result['elapsed_s']:.1f} s"
    )
    return EXIT_OK


def _log_config(config) -> None:
    log.info(
        f"feature config: preset {config.preset}, {config.n_mels} mels {config.fmin:g}-{config.fmax:g} Hz, "
        f"{config.duration:g} s + {config.context:g} s context at {config.sample_rate} Hz "
        "(`precompute config` with the same options prints all of it)"
    )


def features_command(args: argparse.Namespace) -> int:
    from precompute.annotations import read_annotation_options
    from precompute.run import run_features

    config = _config(args)
    _log_config(config)
    options = read_annotation_options(args.config)
    summary = run_features(
        audio_dir=args.audio_dir,
        out=args.out,
        config=config,
        annotations=_annotations(args, options),
        classes=_classes(args, options, config=config),
        **_run_options(args),
    )
    return _report(summary)


def _annotations(args: argparse.Namespace, options: dict) -> list:
    """The annotation inputs the options name, in reading order: --tp, --fp, --raven, --clips, folders."""
    from precompute.annotations import Annotations, parse_columns

    columns = parse_columns(args.columns) if args.columns else options.get("columns", {})
    label = args.label_column or options.get("label_column")
    separator = args.label_separator or options.get("label_separator") or ";"
    if not (args.tp or args.raven or args.clips or args.class_folders):
        raise ConfigError("no annotations: give --tp CSV, --raven PATH, --clips CSV or --class-folders")
    csv_format = "events" if columns else "rfcx"
    inputs = [Annotations(csv_format, args.tp, columns=columns)] if args.tp else []
    inputs += [Annotations(csv_format, args.fp, kind=EVENT_FP, columns=columns)] if args.fp else []
    inputs += [Annotations("raven", args.raven, label_column=label)] if args.raven else []
    if args.clips:
        inputs.append(
            Annotations("clips", args.clips, columns=columns, label_column=label, separator=separator)
        )
    inputs += [Annotations("class_folders", args.audio_dir)] if args.class_folders else []
    return inputs


def _classes(args: argparse.Namespace, options: dict, *, config):
    """The class list's source: --classes (or the config's [annotations] classes), and n_classes
    when the config file, --set or the preset gives it; else the data."""
    from precompute.classes import ClassSpec, parse_class_option
    from precompute.config_files import parse_set, preset_values, read_toml

    spec = parse_class_option(args.classes) if args.classes else options.get("classes", ClassSpec())
    given = "n_classes" in parse_set(args.overrides) or "n_classes" in preset_values(config.preset)
    given = given or (args.config is not None and "n_classes" in read_toml(args.config))
    if given and spec.names is not None and len(spec.names) != config.n_classes:
        raise ConfigError(
            f"n_classes is {config.n_classes}, but the class list names {len(spec.names)} classes"
        )
    return ClassSpec(names=spec.names, count=config.n_classes if given else None, scheme=spec.scheme)


def windows_command(args: argparse.Namespace) -> int:
    from precompute.run import run_windows

    config = _config(args)
    _log_config(config)
    summary = run_windows(
        audio_dir=args.audio_dir,
        out=args.out,
        step=args.step,
        files=args.files,
        config=config,
        **_run_options(args),
    )
    return _report(summary)


def inspect_command(args: argparse.Namespace) -> int:
    from precompute.inspection import inspect_lines

    print("\n".join(inspect_lines(args.features, cache_dir=args.cache_dir)))
    return EXIT_OK


def preview_command(args: argparse.Namespace) -> int:
    # The pictures show what the loader feeds a model, so they live with the experiments (and
    # need the loader and matplotlib); this is the one command that reaches beyond precompute.
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("precompute preview draws with matplotlib: pip install 'melshards[plots]'")
    from experiments.pictures import preview

    started = time.perf_counter()
    log.info(f"drawing examples of {args.features}")
    written = preview(
        args.features,
        out=args.out,
        per_class=args.per_class,
        classes=args.classes,
        augment_out=False if args.no_augment else args.augment_out,
        seed=args.seed,
        dpi=args.dpi,
        cache_dir=args.cache_dir,
    )
    width, height = written["size"]
    line = (
        f"wrote {written['out']} ({width}x{height} px, {written['rows']} rows of up to "
        f"{args.per_class} examples)"
    )
    if "augment_out" in written:
        line += f" and {written['augment_out']} (augmentation)"
    print(f"{line} in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


def verify_command(args: argparse.Namespace) -> int:
    from melshards.index import read_index
    from melshards.verify import verify

    started = time.perf_counter()
    read_index(args.features)  # a missing or unreadable index is one error line
    problems = verify(args.features, progress=not args.quiet, cache_dir=args.cache_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            f"precompute verify: error: {args.features}: {len(problems)} problem(s); delete the "
            "shards named above and run the same precompute command again: it rebuilds only those",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    print(f"{args.features}: every shard matches the index ({time.perf_counter() - started:.1f} s)")
    return EXIT_OK


def config_command(args: argparse.Namespace) -> int:
    from precompute.config_files import config_toml, preset_names, preset_values

    if args.list:
        for name in preset_names():
            changed = preset_values(name)
            what = ", ".join(f"{k}={v}" for k, v in changed.items()) or "every parameter's default"
            print(f"{name:<10} {what}")
        return EXIT_OK
    print(config_toml(_config(args)), end="")
    return EXIT_OK


# subcommand -> the function that runs it; ``build_parser`` defines their options.
COMMANDS = {
    "demo-data": demo_data_command,
    "features": features_command,
    "windows": windows_command,
    "inspect": inspect_command,
    "preview": preview_command,
    "verify": verify_command,
    "config": config_command,
}
