"""Pseudo-label rounds: train, predict the train recordings, retrain with soft labels, repeat.

    python -m experiments.pseudo --features features/sparse --windows features/sparse-windows \\
        --rounds 2 --seeds 0 1 2 --out runs/pseudo --test features/demo-test \\
        --truth data/demo/test_ground_truth.csv

Where most calls in a recording were never annotated (as in RFCX), the labels of a training
example say nothing about most species: they are unknown. Round 0 trains on the labelled
TP/FP rows alone. Each later round scores a windows feature set over the same train
recordings (``precompute windows``, computed once and read by every round) with the model of
the round before, turns the scores into one soft label per example and class
(``soft_labels``: the highest score among the windows that cover the example's centred crop),
and trains a fresh model from the same shards, where every unknown label is replaced by its
soft label (``ShardSequence(soft_labels=...)``), weighted as unknown labels are
(``unknown_weight``); known labels (a TP, a confirmed FP) stay hard.

Each round and seed trains into ``OUT/round-<r>/seed-<s>/`` (with ``soft_labels.npy`` from
round 1 on); finished runs are skipped, so the rounds resume. The comparison (mean and spread
over seeds of every metric, per round) is written as in ``experiments.sweep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from commandline.flags import add_flag, build, groups
from experiments import sweep
from experiments.errors import ExperimentError
from melshards.config import FeatureConfig, center_offset, crop_span
from melshards.errors import ConfigError, MelShardsError
from melshards.files import atomic_write_text

PROG = "python -m experiments.pseudo"
SOFT_FILE = "soft_labels.npy"
WINDOW_FILE = "window_labels.npy"
# What a round trains on besides the labelled examples' annotations: soft labels for the
# windows (as extra examples), for the labelled examples' unknown labels, both, or none (the
# control: with warm_start, the same extra training without soft labels).
TRAIN_ON = ("windows", "examples", "both", "none")
# Whose scores a round learns from: the same seed's model of the round before, or the mean of
# every seed's model of the round before.
TEACHERS = ("own", "ensemble")
SOFT_INFO = "soft_labels.json"
MIN_COVER = 0.5
DEFAULT_ROUNDS = 2


def soft_labels(
    config: FeatureConfig,
    examples: tuple[np.ndarray, np.ndarray],
    windows: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    window_config: FeatureConfig | None = None,
    min_cover: float = MIN_COVER,
) -> np.ndarray:
    """One soft label per example and class from the scores of sliding windows.

    examples : (recording_id (n,), start (n,) float64) -- each example's recording and stored
        window start (seconds); its centred crop is ``crop_span(config, start, center_offset)``
    windows : (recording_id (m,), start (m,), scores (m, n_classes)) -- scored windows of the
        same recordings, with their own centred crops (``window_config``, default ``config``)
    min_cover : a window counts for an example when their crops overlap by at least this share
        of the example's crop

    Returns np.ndarray [shape=(n, n_classes)], float32: per class, the highest score of the
    windows that count; NaN for an example no window counts for (its labels stay unknown).
    """
    window_config = config if window_config is None else window_config
    ids, starts = np.asarray(examples[0]).astype(str), np.asarray(examples[1], dtype=np.float64)
    w_ids, w_starts = np.asarray(windows[0]).astype(str), np.asarray(windows[1], dtype=np.float64)
    scores = np.asarray(windows[2], dtype=np.float32)
    if not len(w_ids) == len(w_starts) == len(scores):
        raise ExperimentError(f"{len(w_ids)} window ids, {len(w_starts)} starts, {len(scores)} score rows")
    t0, t1 = crop_span(config, starts, center_offset(config), config.crop_frames)
    w0, w1 = crop_span(window_config, w_starts, center_offset(window_config), window_config.crop_frames)
    out = np.full((len(ids), scores.shape[1] if scores.ndim == 2 else 0), np.nan, dtype=np.float32)
    by_recording: dict[str, list[int]] = {}
    for k, rid in enumerate(w_ids.tolist()):
        by_recording.setdefault(rid, []).append(k)
    for i, rid in enumerate(ids.tolist()):
        rows = np.asarray(by_recording.get(rid, []), dtype=np.int64)
        if rows.size == 0:
            continue
        overlap = np.minimum(t1[i], w1[rows]) - np.maximum(t0[i], w0[rows])
        counted = rows[overlap >= min_cover * (t1[i] - t0[i]) - 1e-9]
        if counted.size:
            out[i] = scores[counted].max(axis=0)
    return out


def score_window_set(model_paths: Sequence[Path], windows: str | os.PathLike, *, batch_size: int = 64):
    """``(example_ids, recording_id, start, scores, config)`` of every window of a windows
    feature set, in storage order (``example_ids`` index its examples); ``scores`` is the mean
    of the models' scores (one model: its own)."""
    from experiments.predict import load_model, score_windows, window_sequence

    if not model_paths:
        raise ExperimentError("no model to score the windows with")
    total = None
    for path in model_paths:
        model = load_model(path)
        seq = window_sequence(windows, model, batch_size=batch_size)
        scores = score_windows(model, seq)
        if total is not None and scores.shape != total.shape:
            raise ExperimentError(f"{path} scores {scores.shape}, {model_paths[0]} {total.shape}")
        total = scores.astype(np.float64) if total is None else total + scores
    ids = seq.example_ids
    mean = (total / len(model_paths)).astype(np.float32)
    return ids, seq.features.recording_id[ids], seq.features.start[ids], mean, seq.config


def write_soft_labels(run_dir: Path, *, features: str, windows: str, scored) -> tuple[Path, Path]:
    """Write into ``run_dir`` the soft labels of the windows themselves (``WINDOW_FILE``) and
    of the examples of ``features`` (``SOFT_FILE``) from ``scored``, what ``score_window_set``
    returned for ``windows``."""
    from loader.feature_set import open_feature_set

    feature_set = open_feature_set(features)
    order, ids, starts, scores, window_config = scored
    if scores.shape[1] != feature_set.config.n_classes:
        raise ExperimentError(
            f"the teacher predicts {scores.shape[1]} classes, {features} has {feature_set.config.n_classes}"
        )
    soft = soft_labels(
        feature_set.config,
        (feature_set.recording_id, feature_set.start),
        (ids, starts, scores),
        window_config=window_config,
    )
    own = np.full((int(order.max()) + 1 if order.size else 0, scores.shape[1]), np.nan, np.float32)
    own[order] = scores
    run_dir.mkdir(parents=True, exist_ok=True)
    np.save(run_dir / SOFT_FILE, soft)
    np.save(run_dir / WINDOW_FILE, own)
    covered = int(np.isfinite(soft[:, 0]).sum()) if soft.size else 0
    info = {"windows": str(windows), "examples": len(soft), "covered": covered}
    atomic_write_text(run_dir / SOFT_INFO, json.dumps(info, indent=1) + "\n")
    return run_dir / SOFT_FILE, run_dir / WINDOW_FILE


def teachers(out: Path, r: int, seed: int, seeds: Sequence[int], teacher: str) -> tuple[Path, ...]:
    """The models whose scores round ``r`` of ``seed`` learns from: the same seed's model of
    the round before (``teacher = "own"``), or every seed's, averaged (``"ensemble"``)."""
    chosen = [seed] if teacher == "own" else list(seeds)
    return tuple(out / f"round-{r - 1}" / f"seed-{s}" / "model.keras" for s in chosen)


@dataclass(frozen=True)
class Rounds:
    """How the rounds after round 0 learn (a recipe's ``[pseudo]`` table).

    rounds : pseudo-label rounds after round 0
    train_on : where a round puts the teacher's scores (``TRAIN_ON``): on the windows of the
        training fold's recordings, trained on as extra examples; on the unknown labels of the
        labelled examples; both; or nowhere ("none": with ``warm_start``, a control that trains
        as much without soft labels)
    teacher : whose scores (``TEACHERS``, see ``teachers``)
    warm_start : start each round from its seed's model of the round before (fine-tuning)
        instead of fresh weights
    train : train() options of the rounds after round 0, over the recipe's ``[train]`` (for a
        fine-tuning round: fewer epochs, a lower ``lr``)
    """

    rounds: int = DEFAULT_ROUNDS
    train_on: str = "windows"
    teacher: str = "own"
    warm_start: bool = False
    train: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inputs:
    """What the rounds read and where they write (the command line's ``--features``, ...).

    features : the labelled feature set (TP/FP rows)
    windows : a windows feature set over the same train recordings
    out : the directory of the rounds' runs
    seeds : the seeds every round trains
    test, truth : a windows feature set to score each run on, and its ground truth CSV
    """

    features: str
    windows: str
    out: Path
    seeds: tuple[int, ...] = (0,)
    test: str | None = None
    truth: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "seeds", tuple(self.seeds))

    @property
    def test_set(self) -> dict[str, str | None] | None:
        """``{"features", "truth"}`` of the test set (``sweep.train_and_score``), or None."""
        return None if self.test is None else {"features": self.test, "truth": self.truth}


def run_rounds(
    inputs: Inputs, *, options: Mapping[str, Any], plan: Rounds = Rounds(), verbose: int = 0
) -> dict[str, list[dict]]:
    """Train rounds 0..``plan.rounds`` for every seed; returns each round's metrics (all seeds)."""
    features, windows, out = inputs.features, inputs.windows, inputs.out
    results: dict[str, list[dict]] = {}
    scored: dict[tuple[Path, ...], tuple] = {}
    for r in range(plan.rounds + 1):
        name = f"round {r}"
        results[name] = []
        config = sweep.Configuration(name, features, dict(options) | (dict(plan.train) if r else {}))
        for seed in inputs.seeds:
            run_dir = out / f"round-{r}" / f"seed-{seed}"
            metrics = sweep.finished(run_dir, config, seed)
            if metrics is None:
                extra: dict[str, str] = {}
                if r > 0 and plan.train_on != "none":
                    models = teachers(out, r, seed, inputs.seeds, plan.teacher)
                    if models not in scored:
                        scored[models] = score_window_set(models, windows)
                    soft, own = write_soft_labels(
                        run_dir, features=features, windows=windows, scored=scored[models]
                    )
                    if plan.train_on in ("examples", "both"):
                        extra["soft_labels"] = str(soft)
                    if plan.train_on in ("windows", "both"):
                        extra.update(windows=str(windows), window_labels=str(own))
                if r > 0 and plan.warm_start:
                    extra["init_from"] = str(teachers(out, r, seed, inputs.seeds, "own")[0])
                metrics = _train(config, seed, run_dir, extra=extra, test=inputs.test_set, verbose=verbose)
                log.info(f"{name} seed {seed}: " + _summary(metrics))
            results[name].append(metrics)
    return results


def _summary(metrics: Mapping[str, Any]) -> str:
    shown = [f"{k} {metrics[k]:.4f}" for k in ("val_lwlrap", "test_lwlrap") if k in metrics]
    return ", ".join(shown)


def _train(
    config, seed: int, run_dir: Path, *, extra: Mapping[str, str], test, verbose: int
) -> dict[str, Any]:
    options = dict(config.options) | dict(extra)
    return sweep.train_and_score(config.features, seed, run_dir, options=options, test=test, verbose=verbose)


def build_parser() -> argparse.ArgumentParser:
    """The flags by ``dest``: ``inputs.FIELD`` sets a field of ``Inputs``, ``plan.rounds`` the
    ``rounds`` of the recipe's ``Rounds`` (None: the recipe's); the others are the command's."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_flag(
        p, "--features", field="inputs.features", required=True, help="labelled feature set (TP/FP rows)"
    )
    add_flag(
        p,
        "--windows",
        field="inputs.windows",
        required=True,
        help="windows feature set over the same train recordings",
    )
    add_flag(
        p,
        "--rounds",
        field="plan.rounds",
        type=int,
        help="pseudo-label rounds after round 0 (default: the recipe's, or 2)",
    )
    add_flag(p, "--seeds", field="inputs.seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    add_flag(p, "--out", field="inputs.out", type=Path, required=True, help="directory of the rounds' runs")
    p.add_argument(
        "--recipe",
        type=Path,
        help="TOML: train() options in [train], rounds in [pseudo] (experiments/recipes/)",
    )
    add_flag(p, "--test", field="inputs.test", help="windows feature set to score each run on (test_lwlrap)")
    add_flag(p, "--truth", field="inputs.truth", help="ground truth CSV of --test")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="Keras fit output per run")
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed flags, with what argparse cannot check itself checked (``p.error``)."""
    p = build_parser()
    args = p.parse_args(argv)
    rounds = getattr(args, "plan.rounds")
    if rounds is not None and rounds < 0:
        p.error(f"--rounds must be >= 0, got {rounds}")
    return args


def read_recipe(path: Path | None) -> tuple[dict[str, Any], Rounds]:
    """A recipe's train() options (``[train]``) and how its rounds learn (``[pseudo]``: the
    fields of ``Rounds``, with ``[pseudo.train]`` as ``train``)."""
    if path is None:
        return {}, Rounds()
    data = sweep.read_toml(path, what="recipe")
    options = dict(data.get("train", {}))
    sweep.check_options(options, f"{path} [train]")
    pseudo = dict(data.get("pseudo", {}))
    known = [f.name for f in fields(Rounds)]
    unknown = sorted(set(pseudo) - set(known))
    if unknown:
        raise ConfigError(f"{path} [pseudo]: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    plan = Rounds(**pseudo)
    if not isinstance(plan.rounds, int) or isinstance(plan.rounds, bool) or plan.rounds < 0:
        raise ConfigError(f"{path} [pseudo]: rounds must be an integer >= 0, got {plan.rounds!r}")
    for key, allowed in (("train_on", TRAIN_ON), ("teacher", TEACHERS)):
        if getattr(plan, key) not in allowed:
            raise ConfigError(
                f"{path} [pseudo]: {key} must be one of {', '.join(allowed)}, got {getattr(plan, key)!r}"
            )
    if not isinstance(plan.warm_start, bool):
        raise ConfigError(f"{path} [pseudo]: warm_start must be true or false, got {plan.warm_start!r}")
    if not isinstance(plan.train, dict):
        raise ConfigError(f"{path} [pseudo]: train must be a table of train() options")
    sweep.check_options(plan.train, f"{path} [pseudo.train]")
    return options, plan


def main(argv: Sequence[str] | None = None) -> int:
    values = groups(parse_args(argv))
    own = values[""]
    setup_logging(quiet=own["quiet"])
    try:
        inputs = build(Inputs, values["inputs"])
        options, plan = read_recipe(own["recipe"])
        plan = dataclasses.replace(plan, **{k: v for k, v in values["plan"].items() if v is not None})
        if plan.rounds > 0 and plan.train_on != "none" and options.get("unknown") == "ignore":
            raise ConfigError(
                "soft labels fill unknown labels, which unknown = 'ignore' leaves out of the loss: "
                "use unknown = 'negative' with an unknown_weight (e.g. 0.3)"
            )
        results = run_rounds(inputs, options=options, plan=plan, verbose=own["verbose"])
        written = _compare_rounds(inputs, options, results)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MelShardsError as err:
        return report_error(PROG, err)
    print((inputs.out / sweep.TABLE_MD).read_text(), end="")
    log.info(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


def _compare_rounds(inputs: Inputs, options: Mapping[str, Any], results: dict[str, list[dict]]) -> list[Path]:
    """The comparison of the rounds, as a sweep's: tables and picture in ``inputs.out``."""
    test = inputs.test_set
    metric = "test_lwlrap" if test and test.get("truth") else "val_lwlrap"
    grid = sweep.Grid(
        "pseudo",
        inputs.seeds,
        metric,
        tuple(sweep.Configuration(name, inputs.features, options) for name in results),
    )
    rows = sweep.compare(grid, results, keep_order=True)
    return [*sweep.write_tables(rows, inputs.out), sweep.write_picture(rows, metric, inputs.out)]


if __name__ == "__main__":
    sys.exit(main())
