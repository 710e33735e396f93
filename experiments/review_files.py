"""The files of a review round: the picked windows' tables written, and the record of what was
asked (``asked.csv``), read and appended.

``asked.csv`` holds one row per window asked about, ``round,strategy,recording_id,class,t_min,
t_max,score,u`` (times 6 decimals, score and u 4): a later pick never asks again about a
(recording, window start, class) it holds. The tables are Raven selection tables
(``experiments.detection_tables``); a table already in the folder (an earlier round written
there) keeps its rows, reviews included, and gets the new ones after them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.detection_tables import (
    RAVEN_COLUMNS,
    detection_rows,
    read_selection_table,
    table_path,
    write_selection_table,
)
from experiments.errors import ExperimentError
from experiments.sed_events import event_table
from melshards.files import atomic_write_text

ASKED_FILE = "asked.csv"
ASKED_COLUMNS = ("round", "strategy", "recording_id", "class", "t_min", "t_max", "score", "u")


def read_asked(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an ``asked.csv`` (none when there is no such file). ExperimentError naming the
    file for a missing column, and naming the line for a time that is not a number."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ASKED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ExperimentError(f"{path}: not an asked record: no column(s) {', '.join(missing)}")
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ExperimentError(f"{path}: not a readable CSV file ({err})") from None
    for line, row in rows:
        for column in ("t_min", "t_max"):
            try:
                value = float(row[column] or "")
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ExperimentError(f"{path} line {line}: {column} {row[column]!r} is not a number")
    return [row for _, row in rows]


def asked_keys(rows: Sequence[dict[str, str]], class_names: Sequence[str]) -> set[tuple[str, float, int]]:
    """``(recording, window start, class index)`` of every asked row whose class is one of
    ``class_names`` (the start rounded to 6 decimals, as written)."""
    index = {name: k for k, name in enumerate(class_names)}
    return {
        (row["recording_id"], round(float(row["t_min"]), 6), index[row["class"]])
        for row in rows
        if row["class"] in index
    }


def append_asked(
    path: str | os.PathLike,
    picks: Sequence[Any],
    *,
    round_name: str,
    strategy: str,
    class_names: Sequence[str],
) -> Path:
    """Add a row per pick to the asked record ``path`` (made, with its header, when absent),
    rewriting it atomically; returns ``path``."""
    path = Path(path)
    earlier = path.read_text(encoding="utf-8") if path.exists() else ""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if not earlier:
        writer.writerow(ASKED_COLUMNS)
    elif not earlier.endswith("\n"):
        text.write("\n")
    for pick in picks:
        writer.writerow(
            [
                round_name,
                strategy,
                pick.recording,
                class_names[pick.cls],
                f"{pick.start:.6f}",
                f"{pick.end:.6f}",
                f"{pick.score:.4f}",
                f"{pick.u:.4f}",
            ]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, earlier + text.getvalue())
    return path


def write_pick_tables(
    out_dir: str | os.PathLike,
    picks: Sequence[Any],
    *,
    class_names: Sequence[str],
    low_freq: float,
    high_freq: float,
) -> list[tuple[Path, str]]:
    """One Raven table per picked recording in ``out_dir``: each pick's window as Begin and End
    Time, its class and score, Review empty; after the rows of a table already there. Returns
    ``(table, recording)`` pairs, sorted by recording."""
    picked = event_table(
        np.array([p.recording for p in picks], dtype=object),
        [p.start for p in picks],
        [p.end for p in picks],
        np.array([class_names[p.cls] for p in picks], dtype=object),
        [p.score for p in picks],
    )
    tables = detection_rows(picked, class_names=class_names, low_freq=low_freq, high_freq=high_freq)
    written = []
    for recording in sorted(tables):
        path = table_path(out_dir, recording)
        rows = _earlier_rows(path)
        first = max((int(r["Selection"]) for r in rows if r["Selection"].isdigit()), default=0)
        for k, row in enumerate(tables[recording], start=1):
            row["Selection"] = str(first + k)
        write_selection_table(path, RAVEN_COLUMNS, rows + tables[recording])
        written.append((path, recording))
    return written


def _earlier_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a table already at ``path`` (none when absent); ExperimentError when its
    columns are not those of a review table."""
    if not path.exists():
        return []
    columns, rows = read_selection_table(path)
    if tuple(columns) != RAVEN_COLUMNS:
        raise ExperimentError(
            f"{path}: a table with other columns is in the way ({', '.join(columns)}); "
            "pick into another folder"
        )
    return rows
