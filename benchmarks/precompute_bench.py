"""Precompute: the log-mel paths side by side, whole runs against today's path, scaling, start-up.

- log-mel: the ``fast`` path (``stft = "fast"``) and librosa's (``stft = "librosa"``) on the
  same windows, one core, in this process, rounds interleaved; the figure is the median ratio,
  with the largest difference of the stored values in float16 steps (2**-11, after min-max)
  and in dB (without it);
- floor: decode only the window and compute its log-mel with the default parameters, one slice
  at a time, one core, in a fresh process; the ideal rate on N cores is N / floor;
- ``precompute features`` run as a user runs it (a fresh process, end to end) on the demo (1x)
  and on a demo synthesized with ``scale`` x the recordings: ``--jobs`` = cores on both,
  ``--jobs 1`` on the larger with the default config and with today's reference path
  (``--set stft=librosa --set share_frames=false``); each run ``repeats`` times, interleaved,
  the fastest kept. Each run also reports the CPU it used (its process tree) per second of
  audio stored (slices x window length);
- first shard: seconds from starting ``precompute features --jobs 1`` in a fresh process until
  the first shard file is in place;
- peak resident memory: the sum over the process tree (driver + workers), sampled every 20 ms.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

from melshards.index import read_index
from precompute.config_files import preset
from precompute.mel import log_mel
from precompute.windows import place_window

# Today's path before the fast log-mel: librosa's STFT, every window computed alone.
REFERENCE_SET = ["--set", "stft=librosa", "--set", "share_frames=false"]


def demo_windows(demo: Path, *, limit: int = 40) -> list[np.ndarray]:
    """The default preset's windows around the first ``limit`` TP rows of the demo, decoded."""
    config = preset("default")
    with open(demo / "train_tp.csv") as fh:
        rows = list(csv.DictReader(fh))[:limit]
    n = int(round(config.window_seconds * config.sample_rate))
    windows = []
    for row in rows:
        path = demo / "train" / f"{row['recording_id']}.flac"
        seconds = sf.info(str(path)).duration
        start = place_window(
            float(row["t_min"]), float(row["t_max"]), length=config.window_seconds, recording_seconds=seconds
        )
        y, _ = sf.read(path, start=int(round(start * config.sample_rate)), frames=n, dtype="float32")
        windows.append(y)
    return windows


def log_mel_figures(demo: Path, *, rounds: int = 5) -> dict:
    """The fast and the librosa log-mel on the same windows: ms per slice, speed-up, differences."""
    from threadpoolctl import threadpool_limits

    windows = demo_windows(demo)
    fast = preset("default")
    reference = dataclasses.replace(fast, stft="librosa", share_frames=False)

    def seconds(config) -> float:
        started = time.perf_counter()
        for y in windows:
            log_mel(y, config=config)
        return (time.perf_counter() - started) / len(windows)

    with threadpool_limits(limits=1):
        seconds(fast), seconds(reference)  # imports, caches, compiled code
        pairs = [(seconds(fast), seconds(reference)) for _ in range(rounds)]
        stored, db = 0.0, 0.0
        undb = dataclasses.replace(fast, normalize="none")
        for y in windows:
            a = log_mel(y, config=fast).astype(np.float16).astype(np.float32)
            b = log_mel(y, config=reference).astype(np.float16).astype(np.float32)
            stored = max(stored, float(np.abs(a - b).max()))
            ref_db = log_mel(y, config=dataclasses.replace(undb, stft="librosa", share_frames=False))
            db = max(db, float(np.abs(log_mel(y, config=undb) - ref_db).max()))
    return {
        "slices": len(windows),
        "fast_ms_per_slice": statistics.median(f for f, _ in pairs) * 1e3,
        "librosa_ms_per_slice": statistics.median(r for _, r in pairs) * 1e3,
        "speedup": statistics.median(r / f for f, r in pairs),
        # In float16 steps of [0.5, 1) (2**-11), the coarsest of the stored values in [0, 1].
        "max_float16_steps": stored / 2.0**-11,
        "max_db_difference": db,
    }


def first_shard_seconds(demo: Path, out: Path, *, extra: list[str] = ()) -> float:
    """Seconds from starting ``precompute features --jobs 1`` until its first shard is in place."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*features_command(demo, out, jobs=1), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while proc.poll() is None and not any(out.glob("shard-*.h5")):
            time.sleep(0.005)
        seconds = time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(out, ignore_errors=True)
    return seconds


def demo_at_scale(demo: Path, work: Path, scale: int) -> Path:
    """The demo dataset with ``scale`` times its train recordings (synthesized once, then reused)."""
    n_train = len(list((demo / "train").glob("*.flac")))
    out = work / f"demo-x{scale}"
    if not (out / "train_fp.csv").is_file() or len(list((out / "train").glob("*.flac"))) != n_train * scale:
        from precompute.demo import synthesize

        shutil.rmtree(out, ignore_errors=True)
        synthesize(
            out, recordings=n_train * scale, test_recordings=0, jobs=os.cpu_count() or 1, progress=False
        )
    return out


def floor_seconds_per_slice(demo: Path, tp: Path, *, limit: int = 40, repeats: int = 3) -> float:
    """Seconds to decode one window and compute its log-mel, on one core (best of ``repeats``)."""
    from threadpoolctl import threadpool_limits

    config = preset("default")
    with open(tp) as fh:
        rows = list(csv.DictReader(fh))[:limit]
    length = config.window_seconds
    n = int(round(length * config.sample_rate))
    with threadpool_limits(limits=1):
        # Warm up imports and caches outside the timing.
        y, _ = sf.read(demo / "train" / f"{rows[0]['recording_id']}.flac", frames=n, dtype="float32")
        log_mel(y, config=config)
        started = time.perf_counter()
        for row in rows:
            path = demo / "train" / f"{row['recording_id']}.flac"
            seconds = sf.info(str(path)).duration
            start = place_window(
                float(row["t_min"]), float(row["t_max"]), length=length, recording_seconds=seconds
            )
            first = int(round(start * config.sample_rate))
            y, _ = sf.read(path, start=first, frames=n, dtype="float32")
            log_mel(y, config=config)
        return (time.perf_counter() - started) / len(rows)


def floor_in_fresh_process(demo: Path) -> float:
    """``floor_seconds_per_slice`` in a new interpreter, like the runs it is compared with."""
    code = (
        "import sys; from pathlib import Path; from benchmarks.precompute_bench import floor_seconds_per_slice; "
        f"print(floor_seconds_per_slice(Path({str(demo)!r}), Path({str(demo / 'train_tp.csv')!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_measured(cmd: list[str]) -> tuple[float, int, int, float]:
    """Run ``cmd``; return (wall seconds, exit status, peak RSS bytes summed over its process tree,
    CPU seconds of the process and every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - started, proc.returncode, peak, cpu


def write_config(path: Path, params: dict[str, object]) -> Path:
    """A TOML config file (``--config``) setting ``params``; returns ``path``."""
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in params.items()))
    return path


def features_command(demo: Path, out: Path, *, jobs: int | None = None) -> list[str]:
    """The ``precompute features`` command line a user runs on a demo-layout dataset."""
    cmd = [sys.executable, "-m", "precompute", "features", "--audio-dir", str(demo / "train")]
    cmd += [
        "--tp",
        str(demo / "train_tp.csv"),
        "--fp",
        str(demo / "train_fp.csv"),
        "--out",
        str(out),
        "--quiet",
    ]
    return cmd if jobs is None else [*cmd, "--jobs", str(jobs)]


def features_run(demo: Path, out: Path, *, jobs: int, extra: list[str] = ()) -> dict:
    """One clean ``precompute features`` run into ``out``: its time, CPU, peak memory and disk use."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, _, peak, cpu = run_measured([*features_command(demo, out, jobs=jobs), *extra])
    index = read_index(out)
    config = index.config
    disk = sum(s.bytes for s in index.shards)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "jobs": jobs,
        "slices": index.n_examples,
        "seconds": seconds,
        "slices_per_s": index.n_examples / seconds,
        "peak_rss_mb": peak / 1e6,
        "cpu_ms_per_audio_s": cpu * 1e3 / (index.n_examples * config.window_seconds),
        "disk_bytes_per_slice": disk / index.n_examples,
        "raw_float32_bytes_per_slice": config.n_mels * config.n_frames * 4,
    }


def best_runs(plans: dict[str, tuple[Path, int, list[str]]], work: Path, *, repeats: int) -> dict[str, dict]:
    """``features_run`` for each named (dataset, jobs), ``repeats`` rounds interleaved; keeps the
    fastest run of each (the machine is shared: neighbours only ever add time) and the largest
    peak memory seen."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, (demo, jobs, extra) in plans.items():
            result = features_run(demo, work / name, jobs=jobs, extra=extra)
            kept = best.setdefault(name, result)
            peak = max(kept["peak_rss_mb"], result["peak_rss_mb"])
            if result["seconds"] < kept["seconds"]:
                best[name] = kept = result
            kept["peak_rss_mb"] = peak
    return best


def run(demo: Path, work: Path, *, scale: int = 6, repeats: int = 2) -> dict:
    cores = os.cpu_count() or 1
    big_demo = demo_at_scale(demo, work, scale)
    mel = log_mel_figures(demo)
    floor = floor_in_fresh_process(demo)
    first = {
        "default": min(first_shard_seconds(demo, work / "first") for _ in range(repeats)),
        "reference": min(
            first_shard_seconds(demo, work / "first", extra=REFERENCE_SET) for _ in range(repeats)
        ),
    }
    runs = best_runs(
        {
            "jobs_cores_1x": (demo, cores, []),
            "jobs_1_big": (big_demo, 1, []),
            "jobs_1_big_reference": (big_demo, 1, REFERENCE_SET),
            "jobs_cores_big": (big_demo, cores, []),
        },
        work,
        repeats=repeats,
    )
    small, one, many = runs["jobs_cores_1x"], runs["jobs_1_big"], runs["jobs_cores_big"]
    ideal = cores / floor
    return {
        "cores": cores,
        "scale": scale,
        "repeats": repeats,
        "log_mel": mel,
        "log_mel_speedup": mel["speedup"],
        "floor_ms_per_slice": floor * 1e3,
        "ideal_slices_per_s": ideal,
        **runs,
        "jobs_1_speedup": one["slices_per_s"] / runs["jobs_1_big_reference"]["slices_per_s"],
        "first_shard_s": first["default"],
        "first_shard_reference_s": first["reference"],
        "ratio_to_ideal": many["slices_per_s"] / ideal,
        "scaling_efficiency": many["slices_per_s"] / (cores * one["slices_per_s"]) if cores > 1 else 1.0,
        "ratio_to_ideal_1x": small["slices_per_s"] / ideal,
        "peak_rss_ratio_big_to_1x": many["peak_rss_mb"] / small["peak_rss_mb"],
    }
