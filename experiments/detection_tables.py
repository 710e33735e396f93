"""Detections as Raven Pro selection tables (one per recording) and one CSV of them all.

A reviewer opens a recording in Raven Pro with its table and fills the ``Review`` column; the
precompute side reads the tables back as annotations. A table is tab-separated, one header line
(``RAVEN_COLUMNS``), ``\\n`` line ends, named ``<recording_id>.Table.1.selections.txt``:

- ``Selection`` numbered from 1 in each table, rows sorted by onset, then class (the order of
  ``class_names``); ``View`` ``Spectrogram 1``; ``Channel`` 1;
- ``Begin Time (s)``, ``End Time (s)``: seconds from the recording's start, 6 decimals;
- ``Low Freq (Hz)``, ``High Freq (Hz)``: the band the features see (``feature_band``);
- ``Class``: the class name (``s7`` for RFCX species 7), ``Score`` 4 decimals, ``Review`` empty.

A recording id with folders (``site2/rec7``, as ``precompute windows`` names files in
sub-folders) is written in those folders (``site2/rec7.Table.1.selections.txt``); an id that
would leave the output folder (``..``, an absolute path) is refused. A recording scored without
a detection gets a table of the header alone, so a reviewer sees it was scored.

``read_selection_table`` and ``write_selection_table`` read and write any such table as its
columns and rows of text (to fill in reviews, or add rows to a table).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from experiments.errors import ExperimentError
from experiments.sed_events import event_columns
from melshards.config import FeatureConfig
from melshards.files import atomic_write_text

RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Class",
    "Score",
    "Review",
)
TABLE_SUFFIX = ".Table.1.selections.txt"
VIEW = "Spectrogram 1"
DETECTIONS_CSV = "detections.csv"
CSV_COLUMNS = ("recording_id", "class", "t_min", "t_max", "f_min", "f_max", "score")


def feature_band(config: FeatureConfig) -> tuple[float, float]:
    """``(fmin, fmax)`` of the features in Hz: the band a model sees (fmax None: sample_rate / 2)."""
    high = config.fmax if config.fmax is not None else config.sample_rate / 2
    return float(config.fmin), float(high)


def table_path(out_dir: str | os.PathLike, recording: str) -> Path:
    """The table file of ``recording`` in ``out_dir``: ``<recording>.Table.1.selections.txt``,
    in the recording's sub-folders when its id has some. ExperimentError for an id that cannot
    name a file inside ``out_dir``."""
    rid = str(recording)
    parts = PurePosixPath(rid).parts
    bad = (
        not rid
        or rid.startswith("/")
        or "\\" in rid
        or any(ord(ch) < 32 for ch in rid)
        or any(p in (".", "..") for p in parts)
        or rid.endswith("/")
        or "//" in rid
    )
    if bad:
        raise ExperimentError(
            f"recording id {rid!r} cannot name a selection table file (empty, absolute, '..', a "
            "backslash or a control character)"
        )
    *folders, name = parts
    return Path(out_dir).joinpath(*folders, name + TABLE_SUFFIX)


def _class_names_of(labels: np.ndarray, class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Each label's class name and its place in ``class_names``: an integer label ``k`` is the
    class ``s<k>`` (an RFCX species), a text label the class of that name."""
    order = {str(name): i for i, name in enumerate(class_names)}
    names, places = [], []
    for i, label in enumerate(labels.tolist()):
        is_int = isinstance(label, int) and not isinstance(label, bool)
        name = f"s{label}" if is_int else str(label)
        if name not in order:
            shown = ", ".join(order) if len(order) <= 6 else f"{', '.join(list(order)[:6])}, ..."
            what = f"label {label!r} (class {name})" if is_int else f"label {label!r}"
            raise ExperimentError(f"detections row {i}: {what} is not among the classes ({shown})")
        names.append(name)
        places.append(order[name])
    return names, places


def _hz(value: float) -> str:
    """A frequency as written: up to 6 decimals, no trailing zeros (``8000``, ``93.75``)."""
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def _score(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def detection_rows(
    detections: Any, *, class_names: Sequence[str], low_freq: float, high_freq: float
) -> dict[str, list[dict[str, str]]]:
    """The table rows of every recording of ``detections`` (an ``experiments.sed_events`` event
    table), by recording id: rows as ``RAVEN_COLUMNS`` -> text, sorted by onset then class,
    numbered from 1, ``Review`` empty."""
    cols = event_columns(detections, name="detections")
    names, places = _class_names_of(cols.label, class_names)
    recordings = [str(r) for r in cols.recording.tolist()]
    order = sorted(range(len(cols)), key=lambda i: (recordings[i], cols.onset[i], places[i], cols.offset[i]))
    tables: dict[str, list[dict[str, str]]] = {}
    for i in order:
        rows = tables.setdefault(recordings[i], [])
        values = (
            str(len(rows) + 1),
            VIEW,
            "1",
            f"{cols.onset[i]:.6f}",
            f"{cols.offset[i]:.6f}",
            _hz(low_freq),
            _hz(high_freq),
            names[i],
            _score(float(cols.score[i])),
            "",
        )
        rows.append(dict(zip(RAVEN_COLUMNS, values, strict=True)))
    return tables


def write_raven_tables(
    out_dir: str | os.PathLike,
    detections: Any,
    *,
    class_names: Sequence[str],
    low_freq: float,
    high_freq: float,
    recordings: Iterable[str] | None = None,
) -> list[Path]:
    """Write one Raven selection table per recording into ``out_dir`` (the module docstring);
    returns the files written, sorted by recording id.

    detections : an event table (``experiments.sed_events.EVENT_FIELDS``): recording, onset,
        offset, label (an integer species id ``k``, the class ``s<k>``, or a class name), score
    class_names : the classes, in the order rows of one onset are sorted in
    low_freq, high_freq : the band written as every row's Low and High Freq (``feature_band``)
    recordings : every recording scored (default: those with detections); one without
        detections gets a table of the header alone

    Raises ExperimentError for a label that is not among ``class_names`` or a recording id that
    cannot name a file in ``out_dir``, before anything is written.
    """
    tables = detection_rows(detections, class_names=class_names, low_freq=low_freq, high_freq=high_freq)
    ids = sorted(set(tables) | {str(r) for r in (() if recordings is None else recordings)})
    paths = [table_path(out_dir, rid) for rid in ids]
    for rid, path in zip(ids, paths, strict=True):
        write_selection_table(path, RAVEN_COLUMNS, tables.get(rid, []))
    return paths


def write_detections_csv(
    path: str | os.PathLike,
    detections: Any,
    *,
    class_names: Sequence[str],
    low_freq: float,
    high_freq: float,
) -> Path:
    """Write every detection as ``recording_id,class,t_min,t_max,f_min,f_max,score`` (the
    tables' rows and numbers, sorted by recording, onset, class), atomically; returns ``path``."""
    tables = detection_rows(detections, class_names=class_names, low_freq=low_freq, high_freq=high_freq)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rid in sorted(tables):
        for row in tables[rid]:
            writer.writerow(
                [
                    rid,
                    row["Class"],
                    row["Begin Time (s)"],
                    row["End Time (s)"],
                    row["Low Freq (Hz)"],
                    row["High Freq (Hz)"],
                    row["Score"],
                ]
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text.getvalue())
    return path


def check_detections_dir(path: str | os.PathLike) -> None:
    """ExperimentError when ``path`` exists and is not a folder (checked before scoring)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExperimentError(f"{path}: not a folder; the detections go into a folder of Raven tables")


def write_detections(
    out_dir: str | os.PathLike,
    detections: Any,
    *,
    class_names: Sequence[str],
    config: FeatureConfig,
    recordings: Iterable[str],
) -> tuple[list[Path], int]:
    """What ``experiments.predict`` writes of its events into ``out_dir``: a table per recording
    scored and ``detections.csv``, the band of ``config``; returns the tables and the count of
    detections."""
    low, high = feature_band(config)
    band = {"class_names": class_names, "low_freq": low, "high_freq": high}
    tables = write_raven_tables(out_dir, detections, recordings=recordings, **band)
    write_detections_csv(Path(out_dir) / DETECTIONS_CSV, detections, **band)
    return tables, len(detections)


# -- any selection table, as text ----------------------------------------------------------------


def read_selection_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows (column -> text) of a tab-separated selection table.

    Blank lines are skipped and a ``\\r`` before a line end is dropped. ExperimentError naming
    the file (and line) for a missing or non-UTF-8 file, no header, a header naming a column
    twice, or a row with another number of fields than the header.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such selection table") from None
    except UnicodeDecodeError:
        raise ExperimentError(f"{path}: not UTF-8 text; a selection table is tab-separated text") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if not lines[0].strip():
        raise ExperimentError(f"{path} line 1: no header; a selection table starts with its column names")
    columns = lines[0].split("\t")
    for k, name in enumerate(columns):
        if columns.index(name) != k:
            raise ExperimentError(f"{path} line 1: column {name!r} appears twice")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ExperimentError(
                f"{path} line {number}: {len(fields)} tab-separated fields, the header has {len(columns)}"
            )
        rows.append(dict(zip(columns, fields, strict=True)))
    return columns, rows


def write_selection_table(
    path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> Path:
    """Write ``rows`` (column -> value; a missing column or None is empty) under the header
    ``columns``, tab-separated, ``\\n`` line ends, atomically (folders made); returns ``path``.

    ExperimentError naming the file and row for a column not in ``columns``, or a value holding
    a tab or a line break.
    """
    path = Path(path)
    lines = ["\t".join(columns)]
    for i, row in enumerate(rows, start=1):
        unknown = [k for k in row if k not in columns]
        if unknown:
            raise ExperimentError(f"{path}: row {i} has column {unknown[0]!r}, which the header lacks")
        fields = ["" if row.get(c) is None else str(row.get(c)) for c in columns]
        for column, field in zip(columns, fields, strict=True):
            if any(ch in field for ch in "\t\r\n"):
                raise ExperimentError(f"{path}: row {i}, {column}: {field!r} holds a tab or a line break")
        lines.append("\t".join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
