"""``make bench``: loader and precompute benchmarks, one table, ``benchmarks/results.json``.

Every figure is measured in this run on the same data; targets are ratios between figures
of this run (see ``../shared/BENCHMARKS.md``), never absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).parent
ROOT = HERE.parent

TARGETS = [
    # (section, figure, minimum)
    ("loader", "float32_vs_in_ram", 1.5),
    ("loader", "float32_augment_vs_in_ram", 1.0),
    ("loader", "float16_vs_in_ram_float16", 0.8),
    ("loader", "float32_vs_per_sample", 500.0),
    # The loader against the copy bound: the storage section times them in turn, round after
    # round; the loader section's bound rows are best-of-3 timings taken apart (information).
    ("storage", "uint8_loader_vs_float16", 1.1),
    ("storage", "float16_vs_copy_bound", 0.9),
    ("storage", "uint8_vs_copy_bound", 0.9),
    ("storage", "compressed_loader_vs_float16", 0.6),
    ("storage", "compressed_loader_vs_lilcom", 10.0),
    ("fit", "shard_sequence", 0.9),
    ("fit_jax", "shard_sequence", 0.85),
    ("torch", "shard_dataset_workers_0", 0.85),
    ("torch", "shard_dataset_workers_2", 0.85),
    ("fit", "as_tf_dataset", 0.7),
    ("fit", "shard_sequence_threads_2", 0.5),
    ("fit", "shard_sequence_processes_2", 0.5),
    ("precompute", "log_mel_speedup", 2.5),
    ("precompute", "jobs_1_speedup", 2.0),
    ("precompute", "ratio_to_ideal", 0.8),
    ("precompute", "scaling_efficiency", 0.85),
    ("remote", "warm_vs_local", 0.95),
]
# (section, figure, maximum)
CEILINGS = [
    ("precompute", "first_shard_s", 2.0),
    ("storage", "uint8_disk_vs_float16", 0.5),
    ("storage", "compressed_disk_vs_float16", 0.33),
    ("storage", "first_batch_ms", 20.0),
    # Frame targets against clip labels, augmented batches timed in turn (loader_bench).
    ("loader", "frame_targets_cost", 0.10),
    ("loader", "frame_targets_cpu_cost", 0.10),
]


def ensure_demo(demo: Path, features: Path) -> None:
    from benchmarks import precompute_bench

    if not (demo / "train_tp.csv").is_file():
        subprocess.run([sys.executable, "-m", "precompute", "demo-data", str(demo), "--quiet"], check=True)
    from melshards.errors import FormatError
    from melshards.index import read_index

    try:
        read_index(features)
    except FormatError:  # missing, unfinished or of an older format: (re)build it
        subprocess.run(precompute_bench.features_command(demo, features), check=True)


def fit_figures(features: Path, demo: Path, *, rounds: int, backend: str = "tensorflow", extra=()) -> dict:
    """``benchmarks.fit_bench`` in its own process: TensorFlow changes whatever runs after it,
    and Keras picks its backend once per process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        cmd = [sys.executable, "-m", "benchmarks.fit_bench", "--features", str(features), "--demo", str(demo)]
        subprocess.run(
            [*cmd, "--rounds", str(rounds), "--json", str(out), *extra],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        return json.loads(out.read_text())


def torch_figures(features: Path, demo: Path) -> dict:
    """``benchmarks.torch_bench`` in its own process (no TensorFlow in it)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.torch_bench",
            "--features",
            str(features),
            "--demo",
            str(demo),
        ]
        subprocess.run([*cmd, "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def precompute_lines(pre: dict) -> list[str]:
    """The precompute section of the table: log-mel paths, floor, first shard, the runs."""
    lines = [
        "",
        f"log-mel per slice, one core: fast {pre['log_mel']['fast_ms_per_slice']:.1f} ms, librosa "
        f"{pre['log_mel']['librosa_ms_per_slice']:.1f} ms ({pre['log_mel']['speedup']:.2f}x); largest "
        f"difference {pre['log_mel']['max_float16_steps']:.2f} float16 step after min-max, "
        f"{pre['log_mel']['max_db_difference']:.1e} dB without",
        f"precompute: floor {pre['floor_ms_per_slice']:.1f} ms/slice on one core -> ideal "
        f"{pre['ideal_slices_per_s']:.1f} slices/s on {pre['cores']} cores; first shard after "
        f"{pre['first_shard_s']:.2f} s in a fresh process (reference path {pre['first_shard_reference_s']:.2f} s)",
        f"{'run':<34}{'slices':>8}{'s':>8}{'slices/s':>10}{'CPU ms/audio s':>16}{'peak RSS MB':>13}"
        f"{'disk/raw':>10}",
    ]
    for name in ("jobs_1_big_reference", "jobs_1_big", "jobs_cores_big", "jobs_cores_1x"):
        r = pre[name]
        lines.append(
            f"{name + ' (jobs ' + str(r['jobs']) + ')':<34}{r['slices']:>8}{r['seconds']:>8.1f}{r['slices_per_s']:>10.1f}"
            f"{r['cpu_ms_per_audio_s']:>16.2f}{r['peak_rss_mb']:>13.0f}"
            f"{r['disk_bytes_per_slice'] / r['raw_float32_bytes_per_slice']:>10.2f}"
        )
    return lines


def table(results: dict) -> list[str]:
    loader = results["loader"]
    lines = [
        f"machine: {results['machine']['cores']} cores, {results['machine']['python']}, load "
        f"{results['machine'].get('load_before', float('nan')):.2f} before, "
        f"{results['machine'].get('load_after_15min', float('nan')):.2f} over the last 15 min; "
        f"batch {'x'.join(map(str, loader['batch']))}, {loader['examples']} examples, "
        f"copy bandwidth {loader['copy_bandwidth_gb_s']:.1f} GB/s",
        "",
        f"{'loader (shuffled batches)':<34}{'ms/batch':>10}{'samples/s':>12}",
    ]
    for name, fig in loader["readers"].items():
        lines.append(f"{name:<34}{fig['ms_per_batch']:>10.2f}{fig['samples_per_s']:>12.0f}")
    frames = loader["frame_targets"]
    lines.append(
        f"{'augmented, clip labels / frame targets':<34}{frames['clip_ms']:>10.2f} / {frames['frames_ms']:.2f} ms "
        f"(frame targets {frames['frame_targets_cost']:+.1%}; CPU {frames['clip_cpu_ms']:.2f} / "
        f"{frames['frames_cpu_ms']:.2f} ms, {frames['frame_targets_cpu_cost']:+.1%}; timed in turn)"
    )
    if "storage" in results:
        from benchmarks import storage_bench

        lines += ["", *storage_bench.table(results["storage"])]
    pre = results.get("precompute")
    lines += precompute_lines(pre) if pre else []
    if "remote" in results:
        from benchmarks import remote_bench

        lines += ["", *remote_bench.table(results["remote"])]
    if "plan" in results:
        plan = results["plan"]
        lines += [
            "",
            f"planning {plan['rows']:,} manifest rows ({plan['recordings']:,} recordings, no audio read): "
            f"{plan['plan_s']:.1f} s, {plan['rows_per_s']:,} rows/s, memory grew {plan['rss_growth_mb']:.0f} MB "
            f"({plan['rss_growth_bytes_per_row']:.0f} bytes/row), {plan['jobs']:,} shard jobs",
        ]
    if "fit" in results or "fit_jax" in results:
        from benchmarks import fit_bench  # imports TensorFlow: only once everything is measured

        for section in ("fit", "fit_jax"):
            if section in results:
                lines += ["", *fit_bench.table(results[section])]
    if "torch" in results:
        from benchmarks import torch_bench

        lines += ["", *torch_bench.table(results["torch"])]
    if "resume" in results:
        from benchmarks import resume_bench

        lines += ["", *resume_bench.table(results["resume"])]
    lines += ["", f"{'target':<40}{'measured':>10}{'needed':>10}  "]
    for section, figure, minimum in TARGETS:
        if section not in results:
            continue
        if section == "loader":
            value = results[section]["ratios"][figure]
        elif section in ("fit", "fit_jax", "torch"):
            value = results[section]["inputs"][figure]["ratio_to_zero_cost"]
        elif section == "storage":
            value = results[section]["targets"].get(figure)
            if value is None:  # lilcom not installed: nothing to compare with
                continue
        else:
            value = results[section][figure]
        lines.append(
            f"{section + ': ' + figure:<40}{value:>10.2f}{minimum:>10.2f}  {'ok' if value >= minimum else 'MISSED'}"
        )
    for section, figure, maximum in CEILINGS:
        if section in results:
            value = results[section].get("targets", results[section]).get(figure)
            lines.append(
                f"{section + ': ' + figure:<40}{value:>10.2f}{'<= ' + format(maximum, '.2f'):>10}  "
                f"{'ok' if value <= maximum else 'MISSED'}"
            )
    if pre:
        lines.append(
            f"{'precompute: peak_rss_ratio_big_to_1x':<40}{pre['peak_rss_ratio_big_to_1x']:>10.2f}{'~1':>10}"
        )
        lines.append(f"{'precompute: ratio_to_ideal_1x (info)':<40}{pre['ratio_to_ideal_1x']:>10.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--skip-precompute", action="store_true")
    parser.add_argument("--fit-rounds", type=int, default=5, help="rounds of the model.fit comparison")
    args = parser.parse_args(argv)

    from benchmarks import loader_bench, plan_bench, precompute_bench, remote_bench, storage_bench

    started = time.perf_counter()
    ensure_demo(args.demo, args.features)
    results = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_before": os.getloadavg()[0],
        },
    }
    sections = ["plan", "storage", "loader", "remote", "fit", "fit_jax", "torch", "resume"]
    if not args.skip_precompute:
        sections.insert(0, "precompute")
    with tqdm(sections, desc="make bench", unit="section", file=sys.stderr) as bar:
        for section in bar:
            bar.set_postfix_str(section)
            if section == "precompute":
                # First: its runs are separate processes and want an otherwise idle machine.
                results["precompute"] = precompute_bench.run(args.demo, args.work)
            elif section == "plan":
                results["plan"] = plan_bench.run()
            elif section == "storage":
                results["storage"] = storage_bench.run(args.demo, args.work)
                results["storage"]["first_batch"] = storage_bench.first_batch(args.features)
                results["storage"]["targets"]["first_batch_ms"] = results["storage"]["first_batch"][
                    "after-model"
                ]["warm"]["total_ms"]
            elif section == "loader":
                results["loader"] = loader_bench.run(args.features, args.demo)
            elif section == "remote":  # the same set from a local S3 server
                results["remote"] = remote_bench.run(args.features, rounds=7)
            elif section == "fit":
                results["fit"] = fit_figures(args.features, args.demo, rounds=args.fit_rounds)
            elif section == "fit_jax":  # Keras on JAX, no TensorFlow in the process
                extra = ["--inputs", "shard_sequence,shard_sequence_float16", "--per-sample-batches", "0"]
                results["fit_jax"] = fit_figures(
                    args.features, args.demo, rounds=3, backend="jax", extra=extra
                )
            elif section == "resume":  # experiments.train processes, killed and resumed
                from benchmarks import resume_bench

                results["resume"] = resume_bench.run(args.features)
            else:
                results["torch"] = torch_figures(args.features, args.demo)
    results["seconds"] = time.perf_counter() - started
    # The 15-minute load average at the end spans most of the run: other work on the machine
    # shows as load above the bench's own (about 1 on most sections, 2 with two jobs).
    results["machine"]["load_after_15min"] = os.getloadavg()[2]
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(table(results)))
    print(f"\nwrote {args.out} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
