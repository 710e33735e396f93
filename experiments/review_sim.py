"""The demo's reviewer and starting point: what ``experiments.review_loop`` simulates.

``Reviewer`` answers review tables the way a person in Raven would, from the synthesizer's
truth (``train_events.csv``: every call of the train recordings, labelled or not). For a
selection asking for class ``c`` over ``[begin, end]``:

- ``yes`` when a call of ``c`` counts in the selection (the clip labels' ``min_overlap`` rule,
  ``melshards.labels.overlap_mask``); the reviewer also draws the box around the calls of
  ``c`` that count (their union, cut to the selection), as a Raven user adjusts a selection;
- otherwise the class name of the call that overlaps the selection most, when one counts
  (relabelled), the box drawn around that call;
- otherwise ``no``: the selection holds no call, a confirmed negative of ``c``.

A selection whose answer would only repeat what an earlier review said (the same call of the
same class boxed the same way, or the same confirmed negative) is left unreviewed, as a person
leaves a call already labelled: ``precompute --reviews`` skips it, where a repeat would be a
duplicate row.

``start_rows`` splits a sparse demo into the recordings labelled at the start (their TP and FP
rows) and the others, which nobody has looked at yet: the pool a review picks from.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.detection_tables import TABLE_SUFFIX, read_selection_table, write_selection_table
from experiments.errors import ExperimentError
from experiments.sed_events import read_events_csv
from melshards.files import atomic_write_text
from melshards.labels import overlap_mask

RFCX_HEADER = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
REVIEW_COLUMN = "Review"
CLASS_COLUMN = "Class"


@dataclass(frozen=True)
class Answer:
    """One review: ``value`` as written in the Review column (yes, no or a class name) and the
    box drawn (begin, end in seconds)."""

    value: str
    begin: float
    end: float


class Reviewer:
    """Answers selections from every call of the recordings (an RFCX-style CSV of
    ``recording_id,species_id,t_min,t_max``), with class names ``s<species_id>``."""

    def __init__(self, truth_csv: str | os.PathLike, *, min_overlap: float) -> None:
        self.calls = read_events_csv(truth_csv)
        self.min_overlap = float(min_overlap)
        self.by_recording: dict[str, np.ndarray] = {}
        for rec in np.unique(self.calls["recording"]):
            self.by_recording[str(rec)] = self.calls[self.calls["recording"] == rec]

    def answer(self, recording: str, class_name: str, begin: float, end: float) -> Answer:
        calls = self.by_recording.get(recording)
        if calls is None or not len(calls):
            return Answer("no", begin, end)
        counts = overlap_mask(calls["onset"], calls["offset"], begin, end, min_overlap=self.min_overlap)
        names = np.array([f"s{int(label)}" for label in calls["label"]])
        same = counts & (names == class_name)
        if same.any():
            return Answer("yes", *_box(calls[same], begin, end))
        if counts.any():
            overlap = np.minimum(calls["offset"], end) - np.maximum(calls["onset"], begin)
            best = int(np.argmax(np.where(counts, overlap, -np.inf)))
            return Answer(str(names[best]), *_box(calls[best : best + 1], begin, end))
        return Answer("no", begin, end)

    def review_table(self, path: Path, recording: str, seen: set[tuple[str, ...]]) -> dict[str, int]:
        """Fill the Review column of one selection table (and its boxes), in place; how many
        selections got each kind of answer (``yes``, ``no``, ``relabelled``, ``repeat``: left
        unreviewed, see the module docstring). ``seen``: the ``facts`` of the reviews so far,
        this table's added."""
        columns, rows = read_selection_table(path)
        for needed in (CLASS_COLUMN, REVIEW_COLUMN, "Begin Time (s)", "End Time (s)"):
            if needed not in columns:
                raise ExperimentError(f"{path}: no {needed!r} column")
        counts = {"yes": 0, "no": 0, "relabelled": 0, "repeat": 0}
        for row in rows:
            begin, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
            got = self.answer(recording, row[CLASS_COLUMN], begin, end)
            box = f"{got.begin:.6f}", f"{got.end:.6f}"
            said = facts(recording, row[CLASS_COLUMN], got.value, *box)
            if said & seen:
                counts["repeat"] += 1
                continue
            seen |= said
            row[REVIEW_COLUMN] = got.value
            row["Begin Time (s)"], row["End Time (s)"] = box
            counts[got.value if got.value in ("yes", "no") else "relabelled"] += 1
        write_selection_table(path, columns, rows)
        return counts


def facts(recording: str, class_name: str, value: str, begin: str, end: str) -> set[tuple[str, ...]]:
    """What one reviewed selection tells ``precompute --reviews``: ``(recording, class, kind,
    begin, end)`` for each annotation it becomes (``yes``: a TP, ``no``: an FP, a class name: a
    TP of it and an FP of the class asked). Nothing for an empty verdict."""
    if not value:
        return set()
    if value in ("yes", "no"):
        return {(recording, class_name, "tp" if value == "yes" else "fp", begin, end)}
    return {(recording, value, "tp", begin, end), (recording, class_name, "fp", begin, end)}


def reviewed_facts(folders: Sequence[Path]) -> set[tuple[str, ...]]:
    """The ``facts`` of every reviewed selection in the Raven tables under ``folders`` (a
    table's recording is its path below the folder, less the table suffix)."""
    seen: set[tuple[str, ...]] = set()
    for folder in folders:
        for path in sorted(folder.rglob(f"*{TABLE_SUFFIX}")):
            recording = path.relative_to(folder).as_posix().removesuffix(TABLE_SUFFIX)
            for row in read_selection_table(path)[1]:
                box = row["Begin Time (s)"], row["End Time (s)"]
                seen |= facts(recording, row[CLASS_COLUMN], row.get(REVIEW_COLUMN, "").strip(), *box)
    return seen


def _box(calls: np.ndarray, begin: float, end: float) -> tuple[float, float]:
    """The union of ``calls``' spans, cut to ``[begin, end]``."""
    return max(float(calls["onset"].min()), begin), min(float(calls["offset"].max()), end)


def start_rows(
    data: Path, recordings: Sequence[str], *, start: int
) -> tuple[list[str], list[str], dict[str, list[list[str]]]]:
    """The first ``start`` of the sorted ``recordings`` (labelled at the start), the others (the
    pool), and the TP and FP rows of the labelled ones: ``{"tp": rows, "fp": rows}`` from
    ``data/train_tp.csv`` and ``data/train_fp.csv`` in their file order."""
    ordered = sorted(recordings)
    if not 1 <= start < len(ordered):
        raise ExperimentError(
            f"start {start}: keep between 1 and {len(ordered) - 1} of {len(ordered)} recordings"
        )
    labelled = set(ordered[:start])
    rows = {}
    for kind in ("tp", "fp"):
        path = data / f"train_{kind}.csv"
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header is None or tuple(header[: len(RFCX_HEADER)]) != RFCX_HEADER:
                    raise ExperimentError(f"{path}: expected the columns {','.join(RFCX_HEADER)}")
                rows[kind] = [row for row in reader if row and row[0] in labelled]
        except FileNotFoundError:
            raise ExperimentError(f"{path}: no such file (make it with precompute demo-data)") from None
    return ordered[:start], ordered[start:], rows


def write_rows(path: Path, rows: Sequence[Sequence[str]]) -> None:
    """An RFCX manifest of ``rows``, written whole (atomically)."""
    lines = [",".join(RFCX_HEADER)] + [",".join(row[: len(RFCX_HEADER)]) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def add_counts(total: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    return {key: total.get(key, 0) + more.get(key, 0) for key in set(total) | set(more)}
