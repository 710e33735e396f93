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

Each configuration and seed trains into its own run directory
(``OUT/<configuration>/seed-<k>``). A run whose ``metrics.json`` exists and records the same
options and feature set is finished and skipped, so a sweep resumes where it stopped and
reruns in seconds when nothing changed (TensorFlow is imported only when a run is due). Then
one comparison: ``comparison.csv`` and ``comparison.md`` (mean and spread over seeds of every
metric, time per epoch, samples/s; best first) and ``comparison.png`` (each configuration's
metric, one dot per seed, mean and spread).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from experiments.errors import ExperimentError
from experiments.train_options import FIELD_GROUP, RECORDED
from melshards.errors import ConfigError, FormatError, MelShardsError
from melshards.files import atomic_write_text
from melshards.index import read_index

# ``experiments.train.train`` options a grid may set: every option of ``TrainOptions`` (a test
# keeps this list equal to train()'s keywords) but how a run is kept (``KeepOptions``: out,
# checkpoints, verbosity) and the sweep's own ``features`` and ``seed``.
TRAIN_OPTIONS = tuple(
    name for name in RECORDED if FIELD_GROUP[name] != "keep" and name not in ("features", "seed")
)
GRID_KEYS = ("name", "features", "seeds", "metric", "base", "grid", "configs", "test")
# Compared for every configuration (those a run lacks are left out); "lower" ranks ascending.
METRICS = (
    "val_lwlrap",
    "val_top1",
    "val_loss",
    "test_lwlrap",
    "test_top1",
    "best_epoch",
    "epochs_run",
    "seconds_per_epoch",
    "samples_per_second",
)
LOWER_IS_BETTER = ("val_loss", "seconds_per_epoch")
METRICS_FILE = "metrics.json"
PROG = "python -m experiments.sweep"
TABLE_CSV, TABLE_MD, PICTURE = "comparison.csv", "comparison.md", "comparison.png"


@dataclass(frozen=True)
class Configuration:
    """One point of the grid: a name, the feature set, the train() options it sets."""

    name: str
    features: str
    options: Mapping[str, Any]
    axes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The run directory's name: the name with only characters safe in a path."""
        safe = "".join(c if c.isalnum() or c in "._-=," else "-" for c in self.name)
        return safe.replace("=", "-").replace(",", "_") or "base"


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    name: str
    seeds: tuple[int, ...]
    metric: str
    configurations: tuple[Configuration, ...]
    test: Mapping[str, str] | None = None


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def check_options(options: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown training option(s) {', '.join(unknown)}; known: {', '.join(TRAIN_OPTIONS)}"
        )


def _feature_axis(value: Any, where: str) -> dict[str, str]:
    """``features`` as {label: path}: one path (label "") or a table of named sets."""
    if isinstance(value, str):
        return {"": value}
    if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    raise ConfigError(f"{where}: features must be a path or a table of name = path, got {value!r}")


def _named(axes: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in axes.items()) or "base"


def parse_grid(data: Mapping[str, Any], *, source: str = "grid") -> Grid:
    """Validate a grid file's contents; ConfigError names the file and the bad key or value."""
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(GRID_KEYS)}")
    if "features" not in data:
        raise ConfigError(f"{source}: features is missing (the feature set directory)")
    features = _feature_axis(data["features"], source)
    seeds = _list(data.get("seeds", [0]), f"{source} seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"{source} seeds: expected distinct integers, got {seeds!r}")
    base = dict(data.get("base", {}))
    check_options(base, f"{source} [base]")
    grid = {k: _list(v, f"{source} [grid] {k}") for k, v in dict(data.get("grid", {})).items()}
    check_options(grid, f"{source} [grid]")
    # (explicit name or None, options) for every point of the grid, then the listed configs
    points: list[tuple[str | None, dict]] = [
        (None, dict(zip(grid, values, strict=True))) for values in itertools.product(*grid.values())
    ]
    if not grid and data.get("configs"):
        points = []  # only the listed configurations, not also the bare base
    for k, extra in enumerate(data.get("configs", [])):
        extra = dict(extra)
        name = extra.pop("name", None)
        check_options(extra, f"{source} [[configs]] {k + 1}")
        points.append((None if name is None else str(name), extra))
    configurations = []
    for label, path in features.items():
        for name, point in points:
            axes = ({"features": label} if label else {}) | point
            if name is not None and label:
                name = f"{name},features={label}"
            configurations.append(Configuration(name or _named(axes), path, base | point, axes))
    names = [c.slug for c in configurations]
    if len(set(names)) < len(names):
        raise ConfigError(f"{source}: two configurations share the name {_first_repeat(names)!r}")
    metric = data.get("metric", "val_lwlrap")
    if metric not in METRICS:
        raise ConfigError(f"{source}: metric {metric!r} is not one of {', '.join(METRICS)}")
    test = data.get("test")
    if test is not None and (not isinstance(test, dict) or "features" not in test):
        raise ConfigError(f"{source} [test]: expected features = PATH and optionally truth = CSV")
    name = str(data.get("name", Path(source).stem))
    return Grid(name, tuple(seeds), metric, tuple(configurations), test)


def _first_repeat(names: Sequence[str]) -> str:
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return ""


def read_toml(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
    """A TOML file's contents; ConfigError naming the file when it is missing or not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def read_grid(path: str | os.PathLike) -> Grid:
    return parse_grid(read_toml(path, what="grid file"), source=str(path))


# -- running ------------------------------------------------------------------------------------


def _index_fingerprint(features: str) -> str | None:
    """The feature set's fingerprint, or None where it has no valid index."""
    try:
        return read_index(features).fingerprint
    except FormatError:
        return None


def finished(run_dir: Path, config: Configuration, seed: int) -> dict[str, Any] | None:
    """The run's metrics when it finished with these options on this feature set, else None."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        recorded = metrics["config"]["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    wanted = dict(config.options) | {"seed": seed}
    if any(recorded.get(k) != v for k, v in wanted.items()):
        return None
    if metrics.get("fingerprint") != _index_fingerprint(config.features):
        return None
    return metrics


def train_and_score(
    features: str, seed: int, run_dir: Path, *, options: Mapping[str, Any], test=None, verbose: int = 0
) -> dict[str, Any]:
    """Train one run (``experiments.train.train``), score it on ``test`` when given; its metrics."""
    import keras

    from experiments.predict import predict
    from experiments.train import train

    keras.backend.clear_session()
    metrics = train(features, out=run_dir, seed=seed, verbose=verbose, quiet=verbose == 0, **options)
    if test is not None:
        predict(
            test["features"],
            model=run_dir / "model.keras",
            out=run_dir / "submission.csv",
            truth=test.get("truth"),
            metrics=run_dir / METRICS_FILE,
            quiet=True,
        )
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return metrics


def _train_one(config: Configuration, seed: int, run_dir: Path, *, test, verbose: int) -> dict[str, Any]:
    return train_and_score(config.features, seed, run_dir, options=config.options, test=test, verbose=verbose)


def run_sweep(grid: Grid, *, out: str | os.PathLike, verbose: int = 0) -> dict[str, list[dict]]:
    """Train every configuration and seed not yet finished; returns their metrics by configuration.

    A run that fails is logged and left out of the comparison; the others go on. Raises
    ExperimentError after the last run when any failed.
    """
    out = Path(out)
    todo = [(c, s) for c in grid.configurations for s in grid.seeds]
    results: dict[str, list[dict]] = {c.name: [] for c in grid.configurations}
    failed, done = [], 0
    for k, (config, seed) in enumerate(todo, 1):
        run_dir = out / config.slug / f"seed-{seed}"
        metrics = finished(run_dir, config, seed)
        if metrics is not None:
            done += 1
        else:
            started = time.perf_counter()
            try:
                metrics = _train_one(config, seed, run_dir, test=grid.test, verbose=verbose)
            except MelShardsError as err:
                log.info(f"[{k}/{len(todo)}] {config.name} seed {seed}: failed: {err}")
                failed.append(f"{config.name} seed {seed}")
                continue
            log.info(
                f"[{k}/{len(todo)}] {config.name} seed {seed}: {grid.metric} "
                f"{_value(metrics, grid.metric):.4f} ({time.perf_counter() - started:.0f} s) -> {run_dir}"
            )
        results[config.name].append(metrics)
    log.info(
        f"{len(todo)} runs: {done} already finished, {len(todo) - done - len(failed)} trained, {len(failed)} failed"
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
    present = [m for m in METRICS if any(not math.isnan(_value(r, m)) for rs in results.values() for r in rs)]
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


def write_picture(rows: Sequence[Mapping[str, Any]], metric: str, out: Path) -> Path:
    """Each configuration's ``metric``: one dot per seed, the mean with its spread as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 1.2 + 0.45 * len(rows)
    fig, ax = plt.subplots(figsize=(8, height))
    for y, row in enumerate(rows):
        values = [v for v in row["_values"] if not math.isnan(v)]
        ax.plot(values, [y] * len(values), "o", color="0.6", markersize=4, zorder=2)
        mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
        ax.errorbar(mean, y, xerr=0 if math.isnan(std) else std, fmt="D", color="C0", capsize=4, zorder=3)
    ax.set_yticks(range(len(rows)), [r["configuration"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (dots: seeds; diamond and bar: mean ± spread)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / PICTURE, dpi=100)
    plt.close(fig)
    return out / PICTURE


# -- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The grid file and how the sweep is kept: every flag is the command's own."""
    p = argparse.ArgumentParser(
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
        written = [*write_tables(rows, out), write_picture(rows, grid.metric, out)]
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MelShardsError as err:
        return report_error(PROG, err)
    print((out / TABLE_MD).read_text(), end="")
    log.info(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
