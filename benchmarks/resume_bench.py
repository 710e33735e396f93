"""Resuming a killed run: seconds from ``python -m experiments.train --resume RUN`` to its first
trained batch, against a fresh start's seconds to its first batch, measured in the same round.

Each round starts a fresh run of the default model on the feature set (``--batch-log``, a
checkpoint every 2 batches), times it to its first trained batch (the first line of
``batches.log``), lets it reach a checkpoint in the middle of its first epoch, SIGKILLs it,
then times ``--resume`` to the first batch it trains (the line of the checkpoint's position)
and kills that too, then times a second fresh start (in another run directory) in the same
conditions as the resume: the figures compare the resume with this one. All figures include
the process start (importing TensorFlow), building the sequences and the model, and tracing
the training step; the resume adds reading the checkpoint (weights, optimizer, seed and metric
state) and the loader state. Every run is a separate process: TensorFlow never enters the
benchmark's own process.

Measured here, the resume reaches its first batch sooner than a fresh start: restoring builds
the optimizer's variables (and the metrics') before ``fit``, so Keras traces the training step
once instead of building them inside its first step; a fresh start spends those seconds in
its first step.

Run on its own: ``python -m benchmarks.resume_bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).parent.parent
CHECKPOINT_EVERY = 2
TIMEOUT_S = 600.0


def _start(argv: list[str]) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "experiments.train", *argv]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, started


def _wait(process: subprocess.Popen, ready: Callable[[], bool], what: str) -> float:
    """perf_counter when ``ready()`` first holds (polled every 5 ms); RuntimeError if the
    process ends or the time runs out first."""
    deadline = time.perf_counter() + TIMEOUT_S
    while not ready():
        if process.poll() is not None or time.perf_counter() > deadline:
            process.kill()
            raise RuntimeError(f"resume_bench: the run ended (status {process.returncode}) before {what}")
        time.sleep(0.005)
    return time.perf_counter()


def _logged(log: Path) -> list[tuple[int, int]]:
    """(epoch, index) of every complete line of a ``batches.log``."""
    try:
        text = log.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [
        tuple(int(v) for v in line.split()[:2])
        for line in text.splitlines(keepends=True)
        if line.endswith("\n")
    ]


def _loader_state(run: Path) -> dict | None:
    try:
        return json.loads((run / "checkpoint.loader.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def _fresh_argv(features: Path, run: Path) -> list[str]:
    every = str(CHECKPOINT_EVERY)
    return [
        "--features",
        str(features),
        "--out",
        str(run),
        "--checkpoint-every",
        every,
        "--batch-log",
        "--verbose",
        "0",
    ]


def one_round(features: Path, run: Path) -> dict:
    """One fresh start killed mid-epoch, one resume: their seconds to the first trained batch."""
    log = run / "batches.log"
    process, started = _start(_fresh_argv(features, run))
    fresh = _wait(process, lambda: bool(_logged(log)), "its first batch") - started

    def mid_epoch() -> bool:
        state = _loader_state(run)
        return state is not None and state["loader"]["batch"] > 0

    _wait(process, mid_epoch, "a checkpoint in the middle of an epoch")
    _kill(process)
    state = _loader_state(run)
    position = (state["loader"]["epoch"], state["loader"]["batch"])

    process, started = _start(["--resume", str(run)])
    resumed = _wait(process, lambda: position in _logged(log), "its first batch") - started
    _kill(process)

    again = run.with_name(run.name + "-again")
    process, started = _start(_fresh_argv(features, again))
    fresh_again = _wait(process, lambda: bool(_logged(again / "batches.log")), "its first batch") - started
    _kill(process)
    return {
        "first_fresh_first_batch_s": fresh,
        "fresh_first_batch_s": fresh_again,
        "resume_first_batch_s": resumed,
        "resumed_at": list(position),
        "batches_per_epoch": state["loader"]["batches"],
        "checkpoint_mb": (run / state["model"]).stat().st_size / 1e6,
    }


def run(features: Path, *, rounds: int = 3) -> dict:
    """Median over ``rounds`` of each figure, the rounds themselves and the machine's load."""
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="resume-bench-") as tmp:
        for i in range(rounds):
            results.append(one_round(Path(features), Path(tmp) / f"run{i}"))
    fresh = statistics.median(r["fresh_first_batch_s"] for r in results)
    first_fresh = statistics.median(r["first_fresh_first_batch_s"] for r in results)
    resumed = statistics.median(r["resume_first_batch_s"] for r in results)
    return {
        "features": str(features),
        "model": "baseline",
        "rounds": rounds,
        "checkpoint_every": CHECKPOINT_EVERY,
        "fresh_first_batch_s": round(fresh, 2),
        "first_fresh_first_batch_s": round(first_fresh, 2),
        "resume_first_batch_s": round(resumed, 2),
        "resume_vs_fresh": round(resumed / fresh, 3),
        "resume_extra_s": round(resumed - fresh, 2),
        "per_round": results,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def table(result: dict) -> list[str]:
    first = result["per_round"][0]
    return [
        f"resume (experiments.train, {result['model']} on {Path(result['features']).name}, median of "
        f"{result['rounds']} rounds; killed mid-epoch at batch {first['resumed_at'][1]} of "
        f"{first['batches_per_epoch']}, checkpoint {first['checkpoint_mb']:.1f} MB)",
        f"{'start to first trained batch':<34}{'s':>10}",
        f"{'fresh run':<34}{result['fresh_first_batch_s']:>10.2f}",
        f"{'fresh run, first of the round':<34}{result['first_fresh_first_batch_s']:>10.2f}",
        f"{'--resume':<34}{result['resume_first_batch_s']:>10.2f}",
        f"{'resume / fresh':<34}{result['resume_vs_fresh']:>10.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.features, rounds=args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
