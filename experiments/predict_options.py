"""What ``experiments.predict`` does, as one frozen ``PredictOptions``, and its command line.

``predict()``'s keywords and the flags (each flag's ``dest`` is ``predict.FIELD``, the field it
sets: ``commandline.flags``) make the same options, checked when they are made.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commandline.flags import add_flag
from commandline.parser import CommandParser
from melshards.checks import check_int, check_number
from melshards.errors import ConfigError

METRICS_FILE = "metrics.json"
EVENTS_FILE = "events.csv"
DETECTIONS_DIR = "detections"


def _thresholds(value: Any) -> tuple[float, ...]:
    """``threshold`` as a tuple of numbers in [0, 1] (one for every class, or one per class);
    ConfigError naming the value otherwise."""
    values = (value,) if isinstance(value, int | float | str) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if not values:
        raise ConfigError(f"threshold must be a number or a list of numbers in [0, 1], got {value!r}")
    return tuple(check_number("threshold", v, low=0, high=1) for v in values)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """What to score with what, and where the results go (``predict``'s keywords, the flags).

    features : a windows feature set (``precompute windows``) computed like the model's
        training features
    model : a ``model.keras`` written by ``experiments.train``
    out : the submission CSV to write: ``recording_id`` and a column per class (the training
        features' class names; ``s0,...`` for RFCX ids), one row per recording, the maximum
        over its windows
    truth : a CSV of 0/1 with the submission's header: the recordings are scored against it
    metrics : the run's ``metrics.json`` (default: the one next to ``model``, if any): its
        feature config is checked against ``features``; with ``truth`` it gets ``test_lwlrap``,
        ``test_top1``, ``test_recordings`` and ``test_features``; with ``truth_events``,
        ``test_segment_f1`` and ``test_event_f1``
    events : the events CSV to write (default: ``events.csv`` beside ``out``):
        ``recording_id,species_id,t_min,t_max,score`` (``experiments.sed_predict``)
    detections : the folder of the events as Raven selection tables, one per recording, and
        ``detections.csv`` (default: ``detections/`` beside ``out``; ``experiments.detection_tables``)
    truth_events : a CSV of every call of the recordings (``recording_id,species_id,t_min,
        t_max``, as ``test_events.csv``): the events are scored against it
    threshold : a frame is active above it: one number in [0, 1] for every class, or one per
        submission column; None: the run's ``thresholds.json`` beside ``model`` (by class name),
        else 0.5 (``experiments.thresholds_run.predict_thresholds``)
    median : seconds the median filter over active frames spans (rounded to an odd number of
        frames; 0: none)
    min_duration, min_gap : seconds: shorter events are dropped, events this close merged
    batch_size : windows per batch (>= 1)
    quiet : no progress bar and no log line, like ``--quiet``
    """

    features: str | os.PathLike
    model: str | os.PathLike
    out: str | os.PathLike
    truth: str | os.PathLike | None = None
    metrics: str | os.PathLike | None = None
    events: str | os.PathLike | None = None
    detections: str | os.PathLike | None = None
    truth_events: str | os.PathLike | None = None
    threshold: float | tuple[float, ...] | None = None
    median: float = 0.0
    min_duration: float = 0.0
    min_gap: float = 0.0
    batch_size: int = 64
    quiet: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "batch_size", check_int("batch_size", self.batch_size, low=1))
        set_(self, "threshold", None if self.threshold is None else _thresholds(self.threshold))
        for name in ("median", "min_duration", "min_gap"):
            set_(self, name, check_number(name, getattr(self, name), low=0))

    @property
    def metrics_path(self) -> Path:
        """The run's metrics file: ``metrics``, or the one next to the model."""
        return Path(self.metrics) if self.metrics else Path(self.model).with_name(METRICS_FILE)

    @property
    def events_path(self) -> Path:
        """The events CSV: ``events``, or ``events.csv`` beside the submission."""
        return Path(self.events) if self.events else Path(self.out).with_name(EVENTS_FILE)

    @property
    def detections_path(self) -> Path:
        """The folder of Raven tables: ``detections``, or ``detections/`` beside the submission."""
        return Path(self.detections) if self.detections else Path(self.out).with_name(DETECTIONS_DIR)


def build_parser() -> argparse.ArgumentParser:
    """The flags by ``dest``: ``predict.FIELD``, the ``PredictOptions`` field each one sets."""
    p = CommandParser(
        prog="python -m experiments.predict",
        description="Score a windows feature set; write one row per recording (max over windows) "
        "and the sound events.",
    )
    add_flag(
        p, "--model", field="predict.model", required=True, help="a model.keras written by experiments.train"
    )
    add_flag(
        p,
        "--features",
        field="predict.features",
        required=True,
        help="windows feature set (precompute windows)",
    )
    add_flag(p, "--out", field="predict.out", required=True, help="submission CSV to write")
    add_flag(
        p,
        "--truth",
        field="predict.truth",
        help="CSV of 0/1 with the submission's header (recording_id,s0,...) to score against",
    )
    add_flag(
        p,
        "--metrics",
        field="predict.metrics",
        help="metrics.json of the run (default: the one next to --model, if any): its feature "
        "config is checked against --features; with --truth it gets test_lwlrap",
    )
    _add_event_flags(p)
    add_flag(p, "--batch-size", field="predict.batch_size", type=int, default=PredictOptions.batch_size)
    add_flag(
        p, "-q", "--quiet", field="predict.quiet", action="store_true", help="no progress bar or log lines"
    )
    return p


def _add_event_flags(p: argparse.ArgumentParser) -> None:
    """Where the events go, what they are scored against, and how they are made."""
    add_flag(
        p, "--events", field="predict.events", help="events CSV to write (default: events.csv beside --out)"
    )
    add_flag(
        p,
        "--detections",
        field="predict.detections",
        help="folder of Raven selection tables (one per recording) and detections.csv "
        "(default: detections/ beside --out)",
    )
    add_flag(
        p,
        "--truth-events",
        field="predict.truth_events",
        help="CSV of every call (recording_id,species_id,t_min,t_max) to score the events against: "
        "test_segment_f1, test_event_f1",
    )
    add_flag(
        p,
        "--threshold",
        field="predict.threshold",
        type=float,
        nargs="+",
        default=PredictOptions.threshold,
        help="a frame is active above it: one for every class, or one per class "
        "(default: the run's thresholds.json beside --model, else 0.5)",
    )
    for flag, what in (
        ("--median", "median filter over active frames, in seconds (0: none)"),
        ("--min-duration", "drop events shorter than this, in seconds"),
        ("--min-gap", "merge events of a class at most this many seconds apart"),
    ):
        field = flag[2:].replace("-", "_")
        add_flag(
            p, flag, field=f"predict.{field}", type=float, default=getattr(PredictOptions, field), help=what
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed flags, with what argparse cannot check itself checked (``p.error``)."""
    p = build_parser()
    args = p.parse_args(argv)
    batch_size = getattr(args, "predict.batch_size")
    if batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {batch_size}")
    for name in ("median", "min_duration", "min_gap"):
        if getattr(args, f"predict.{name}") < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, f'predict.{name}')}")
    bad = [v for v in getattr(args, "predict.threshold") or () if not 0 <= v <= 1]
    if bad:
        p.error(f"--threshold must be in [0, 1], got {bad[0]}")
    return args
