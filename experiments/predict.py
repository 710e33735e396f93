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

Prediction refuses features the model cannot have been trained for: another window shape
or class count than the model's input and output, or (when the run's ``metrics.json`` is
known: ``--metrics``, or the one next to the model) other feature parameters.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from experiments.errors import ExperimentError
from experiments.metrics import lwlrap, top1
from loader import ShardSequence
from loader.reader import FeatureSet
from melshards.errors import ConfigError, MelShardsError
from melshards.files import atomic_write_text
from melshards.names import SET_LABELLED

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
# Where a species x songtype class name splits: ``s3_t1`` is species ``s3``, songtype 1.
SONGTYPE_MARK = "_t"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.predict",
        description="Score a windows feature set; write one row per recording (max over windows).",
    )
    p.add_argument("--model", required=True, help="a model.keras written by experiments.train")
    p.add_argument("--features", required=True, help="windows feature set (precompute windows)")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument(
        "--truth", help="CSV of 0/1 with the submission's header (recording_id,s0,...) to score against"
    )
    p.add_argument(
        "--metrics",
        help="metrics.json of the run (default: the one next to --model, if any): its feature "
        "config is checked against --features; with --truth it gets test_lwlrap",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def load_model(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such model file (train one with python -m experiments.train)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad archive
        raise ExperimentError(f"{path}: cannot load model: {type(err).__name__}: {err}") from err


def window_sequence(features: Any, model: Any, *, batch_size: int = 64) -> Any:
    """Every window of ``features`` in order, cropped (centred) to the width ``model`` takes.

    A model trained on shorter crops (``train(crop_seconds=...)``) sees the centre of each
    window; one wider than the stored windows is refused by ``check_fit``.
    """
    feature_set = features if isinstance(features, FeatureSet) else FeatureSet(features)
    frames = model.input_shape[2]
    stored = feature_set.config.n_frames
    crop = {"crop_frames": int(frames)} if isinstance(frames, int) and frames <= stored else {}
    return ShardSequence(
        feature_set, split="all", shuffle=False, augment=False, batch_size=batch_size, dtype="float16", **crop
    )


def check_fit(model: Any, seq: Any, *, model_path: Any, features: Any) -> None:
    """Refuse features whose shape or classes differ from what the model was built for."""
    _, n_mels, frames, channels = model.input_shape
    n_classes = model.output_shape[-1]
    config = seq.config
    got = (config.n_mels, seq.crop_frames, 1)
    if (n_mels, frames, channels) != got:
        raise ExperimentError(
            f"{features}: features give windows of {got[0]} mels x {got[1]} frames, but "
            f"{model_path} expects {n_mels} x {frames}"
        )
    if seq.features.kind == SET_LABELLED and len(seq.classes) != n_classes:
        raise ExperimentError(
            f"{features}: features have {len(seq.classes)} classes, but {model_path} outputs {n_classes}"
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


def score_windows(model: Any, seq: Any, *, progress: bool = False) -> np.ndarray:
    """Scores of every window of ``seq`` in order: np.ndarray [shape=(n, n_classes)], float32."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(len(seq)), desc="predict", unit="batch", disable=not progress):
        batch = seq[i]
        x = batch[0] if isinstance(batch, tuple) else batch
        out.append(keras.ops.convert_to_numpy(model(x, training=False)))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


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
    atomic_write_text(path, "\n".join(lines) + "\n")
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
    batch_size: int = 64,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score every window of ``features``, write the submission CSV; returns counts and test metrics.

    The defaults are the command line's (``python -m experiments.predict``).

    Parameters
    ----------
    features : str or os.PathLike
        A windows feature set (``precompute windows``) computed like the model's training
        features.
    model : str or os.PathLike
        A ``model.keras`` written by ``experiments.train``.
    out : str or os.PathLike
        Submission CSV to write: ``recording_id`` and a column per class (the training
        features' class names; ``s0,...`` for RFCX ids), one row per recording, the maximum
        over its windows.
    truth : str or os.PathLike, optional
        CSV of 0/1 with the submission's header: the recordings are scored against it.
    metrics : str or os.PathLike, optional
        The run's ``metrics.json`` (default: the one next to ``model``, if any): its feature
        config is checked against ``features``; with ``truth`` it gets ``test_lwlrap``,
        ``test_top1``, ``test_recordings`` and ``test_features``.
    batch_size : int >= 1
        Windows per batch.
    quiet : bool
        No progress bar and no log line, like ``--quiet``.

    Returns
    -------
    dict
        ``recordings`` and ``windows`` (counts); with ``truth`` also ``test_lwlrap``,
        ``test_top1`` and ``test_recordings``.

    Raises
    ------
    ExperimentError
        A missing or unreadable model, metrics or truth file, or features that do not fit
        the model.
    ConfigError
        ``batch_size`` is not an integer >= 1.
    """
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    net = load_model(model)
    seq = window_sequence(features, net, batch_size=int(batch_size))
    check_fit(net, seq, model_path=model, features=features)
    # The run's metrics.json records the training feature config: check it whether or not
    # metrics was given, when it sits next to the model.
    metrics_path = Path(metrics) if metrics else Path(model).with_name("metrics.json")
    run_metrics = read_run_metrics(metrics_path) if metrics or metrics_path.is_file() else None
    trained = (run_metrics or {}).get("config", {}).get("features")
    if trained:
        check_feature_config(trained, seq.config, metrics_path=metrics_path, features=features)
    columns, column_of = submission_columns(run_metrics, net.output_shape[-1])
    truth_ids, truth_table = (
        read_truth(truth, n_classes=len(columns), columns=columns) if truth else ([], None)
    )

    if not quiet:
        log.info(
            f"{features}: {seq.n_examples} windows of {len(np.unique(seq.recording_id))} recordings, "
            f"{len(seq)} batches"
        )
    scores = score_windows(net, seq, progress=not quiet)
    ids, table = max_per_recording(window_recording_ids(seq), scores)
    table = merge_columns(table, column_of, len(columns))
    write_submission(out, ids, table, columns)
    result: dict[str, Any] = {"recordings": len(ids), "windows": int(len(scores))}
    if truth_table is not None:
        result.update(score_against_truth(ids, table, truth_ids, truth_table, truth_path=truth))
        if metrics:
            run_metrics.update(result)
            run_metrics["test_features"] = {
                "path": str(Path(features).resolve()),
                "fingerprint": seq.fingerprint,
            }
            atomic_write_text(metrics_path, json.dumps(run_metrics, indent=1) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(quiet=args.quiet)
    try:
        result = predict(
            args.features,
            model=args.model,
            out=args.out,
            truth=args.truth,
            metrics=args.metrics,
            batch_size=args.batch_size,
            quiet=args.quiet,
        )
    except (MelShardsError, OSError) as err:
        return report_error("experiments.predict", err)
    except KeyboardInterrupt:
        print("experiments.predict: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    line = f"{result['recordings']} recordings ({result['windows']} windows) -> {args.out}"
    if "test_lwlrap" in result:
        line += f"; test_lwlrap {result['test_lwlrap']:.4f}, test_top1 {result['test_top1']:.4f}"
        if args.metrics:
            line += f" (added to {args.metrics})"
    print(line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
