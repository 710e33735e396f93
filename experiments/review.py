"""What to review next: windows of unannotated recordings a reviewer's answer teaches most.

    python -m experiments.review pick --model runs/base/model.keras --windows features/pool \\
        --n 24 --out reviews/round-1 [--per-recording 1] [--strategy uncertainty|top|random] \\
        [--seed 0] [--asked reviews/round-1/asked.csv] [--round round-1]

Every window of a windows feature set (``precompute windows``) is scored by the model (a frame
model's window score per class is the maximum over its steps), classes merged into the
submission's columns as ``experiments.predict`` does. Then, by ``strategy``:

``uncertainty``
    every (window, class) pair gets ``u = 1 - |score - t| / max(t, 1 - t)``, ``t`` the class's
    threshold (the run's ``thresholds.json`` beside the model, mapped onto the columns as
    ``experiments.predict`` maps it, else 0.5): 1 at the threshold, 0 at the score farthest
    from it. Pairs go by ``u`` descending; ties by the higher score, then
    recording, window start and class (its column).
``top``
    each class's highest-scoring windows, the classes in turn: every class's best window first
    (classes by their best score, highest first), then every class's second best, and so on;
    ties by recording, window start and class. A review of each class's top detections, as
    reviewers of a detector's output work; it asks where the calls most likely are, spread over
    the classes.
``random``
    windows in a random order drawn from ``seed``, each asked about its top-scoring class: the
    control a strategy has to beat.

Picks go greedily down that order until ``n``, under the diversity rule: at most
``per_recording`` picks per recording, never two picks whose windows overlap in time in one
recording, and never a (recording, window start, class) the asked record already holds. Each
window is its centred crop, the span the model scored.

The picks are written as Raven selection tables into ``out``, one per picked recording, the
``Review`` column empty (``experiments.review_files``), and appended to the asked record
(``--asked``, default ``asked.csv`` in ``out``): give every round the same record so that no
round asks again what an earlier one asked. ``pick_windows`` is the rule alone, on scores
given; ``pick_and_write`` scores and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, plural, report_error, setup_logging
from commandline.flags import add_flag, build, groups
from commandline.parser import CommandParser
from experiments.detection_tables import feature_band
from experiments.errors import ExperimentError
from experiments.predict import (
    check_feature_config,
    check_fit,
    load_model,
    read_run_metrics,
    score_windows,
    window_sequence,
)
from experiments.review_files import ASKED_FILE, append_asked, asked_keys, read_asked, write_pick_tables
from experiments.submission import merge_columns, submission_columns
from experiments.thresholds import DEFAULT_THRESHOLD, THRESHOLDS_FILE, read_thresholds
from experiments.thresholds_run import column_thresholds, output_names
from melshards.checks import check_int
from melshards.config import center_offset, crop_span
from melshards.errors import ConfigError, MelShardsError

PROG = "experiments.review"
STRATEGIES = ("uncertainty", "top", "random")
METRICS_FILE = "metrics.json"


@dataclasses.dataclass(frozen=True)
class Pick:
    """One window asked about: its index among the windows, recording, span (seconds), class
    (column index), the class's score and its uncertainty ``u``."""

    window: int
    recording: str
    start: float
    end: float
    cls: int
    score: float
    u: float


def uncertainty(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``1 - |score - t| / max(t, 1 - t)`` of every score, ``t`` its class's threshold.

    scores : np.ndarray [shape=(n_windows, n_classes)]
    thresholds : np.ndarray [shape=(n_classes,)] in [0, 1]

    Returns np.ndarray [shape=(n_windows, n_classes)], float64 in [0, 1].
    """
    t = np.asarray(thresholds, dtype=np.float64)
    return 1.0 - np.abs(np.asarray(scores, dtype=np.float64) - t) / np.maximum(t, 1.0 - t)


def _checked(scores: Any, recordings: Any, starts: Any, ends: Any, thresholds: Any) -> tuple:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ConfigError(f"scores must be (windows, classes) with classes >= 1, got shape {scores.shape}")
    n_windows, n_classes = scores.shape
    recordings = np.asarray([str(r) for r in recordings], dtype=object)
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    if not (len(recordings) == len(starts) == len(ends) == n_windows):
        raise ConfigError(
            f"{n_windows} windows of scores for {len(recordings)} recordings, {len(starts)} starts "
            f"and {len(ends)} ends"
        )
    if not (np.isfinite(starts).all() and np.isfinite(ends).all() and (ends > starts).all()):
        raise ConfigError("window starts and ends must be finite, each end after its start")
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_classes,))
    if not ((t >= 0) & (t <= 1)).all():
        raise ConfigError(f"thresholds must be in [0, 1], got {thresholds!r}")
    return scores, recordings, starts, ends, t


def pick_order(
    scores: np.ndarray, recordings: np.ndarray, starts: np.ndarray, u: np.ndarray, *, strategy: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (window, class) pairs in the order ``strategy`` asks about them (the module docstring)."""
    if strategy == "random":
        windows = np.random.default_rng(seed).permutation(len(scores))
        return windows, np.argmax(scores[windows], axis=1)
    n_windows, n_classes = scores.shape
    windows = np.repeat(np.arange(n_windows), n_classes)
    classes = np.tile(np.arange(n_classes), n_windows)
    _, rank = np.unique(recordings.astype(str), return_inverse=True)
    if strategy == "top":
        return _class_turns(scores, windows, classes, rank)
    order = np.lexsort((classes, starts[windows], rank[windows], -scores.ravel(), -u.ravel()))
    return windows[order], classes[order]


def _class_turns(
    scores: np.ndarray, windows: np.ndarray, classes: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` order: within each class by score (ties by recording rank, then window
    order), then the classes in turn, by their best score."""
    flat = scores.ravel()
    within = np.lexsort((windows, rank[windows], -flat, classes))  # class, then its best first
    place = np.empty(len(flat), dtype=np.int64)
    starts_of = np.searchsorted(classes[within], np.arange(scores.shape[1]))
    place[within] = np.arange(len(flat)) - starts_of[classes[within]]
    best = -scores.max(axis=0)  # the classes' turn: by their best score, highest first
    order = np.lexsort((classes, best[classes], place))
    return windows[order], classes[order]


def pick_windows(
    scores: Any,
    recordings: Sequence[str],
    starts: Any,
    ends: Any,
    *,
    thresholds: Any = 0.5,
    n: int,
    per_recording: int = 1,
    strategy: str = "uncertainty",
    seed: int = 0,
    asked: Collection[tuple[str, float, int]] = (),
) -> list[Pick]:
    """The windows to ask about next, in the order picked (the module docstring's rule).

    scores : np.ndarray [shape=(n_windows, n_classes)], each window's score per class
    recordings, starts, ends : each window's recording and span in seconds
    thresholds : a number or one per class, in [0, 1]
    n : picks wanted (>= 1); fewer when the rule leaves fewer
    per_recording : picks per recording at most (>= 1)
    asked : ``(recording, window start, class index)`` already asked, never asked again (the
        start compared to 6 decimals)
    """
    scores, recordings, starts, ends, t = _checked(scores, recordings, starts, ends, thresholds)
    n = check_int("n", n, low=1)
    per_recording = check_int("per_recording", per_recording, low=1)
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    u = uncertainty(scores, t)
    windows, classes = pick_order(scores, recordings, starts, u, strategy=strategy, seed=seed)
    skip = {(str(r), round(float(s), 6), int(c)) for r, s, c in asked}
    taken: dict[str, list[tuple[float, float]]] = {}
    full, n_recordings = 0, len(set(recordings.tolist()))
    picks: list[Pick] = []
    for w, c in zip(windows.tolist(), classes.tolist(), strict=True):
        rec, lo, hi = recordings[w], float(starts[w]), float(ends[w])
        spans = taken.setdefault(rec, [])
        if len(spans) >= per_recording or (rec, round(lo, 6), c) in skip:
            continue
        if any(a < hi and lo < b for a, b in spans):
            continue
        spans.append((lo, hi))
        picks.append(Pick(w, rec, lo, hi, c, float(scores[w, c]), float(u[w, c])))
        full += len(spans) == per_recording
        if len(picks) == n or full == n_recordings:
            break
    return picks


# -- scoring a windows set, writing the round ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PickOptions:
    """What ``pick`` scores, how it picks, and where the round goes (the flags' fields).

    model : a ``model.keras`` written by ``experiments.train`` (its ``thresholds.json`` and
        ``metrics.json`` beside it, when there)
    windows : a windows feature set of the recordings to pick from (``precompute windows``)
    out : the folder of the Raven tables
    n, per_recording, strategy, seed : the rule (``pick_windows``)
    asked : the asked record (default: ``asked.csv`` in ``out``)
    round_name : the round's name in the asked record (default: the name of ``out``)
    batch_size : windows per batch when scoring; quiet : no progress bar
    """

    model: str | os.PathLike
    windows: str | os.PathLike
    out: str | os.PathLike
    n: int
    per_recording: int = 1
    strategy: str = "uncertainty"
    seed: int = 0
    asked: str | os.PathLike | None = None
    round_name: str | None = None
    batch_size: int = 64
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("n", "per_recording", "batch_size"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, low=0))
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")

    @property
    def asked_path(self) -> Path:
        return Path(self.asked) if self.asked else Path(self.out) / ASKED_FILE

    @property
    def round_label(self) -> str:
        return self.round_name or Path(self.out).resolve().name


@dataclasses.dataclass(frozen=True)
class PickResult:
    """The picks in the order picked, and the tables written: ``(table, recording)`` pairs."""

    picks: list[Pick]
    tables: list[tuple[Path, str]]

    @property
    def count(self) -> int:
        return len(self.picks)


def window_spans(seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Seconds each window's centred crop (what the model scores) begins and ends, from 0."""
    config = seq.config
    begin, end = crop_span(config, seq.start, center_offset(config, seq.crop_frames), seq.crop_frames)
    return np.maximum(begin, 0.0), end


def scored_windows(options: PickOptions) -> tuple[list[str], np.ndarray, np.ndarray, Any]:
    """The class names, their thresholds (read before anything is scored), every window's score
    per class, and the sequence of the windows."""
    net = load_model(options.model)
    seq = window_sequence(options.windows, net, batch_size=options.batch_size, option="windows")
    check_fit(net, seq, model_path=options.model, features=options.windows)
    metrics_path = Path(options.model).with_name(METRICS_FILE)
    run_metrics = read_run_metrics(metrics_path) if metrics_path.is_file() else None
    trained = (run_metrics or {}).get("config", {}).get("features")
    if trained:
        check_feature_config(trained, seq.config, metrics_path=metrics_path, features=options.windows)
    n_outputs = net.output_shape[-1]
    columns, column_of = submission_columns(run_metrics, n_outputs)
    thresholds = np.full(len(columns), DEFAULT_THRESHOLD)
    path = Path(options.model).with_name(THRESHOLDS_FILE)
    if path.exists():
        names = output_names(run_metrics, n_outputs)
        values = column_thresholds(read_thresholds(path), names, column_of, len(columns), where=path)
        thresholds = np.asarray(values, dtype=np.float64)
    scores = merge_columns(score_windows(net, seq, progress=not options.quiet), column_of, len(columns))
    return columns, thresholds, scores, seq


def run_pick(options: PickOptions) -> PickResult:
    """Score the windows, pick, write the tables and add the picks to the asked record."""
    out, asked_path = Path(options.out), options.asked_path
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"{out}: not a folder; the picked windows' tables go into a folder")
    if asked_path.is_dir():
        raise ExperimentError(f"{asked_path}: a folder; the asked record is a CSV file")
    asked_rows = read_asked(asked_path)
    columns, thresholds, scores, seq = scored_windows(options)
    starts, ends = window_spans(seq)
    picks = pick_windows(
        scores,
        [str(r) for r in seq.recording_id],
        starts,
        ends,
        thresholds=thresholds,
        n=options.n,
        per_recording=options.per_recording,
        strategy=options.strategy,
        seed=options.seed,
        asked=asked_keys(asked_rows, columns),
    )
    low, high = feature_band(seq.config)
    tables = write_pick_tables(out, picks, class_names=columns, low_freq=low, high_freq=high)
    append_asked(
        asked_path, picks, round_name=options.round_label, strategy=options.strategy, class_names=columns
    )
    return PickResult(picks, tables)


def pick_and_write(
    model: str | os.PathLike,
    windows: str | os.PathLike,
    *,
    out: str | os.PathLike,
    n: int,
    per_recording: int = 1,
    strategy: str = "uncertainty",
    seed: int = 0,
    asked: str | os.PathLike | None = None,
    round_name: str | None = None,
    batch_size: int = 64,
    quiet: bool = True,
) -> PickResult:
    """``python -m experiments.review pick`` from Python: ``PickOptions``' fields as keywords."""
    return run_pick(PickOptions(**locals()))


def summary(result: PickResult, options: PickOptions) -> str:
    """The line ``pick`` prints: how many picks from how many recordings, their mean score."""
    picks = result.picks
    mean = f"{np.mean([p.score for p in picks]):.4f}" if picks else "n/a"
    short = f" (of {options.n} asked for)" if len(picks) < options.n else ""
    return (
        f"{plural(len(picks), 'pick')}{short} from {plural(len(result.tables), 'recording')}; "
        f"mean score {mean}; strategy {options.strategy} -> {options.out} (asked: {options.asked_path})"
    )


def build_parser() -> argparse.ArgumentParser:
    """``pick``'s flags by ``dest``: ``pick.FIELD``, the ``PickOptions`` field each one sets."""
    p = CommandParser(prog="python -m experiments.review", description="Pick what to review next.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pick = sub.add_parser(
        "pick",
        help="windows to review next, as Raven selection tables",
        description="Score every window of a windows feature set and write the N to review next "
        "as Raven selection tables with an empty Review column (docs/review.md).",
    )
    add_flag(pick, "--model", field="pick.model", required=True, help="a model.keras of experiments.train")
    add_flag(pick, "--windows", field="pick.windows", required=True, help="windows feature set to pick from")
    add_flag(pick, "--n", field="pick.n", type=int, required=True, help="windows to pick")
    add_flag(pick, "--out", field="pick.out", required=True, help="folder of the Raven tables to write")
    add_flag(
        pick, "--per-recording", field="pick.per_recording", type=int, default=1, help="picks per recording"
    )
    add_flag(pick, "--strategy", field="pick.strategy", choices=STRATEGIES, default="uncertainty")
    add_flag(pick, "--seed", field="pick.seed", type=int, default=0, help="the random strategy's order")
    add_flag(
        pick,
        "--asked",
        field="pick.asked",
        help="CSV of every window asked about, skipped and added to (default: asked.csv in --out)",
    )
    add_flag(
        pick,
        "--round",
        field="pick.round_name",
        metavar="NAME",
        help="round name in --asked (default: --out's name)",
    )
    add_flag(pick, "--batch-size", field="pick.batch_size", type=int, default=PickOptions.batch_size)
    add_flag(pick, "-q", "--quiet", field="pick.quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parsed = build_parser().parse_args(argv)
    values = groups(parsed)["pick"]
    setup_logging(quiet=values["quiet"])
    try:
        options = build(PickOptions, values)
        result = run_pick(options)
    except (MelShardsError, OSError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(result, options))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
