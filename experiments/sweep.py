"""Sweeps: many training configurations on one feature set, compared over several seeds.

    python -m experiments.sweep experiments/grids/demo.toml

A grid file (TOML) names the feature set, the seeds, the settings every run shares and the
values to combine; every ``experiments.train`` option can be swept::

    name = "demo"                       # runs go to runs/sweeps/demo/ (--out to change)
    features = "features/demo"          # or a table {float16 = "...", uint8 = "..."}: an axis
    seeds = [0, 1, 2]
    metric = "val_lwlrap"               # ranks the configurations; drawn in the picture

    [base]                              # train() options shared by every run
    epochs = 20

    [grid]                              # every combination of these values
    model = ["baseline", "tiny"]
    mixup = [0.0, 0.5]

    [test]                              # optional: score each run on a windows set too
    features = "features/demo-test"
    truth = "data/demo/test_ground_truth.csv"
    events = "data/demo/test_events.csv"  # every call: test_segment_f1, test_event_f1

Each configuration and seed trains into its own run directory (``OUT/<configuration>/seed-<k>``;
configuration names are plain names, never paths, ``experiments.sweep_grid``). A run is
finished, and skipped, when its ``metrics.json`` records every option the grid now asks for,
defaults included (``COMPARED``: all but where and how a run is kept and the loader's
``workers``), and the same feature set (its fingerprint); a run trained with any other option
is trained again, in its place, and the log line says which option differed. So a sweep resumes
where it stopped and reruns in seconds when nothing changed (TensorFlow is imported only when a
run is due). With ``[test]``, a run not yet scored on that test set is scored, also a finished
one whose scoring failed before. Each run logs a line when it starts (``run 3/8 lr=0.01 seed 1:
training ...``) and one when it ends (its metric, its time).

Then one comparison: ``comparison.csv`` and ``comparison.md`` (mean and spread over seeds of
every metric, time per epoch, samples/s; best first) and ``comparison.png`` (each
configuration's metric, one dot per seed, mean and spread; ``experiments.plots``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from commandline.parser import CommandParser
from experiments.errors import ExperimentError
from experiments.plots import comparison_title, plot_comparison
from experiments.sweep_grid import METRICS, Configuration, Grid, read_grid
from experiments.train_options import ADDED_OPTIONS, FREE_ON_RESUME, RECORDED, TrainOptions
from melshards.errors import FormatError, MelShardsError
from melshards.files import atomic_write_text
from melshards.index import read_index

LOWER_IS_BETTER = ("val_loss", "seconds_per_epoch")
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
SUBMISSION_FILE = "submission.csv"
PROG = "python -m experiments.sweep"
TABLE_CSV, TABLE_MD, PICTURE = "comparison.csv", "comparison.md", "comparison.png"
# The options a finished run must share with what is asked: all but those that do not change
# what is trained (``FREE_ON_RESUME``: where and how the run is kept, the loader's workers) and
# the feature set, which is compared by its fingerprint (a path may be spelt another way).
COMPARED = tuple(name for name in RECORDED if name not in FREE_ON_RESUME and name != "features")


# -- running ------------------------------------------------------------------------------------


def _index_fingerprint(features: str) -> str | None:
    """The feature set's fingerprint, or None where it has no valid index."""
    try:
        return read_index(features).fingerprint
    except FormatError:
        return None


def run_options(config: Configuration, seed: int, run_dir: Path) -> dict[str, Any]:
    """Every option the run of ``config`` and ``seed`` records (``TrainOptions.to_kwargs``,
    defaults included): what ``train()`` gets, and what a finished run must have had."""
    options = TrainOptions.from_kwargs(features=config.features, out=run_dir, seed=seed, **config.options)
    return options.to_kwargs()


def run_state(run_dir: Path, config: Configuration, seed: int) -> tuple[dict[str, Any] | None, str]:
    """``(metrics, "")`` when ``run_dir`` holds a run finished with every option ``config`` and
    ``seed`` ask for (``COMPARED``, defaults included) on the same feature set (its fingerprint);
    else ``(None, why)``, ``why`` empty where no run finished there."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as err:
        return None, f"its {METRICS_FILE} is unreadable ({err})"
    recorded = metrics.get("config", {}).get("train") if isinstance(metrics, dict) else None
    if not isinstance(recorded, dict):
        return None, f"its {METRICS_FILE} records no training options"
    wanted = run_options(config, seed, run_dir)
    recorded = ADDED_OPTIONS | recorded  # a run recorded before targets was trained on clips
    for name in COMPARED:
        if name not in recorded:
            return None, f"it records no {name}"
        if recorded[name] != wanted[name]:
            return None, f"it was trained with {name} {recorded[name]!r}, not {wanted[name]!r}"
    if metrics.get("fingerprint") != _index_fingerprint(config.features):
        return None, f"it was trained on another feature set than {config.features}"
    return metrics, ""


def finished(run_dir: Path, config: Configuration, seed: int) -> dict[str, Any] | None:
    """The run's metrics when it finished with every option ``config`` and ``seed`` ask for, on
    this feature set (``run_state``); else None."""
    return run_state(run_dir, config, seed)[0]


def scored(run_dir: Path, metrics: Mapping[str, Any], test: Mapping[str, Any] | None) -> bool:
    """Whether the run is scored on ``test`` (True without one): its submission is there and,
    with a truth file (``truth``, ``events``), its ``metrics.json`` holds the test scores of
    this test set (``test_lwlrap``; ``test_event_f1``)."""
    if test is None:
        return True
    if not (run_dir / SUBMISSION_FILE).is_file():
        return False
    wanted = [
        key for truth, key in (("truth", "test_lwlrap"), ("events", "test_event_f1")) if test.get(truth)
    ]
    if not wanted:
        return True
    seen = metrics.get("test_features")
    fingerprint = seen.get("fingerprint") if isinstance(seen, dict) else None
    return all(key in metrics for key in wanted) and fingerprint == _index_fingerprint(test["features"])


def train_run(
    features: str, seed: int, run_dir: Path, *, options: Mapping[str, Any], verbose: int = 0
) -> dict[str, Any]:
    """Train one run (``experiments.train.train``) into ``run_dir``; its metrics."""
    import keras

    from experiments.train import train

    keras.backend.clear_session()
    (run_dir / SUBMISSION_FILE).unlink(missing_ok=True)  # of the model trained before, if any
    return train(features, out=run_dir, seed=seed, verbose=verbose, quiet=verbose == 0, **options)


def score_run(run_dir: Path, test: Mapping[str, Any]) -> dict[str, Any]:
    """Score the run's model on the windows set ``test["features"]`` (``experiments.predict``):
    ``submission.csv`` and ``events.csv``, and with ``test["truth"]`` (``test["events"]``) its
    test scores in ``metrics.json``; its metrics."""
    from experiments.predict import predict

    predict(
        test["features"],
        model=run_dir / MODEL_FILE,
        out=run_dir / SUBMISSION_FILE,
        truth=test.get("truth"),
        truth_events=test.get("events"),
        metrics=run_dir / METRICS_FILE,
        quiet=True,
    )
    return json.loads((run_dir / METRICS_FILE).read_text())


def _train_one(config: Configuration, seed: int, run_dir: Path, *, verbose: int) -> dict[str, Any]:
    return train_run(config.features, seed, run_dir, options=config.options, verbose=verbose)


def _shown(metrics: Mapping[str, Any], metric: str) -> str:
    value = _value(metrics, metric)
    return f"no {metric}" if math.isnan(value) else f"{metric} {value:.4f}"


def _run_one(grid: Grid, config: Configuration, seed: int, run_dir: Path, *, run: str, verbose: int):
    """One run of the sweep, trained and scored as far as it is due; (metrics, what was done)."""
    metrics, why = run_state(run_dir, config, seed)
    done = "finished"
    if metrics is None:
        log.info(f"{run}: training{f' again, {why}' if why else ''} ...")
        started = time.perf_counter()
        metrics, done = _train_one(config, seed, run_dir, verbose=verbose), "trained"
    if not scored(run_dir, metrics, grid.test):
        log.info(f"{run}: scoring on {grid.test['features']} ...")
        metrics = score_run(run_dir, grid.test)
        done = "scored" if done == "finished" else done
    if done == "trained":
        seconds = time.perf_counter() - started
        log.info(f"{run}: {_shown(metrics, grid.metric)} ({seconds:.0f} s) -> {run_dir}")
    else:
        log.info(
            f"{run}: {'finished earlier' if done == 'finished' else 'scored'}, {_shown(metrics, grid.metric)}"
        )
    return metrics, done


def run_sweep(grid: Grid, *, out: str | os.PathLike, verbose: int = 0) -> dict[str, list[dict]]:
    """Train every configuration and seed not yet finished, score every run not yet scored;
    returns their metrics by configuration. One log line when a run starts, one when it ends.

    A run that fails is logged and left out of the comparison; the others go on. Raises
    ExperimentError after the last run when any failed.
    """
    out = Path(out)
    todo = [(c, s) for c in grid.configurations for s in grid.seeds]
    results: dict[str, list[dict]] = {c.name: [] for c in grid.configurations}
    failed, counts = [], {"finished": 0, "trained": 0, "scored": 0}
    for k, (config, seed) in enumerate(todo, 1):
        run = f"run {k}/{len(todo)} {config.name} seed {seed}"
        try:
            metrics, done = _run_one(
                grid, config, seed, out / config.slug / f"seed-{seed}", run=run, verbose=verbose
            )
        except MelShardsError as err:
            log.info(f"{run}: failed: {err}")
            failed.append(f"{config.name} seed {seed}")
            continue
        counts[done] += 1
        results[config.name].append(metrics)
    log.info(
        f"{len(todo)} runs: {counts['finished']} already finished, {counts['trained']} trained, "
        + (f"{counts['scored']} scored, " if counts["scored"] else "")
        + f"{len(failed)} failed"
    )
    if failed:
        raise ExperimentError(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return results


# -- comparing ----------------------------------------------------------------------------------


def _value(metrics: Mapping[str, Any], name: str) -> float:
    """One metric of a run's ``metrics.json`` as a float (NaN when the run lacks it)."""
    if name == "seconds_per_epoch":
        epochs = metrics.get("epochs_run") or 0
        seconds = metrics.get("train_seconds")
        return float(seconds) / epochs if epochs and seconds is not None else math.nan
    value = metrics.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite values; spread NaN for one value."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def compare(
    grid: Grid, results: Mapping[str, Sequence[Mapping[str, Any]]], *, keep_order: bool = False
) -> list[dict[str, Any]]:
    """One row per configuration: its name, the seeds run, mean and spread of every metric.

    Rows are sorted best first by ``grid.metric`` (in the grid's order with ``keep_order``);
    metrics no run has are left out.
    """
    present = [
        m
        for m in METRICS
        if m == grid.metric or any(not math.isnan(_value(r, m)) for rs in results.values() for r in rs)
    ]
    rows = []
    for config in grid.configurations:
        runs = results.get(config.name, [])
        row: dict[str, Any] = {"configuration": config.name, "seeds": len(runs)}
        for name in present:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_spread([_value(r, name) for r in runs])
        row["_values"] = [_value(r, grid.metric) for r in runs]
        rows.append(row)
    if keep_order:
        return rows
    sign = 1 if grid.metric in LOWER_IS_BETTER else -1
    key = f"{grid.metric}_mean"
    rows.sort(key=lambda r: (math.isnan(r.get(key, math.nan)), sign * r.get(key, math.nan)))
    return rows


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    digits = 1 if abs(mean) >= 100 else 2 if abs(mean) >= 1 else 4
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_tables(rows: Sequence[Mapping[str, Any]], out: Path) -> tuple[Path, Path]:
    """``comparison.csv`` (one column per mean and spread) and ``comparison.md`` (mean ± spread)."""
    columns = [c for c in rows[0] if not c.startswith("_")]
    lines = [",".join(columns)]
    for row in rows:
        cells = [row[c] for c in columns]
        lines.append(",".join("" if isinstance(v, float) and math.isnan(v) else _csv_cell(v) for v in cells))
    atomic_write_text(out / TABLE_CSV, "\n".join(lines) + "\n")
    metrics = [c[: -len("_mean")] for c in columns if c.endswith("_mean")]
    md = ["| configuration | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for row in rows:
        cells = [_cell(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        md.append(f"| {row['configuration']} | {row['seeds']} | " + " | ".join(cells) + " |")
    atomic_write_text(out / TABLE_MD, "\n".join(md) + "\n")
    return out / TABLE_CSV, out / TABLE_MD


def _csv_cell(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return f'"{text}"' if "," in text or '"' in text else text


def write_picture(rows: Sequence[Mapping[str, Any]], metric: str, out: Path, *, title: str) -> Path:
    """``comparison.png``: each configuration's ``metric``, a dot per seed, the mean with its
    spread (``experiments.plots.comparison_figure``), under ``title``."""
    return plot_comparison(rows, metric, out / PICTURE, title=title)


# -- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The grid file and how the sweep is kept: every flag is the command's own."""
    p = CommandParser(
        prog=PROG,
        description="Train a grid of configurations over several seeds on one feature set; compare them.",
    )
    p.add_argument("grid", type=Path, help="grid file (TOML), e.g. experiments/grids/demo.toml")
    p.add_argument("--out", type=Path, help="sweep directory (default runs/sweeps/<name>)")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="Keras fit output per run")
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(quiet=args.quiet)
    try:
        grid = read_grid(args.grid)
        out = args.out or Path("runs") / "sweeps" / grid.name
        n = len(grid.configurations) * len(grid.seeds)
        log.info(
            f"sweep {grid.name}: {len(grid.configurations)} configurations x {len(grid.seeds)} seeds = {n} runs -> {out}"
        )
        results = run_sweep(grid, out=out, verbose=args.verbose)
        rows = compare(grid, results)
        what = f"sweep {grid.name}: {len(rows)} configuration{'' if len(rows) == 1 else 's'}"
        title = comparison_title(what, grid.metric, grid.seeds)
        written = [*write_tables(rows, out), write_picture(rows, grid.metric, out, title=title)]
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MelShardsError as err:
        return report_error(PROG, err)
    print((out / TABLE_MD).read_text(), end="")
    log.info(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
