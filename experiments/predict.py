"""Score unlabelled recordings with a trained model, in the RFCX submission layout.

    python -m experiments.predict --model runs/baseline/model.keras \\
        --features features/demo-test --out runs/baseline/submission.csv \\
        [--truth data/demo/test_ground_truth.csv --metrics runs/baseline/metrics.json]

From Python::

    from experiments.predict import predict
    result = predict("features/demo-test", model="runs/baseline/model.keras",
                     out="runs/baseline/submission.csv", truth="data/demo/test_ground_truth.csv")

``--features`` is a "windows" feature set (``precompute windows``: sliding windows over
whole recordings). Every window is scored; a recording's score for a species is the
maximum over its windows (a species is present if it calls in any window). The CSV has
the header ``recording_id`` and the class names the training features stored (their
index's ``class_names``, kept in the run's ``metrics.json``): ``s0,...,s23`` for RFCX's
numeric species ids, the names themselves for named classes. Classes made of species and
songtype (``s3_t1``, ``s3_t4``) are merged back to species (``s3``) by the maximum. Without
a ``metrics.json`` the columns are ``s0..s{n-1}``. One row per recording, sorted by id.

With ``--truth`` (a CSV of 0/1 with the submission's header) the recordings are scored with
LWLRAP; with ``--metrics`` too, ``test_lwlrap`` (and ``test_top1``) are added to that
``metrics.json``.

Beside the submission, ``events.csv`` (``--events``) holds the sound events found
(``recording_id,species_id,t_min,t_max,score``): the windows' scores stitched per recording on
its frame grid, overlapping windows averaged, then thresholded (``--threshold``; by default the
run's ``thresholds.json`` beside the model, else 0.5: ``experiments.thresholds_run``), median
filtered (``--median``), with short events dropped (``--min-duration``) and close ones merged
(``--min-gap``): ``experiments.sed_predict``. A frame model (``sed``) scores every step of each
window; a clip model's window score is spread over the window's crop, the baseline a frame
model has to beat. With ``--truth-events`` (every call of the recordings, as ``test_events.csv``)
the events are scored: ``test_segment_f1`` and ``test_event_f1`` (micro averages), added to
the ``--metrics`` file too. The events are also written as Raven Pro selection tables, one per
recording, and ``detections.csv``, into ``--detections`` (``detections/`` beside the submission;
``experiments.detection_tables``). A frame model's clip scores, what the submission holds, are the
maximum over its steps.

Prediction refuses features the model cannot have been trained for: another window shape
or class count than the model's input and output, or (when the run's ``metrics.json`` is
known: ``--metrics``, or the one next to the model) other feature parameters.

``predict``'s keywords and the flags (``dest="predict.FIELD"``) make one ``PredictOptions``;
``run_prediction`` runs it. The table itself (maximum per recording, its columns, the truth) is
``experiments.submission``'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, plural, report_error, setup_logging
from commandline.flags import build, groups
from experiments.detection_tables import check_detections_dir, write_detections
from experiments.errors import ExperimentError
from experiments.metrics import clip_scores
from experiments.models import load_model_file
from experiments.predict_options import PredictOptions, build_parser, parse_args
from experiments.run_files import check_not_directory, write_run_file
from experiments.sed_events import write_events_csv
from experiments.sed_predict import (
    event_labels,
    frame_step,
    grid_frames,
    recording_events,
    score_events,
    stitch_windows,
    window_steps,
)
from experiments.sequences import require_windows_set
from experiments.submission import (
    max_per_recording,
    merge_columns,
    read_truth,
    score_against_truth,
    submission_columns,
    write_submission,
)
from experiments.thresholds_run import predict_thresholds
from loader import ShardSequence
from melshards.errors import MelShardsError

# Feature parameters that change the arrays a model sees; a model trained on one value
# scores garbage on another, so prediction refuses a mismatch.
SHAPING_KEYS = (
    "sample_rate",
    "n_fft",
    "hop_length",
    "n_mels",
    "fmin",
    "fmax",
    "power",
    "db",
    "top_db",
    "duration",
    "normalize",
)
PROG = "experiments.predict"
# Named here too for predict's callers (the options and the command line are predict_options').
__all__ = ["PredictOptions", "build_parser", "main", "parse_args", "predict", "run_prediction"]


def load_model(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such model file (train one with python -m experiments.train)")
    return load_model_file(path)


def window_sequence(features: Any, model: Any, *, batch_size: int = 64, option: str = "features") -> Any:
    """Every window of ``features`` in order, cropped (centred) to the width ``model`` takes.

    A model trained on shorter crops (``train(crop_seconds=...)``) sees the centre of each
    window; one wider than the stored windows is refused by ``check_fit``. A labelled set is
    refused (``experiments.sequences.require_windows_set``, its message naming ``option``).
    """
    feature_set = require_windows_set(features, option=option)
    frames = model.input_shape[2]
    stored = feature_set.config.n_frames
    crop = {"crop_frames": int(frames)} if isinstance(frames, int) and frames <= stored else {}
    return ShardSequence(
        feature_set, split="all", shuffle=False, augment=False, batch_size=batch_size, dtype="float16", **crop
    )


def check_fit(model: Any, seq: Any, *, model_path: Any, features: Any) -> None:
    """Refuse features whose windows differ in shape from what the model was built for."""
    _, n_mels, frames, channels = model.input_shape
    config = seq.config
    got = (config.n_mels, seq.crop_frames, 1)
    if (n_mels, frames, channels) != got:
        raise ExperimentError(
            f"{features}: features give windows of {got[0]} mels x {got[1]} frames, but "
            f"{model_path} expects {n_mels} x {frames}"
        )


def check_feature_config(trained: dict[str, Any], config: Any, *, metrics_path: Any, features: Any) -> None:
    """Refuse features computed with other parameters than the training features."""
    now = config.to_dict()
    diff = [f"{k} {trained.get(k)!r} -> {now.get(k)!r}" for k in SHAPING_KEYS if trained.get(k) != now.get(k)]
    if diff:
        raise ExperimentError(
            f"{features}: feature config differs from the training features in {metrics_path}: "
            + ", ".join(diff)
        )


def window_recording_ids(seq: Any) -> np.ndarray:
    """Recording id of every example of ``seq`` in iteration order (shuffle off)."""
    return np.asarray(seq.recording_id, dtype=object)


def window_outputs(model: Any, seq: Any, *, progress: bool = False) -> np.ndarray:
    """The model's output for every window of ``seq`` in order: np.ndarray [shape=(n,
    n_classes)] of a clip model, [shape=(n, steps, n_classes)] of a frame model, float32."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(len(seq)), desc="predict", unit="batch", disable=not progress):
        batch = seq[i]
        x = batch[0] if isinstance(batch, tuple) else batch
        out.append(keras.ops.convert_to_numpy(model(x, training=False)))
    return np.concatenate(out) if out else np.zeros((0, *model.output_shape[1:]), np.float32)


def score_windows(model: Any, seq: Any, *, progress: bool = False) -> np.ndarray:
    """Clip scores of every window of ``seq`` in order: np.ndarray [shape=(n, n_classes)],
    float32 (a frame model's: the maximum over its steps, ``experiments.metrics.clip_scores``)."""
    return clip_scores(window_outputs(model, seq, progress=progress))


def window_events(
    outputs: np.ndarray,
    seq: Any,
    options: PredictOptions,
    *,
    run_metrics: dict | None,
    columns: Sequence[str],
    column_of: np.ndarray,
) -> np.ndarray:
    """The events of the windows' ``outputs`` (``experiments.sed_predict``): a frame model's
    steps, or a clip model's scores spread over each crop, stitched per recording, then events
    with ``options``' threshold, median filter, minimum duration and gap."""
    crop = seq.crop_frames
    step = None
    if outputs.ndim == 3:
        recorded = (run_metrics or {}).get("config", {}).get("train", {}).get("target_step")
        step = frame_step(outputs.shape[1], crop, recorded)
    steps, step = window_steps(outputs, crop, step)
    stitched = stitch_windows(
        steps,
        step,
        recording_ids=[str(r) for r in seq.recording_id],
        first_frames=grid_frames(seq.config, seq.start, crop),
        crop_frames=crop,
        seconds_per_frame=seq.config.seconds_per_frame,
    )
    threshold = options.threshold
    if len(threshold) not in (1, len(columns)):
        raise ExperimentError(
            f"threshold: {len(threshold)} values for {len(columns)} classes (give one, or one per class)"
        )
    return recording_events(
        stitched,
        column_of=column_of,
        labels=event_labels(columns),
        threshold=threshold,
        median=options.median,
        min_duration=options.min_duration,
        min_gap=options.min_gap,
    )


def read_run_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ExperimentError(f"{path}: no such metrics file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExperimentError(f"{path}: unreadable metrics file: {err}") from err
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: not a metrics file (expected a JSON object)")
    return data


def predict(
    features: str | os.PathLike,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    truth: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    events: str | os.PathLike | None = None,
    detections: str | os.PathLike | None = None,
    truth_events: str | os.PathLike | None = None,
    threshold: float | Sequence[float] | None = None,
    median: float = 0.0,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
    batch_size: int = 64,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score every window of ``features``, write the submission and the events CSV; returns
    counts and test metrics.

    The keywords are ``PredictOptions``' fields, which document them, with the command line's
    defaults (``python -m experiments.predict``).

    Returns ``recordings``, ``windows`` and ``events`` (counts); with ``truth`` also
    ``test_lwlrap``, ``test_top1`` and ``test_recordings``; with ``truth_events``,
    ``test_segment_f1``, ``test_event_f1`` and ``test_reference_events``. Raises
    ExperimentError for a missing or unreadable model, metrics or truth file, or features that
    do not fit the model; ConfigError for an option out of range (``batch_size`` not an
    integer >= 1, a threshold outside [0, 1]).
    """
    options = PredictOptions(**locals())
    return run_prediction(options)


def run_prediction(options: PredictOptions) -> dict[str, Any]:
    """``predict`` of ``options``: check the model against the features and the run, score every
    window, write the submission, score it against the truth (into the run's metrics)."""
    net, seq = _checked_inputs(options)
    run_metrics = _run_metrics(options, seq)
    columns, column_of = submission_columns(run_metrics, net.output_shape[-1])
    truth_ids, truth_table = (
        read_truth(options.truth, n_classes=len(columns), columns=columns) if options.truth else ([], None)
    )
    if not options.quiet:
        log.info(
            f"{options.features}: {plural(seq.n_examples, 'window')} of "
            f"{plural(len(np.unique(seq.recording_id)), 'recording')}, {plural(len(seq), 'batch')}"
        )
    options = _with_thresholds(options, run_metrics, n_outputs=net.output_shape[-1], column_of=column_of)
    outputs = window_outputs(net, seq, progress=not options.quiet)
    ids, table = max_per_recording(window_recording_ids(seq), clip_scores(outputs))
    table = merge_columns(table, column_of, len(columns))
    events = window_events(
        outputs, seq, options, run_metrics=run_metrics, columns=columns, column_of=column_of
    )
    write_submission(options.out, ids, table, columns)
    write_events_csv(options.events_path, events)
    if not options.quiet:
        log.info(f"{plural(len(events), 'event')} -> {options.events_path}")
    tables, found = write_detections(
        options.detections_path, events, class_names=columns, config=seq.config, recordings=ids
    )
    if not options.quiet:
        log.info(
            f"{plural(len(tables), 'Raven table')}, {plural(found, 'detection')} -> {options.detections_path}"
        )
    result: dict[str, Any] = {"recordings": len(ids), "windows": int(len(outputs)), "events": len(events)}
    if truth_table is not None:
        result.update(score_against_truth(ids, table, truth_ids, truth_table, truth_path=options.truth))
    if options.truth_events:
        result.update(score_events(events, options.truth_events, recordings=ids))
    if options.metrics and (truth_table is not None or options.truth_events):
        _add_test_metrics(options, run_metrics, result, fingerprint=seq.fingerprint)
    return result


def _with_thresholds(options: PredictOptions, run_metrics, *, n_outputs: int, column_of) -> PredictOptions:
    """``options`` with the thresholds the events use (``thresholds_run.predict_thresholds``), logged."""
    threshold, came_from = predict_thresholds(
        options.threshold,
        model=options.model,
        run_metrics=run_metrics,
        n_outputs=n_outputs,
        column_of=column_of,
        n_columns=int(column_of.max()) + 1,
    )
    if not options.quiet:
        log.info(f"thresholds: {came_from}")
    return dataclasses.replace(options, threshold=threshold)


def _checked_inputs(options: PredictOptions) -> tuple[Any, Any]:
    """The model and the sequence of every window of the features, cropped to what it takes
    (and ``out`` not a directory: refused before anything is scored)."""
    check_not_directory(Path(options.out))
    check_not_directory(options.events_path)
    check_detections_dir(options.detections_path)
    net = load_model(options.model)
    seq = window_sequence(options.features, net, batch_size=options.batch_size)
    check_fit(net, seq, model_path=options.model, features=options.features)
    return net, seq


def _run_metrics(options: PredictOptions, seq: Any) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (None without one), its training feature config checked
    against the features: whether or not ``metrics`` was given, when it sits next to the model."""
    path = options.metrics_path
    run_metrics = read_run_metrics(path) if options.metrics or path.is_file() else None
    trained = (run_metrics or {}).get("config", {}).get("features")
    if trained:
        check_feature_config(trained, seq.config, metrics_path=path, features=options.features)
    return run_metrics


def _add_test_metrics(options: PredictOptions, run_metrics: dict, result: dict, *, fingerprint: str) -> None:
    """Write the test scores into the run's ``metrics.json``, with the test set's identity."""
    run_metrics.update(result)
    run_metrics["test_features"] = {"path": str(Path(options.features).resolve()), "fingerprint": fingerprint}
    write_run_file(options.metrics_path, json.dumps(run_metrics, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    values = groups(parse_args(argv))["predict"]
    setup_logging(quiet=values["quiet"])
    try:
        options = build(PredictOptions, values)
        result = run_prediction(options)
    except (MelShardsError, OSError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    line = f"{plural(result['recordings'], 'recording')} ({plural(result['windows'], 'window')})"
    line += f" -> {options.out}"
    if "test_lwlrap" in result:
        line += f"; test_lwlrap {result['test_lwlrap']:.4f}, test_top1 {result['test_top1']:.4f}"
    if "test_event_f1" in result:
        line += "; " + ", ".join(f"{k} {_shown(result[k])}" for k in ("test_segment_f1", "test_event_f1"))
    if options.metrics and ("test_lwlrap" in result or "test_event_f1" in result):
        line += f" (added to {options.metrics})"
    print(line)
    return EXIT_OK


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
