"""Loader throughput: ShardSequence against references measured in the same process.

All readers produce the same thing: shuffled batches of ``batch_size`` examples, cropped to
the frames the model sees, as ``(B, n_mels, crop, 1)`` arrays.

References (``../shared/BENCHMARKS.md``):
- in-RAM: the whole feature set already in RAM as one float16 array (uint8 codes decoded
  first); each batch gathered with numpy fancy indexing, cropped, and cast with ``.astype``
  (float32) or kept float16;
- memory bound: a plain ``np.copyto`` of an array the size of the batch (float32, or float16
  for the float16 output) into another, timed like the loaders: the least work that hands over
  such a batch;
- per-sample: a Sequence written the classic way (decode the recording with librosa, cut the
  window, mel, dB, min-max, per sample, every epoch);
- naive h5py: one fancy-index read per shard per batch.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from benchmarks.classic import classic_example
from loader import ShardSequence
from melshards.codec import dequantize
from melshards.index import read_index
from melshards.names import MEL, MEL_OFFSET, MEL_SCALE


def _time_batches(get: Callable[[int], object], n_batches: int, *, repeats: int = 3) -> float:
    """Best-of-``repeats`` mean seconds per batch over ``n_batches`` calls."""
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(n_batches):
            get(i)
        best = min(best, (time.perf_counter() - started) / n_batches)
    return best


def copy_bound(shape: tuple[int, ...], dtype) -> Callable[[int], object]:
    """One batch's worth of plain copying: ``np.copyto`` between two arrays of ``shape``."""
    src = np.ones(shape, dtype=dtype)
    dst = np.empty_like(src)
    return lambda i: np.copyto(dst, src)


def copy_bandwidth(n_bytes: int = 1 << 28) -> float:
    """Bytes per second read plus written by a large ``np.copyto`` (best of 5)."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * n_bytes / best


def load_all(root: Path) -> np.ndarray:
    """Every stored example as float16 (uint8 codes decoded with their offset and scale)."""
    index = read_index(root)
    parts = []
    for entry in index.shards:
        with h5py.File(root / entry.file, "r", locking=False) as h5:
            values = h5[MEL][:]
            if values.dtype == np.uint8:
                values = dequantize(values, h5[MEL_OFFSET][:], h5[MEL_SCALE][:])
            parts.append(values.astype(np.float16))
    return np.concatenate(parts)


def batch_orders(n: int, batch_size: int, n_batches: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(n_batches * batch_size // n + 1)])
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def per_sample_baseline(demo: Path, *, n_samples: int = 6) -> float:
    """Seconds per sample of the classic on-the-fly Sequence."""
    with open(demo / "train_tp.csv") as fh:
        rows = list(csv.DictReader(fh))[:n_samples]
    classic_example(demo, rows[0])
    started = time.perf_counter()
    for row in rows:
        classic_example(demo, row)
    return (time.perf_counter() - started) / len(rows)


def naive_h5py(root: Path, orders: list[np.ndarray], *, crop: tuple[int, int]) -> Callable[[int], np.ndarray]:
    index = read_index(root)
    files = [h5py.File(root / e.file, "r", locking=False) for e in index.shards]
    bounds = np.cumsum([0] + [e.n for e in index.shards])

    def get(i: int) -> np.ndarray:
        idx = np.sort(orders[i])
        shard = np.searchsorted(bounds, idx, side="right") - 1
        parts = [files[s][MEL][list(idx[shard == s] - bounds[s])] for s in np.unique(shard)]
        return np.concatenate(parts)[:, :, crop[0] : crop[1], None].astype(np.float32)

    return get


# ShardSequence variants of the loader table: name -> options
VARIANTS = {
    "shards_float32": {"augment": False},
    "shards_float32_augment": {"augment": True},
    "shards_float16": {"augment": False, "dtype": "float16"},
    "in_memory_float32": {"augment": False, "in_memory": True},
}


def _sequence_seconds(features: Path, batch_size: int) -> dict[str, float]:
    """Seconds per batch of each ``VARIANTS`` sequence: whole epochs (the look-ahead builds
    batch i + 1 of the same epoch), after a first one (page cache, checksums verified once)."""
    out = {}
    for name, options in VARIANTS.items():
        seq = ShardSequence(features, split="all", batch_size=batch_size, shuffle=True, seed=0, **options)
        for i in range(len(seq)):
            seq[i]
        seq.on_epoch_end()
        out[name] = _time_batches(seq.__getitem__, len(seq))
    return out


def frame_target_cost(features: Path, batch_size: int, *, rounds: int = 5) -> dict[str, float]:
    """Seconds per batch with clip labels and with frame targets (``targets="frames"``, the
    default ``target_step``), augmented (time shifts: crops off centre), timed in turn round
    after round on the same batches; the medians, and the frame targets' cost as a share of
    the clip batch's time: as the consumer waits for a batch (wall) and in CPU time of the
    process (``cpu``, every thread: the look-ahead builds the next batch in the background)."""
    sequences = {
        name: ShardSequence(
            features, split="all", batch_size=batch_size, shuffle=True, seed=0, augment=True, targets=name
        )
        for name in ("clip", "frames")
    }
    for seq in sequences.values():  # a first epoch each: page cache, checksums, tables
        for i in range(len(seq)):
            seq[i]
    wall: dict[str, list[float]] = {name: [] for name in sequences}
    cpu: dict[str, list[float]] = {name: [] for name in sequences}
    for _ in range(rounds):
        for name, seq in sequences.items():
            began = time.process_time()
            wall[name].append(_time_batches(seq.__getitem__, len(seq), repeats=1))
            cpu[name].append((time.process_time() - began) / len(seq))
    out = {}
    for name in sequences:
        out[f"{name}_ms"] = float(np.median(wall[name])) * 1e3
        out[f"{name}_cpu_ms"] = float(np.median(cpu[name])) * 1e3
    out["frame_targets_cost"] = out["frames_ms"] / out["clip_ms"] - 1
    out["frame_targets_cpu_cost"] = out["frames_cpu_ms"] / out["clip_cpu_ms"] - 1
    return out


def run(features: Path, demo: Path, *, batch_size: int = 32, n_batches: int = 16) -> dict:
    index = read_index(features)
    config = index.config
    crop = config.crop_frames
    first = (config.n_frames - crop) // 2
    data = load_all(features)
    n = len(data)
    orders = batch_orders(n, batch_size, n_batches)

    def in_ram32(i: int) -> np.ndarray:
        return data[orders[i], :, first : first + crop, None].astype(np.float32)

    def in_ram16(i: int) -> np.ndarray:
        return data[orders[i], :, first : first + crop, None]

    samples = batch_size
    result: dict[str, dict] = {}

    def record(name: str, seconds: float) -> None:
        result[name] = {"ms_per_batch": seconds * 1e3, "samples_per_s": samples / seconds}

    record("in_ram_float32_reference", _time_batches(in_ram32, n_batches))
    record("in_ram_float16_reference", _time_batches(in_ram16, n_batches))
    bandwidth = copy_bandwidth()
    shape = (batch_size, config.n_mels, crop, 1)
    record("memory_bound_float32", _time_batches(copy_bound(shape, np.float32), n_batches))
    record("memory_bound_float16", _time_batches(copy_bound(shape, np.float16), n_batches))

    for name, seconds in _sequence_seconds(features, batch_size).items():
        record(name, seconds)

    record(
        "naive_h5py_fancy_index",
        _time_batches(naive_h5py(features, orders, crop=(first, first + crop)), 4, repeats=1),
    )
    per_sample = per_sample_baseline(demo)
    result["per_sample_sequence"] = {
        "ms_per_batch": per_sample * batch_size * 1e3,
        "samples_per_s": 1 / per_sample,
    }

    # TensorFlow last: its generator dataset lowers glibc's M_TRIM_THRESHOLD for the whole
    # process (see loader.buffers), which slows every later figure that allocates big arrays.
    seq = ShardSequence(features, split="all", batch_size=batch_size, shuffle=True, seed=0, augment=False)
    dataset = seq.as_tf_dataset()
    for _ in dataset:
        pass
    started = time.perf_counter()
    count = 0
    for _ in range(2):
        for _ in dataset:
            count += 1
    record("as_tf_dataset_float32", (time.perf_counter() - started) / count)

    def ratio(a: str, b: str) -> float:
        return result[a]["samples_per_s"] / result[b]["samples_per_s"]

    ratios = {
        "float32_vs_in_ram": ratio("shards_float32", "in_ram_float32_reference"),
        "float32_augment_vs_in_ram": ratio("shards_float32_augment", "in_ram_float32_reference"),
        "float16_vs_in_ram_float16": ratio("shards_float16", "in_ram_float16_reference"),
        "float32_vs_per_sample": ratio("shards_float32", "per_sample_sequence"),
        "float32_vs_memory_bound": ratio("shards_float32", "memory_bound_float32"),
        "float16_vs_memory_bound": ratio("shards_float16", "memory_bound_float16"),
        "float32_vs_naive_h5py": ratio("shards_float32", "naive_h5py_fancy_index"),
        "tf_dataset_vs_in_ram": ratio("as_tf_dataset_float32", "in_ram_float32_reference"),
    }
    frames = frame_target_cost(features, batch_size)
    return {
        "frame_targets": frames,
        "frame_targets_cost": frames["frame_targets_cost"],
        "frame_targets_cpu_cost": frames["frame_targets_cpu_cost"],
        "batch": [batch_size, config.n_mels, crop, 1],
        "examples": n,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "readers": result,
        "ratios": ratios,
    }
