"""Does the storage codec change what a model learns? The demo baseline trained from each codec.

For every codec in ``CODECS``: precompute the demo's training features and its test windows
with that codec, then train the baseline (``experiments.train``) for each seed and score the
test set (``experiments.predict``). Seeds run in turn across codecs, so a slow spell of a
shared machine touches every codec alike. Compression is lossless, so a compressed codec
trains exactly like its uncompressed twin (``uint8`` with the same ``quant_bits``): only the
value codecs are trained.

    python -m benchmarks.codec_training --seeds 4 --json benchmarks/codec_training.json

Prints a table (mean and standard deviation over seeds of val and test LWLRAP, disk size)
and writes the runs' figures. Minutes on a GPU, about two minutes per run on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.precompute_bench import write_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).parent.parent

# codec name -> feature parameters changed from the default preset
CODECS: dict[str, dict[str, object]] = {
    "float16": {"dtype": "float16"},
    "uint8": {"dtype": "uint8"},
    "uint8, 6 bits": {"dtype": "uint8", "quant_bits": 6},
}


def precompute(demo: Path, work: Path, name: str, params: dict[str, object], jobs: int) -> tuple[Path, Path]:
    """The codec's training features and test windows (reused when already there)."""
    slug = name.replace(", ", "-").replace(" ", "")
    toml = write_config(work / f"{slug}.toml", params)
    train, test = work / f"{slug}-train", work / f"{slug}-test"
    base = [sys.executable, "-m", "precompute"]
    common = ["--config", str(toml), "--jobs", str(jobs), "--quiet"]
    subprocess.run(
        [*base, "features", "--audio-dir", str(demo / "train"), "--tp", str(demo / "train_tp.csv")]
        + ["--fp", str(demo / "train_fp.csv"), "--out", str(train), *common],
        check=True,
    )
    subprocess.run(
        [*base, "windows", "--audio-dir", str(demo / "test"), "--out", str(test), "--step", "5", *common],
        check=True,
    )
    return train, test


def run(demo: Path, work: Path, *, seeds: int, epochs: int, jobs: int) -> dict:
    from experiments.predict import predict
    from experiments.train import train
    from melshards.index import read_index

    if not (demo / "train_tp.csv").is_file():
        subprocess.run([sys.executable, "-m", "precompute", "demo-data", str(demo), "--quiet"], check=True)
    work.mkdir(parents=True, exist_ok=True)
    sets = {name: precompute(demo, work, name, params, jobs) for name, params in CODECS.items()}
    results: dict[str, dict] = {
        name: {
            "params": CODECS[name],
            "mb_on_disk": sum(s.bytes for s in read_index(train).shards) / 1e6,
            "runs": [],
        }
        for name, (train, _) in sets.items()
    }
    for seed in range(seeds):
        for name, (train_set, test_set) in sets.items():
            out = work / "runs" / f"{name.replace(', ', '-').replace(' ', '')}-seed{seed}"
            started = time.perf_counter()
            metrics = train(train_set, out=out, epochs=epochs, seed=seed, verbose=0, quiet=True)
            tested = predict(
                test_set,
                model=out / "model.keras",
                out=out / "submission.csv",
                truth=demo / "test_ground_truth.csv",
                quiet=True,
            )
            run_figures = {
                "seed": seed,
                "val_lwlrap": metrics["val_lwlrap"],
                "test_lwlrap": tested["test_lwlrap"],
                "best_epoch": metrics.get("best_epoch"),
                "seconds": time.perf_counter() - started,
            }
            results[name]["runs"].append(run_figures)
            print(json.dumps({"codec": name, **run_figures}), flush=True)
    for figures in results.values():
        for key in ("val_lwlrap", "test_lwlrap"):
            values = [r[key] for r in figures["runs"]]
            figures[key] = {"mean": _mean(values), "std": _std(values)}
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def table(results: dict) -> list[str]:
    lines = [f"{'codec':<16}{'MB':>8}{'val LWLRAP':>20}{'test LWLRAP':>20}{'runs':>6}"]
    for name, r in results.items():
        val, test = r["val_lwlrap"], r["test_lwlrap"]
        lines.append(
            f"{name:<16}{r['mb_on_disk']:>8.1f}{val['mean']:>12.3f} +- {val['std']:.3f}"
            f"{test['mean']:>12.3f} +- {test['std']:.3f}{len(r['runs']):>6}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "codec-training")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = run(args.demo, args.work, seeds=args.seeds, epochs=args.epochs, jobs=args.jobs)
    print("\n".join(table(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
