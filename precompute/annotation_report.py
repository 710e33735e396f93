"""What a labelled run reports and records of its annotations.

The log lines (rows read, rows rejected, classes, columns no field uses), the entry the index's
``source`` keeps of them (inputs, classes, ignored columns, which ``precompute inspect``
shows), and, when every row was rejected, the file that lists why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from commandline.console import log
from melshards.files import atomic_write_text
from melshards.names import EVENT_FP, EVENT_TP, FAILURES_FILE, INDEX_FILE
from precompute.inputs.annotations import Annotations
from precompute.inputs.classes import ClassSpec
from precompute.lock import output_lock
from precompute.plan import Planned

# Where a fully rejected run lists its rows when the output already holds a finished set.
REJECTED_FILE = "rejected.jsonl"


def annotation_source(inputs: Sequence[Annotations], classes: ClassSpec, *, ignored: dict) -> dict:
    """What the index's ``source`` records of the annotations: inputs, classes, ignored columns."""
    source = {
        "annotations": [item.describe() for item in inputs],
        "classes": classes.describe(),
        "class_scheme": classes.scheme,
    }
    if ignored:
        source["ignored_columns"] = ignored
    return source


def write_rejected(out: Path, failures: list) -> Path:
    """Write the rows of a run whose every row was rejected; returns the file (nothing else is written).

    ``failures.jsonl``, or ``rejected.jsonl`` where ``out`` holds a finished feature set: its
    own ``failures.jsonl`` stays as its index counts it.
    """
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        path = out / (REJECTED_FILE if (out / INDEX_FILE).exists() else FAILURES_FILE)
        atomic_write_text(path, "".join(json.dumps(f.to_record()) + "\n" for f in failures))
    return path


def log_annotations(planned: Planned, inputs: Sequence[Annotations], classes: ClassSpec) -> None:
    """One line for the rows and classes, and one per set of columns the inputs do not use."""
    kinds = [job.rows.data["kind"] for job in planned.jobs]
    n_tp = sum(int((k == EVENT_TP).sum()) for k in kinds)
    n_fp = sum(k.size for k in kinds) - n_tp
    tp = ", ".join(str(item.path) for item in inputs if item.kind == EVENT_TP)
    fp = ", ".join(str(item.path) for item in inputs if item.kind == EVENT_FP or item.format == "reviews")
    names = planned.class_names
    shown = ", ".join(names[:6]) + (f", ... {names[-1]}" if len(names) > 6 else "")
    log.info(
        f"annotations: {n_tp} TP rows from {tp}"
        + (f", {n_fp} FP rows from {fp}" if fp else "")
        + f"; {len(planned.failures)} rejected; {len(names)} classes ({classes.describe()}): {shown}"
    )
    by_columns: dict[tuple[str, ...], list[str]] = {}
    for table, columns in planned.ignored.items():
        by_columns.setdefault(tuple(columns), []).append(table)
    for columns, tables in by_columns.items():
        more = f" and {len(tables) - 1} more table(s)" if len(tables) > 2 else ""
        more = f" and {tables[1]}" if len(tables) == 2 else more
        log.info(f"ignoring column(s) {', '.join(columns)} of {tables[0]}{more} (not used by precompute)")
