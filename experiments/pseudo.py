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
round 1 on). A run is skipped when it finished with every option it is asked for now, defaults
included (``experiments.sweep.run_state``), and no model it learns from was trained again in
the same call; else it is trained again in its place. So the rounds resume, and a changed
recipe retrains what it changes. The comparison (mean and spread over seeds of every metric,
per round) is written as in ``experiments.sweep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from commandline.flags import add_flag, build, groups
from commandline.parser import CommandParser
from experiments import sweep
from experiments.errors import ExperimentError
from experiments.plots import comparison_title
from experiments.sequences import require_windows_set
from experiments.sweep_grid import Configuration, Grid, check_types, options_error, read_toml, table
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
RECIPE_KEYS = ("train", "pseudo")
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
        """``{"features", "truth"}`` of the test set (``sweep.score_run``), or None."""
        return None if self.test is None else {"features": self.test, "truth": self.truth}


def round_extra(inputs: Inputs, plan: Rounds, r: int, seed: int) -> dict[str, str]:
    """The train() options round ``r`` of ``seed`` adds to the recipe's: the files its soft
    labels are written to before it trains, the windows, the model it starts from."""
    run_dir = inputs.out / f"round-{r}" / f"seed-{seed}"
    extra: dict[str, str] = {}
    if r > 0 and plan.train_on in ("examples", "both"):
        extra["soft_labels"] = str(run_dir / SOFT_FILE)
    if r > 0 and plan.train_on in ("windows", "both"):
        extra.update(windows=str(inputs.windows), window_labels=str(run_dir / WINDOW_FILE))
    if r > 0 and plan.warm_start:
        extra["init_from"] = str(teachers(inputs.out, r, seed, inputs.seeds, "own")[0])
    return extra


def _learns_from(inputs: Inputs, plan: Rounds, r: int, seed: int) -> tuple[Path, ...]:
    """The models round ``r`` of ``seed`` learns from: its teachers, the model it starts from."""
    if r == 0:
        return ()
    chosen = teachers(inputs.out, r, seed, inputs.seeds, plan.teacher) if plan.train_on != "none" else ()
    return chosen + (teachers(inputs.out, r, seed, inputs.seeds, "own") if plan.warm_start else ())


@dataclass
class _Progress:
    """What this call of ``run_rounds`` did so far: runs counted, models trained, windows scored."""

    total: int
    done: int = 0
    trained: set[Path] = field(default_factory=set)
    scored: dict[tuple[Path, ...], tuple] = field(default_factory=dict)


def run_rounds(
    inputs: Inputs, *, options: Mapping[str, Any], plan: Rounds = Rounds(), verbose: int = 0
) -> dict[str, list[dict]]:
    """Train rounds 0..``plan.rounds`` for every seed; returns each round's metrics (all seeds).

    A run is skipped when it finished with every option it is asked for now (``sweep.run_state``)
    and no model it learns from was trained again in this call; a run not yet scored on the test
    set is scored. One log line when a run starts, one when it ends.
    """
    results: dict[str, list[dict]] = {}
    progress = _Progress(total=(plan.rounds + 1) * len(inputs.seeds))
    for r in range(plan.rounds + 1):
        round_options = dict(options) | (dict(plan.train) if r else {})
        results[f"round {r}"] = [
            _round_run(inputs, plan, r, seed, options=round_options, progress=progress, verbose=verbose)
            for seed in inputs.seeds
        ]
    return results


def _round_run(
    inputs: Inputs,
    plan: Rounds,
    r: int,
    seed: int,
    *,
    options: Mapping[str, Any],
    progress: _Progress,
    verbose: int,
) -> dict[str, Any]:
    """Round ``r`` of ``seed``: trained (its soft labels first) unless finished, then scored."""
    progress.done += 1
    run = f"run {progress.done}/{progress.total} round {r} seed {seed}"
    run_dir = inputs.out / f"round-{r}" / f"seed-{seed}"
    config = Configuration(f"round {r}", inputs.features, dict(options) | round_extra(inputs, plan, r, seed))
    metrics, why = sweep.run_state(run_dir, config, seed)
    if metrics is not None and progress.trained & set(_learns_from(inputs, plan, r, seed)):
        metrics, why = None, "a model it learns from was trained again"
    started = time.perf_counter()
    if metrics is None:
        log.info(f"{run}: training{f' again, {why}' if why else ''} ...")
        if r > 0 and plan.train_on != "none":
            models = teachers(inputs.out, r, seed, inputs.seeds, plan.teacher)
            if models not in progress.scored:
                progress.scored[models] = score_window_set(models, inputs.windows)
            write_soft_labels(
                run_dir, features=inputs.features, windows=inputs.windows, scored=progress.scored[models]
            )
        metrics = sweep.train_run(inputs.features, seed, run_dir, options=config.options, verbose=verbose)
        progress.trained.add(run_dir / sweep.MODEL_FILE)
        how = f"{time.perf_counter() - started:.0f} s"
    else:
        how = "finished earlier"
    if not sweep.scored(run_dir, metrics, inputs.test_set):
        log.info(f"{run}: scoring on {inputs.test} ...")
        metrics = sweep.score_run(run_dir, inputs.test_set)
    shown = [f"{k} {metrics[k]:.4f}" for k in ("val_lwlrap", "test_lwlrap") if k in metrics]
    log.info(f"{run}: {', '.join(shown)} ({how})")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    """The flags by ``dest``: ``inputs.FIELD`` sets a field of ``Inputs``, ``plan.rounds`` the
    ``rounds`` of the recipe's ``Rounds`` (None: the recipe's); the others are the command's."""
    p = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
    fields of ``Rounds``, with ``[pseudo.train]`` as ``train``). ConfigError naming the file
    and the key for an unknown key or a value of the wrong type or range."""
    if path is None:
        return {}, Rounds()
    data = read_toml(path, what="recipe")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(RECIPE_KEYS)}")
    options = table(data.get("train", {}), f"{path} [train]")
    check_types(options, f"{path} [train]")
    error = options_error(options)
    if error is not None:
        raise ConfigError(f"{path} [train]: {error}")
    plan = _read_rounds(table(data.get("pseudo", {}), f"{path} [pseudo]", what="round settings"), path)
    check_types(plan.train, f"{path} [pseudo.train]")
    error = options_error(options | dict(plan.train))
    if error is not None:
        raise ConfigError(f"{path} [pseudo.train]: {error}")
    return options, plan


def _read_rounds(pseudo: dict[str, Any], path: Path) -> Rounds:
    """The recipe's ``[pseudo]`` table as ``Rounds``, every field checked."""
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
        raise ConfigError(f"{path} [pseudo]: train must be a table of train() options, got {plan.train!r}")
    return plan


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
        if plan.rounds > 0 and plan.train_on != "none":  # the rounds score the windows
            require_windows_set(inputs.windows, option="windows")
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
    grid = Grid(
        "pseudo",
        inputs.seeds,
        metric,
        tuple(Configuration(name, inputs.features, options) for name in results),
    )
    rows = sweep.compare(grid, results, keep_order=True)
    title = comparison_title(f"pseudo-label rounds 0-{len(rows) - 1}", metric, inputs.seeds)
    return [*sweep.write_tables(rows, inputs.out), sweep.write_picture(rows, metric, inputs.out, title=title)]


if __name__ == "__main__":
    sys.exit(main())
