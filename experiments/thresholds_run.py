"""Thresholds at the two ends of a run: fitted when training finishes, chosen when predicting.

``keep_thresholds`` is the last step of a training run before ``metrics.json``: the kept model's
validation clip scores (those the validation metrics use) with the validation split's clip
labels and known mask go to ``validation_scores.npz``, and the thresholds the run's
``threshold_rule`` fits on them to ``thresholds.json`` (``experiments.thresholds``); unknown
labels count as the run's loss counted them (``unknown``: as negatives, or not at all). A run on
frame targets keeps its validation steps instead, each step of each crop one row (its score,
frame target and known mask): a frame model's events are its steps above the threshold, and
a clip's maximum over steps, the clip score, would set it too low for them.

``predict_thresholds`` is what ``experiments.predict`` thresholds the events with: the given
``threshold``, else the run's ``thresholds.json`` beside the model, else 0.5 for every class;
mapped by class name onto the submission's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commandline.console import log, plural
from experiments.errors import ExperimentError
from experiments.thresholds import (
    DEFAULT_THRESHOLD,
    THRESHOLDS_FILE,
    VALIDATION_FILE,
    Thresholds,
    fit_thresholds,
    read_thresholds,
    summary_line,
    write_thresholds,
    write_validation,
)


def validation_known(val_seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """The clip labels and known mask of every example of ``val_seq`` (in order, centred crops,
    not augmented: a run's validation sequence), read from the stored events alone, without
    the mel arrays. A frame-target sequence's clip labels are the maximum over its steps, what
    ``FeatureSet.crop_labels`` gives. Returns (labels, known), np.ndarray [shape=(n,
    n_classes)], float32 each."""
    ids = [val_seq.batch_example_ids(i) for i in range(len(val_seq))]
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    start = np.full(ids.shape[0], val_seq.center_offset, dtype=np.int64)
    return val_seq.features.crop_labels(ids, start, val_seq.crop_frames)


def keep_thresholds(
    out: Path,
    *,
    truth: np.ndarray,
    scores: np.ndarray,
    val_seq: Any,
    class_names: Sequence[str],
    rule: str,
    steps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    unknown: str = "ignore",
    quiet: bool = False,
) -> Thresholds | None:
    """Write ``validation_scores.npz`` and ``thresholds.json`` of a finished run into ``out``.

    truth, scores : the kept model's validation clip truth and scores (``score_sequence``),
        np.ndarray [shape=(n, n_classes)]
    steps : a frame-target run's validation steps, ``(scores, truth, known)`` one row per step
        (``experiments.sequences.step_rows``): the rows kept and fitted on instead
    unknown : the run's ``unknown`` option: ``negative`` fits with the unknown labels as
        negatives, as the run's loss took them; ``ignore`` on the known labels alone
    Without validation examples neither file is left in ``out`` and None is returned. Logs one
    line (``experiments.thresholds.summary_line``) unless ``quiet``.
    """
    if steps is not None:
        (scores, truth, known), rows = steps, "step"
    if len(scores) == 0:
        for name in (THRESHOLDS_FILE, VALIDATION_FILE):
            (out / name).unlink(missing_ok=True)
        if not quiet:
            log.info(f"thresholds: no validation examples, so no {THRESHOLDS_FILE} (predict uses 0.5)")
        return None
    if steps is None:
        known, rows = validation_known(val_seq)[1], "example"
    write_validation(out / VALIDATION_FILE, scores, truth, known, class_names, rows=rows, unknown=unknown)
    fit_on = np.ones_like(known) if unknown == "negative" else known
    thresholds = fit_thresholds(scores, truth, fit_on, rule=rule, class_names=class_names)
    write_thresholds(out / THRESHOLDS_FILE, thresholds)
    if not quiet:
        fitted_on = plural(len(scores), f"validation {rows}")
        log.info(summary_line(thresholds, rows=fitted_on, path=out / THRESHOLDS_FILE))
    return thresholds


def output_names(run_metrics: dict[str, Any] | None, n_outputs: int) -> list[str]:
    """The class name of each model output: the run's ``config.class_names``, else ``s0..``
    (as ``experiments.submission.submission_columns`` names them)."""
    names = (run_metrics or {}).get("config", {}).get("class_names")
    if isinstance(names, list) and len(names) == n_outputs and all(isinstance(n, str) for n in names):
        return names
    return [f"s{j}" for j in range(n_outputs)]


def column_thresholds(
    thresholds: Thresholds, names: Sequence[str], column_of: np.ndarray, n_columns: int, *, where: Any
) -> tuple[float, ...]:
    """The threshold of each submission column: each output's by its class name; a column that
    merges outputs (species of species x songtype classes) takes the lowest of theirs, so that
    an output above its own threshold still makes its column active. ExperimentError naming
    ``where`` when the classes are not the model's."""
    if len(thresholds.class_names) != len(names):
        raise ExperimentError(
            f"{where}: {len(thresholds.class_names)} classes, but the model has {len(names)} outputs"
        )
    value_of = dict(zip(thresholds.class_names, thresholds.values, strict=True))
    missing = [n for n in names if n not in value_of]
    if missing:
        raise ExperimentError(f"{where}: no threshold for the model's class {missing[0]!r}")
    columns = np.full(n_columns, np.inf)
    for name, column in zip(names, column_of.tolist(), strict=True):
        columns[column] = min(columns[column], value_of[name])
    return tuple(float(v) for v in columns)


def predict_thresholds(
    given: tuple[float, ...] | None,
    *,
    model: Any,
    run_metrics: dict[str, Any] | None,
    n_outputs: int,
    column_of: np.ndarray,
    n_columns: int,
) -> tuple[tuple[float, ...], str]:
    """The thresholds predict's events use and where they came from (for its log line):
    ``given`` (``--threshold``) when not None, else ``thresholds.json`` beside ``model`` by
    class name (``column_thresholds``), else 0.5 for every column."""
    if given is not None:
        return given, f"{', '.join(f'{v:g}' for v in given)} (given)"
    path = Path(model).with_name(THRESHOLDS_FILE)
    if not path.exists():
        return (DEFAULT_THRESHOLD,), f"{DEFAULT_THRESHOLD} (no {THRESHOLDS_FILE} beside the model)"
    thresholds = read_thresholds(path)
    names = output_names(run_metrics, n_outputs)
    return column_thresholds(
        thresholds, names, column_of, n_columns, where=path
    ), f"{path} ({thresholds.rule})"
