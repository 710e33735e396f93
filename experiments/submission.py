"""The RFCX submission table: one row per recording, a column per species; and scoring it.

``experiments.predict`` turns window scores into it: ``max_per_recording`` (a recording's score
for a class is the maximum over its windows), ``submission_columns`` and ``merge_columns`` (the
class names the run's ``metrics.json`` records; ``<species>_t<songtype>`` classes merged back to
their species by the maximum), ``write_submission`` (``recording_id,<columns>``, atomically).
``write_submission`` writes through ``experiments.run_files`` (never through a link at ``out``).
``read_truth`` reads a 0/1 table of the same layout and ``score_against_truth`` scores against it
(LWLRAP, top-1).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.errors import ExperimentError
from experiments.metrics import lwlrap, top1
from experiments.run_files import write_run_file

# Where a species x songtype class name splits: ``s3_t1`` is species ``s3``, songtype 1.
SONGTYPE_MARK = "_t"


def max_per_recording(recording_ids: Sequence[str], scores: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Maximum score per recording over its windows.

    recording_ids : (n,) the recording of each window
    scores : np.ndarray [shape=(n, n_classes)]

    Returns the sorted unique ids and np.ndarray [shape=(n_recordings, n_classes)] of the
    per-class maximum over each recording's windows, in the same order.
    """
    ids = np.asarray(recording_ids, dtype=object)
    scores = np.asarray(scores)
    if len(ids) != len(scores):
        raise ExperimentError(f"{len(ids)} recording ids for {len(scores)} score rows")
    unique, inverse = np.unique(ids.astype(str), return_inverse=True)
    table = np.full((len(unique), scores.shape[1]), -np.inf, dtype=scores.dtype)
    np.maximum.at(table, inverse, scores)
    return [str(u) for u in unique], table


def submission_columns(run_metrics: dict[str, Any] | None, n_outputs: int) -> tuple[list[str], np.ndarray]:
    """The submission's class columns and, per model output, the column it goes to.

    The run's ``metrics.json`` names the outputs (``config.class_names``); with the
    ``species_songtype`` scheme, ``<species>_t<songtype>`` outputs share their species' column
    (merged by the maximum). Without names the columns are ``s0..s{n_outputs - 1}``.
    """
    config = (run_metrics or {}).get("config", {})
    names = config.get("class_names")
    if not (isinstance(names, list) and len(names) == n_outputs and all(isinstance(n, str) for n in names)):
        names = [f"s{j}" for j in range(n_outputs)]
    if config.get("class_scheme") == "species_songtype":
        names = [n.rsplit(SONGTYPE_MARK, 1)[0] if SONGTYPE_MARK in n else n for n in names]
    columns = list(dict.fromkeys(names))  # first appearance: the class list's order
    return columns, np.array([columns.index(n) for n in names], dtype=np.int64)


def merge_columns(table: np.ndarray, column_of: np.ndarray, n_columns: int) -> np.ndarray:
    """Per-output scores (n, n_outputs) -> per-column scores (n, n_columns), maximum of each group."""
    merged = np.full((table.shape[0], n_columns), -np.inf, dtype=table.dtype)
    for j, column in enumerate(column_of.tolist()):
        merged[:, column] = np.maximum(merged[:, column], table[:, j])
    return merged


def write_submission(
    path: str | Path, recording_ids: Sequence[str], table: np.ndarray, columns: Sequence[str] | None = None
) -> Path:
    """Write ``recording_id,<columns>`` (default ``s0,...``) with one row per recording, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns) if columns is not None else [f"s{j}" for j in range(table.shape[1])]
    lines = [",".join(["recording_id", *columns])]
    for rid, row in zip(recording_ids, table, strict=True):
        lines.append(",".join([rid] + [f"{v:.6f}" for v in row]))
    write_run_file(path, "\n".join(lines) + "\n")
    return path


def read_truth(
    path: str | Path, *, n_classes: int, columns: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Read a ``recording_id,<columns>`` 0/1 CSV (default columns ``s0,...``); returns the ids
    and an int8 array."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such truth file")
    columns = list(columns) if columns is not None else [f"s{j}" for j in range(n_classes)]
    n_classes = len(columns)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = ["recording_id", *columns]
        if header is None or [h.strip() for h in header] != expected:
            shown = f"{columns[0]},...,{columns[-1]}" if len(columns) > 2 else ",".join(columns)
            raise ExperimentError(
                f"{path}: header must be recording_id,{shown} for a "
                f"{n_classes}-class model, got {','.join(header or [])!r}"
            )
        ids, rows = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != n_classes + 1 or any(v.strip() not in ("0", "1") for v in row[1:]):
                raise ExperimentError(f"{path} line {line}: expected an id and {n_classes} values of 0/1")
            ids.append(row[0].strip())
            rows.append([int(v) for v in row[1:]])
    if len(set(ids)) != len(ids):
        raise ExperimentError(f"{path}: a recording id appears more than once")
    return ids, np.array(rows, dtype=np.int8).reshape(len(ids), n_classes)


def score_against_truth(
    ids: Sequence[str], table: np.ndarray, truth_ids: Sequence[str], truth: np.ndarray, *, truth_path: Any
) -> dict[str, float]:
    """LWLRAP and top-1 over the recordings of the truth file."""
    row = {rid: i for i, rid in enumerate(ids)}
    missing = [rid for rid in truth_ids if rid not in row]
    if missing:
        raise ExperimentError(
            f"{truth_path}: {len(missing)} recording(s) have no prediction, e.g. {missing[0]!r}"
        )
    scores = table[[row[rid] for rid in truth_ids]]
    return {
        "test_lwlrap": lwlrap(truth, scores),
        "test_top1": top1(truth, scores),
        "test_recordings": len(truth_ids),
    }
