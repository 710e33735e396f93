"""The default precompute against the per-window reference: every stored value, and the cost.

``python -m benchmarks.exactness FEATURES AUDIO_DIR`` compares every example of a feature set
with its window cut from the recording (the stored ``start``, ``duration + 2 * context``
seconds, zeros beyond the recording) and computed alone with librosa's arithmetic
(``stft = "librosa"``, ``share_frames = false``), and prints the largest difference on the
stored scale. ``--speed`` also times a recording's windows three ways, round after round in
one process on the same samples: shared interior frames with each window's own edge frames
(the default), the same with the edge frames left as the shared STFT gave them (what the
default was before), and every window computed alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from pathlib import Path
from unittest import mock

import h5py
import numpy as np

from melshards.config import FeatureConfig
from melshards.index import read_index
from precompute import job
from precompute.audio import decode
from precompute.mel import log_mel

# One float16 step of values in [0.5, 1), the coarsest the stored [0, 1] scale has.
TOLERANCE = 1e-3


def reference_window(y: np.ndarray, start: float, config: FeatureConfig) -> np.ndarray:
    """The samples of the window stored at ``start`` seconds: zeros beyond the recording."""
    n = int(round(config.window_seconds * config.sample_rate))
    first = int(round(start * config.sample_rate))
    window = np.zeros(n, dtype=np.float32)
    lo, hi = max(first, 0), min(first + n, y.size)
    if hi > lo:
        window[lo - first : hi - first] = y[lo:hi]
    return window


def stored_vs_reference(features: Path, audio_dir: Path) -> dict:
    """Largest difference of each stored example from its per-window librosa reference.

    Returns {"examples", "max_difference", "over_tolerance", "worst": (recording, start, frame)}.
    """
    index = read_index(features)
    config = index.config
    reference = dataclasses.replace(config, stft="librosa", share_frames=False)
    differences, worst, where = [], -1.0, None
    samples: dict[str, np.ndarray] = {}
    for shard in index.shards:
        with h5py.File(features / shard.file, "r") as h5:
            mels, ids, starts = h5["mel"][:], h5["recording_id"][:].astype(str), h5["start"][:]
        for mel, rid, start in zip(mels, ids, starts, strict=True):
            if rid not in samples:
                samples.clear()  # shards hold a recording's windows together
                path = next(p for p in audio_dir.iterdir() if p.stem == rid)
                samples[rid] = decode(path, sample_rate=config.sample_rate)
            expected = log_mel(reference_window(samples[rid], float(start), config), config=reference)
            d = np.abs(mel.astype(np.float32) - expected)
            differences.append(float(d.max()))
            if differences[-1] > worst:
                worst, where = (
                    differences[-1],
                    (str(rid), float(start), int(np.unravel_index(d.argmax(), d.shape)[1])),
                )
    return {
        "examples": len(differences),
        "max_difference": max(differences, default=0.0),
        "over_tolerance": sum(d > TOLERANCE for d in differences),
        "worst": where,
    }


def window_speed(features: Path, audio_dir: Path, *, recordings: int = 12, rounds: int = 5) -> dict:
    """Milliseconds per window of ``precompute.job.window_mels`` three ways, interleaved rounds."""
    index = read_index(features)
    config = index.config
    alone = dataclasses.replace(config, share_frames=False)
    starts: dict[str, list[float]] = {}
    for shard in index.shards:
        with h5py.File(features / shard.file, "r") as h5:
            for rid, start in zip(h5["recording_id"][:].astype(str), h5["start"][:], strict=True):
                starts.setdefault(rid, []).append(float(start))
    chosen = sorted(starts)[:recordings]
    sources = {}
    for rid in chosen:
        path = next(p for p in audio_dir.iterdir() if p.stem == rid)
        y = decode(path, sample_rate=config.sample_rate)
        sources[rid] = job.Samples(str(path), y.size, y)
    n_windows = sum(len(starts[r]) for r in chosen)

    def ms(cfg: FeatureConfig, *, own_edges: bool = True) -> float:
        patch = mock.patch.object(job, "own_edges", lambda power, *a, **k: power)
        started = time.perf_counter()
        with contextlib.nullcontext() if own_edges else patch:
            for rid in chosen:
                job.window_mels(sources[rid], starts[rid], config=cfg)
        return (time.perf_counter() - started) / n_windows * 1e3

    ms(config), ms(alone)  # compiled code, caches
    rows = [(ms(config), ms(config, own_edges=False), ms(alone)) for _ in range(rounds)]
    return {
        "windows": n_windows,
        "own_edges_ms": statistics.median(r[0] for r in rows),
        "shared_edges_ms": statistics.median(r[1] for r in rows),
        "alone_ms": statistics.median(r[2] for r in rows),
        "own_vs_shared_edges": statistics.median(r[1] / r[0] for r in rows),
        "own_edges_vs_alone": statistics.median(r[2] / r[0] for r in rows),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.exactness", description=__doc__.split("\n")[0]
    )
    parser.add_argument("features", type=Path)
    parser.add_argument("audio_dir", type=Path)
    parser.add_argument("--speed", action="store_true", help="also time the three ways of computing windows")
    args = parser.parse_args(argv)
    exact = stored_vs_reference(args.features, args.audio_dir)
    print(
        f"{exact['examples']} examples against the per-window librosa reference: largest difference "
        f"{exact['max_difference']:.2e} (at {exact['worst']}), {exact['over_tolerance']} over {TOLERANCE:g}"
    )
    if args.speed:
        s = window_speed(args.features, args.audio_dir)
        print(
            f"{s['windows']} windows, ms per window: own edges {s['own_edges_ms']:.2f}, shared edges "
            f"{s['shared_edges_ms']:.2f}, alone {s['alone_ms']:.2f}; own edges at "
            f"{s['own_vs_shared_edges']:.2f}x the speed of shared edges, {s['own_edges_vs_alone']:.2f}x "
            "that of windows alone"
        )


if __name__ == "__main__":
    main()
