"""Writing one shard: a temp file in the output directory, renamed into place when complete.

A shard under its final name is always whole: it is written as ``.shard-NNNNN.h5.<pid>.tmp``,
flushed, fsynced and only then ``os.replace``d, so a crash or kill leaves at most a stray temp
file, which the next run removes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from loader.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    SHARD_DATASETS,
    FeatureConfig,
    ShardEntry,
    atomic_write_text,
    fingerprint_of,
    fsync_dir,
    sha256_file,
)

TEMP_SUFFIX = ".tmp"


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")


@dataclass
class Example:
    """One window ready to store.

    mel : np.ndarray [shape=(n_mels, n_frames)], any float dtype (stored as ``config.dtype``)
    labels : np.ndarray [shape=(n_classes,)], int8
    anchor : the manifest row the window was cut around (``anchor/*`` fields, without prefix)
    events : per-event arrays (``events/*`` fields without ``example``), each ``(m,)``
    """

    mel: np.ndarray
    labels: np.ndarray
    recording_id: str
    start: float
    anchor: Mapping[str, float | int]
    events: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ShardStats:
    """Per-mel-bin sums of the stored values, merged across shards into index stats."""

    count: int
    sum: np.ndarray
    sumsq: np.ndarray

    @classmethod
    def empty(cls, n_mels: int) -> ShardStats:
        return cls(0, np.zeros(n_mels), np.zeros(n_mels))

    def add(self, mel: np.ndarray) -> None:
        m = mel.astype(np.float64)
        self.count += m.shape[1]
        self.sum += m.sum(axis=1)
        self.sumsq += np.square(m).sum(axis=1)

    def merge(self, other: ShardStats) -> None:
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq

    def to_dict(self) -> dict[str, list[float]]:
        n = max(self.count, 1)
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sumsq / n - mean**2, 0.0))
        return {"mean": mean.round(6).tolist(), "std": std.round(6).tolist(), "frames": self.count}


def write_shard(
    final: Path,
    examples: list[Example],
    *,
    config: FeatureConfig,
    fingerprint: str,
    attrs: Mapping[str, str] | None = None,
) -> tuple[ShardEntry, ShardStats]:
    """Write ``examples`` as the shard ``final``, atomically.

    Returns the index entry (with the sha256 of the finished file) and the shard's
    per-mel-bin statistics.
    """
    final = Path(final)
    tmp = temp_name(final)
    n = len(examples)
    stats = ShardStats.empty(config.n_mels)
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110")) as h5:
            _write_datasets(h5, examples, config=config, stats=stats)
            # Chunks are placed in the file when the chunk cache is flushed, i.e. when their
            # dataset is closed or the file flushed. A dataset handle can outlive its function
            # (a Dask worker's sampling profiler holds frames), which would place the chunks
            # after the attributes below and give other bytes for the same arrays: flush here,
            # so every backend writes byte-identical shards.
            h5.flush()
            # Stored so a resumed run can reuse the shard without reading its arrays again.
            h5.attrs["stats_count"] = stats.count
            h5.attrs["stats_sum"] = stats.sum
            h5.attrs["stats_sumsq"] = stats.sumsq
            h5.attrs["format"] = FORMAT_NAME
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.attrs["fingerprint"] = fingerprint
            h5.attrs["config"] = json.dumps(config.to_dict(), sort_keys=True)
            for key, value in config.to_dict().items():
                h5.attrs[f"config.{key}"] = "none" if value is None else value
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value
            h5.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    entry = ShardEntry(file=final.name, n=n, sha256=digest, fingerprint=fingerprint, bytes=size)
    return entry, stats


def _write_datasets(
    h5: h5py.File, examples: list[Example], *, config: FeatureConfig, stats: ShardStats
) -> None:
    n = len(examples)
    shape = (n, config.n_mels, config.n_frames)
    mel = h5.create_dataset(
        "mel",
        shape=shape,
        dtype=config.dtype,
        chunks=(1, config.n_mels, config.n_frames) if n else None,
        fletcher32=True,
        compression=config.compression,
    )
    for i, ex in enumerate(examples):
        if ex.mel.shape != shape[1:]:
            raise ValueError(
                f"example {i} of {ex.recording_id}: mel shape {ex.mel.shape}, expected {shape[1:]}"
            )
        stored = ex.mel.astype(config.dtype)
        mel[i] = stored
        stats.add(stored)
    h5.create_dataset(
        "labels", data=np.array([ex.labels for ex in examples], dtype=np.int8).reshape(n, config.n_classes)
    )
    h5.create_dataset("recording_id", data=[ex.recording_id for ex in examples], dtype=h5py.string_dtype())
    h5.create_dataset("start", data=np.array([ex.start for ex in examples], dtype=np.float64))
    for name, dtype in SHARD_DATASETS.items():
        group, _, key = name.partition("/")
        if group == "anchor":
            h5.create_dataset(name, data=np.array([ex.anchor[key] for ex in examples], dtype=dtype))
    counts = [len(ex.events.get("species_id", ())) for ex in examples]
    h5.create_dataset("events/example", data=np.repeat(np.arange(n, dtype=np.int32), counts))
    for name, dtype in SHARD_DATASETS.items():
        group, _, key = name.partition("/")
        if group == "events" and key != "example":
            parts = [np.asarray(ex.events.get(key, ()), dtype=dtype) for ex in examples]
            h5.create_dataset(name, data=np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))


def read_shard_summary(path: Path) -> tuple[str, int, ShardStats, str]:
    """Fingerprint, example count, statistics and the ``failures`` attribute of a finished shard.

    Raises OSError (or KeyError) when the file is not a complete shard of this format.
    """
    with h5py.File(path, "r", locking=False) as h5:
        if h5.attrs.get("format") != FORMAT_NAME or h5.attrs.get("format_version") != FORMAT_VERSION:
            raise KeyError("format")
        stats = ShardStats(
            int(h5.attrs["stats_count"]), np.array(h5.attrs["stats_sum"]), np.array(h5.attrs["stats_sumsq"])
        )
        return (
            str(h5.attrs["fingerprint"]),
            int(h5["mel"].shape[0]),
            stats,
            str(h5.attrs.get("failures", "[]")),
        )


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose numbers end up in the arrays."""
    import importlib.metadata as md

    versions = {}
    for name in ("numpy", "librosa", "soundfile", "soxr", "h5py", "scipy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def write_index(
    root: Path,
    *,
    config: FeatureConfig,
    entries: list[ShardEntry],
    stats: ShardStats,
    failures: int,
    kind: str = "labelled",
    extra: Mapping[str, object] | None = None,
) -> dict:
    """Write ``root/index.json`` atomically; the last step of every run."""
    entries = sorted(entries, key=lambda e: e.file)
    index = {
        "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
        "fingerprint": fingerprint_of([config.to_dict(), [e.fingerprint for e in entries], kind]),
        "kind": kind,
        "config": config.to_dict(),
        "classes": list(range(config.n_classes)),
        "n_examples": sum(e.n for e in entries),
        "n_frames": config.n_frames,
        "crop_frames": config.crop_frames,
        "shards": [asdict(e) for e in entries],
        "stats": stats.to_dict(),
        "failures": failures,
        "versions": library_versions(),
    }
    index.update(extra or {})
    atomic_write_text(Path(root) / INDEX_FILE, json.dumps(index, indent=1) + "\n")
    return index
