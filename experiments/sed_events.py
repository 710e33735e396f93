"""Sound events from frame scores, event tables, and their CSV files.

An event table is a numpy structured array of rows ``(recording, onset, offset, label, score)``
(``EVENT_FIELDS``): onset and offset in seconds, ``score`` the model's confidence (NaN for a
reference). ``events_from_scores`` turns frame scores ``(recordings, steps, classes)`` into one:

1. a frame is active for a class when its score is above the class's threshold;
2. an optional median filter (odd length, in steps) smooths each class's active frames: a frame
   stays active when most frames of the window around it are (the edges are reflected, as
   ``scipy.ndimage.median_filter`` does); this equals thresholding median-filtered scores;
3. each run of active frames is an event from its first frame's start to its last frame's end;
4. events of one recording and class whose gap is at most ``min_gap`` seconds are merged;
5. events shorter than ``min_duration`` seconds are dropped;
6. an event's score is the maximum (or mean) of the raw frame scores inside it, gaps included.

``write_events_csv`` and ``read_events_csv`` keep a table as ``recording_id,species_id,t_min,
t_max,score``; ``frames_of_events`` gives the frames an event table covers (the truth of
``experiments.sed_metrics.frame_average_precision``). ``event_columns`` reads any event rows
(a table, or a sequence of ``(recording, onset, offset, label[, score])``) into columns.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.errors import ExperimentError
from melshards.checks import check_int, check_number
from melshards.errors import ConfigError
from melshards.files import write_file_atomic

EVENT_FIELDS = ("recording", "onset", "offset", "label", "score")
CSV_COLUMNS = ("recording_id", "species_id", "t_min", "t_max", "score")
SCORE_KINDS = ("max", "mean")


@dataclass(frozen=True)
class EventColumns:
    """Event rows as columns, in their given order.

    recording, label : np.ndarray [shape=(n,)], object
    onset, offset, score : np.ndarray [shape=(n,)], float64 (score NaN where not given)
    """

    recording: np.ndarray
    onset: np.ndarray
    offset: np.ndarray
    label: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.onset)


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [v.item() if isinstance(v, np.generic) else v for v in values]
    return out


def _numbers(values: Sequence[Any], what: str, name: str, *, finite: bool = True) -> np.ndarray:
    try:
        times = np.asarray([math.nan if v is None and not finite else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((i for i, v in enumerate(values) if not _is_number(v)), 0)
        raise ExperimentError(f"{name} row {bad}: {what} {values[bad]!r} is not a number") from None
    bad = np.flatnonzero(~np.isfinite(times)) if finite else np.zeros(0, np.int64)
    if bad.size:
        raise ExperimentError(f"{name} row {bad[0]}: {what} {float(times[bad[0]])!r} is not finite")
    return times


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def event_columns(events: Any, *, name: str = "events") -> EventColumns:
    """Columns of ``events``: a structured array with ``EVENT_FIELDS`` (``score`` optional) or a
    sequence of rows ``(recording, onset, offset, label[, score, ...])``.

    Raises ExperimentError naming ``name`` and the row when a row is short, a time is not a
    finite number, an onset is negative or after its offset.
    """
    if isinstance(events, np.ndarray) and events.dtype.names:
        missing = [f for f in EVENT_FIELDS[:4] if f not in events.dtype.names]
        if missing:
            raise ExperimentError(
                f"{name}: no field(s) {', '.join(missing)} (fields are {events.dtype.names})"
            )
        columns = [events[f].tolist() for f in EVENT_FIELDS[:4]]
        scores = events["score"].tolist() if "score" in events.dtype.names else [math.nan] * len(events)
    else:
        rows = list(events)
        for i, row in enumerate(rows):
            if isinstance(row, str | bytes) or not hasattr(row, "__getitem__") or len(row) < 4:
                raise ExperimentError(f"{name} row {i}: needs (recording, onset, offset, class), got {row!r}")
        columns = [[row[k] for row in rows] for k in range(4)]
        scores = [row[4] if len(row) > 4 else math.nan for row in rows]
    onset, offset = _numbers(columns[1], "onset", name), _numbers(columns[2], "offset", name)
    score = _numbers(scores, "score", name, finite=False)
    for bad, text in (
        (onset < 0, "onset {on!r} is negative"),
        (onset > offset, "onset {on!r} > offset {off!r}"),
    ):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExperimentError(f"{name} row {i}: " + text.format(on=float(onset[i]), off=float(offset[i])))
    return EventColumns(_objects(columns[0]), onset, offset, _objects(columns[3]), score)


def event_table(
    recording: Sequence[Any], onset: Any, offset: Any, label: Sequence[Any], score: Any = None
) -> np.ndarray:
    """A structured event table (``EVENT_FIELDS``) from columns; ``score`` NaN when not given.

    The recording and label fields take the dtype numpy gives each column (text or integers).
    """
    n = len(onset)
    rec, lab = np.asarray(recording), np.asarray(label)
    if rec.shape != (n,) or lab.shape != (n,):
        raise ConfigError(
            f"an event table needs one recording and one label per onset ({n}), got {rec.shape} and {lab.shape}"
        )
    dtype = [
        ("recording", rec.dtype),
        ("onset", "f8"),
        ("offset", "f8"),
        ("label", lab.dtype),
        ("score", "f8"),
    ]
    table = np.empty(n, dtype=dtype)
    table["recording"], table["onset"], table["offset"], table["label"] = rec, onset, offset, lab
    table["score"] = math.nan if score is None else score
    return table


# -- frame scores -> events ----------------------------------------------------------------------


def _check_edges(edges: Any, n_rec: int, n_steps: int) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape not in ((n_steps + 1,), (n_rec, n_steps + 1)):
        raise ConfigError(
            f"edges must be frame edges of shape ({n_steps + 1},) or ({n_rec}, {n_steps + 1}) for "
            f"{n_steps} steps, got {edges.shape}"
        )
    edges = np.broadcast_to(edges, (n_rec, n_steps + 1))
    if not np.isfinite(edges).all() or not (np.diff(edges, axis=1) > 0).all():
        raise ConfigError("edges must be finite and strictly increasing along the steps")
    return edges


def _check_thresholds(threshold: Any, n_classes: int) -> np.ndarray:
    values = np.asarray(threshold, dtype=np.float64) if _is_number_like(threshold) else None
    if values is None or values.ndim > 1 or (values.ndim == 1 and values.shape[0] != n_classes):
        raise ConfigError(
            f"threshold must be a number or {n_classes} numbers (one per class), got {threshold!r}"
        )
    if not np.isfinite(values).all():
        raise ConfigError(f"threshold must be finite, got {threshold!r}")
    return np.broadcast_to(values, (n_classes,))


def _is_number_like(value: Any) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _labels_for(values: Sequence[Any] | None, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.arange(n)
    out = np.asarray(values)
    if out.ndim != 1 or len(out) != n:
        raise ConfigError(f"{what} must name {n} items, got {len(values)}")
    return out


def majority_filter(active: np.ndarray, length: int) -> np.ndarray:
    """Median filter of boolean rows along their last axis (odd ``length``, reflected edges).

    active : np.ndarray [shape=(rows, steps)], bool

    Returns np.ndarray [shape=(rows, steps)], bool: True where more than half of the
    ``length`` frames centred on a frame are active.
    """
    if length == 1:
        return active
    half = length // 2
    padded = np.pad(active, ((0, 0), (half, half)), mode="symmetric")
    counts = np.zeros((padded.shape[0], padded.shape[1] + 1), dtype=np.int64)
    np.cumsum(padded, axis=1, out=counts[:, 1:])
    return (counts[:, length:] - counts[:, :-length]) > half


def _runs(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, first step and end step (exclusive) of every run of True, row by row."""
    padded = np.zeros((active.shape[0], active.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = active
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _merge_runs(
    rows: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    onset: np.ndarray,
    offset: np.ndarray,
    min_gap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join runs of one row whose gap is at most ``min_gap`` seconds."""
    if len(rows) < 2:
        return rows, starts, ends
    join = (rows[1:] == rows[:-1]) & (onset[1:] - offset[:-1] <= min_gap)
    first = np.flatnonzero(np.concatenate([[True], ~join]))
    last = np.concatenate([first[1:] - 1, [len(rows) - 1]])
    return rows[first], starts[first], ends[last]


def _run_scores(flat: np.ndarray, lo: np.ndarray, hi: np.ndarray, kind: str) -> np.ndarray:
    """Maximum or mean of ``flat[lo:hi]`` for each run (every run non-empty)."""
    if len(lo) == 0:
        return np.zeros(0)
    bounds = np.column_stack([lo, hi]).ravel()
    padded = np.append(flat, 0.0)
    if kind == "max":
        return np.maximum.reduceat(padded, bounds)[::2]
    return np.add.reduceat(padded, bounds)[::2] / (hi - lo)


def events_from_scores(
    scores: np.ndarray,
    edges: np.ndarray,
    *,
    threshold: float | Sequence[float] = 0.5,
    median: int = 1,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
    score: str = "max",
    recordings: Sequence[Any] | None = None,
    classes: Sequence[Any] | None = None,
) -> np.ndarray:
    """Events of every recording and class from frame scores (the module docstring's steps).

    scores : np.ndarray [shape=(n_recordings, n_steps, n_classes)], float
    edges : np.ndarray [shape=(n_steps + 1,) or (n_recordings, n_steps + 1)], float seconds:
        frame ``k`` spans ``[edges[k], edges[k + 1])``
    threshold : a number or np.ndarray [shape=(n_classes,)]: active when ``score > threshold``
    median : odd int >= 1, the median filter's length in steps (1: none)
    min_duration, min_gap : float >= 0, seconds
    score : ``"max"`` or ``"mean"`` of the frame scores inside an event
    recordings, classes : the ids written into the table (default ``0..n-1``)

    Returns a structured array (``EVENT_FIELDS``), sorted by recording (in the order of
    ``scores``), onset, then class.
    """
    scores = np.asarray(scores)
    if scores.ndim != 3 or scores.shape[1] == 0:
        raise ConfigError(f"scores must be (recordings, steps, classes) with steps >= 1, got {scores.shape}")
    scores = scores.astype(np.float64, copy=False)
    if not np.isfinite(scores).all():
        raise ConfigError("scores must be finite")
    n_rec, n_steps, n_classes = scores.shape
    edges = _check_edges(edges, n_rec, n_steps)
    thresholds = _check_thresholds(threshold, n_classes)
    median = check_int("median", median, low=1)
    if median % 2 == 0:
        raise ConfigError(f"median must be an odd number of steps, got {median}")
    min_duration = check_number("min_duration", min_duration, low=0)
    min_gap = check_number("min_gap", min_gap, low=0)
    if score not in SCORE_KINDS:
        raise ConfigError(f"score must be one of {', '.join(SCORE_KINDS)}, got {score!r}")
    rec_ids = _labels_for(recordings, n_rec, "recordings")
    class_ids = _labels_for(classes, n_classes, "classes")

    # One row per (recording, class): row = recording * n_classes + class.
    frames = scores.transpose(0, 2, 1).reshape(n_rec * n_classes, n_steps)
    active = majority_filter(frames > np.tile(thresholds, n_rec)[:, None], median)
    rows, starts, ends = _runs(active)
    rec = rows // n_classes
    rows, starts, ends = _merge_runs(rows, starts, ends, edges[rec, starts], edges[rec, ends], min_gap)
    rec = rows // n_classes
    onset, offset = edges[rec, starts], edges[rec, ends]
    keep = offset - onset >= min_duration
    rows, starts, ends, onset, offset = rows[keep], starts[keep], ends[keep], onset[keep], offset[keep]
    values = _run_scores(frames.ravel(), rows * n_steps + starts, rows * n_steps + ends, score)
    rec, cls = rows // n_classes, rows % n_classes
    order = np.lexsort((cls, onset, rec))
    return event_table(rec_ids[rec[order]], onset[order], offset[order], class_ids[cls[order]], values[order])


def frames_of_events(
    events: Any, edges: np.ndarray, *, recordings: Sequence[Any], classes: Sequence[Any]
) -> np.ndarray:
    """The frames each event covers: a frame is active when it starts before the event's offset
    and ends after its onset.

    edges : np.ndarray [shape=(n_steps + 1,) or (n_recordings, n_steps + 1)], frame edges
    recordings, classes : the ids of the rows and columns; an event of another recording or
        class is an ExperimentError

    Returns np.ndarray [shape=(n_recordings, n_steps, n_classes)], bool.
    """
    cols = event_columns(events, name="events")
    n_rec, n_classes = len(recordings), len(classes)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim not in (1, 2) or edges.shape[-1] < 2:
        raise ConfigError(
            f"edges must be frame edges of shape (n_steps + 1,) or (n_recordings, n_steps + 1), got {edges.shape}"
        )
    n_steps = edges.shape[-1] - 1
    edges = _check_edges(edges, n_rec, n_steps)
    rec = _codes(cols.recording, recordings, "recording")
    lab = _codes(cols.label, classes, "class")
    marks = np.zeros((n_rec, n_steps + 1, n_classes), dtype=np.int64)
    for r in np.unique(rec):
        mine = rec == r
        lo = np.searchsorted(edges[r, 1:], cols.onset[mine], side="right")
        hi = np.maximum(np.searchsorted(edges[r, :-1], cols.offset[mine], side="left"), lo)
        np.add.at(marks[r], (lo, lab[mine]), 1)
        np.add.at(marks[r], (hi, lab[mine]), -1)
    return np.cumsum(marks[:, :-1], axis=1) > 0


def _codes(values: np.ndarray, ids: Sequence[Any], what: str) -> np.ndarray:
    code = {(v.item() if isinstance(v, np.generic) else v): i for i, v in enumerate(ids)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v not in code:
            raise ExperimentError(f"events row {i}: {what} {v!r} is not among the {what}s given")
        out[i] = code[v]
    return out


# -- CSV ----------------------------------------------------------------------------------------


def write_events_csv(path: str | os.PathLike, events: Any) -> None:
    """Write ``events`` as ``recording_id,species_id,t_min,t_max,score`` (times and scores
    exactly, as Python writes floats), atomically."""
    cols = event_columns(events, name=str(path))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec, on, off, lab, sc in zip(
        cols.recording,
        cols.onset.tolist(),
        cols.offset.tolist(),
        cols.label,
        cols.score.tolist(),
        strict=True,
    ):
        writer.writerow([rec, lab, repr(on), repr(off), "" if math.isnan(sc) else repr(sc)])
    write_file_atomic(Path(path), text.getvalue().encode("utf-8"))


def _float_field(row: dict[str, str], column: str, where: str) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ExperimentError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) and column != "score":
        raise ExperimentError(f"{where}: {column} {text!r} is not finite")
    return value


def read_events_csv(path: str | os.PathLike) -> np.ndarray:
    """An event table from a CSV with columns ``recording_id,species_id,t_min,t_max`` and
    optionally ``score`` (NaN where absent or empty); other columns are ignored, so an RFCX
    ``train_tp.csv`` reads as a reference.

    Recording ids stay text; species ids are integers when every one is. A missing file or
    column, a time that is not a number or ``t_min > t_max`` is an ExperimentError naming the
    file and line.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in CSV_COLUMNS[:4] if c not in header]
            if missing:
                raise ExperimentError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ExperimentError(f"{path}: not a readable CSV file ({err})") from None
    recs, labels, onset, offset, score = [], [], [], [], []
    for line, row in rows:
        where = f"{path} line {line}"
        t_min, t_max = _float_field(row, "t_min", where), _float_field(row, "t_max", where)
        if t_min < 0 or t_min > t_max:
            raise ExperimentError(f"{where}: t_min {t_min!r} must be >= 0 and <= t_max {t_max!r}")
        has_score = (row.get("score") or "").strip()
        score.append(_float_field(row, "score", where) if has_score else math.nan)
        recs.append((row["recording_id"] or "").strip())
        labels.append((row["species_id"] or "").strip())
        onset.append(t_min)
        offset.append(t_max)
    if labels and all(_is_int_text(v) for v in labels):
        return event_table(np.array(recs, dtype=str), onset, offset, np.array(labels, dtype=np.int64), score)
    return event_table(np.array(recs, dtype=str), onset, offset, np.array(labels, dtype=str), score)


def _is_int_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
