"""``python -m precompute`` / ``precompute``: the command line.

Exit status: 0 success; 1 an error stopped the run (one line on stderr); 2 bad usage;
3 the feature set was written but some rows or recordings failed (see ``failures.jsonl``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loader.errors import MelShardsError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML feature config (may name a preset)")
    p.add_argument("--preset", help="feature preset: default, seed or fast (overrides the file's)")
    p.add_argument("--shard-size", type=int, help="examples per shard (default 32)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=None, help="parallel shard jobs (default: all cores)")
    p.add_argument(
        "--backend",
        default="loky",
        choices=["loky", "threading", "dask", "ray"],
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precompute", description="Log-mel feature shards for audio event classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="synthesize the embedded RFCX-like demo dataset")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recordings", type=int, default=96, help="train recordings (default 96)")
    p.add_argument("--test-recordings", type=int, default=24, help="test recordings (default 24)")
    p.add_argument("--jobs", type=int, default=None, help="parallel jobs (default: all cores)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("features", help="labelled slices (TP and FP rows) -> shards")
    p.add_argument("--audio-dir", type=Path, required=True)
    p.add_argument("--tp", type=Path, required=True, help="train_tp.csv")
    p.add_argument("--fp", type=Path, help="train_fp.csv (confirmed false positives)")
    p.add_argument("--out", type=Path, required=True, help="feature set directory")
    _add_config_options(p)
    _add_run_options(p)

    p = sub.add_parser("windows", help="sliding windows over unlabelled recordings -> shards")
    p.add_argument("--audio-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--step", type=float, default=5.0, help="seconds between window starts (default 5)")
    _add_config_options(p)
    _add_run_options(p)

    p = sub.add_parser("inspect", help="summary of a feature set")
    p.add_argument("features", type=Path)

    p = sub.add_parser("preview", help="picture of example spectrograms per class")
    p.add_argument("features", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--per-class", type=int, default=3)

    p = sub.add_parser("verify", help="re-check every shard against the index")
    p.add_argument("features", type=Path)
    return parser


def _config(args: argparse.Namespace):
    from precompute.config import load_config

    return load_config(args.config, preset=args.preset, shard_size=args.shard_size)


def _run_options(args: argparse.Namespace) -> dict:
    return {
        "jobs": args.jobs,
        "backend": args.backend,
        "scheduler": args.scheduler,
        "on_error": args.on_error,
        "progress": not args.quiet,
    }


def _report(summary) -> int:
    for line in summary.lines():
        print(line)
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo-data":
            from precompute.demo import synthesize

            result = synthesize(
                args.out,
                seed=args.seed,
                recordings=args.recordings,
                test_recordings=args.test_recordings,
                jobs=args.jobs or os.cpu_count() or 1,
                progress=not args.quiet,
            )
            print(
                f"{args.out}: "
                + ", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, dict | list))
            )
            return EXIT_OK
        if args.command == "features":
            from precompute.pipeline import run_features

            summary = run_features(
                audio_dir=args.audio_dir,
                tp=args.tp,
                fp=args.fp,
                out=args.out,
                config=_config(args),
                **_run_options(args),
            )
            return _report(summary)
        if args.command == "windows":
            from precompute.pipeline import run_windows

            summary = run_windows(
                audio_dir=args.audio_dir,
                out=args.out,
                step=args.step,
                config=_config(args),
                **_run_options(args),
            )
            return _report(summary)
        if args.command == "inspect":
            from precompute.report import inspect_lines

            print("\n".join(inspect_lines(args.features)))
            return EXIT_OK
        if args.command == "preview":
            from precompute.report import preview

            preview(args.features, out=args.out, per_class=args.per_class)
            print(f"wrote {args.out}")
            return EXIT_OK
        if args.command == "verify":
            from precompute.report import verify

            problems = verify(args.features)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                return EXIT_ERROR
            print(f"{args.features}: every shard matches the index")
            return EXIT_OK
    except MelShardsError as err:
        print(f"precompute {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            f"precompute {args.command}: interrupted; finished shards are kept, run again to resume",
            file=sys.stderr,
        )
        return 130
    raise AssertionError(f"unhandled command {args.command}")
