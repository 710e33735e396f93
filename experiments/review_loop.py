"""Review rounds on the demo: train, pick windows, review them, add them, train again.

    precompute demo-data data/sparse --label-fraction 0.3
    python -m experiments.review_loop --data data/sparse --out runs/review-loop --seeds 0 1 2 \\
        --recipe experiments/recipes/review-demo.toml \\
        --test features/demo-test --truth data/demo/test_ground_truth.csv

The loop a user runs by hand with their own reviewers (docs/review.md), with the synthesizer's
truth as the reviewer (``experiments.review_sim.Reviewer``). At the start only the first
``start`` train recordings of a sparse demo are labelled (their TP and FP rows); the others form
the pool, scored as a windows feature set (computed once). Round 0 trains one model per seed
on the start set. Then, for each strategy (``uncertainty``, ``top`` and the control ``random``,
``experiments.review.pick_windows``) and seed, each round:

1. picks ``n`` windows of the pool with the model of the round before and writes them as Raven
   tables (``reviews/round-R/``), recording what was asked (``asked.csv``);
2. has them reviewed (yes, no or another class, and a box drawn around the call);
3. runs ``precompute features`` with ``--reviews`` over every round's tables into the arm's
   feature set, grown from the start set: the new recordings land in new shards, every shard
   of the start set is reused byte for byte;
4. trains (from the model of the round before with ``warm_start``, over ``[loop.train]``
   options) and scores the run on the test set.

Each run's ``round.json`` holds its counts and seconds; ``loop.md`` and ``loop.csv`` compare the
strategies per round (mean and spread over seeds). A round whose run finished is kept when the
command runs again; delete ``OUT`` to start afresh. ``--measure-cost`` also builds the last
round's feature set afresh and trains it from scratch: the cost of a fresh run of the same size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from commandline.flags import add_flag, build, groups
from commandline.parser import CommandParser
from experiments import sweep
from experiments.errors import ExperimentError
from experiments.review_report import STRATEGIES, compare, write_comparison
from experiments.review_sim import Reviewer, add_counts, reviewed_facts, start_rows, write_rows
from experiments.sweep_grid import check_values, read_toml, table
from melshards.errors import ConfigError, MelShardsError
from melshards.files import atomic_write_text
from melshards.index import read_index

PROG = "python -m experiments.review_loop"
ROUND_FILE = "round.json"
RECIPE_KEYS = ("train", "loop")


@dataclass(frozen=True)
class Plan:
    """How the loop runs (the recipe's ``[loop]`` table; the command line overrides it).

    rounds : review rounds after round 0
    n : windows reviewed per round
    per_recording : most windows of one recording picked in a round
    start : train recordings labelled at the start (the first, by id); the others are the pool
    step : seconds between the pool's windows
    warm_start : each round starts from the model of the round before
    train : train() options of the rounds after round 0, over ``[train]``
    """

    rounds: int = 3
    n: int = 24
    per_recording: int = 1
    start: int = 48
    step: float = 5.0
    warm_start: bool = True
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, low in (("rounds", 1), ("n", 1), ("per_recording", 1), ("start", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"loop {name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int | float) or self.step <= 0:
            raise ConfigError(f"loop step must be a number of seconds > 0, got {self.step!r}")
        if not isinstance(self.warm_start, bool):
            raise ConfigError(f"loop warm_start must be true or false, got {self.warm_start!r}")


@dataclass(frozen=True)
class Inputs:
    """What the loop reads and where it writes."""

    data: Path
    out: Path
    test: str
    truth: str
    seeds: tuple[int, ...] = (0,)
    jobs: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "seeds", tuple(self.seeds))


@dataclass(frozen=True)
class Setup:
    """What every arm shares: the start set, the pool's windows, the class list."""

    audio: Path
    tp: Path
    fp: Path
    classes: str
    start_features: Path
    windows: Path
    pool: tuple[str, ...]


def run_precompute(args: Sequence[str], *, what: str) -> float:
    """``precompute ARGS`` in a process of its own (the arrows keep experiments from importing
    it); its seconds. ExperimentError with its last error line when it fails."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "precompute", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ExperimentError(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return time.perf_counter() - began


def features_args(setup: Setup, out: Path, *, reviews: Path | None, jobs: int) -> list[str]:
    args = ["features", "-q", "--audio-dir", str(setup.audio), "--tp", str(setup.tp), "--fp", str(setup.fp)]
    args += ["--classes", setup.classes, "--out", str(out), "--jobs", str(jobs)]
    return args + (["--reviews", str(reviews)] if reviews is not None else [])


def prepare(inputs: Inputs, plan: Plan) -> Setup:
    """The start set's manifests and features, and the pool's windows (each made once)."""
    audio = inputs.data / "train"
    recordings = sorted(p.stem for p in audio.glob("*.flac"))
    if not recordings:
        raise ExperimentError(f"{audio}: no .flac recordings (make them with precompute demo-data)")
    labelled, pool, rows = start_rows(inputs.data, recordings, start=plan.start)
    labels = inputs.out / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    tp, fp = labels / "start_tp.csv", labels / "start_fp.csv"
    write_rows(tp, rows["tp"])
    write_rows(fp, rows["fp"])
    top = max(
        int(row[1]) for path in ("train_events.csv", "train_fp.csv") for row in _rows(inputs.data / path)
    )
    classes = ",".join(f"s{k}" for k in range(top + 1))
    setup = Setup(
        audio, tp, fp, classes, inputs.out / "features-start", inputs.out / "pool-windows", tuple(pool)
    )
    pool_audio = inputs.out / "pool-audio"
    pool_audio.mkdir(exist_ok=True)
    for name in pool:
        _link_or_copy(audio / f"{name}.flac", pool_audio / f"{name}.flac")
    log.info(
        f"start: {len(labelled)} labelled recordings ({len(rows['tp'])} TP, {len(rows['fp'])} FP rows), pool {len(pool)}"
    )
    run_precompute(
        features_args(setup, setup.start_features, reviews=None, jobs=inputs.jobs), what="start set"
    )
    window_args = ["windows", "-q", "--audio-dir", str(pool_audio), "--out", str(setup.windows)]
    run_precompute([*window_args, "--step", str(plan.step), "--jobs", str(inputs.jobs)], what="pool windows")
    return setup


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems). Not a symbolic
    link: precompute refuses audio that resolves outside its audio directory."""
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _rows(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such file (make it with precompute demo-data)") from None
    return [line.split(",") for line in lines[1:] if line.strip()]


def _finished(run_dir: Path) -> dict[str, Any] | None:
    try:
        done = json.loads((run_dir / ROUND_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return done if isinstance(done, dict) and "test_lwlrap" in done else None


def train_and_score(
    inputs: Inputs, features: Path, run_dir: Path, seed: int, options: Mapping[str, Any]
) -> tuple[dict[str, Any], float]:
    """Train one run and score it on the test set; its metrics and training seconds."""
    began = time.perf_counter()
    sweep.train_run(str(features), seed, run_dir, options=options)
    seconds = time.perf_counter() - began
    metrics = sweep.score_run(run_dir, {"features": inputs.test, "truth": inputs.truth})
    return metrics, seconds


def round_zero(inputs: Inputs, setup: Setup, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    run_dir = inputs.out / "round-0" / f"seed-{seed}"
    done = _finished(run_dir)
    if done is not None:
        return done
    log.info(f"round 0 seed {seed}: training on the start set ...")
    metrics, seconds = train_and_score(inputs, setup.start_features, run_dir, seed, options)
    record = {"round": 0, "seed": seed, "test_lwlrap": metrics["test_lwlrap"], "train_s": seconds}
    record["examples"] = read_index(setup.start_features).n_examples
    atomic_write_text(run_dir / ROUND_FILE, json.dumps(record, indent=1) + "\n")
    log.info(f"round 0 seed {seed}: test LWLRAP {metrics['test_lwlrap']:.4f} ({seconds:.0f} s)")
    return record


def review_round(
    inputs: Inputs,
    setup: Setup,
    plan: Plan,
    options: Mapping[str, Any],
    *,
    arm: Path,
    strategy: str,
    r: int,
    seed: int,
) -> dict[str, Any]:
    """Round ``r`` of one strategy and seed (steps 1-4 of the module docstring)."""
    from experiments.review import pick_and_write

    run_dir = arm / f"round-{r}"
    done = _finished(run_dir)
    if done is not None:
        return done
    previous = (inputs.out / "round-0" / f"seed-{seed}") if r == 1 else arm / f"round-{r - 1}"
    features = arm / "features"
    if not features.exists():
        shutil.copytree(setup.start_features, features)
    reviews = arm / "reviews"
    tables = reviews / f"round-{r}"
    if tables.exists():
        shutil.rmtree(tables)  # a round cut short: picked again from the same model
    picks = pick_and_write(
        previous / sweep.MODEL_FILE,
        setup.windows,
        out=tables,
        n=plan.n,
        per_recording=plan.per_recording,
        strategy=strategy,
        seed=seed * 1000 + r,
        asked=arm / "asked.csv",
        round_name=f"round-{r}",
    )
    reviewer = Reviewer(inputs.data / "train_events.csv", min_overlap=_min_overlap(setup))
    seen = reviewed_facts([reviews / f"round-{k}" for k in range(1, r)])
    answers: dict[str, int] = {}
    for path, recording in picks.tables:
        answers = add_counts(answers, reviewer.review_table(path, recording, seen))
    precompute_s = run_precompute(
        features_args(setup, features, reviews=reviews, jobs=inputs.jobs), what=f"round {r}"
    )
    round_options = {**options, **plan.train}
    if plan.warm_start:
        round_options["init_from"] = str(previous / sweep.MODEL_FILE)
    metrics, train_s = train_and_score(inputs, features, run_dir, seed, round_options)
    record = {"round": r, "seed": seed, "strategy": strategy, "test_lwlrap": metrics["test_lwlrap"]}
    record |= {"reviewed": picks.count, **answers, "precompute_s": precompute_s, "train_s": train_s}
    record["examples"] = read_index(features).n_examples
    atomic_write_text(run_dir / ROUND_FILE, json.dumps(record, indent=1) + "\n")
    log.info(
        f"{strategy} round {r} seed {seed}: test LWLRAP {record['test_lwlrap']:.4f}, "
        f"{answers.get('yes', 0)} yes / {answers.get('no', 0)} no / {answers.get('relabelled', 0)} relabelled"
        f" / {answers.get('repeat', 0)} repeats "
        f"(precompute {precompute_s:.1f} s, training {train_s:.0f} s)"
    )
    return record


def _min_overlap(setup: Setup) -> float:
    return float(read_index(setup.start_features).config.min_overlap)


def run_loop(inputs: Inputs, plan: Plan, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every round of every strategy and seed; their records."""
    setup = prepare(inputs, plan)
    records = [round_zero(inputs, setup, options, seed) for seed in inputs.seeds]
    for seed in inputs.seeds:
        for strategy in STRATEGIES:
            arm = inputs.out / strategy / f"seed-{seed}"
            for r in range(1, plan.rounds + 1):
                records.append(
                    review_round(inputs, setup, plan, options, arm=arm, strategy=strategy, r=r, seed=seed)
                )
    return records


def measure_cost(
    inputs: Inputs, plan: Plan, options: Mapping[str, Any], last: Mapping[str, Any]
) -> dict[str, Any]:
    """The last round of the first seed's uncertainty arm against a fresh run of the same size:
    its reviews built into a new feature set, trained from scratch with ``[train]`` options."""
    seed = inputs.seeds[0]
    arm = inputs.out / STRATEGIES[0] / f"seed-{seed}"
    setup = Setup(
        inputs.data / "train",
        inputs.out / "labels" / "start_tp.csv",
        inputs.out / "labels" / "start_fp.csv",
        _classes_of(inputs.out / "features-start"),
        inputs.out / "features-start",
        inputs.out / "pool-windows",
        (),
    )
    fresh = inputs.out / "fresh" / "features"
    if fresh.exists():
        shutil.rmtree(fresh)
    precompute_s = run_precompute(
        features_args(setup, fresh, reviews=arm / "reviews", jobs=inputs.jobs), what="fresh set"
    )
    run_dir = inputs.out / "fresh" / "run"
    began = time.perf_counter()
    sweep.train_run(str(fresh), seed, run_dir, options=options)
    train_s = time.perf_counter() - began
    cost = {"examples": read_index(fresh).n_examples, "round": last["round"]}
    cost |= {"round_precompute_s": last["precompute_s"], "round_train_s": last["train_s"]}
    cost |= {"fresh_precompute_s": precompute_s, "fresh_train_s": train_s}
    atomic_write_text(inputs.out / "cost.json", json.dumps(cost, indent=1) + "\n")
    return cost


def _classes_of(features: Path) -> str:
    return ",".join(read_index(features).class_names)


def read_recipe(path: Path | None) -> tuple[dict[str, Any], Plan]:
    """A recipe's train() options (``[train]``) and the loop's settings (``[loop]``, with
    ``[loop.train]`` the options of the rounds after round 0). ConfigError naming the file and
    key for an unknown key or a bad value."""
    if path is None:
        return {}, Plan()
    data = read_toml(path, what="recipe")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(RECIPE_KEYS)}")
    options = table(data.get("train", {}), f"{path} [train]")
    check_values(options, f"{path} [train]")
    loop = table(data.get("loop", {}), f"{path} [loop]", what="loop settings")
    known = [f.name for f in fields(Plan)]
    unknown = sorted(set(loop) - set(known))
    if unknown:
        raise ConfigError(f"{path} [loop]: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        plan = Plan(**loop)
    except ConfigError as err:
        raise ConfigError(f"{path} [loop]: {str(err).removeprefix('loop ')}") from None
    check_values(options | table(plan.train, f"{path} [loop.train]"), f"{path} [loop.train]")
    return options, plan


def build_parser() -> argparse.ArgumentParser:
    """The flags by ``dest``: ``inputs.FIELD`` a field of ``Inputs``, ``plan.FIELD`` one of
    ``Plan`` (None: the recipe's); the others are the command's."""
    p = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_flag(
        p,
        "--data",
        field="inputs.data",
        type=Path,
        required=True,
        help="a demo data folder (precompute demo-data)",
    )
    add_flag(
        p,
        "--out",
        field="inputs.out",
        type=Path,
        required=True,
        help="directory of the loop's files and runs",
    )
    add_flag(p, "--test", field="inputs.test", required=True, help="windows feature set to score each run on")
    add_flag(p, "--truth", field="inputs.truth", required=True, help="ground truth CSV of --test")
    add_flag(p, "--seeds", field="inputs.seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    add_flag(p, "--jobs", field="inputs.jobs", type=int, default=2, help="precompute jobs (default 2)")
    p.add_argument("--recipe", type=Path, help="TOML: train() options in [train], the loop in [loop]")
    for name, kind, text in (
        ("rounds", int, "review rounds after round 0"),
        ("n", int, "windows reviewed per round"),
        ("per-recording", int, "most windows of one recording picked per round"),
        ("start", int, "train recordings labelled at the start"),
    ):
        add_flag(
            p,
            f"--{name}",
            field=f"plan.{name.replace('-', '_')}",
            type=kind,
            help=f"{text} (default: the recipe's)",
        )
    p.add_argument(
        "--measure-cost", action="store_true", help="also time a fresh run the size of the last round"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    values = groups(build_parser().parse_args(argv))
    own = values[""]
    setup_logging(quiet=own["quiet"])
    # Every round scores with a model of its own: TensorFlow warns of retracing from the fifth.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        options, plan = read_recipe(own["recipe"])
        plan = replace(plan, **{k: v for k, v in values["plan"].items() if v is not None})
        inputs = build(Inputs, values["inputs"])
        records = run_loop(inputs, plan, options)
        cost = None
        if own["measure_cost"]:
            last = next(
                r for r in records if r["round"] == plan.rounds and r.get("strategy") == STRATEGIES[0]
            )
            cost = measure_cost(inputs, plan, options, last)
        written = write_comparison(compare(records, plan.rounds), inputs.out, cost=cost)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MelShardsError as err:
        return report_error(PROG, err)
    print(written.read_text(), end="")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
