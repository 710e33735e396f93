"""Writing a shard atomically, and reading back what a finished shard says of itself.

A shard under its final name is always whole: it is built in memory, written in one go as
``.shard-NNNNN.h5.<pid>.tmp``, fsynced and only then ``os.replace``d
(``melshards.files.write_file_atomic``), so a crash, a kill or a full disk leaves at most a
stray temp file, which the next run removes. Its attributes repeat the config, fingerprint,
statistics and failures, which ``read_shard_summary`` reads back for a resumed run. Every
dataset and attribute name comes from ``melshards.names``; ``docs/format.md`` describes the
layout. Opening a shard for reading is ``melshards.shard_open``, checking it against its
index entry ``melshards.shard_check``, reading its metadata ``melshards.shard_read``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from melshards import codec
from melshards.config import FeatureConfig
from melshards.files import write_file_atomic
from melshards.index import BinStats, ShardEntry
from melshards.names import (
    ANCHOR,
    ANCHOR_FIELDS,
    ATTR_CONFIG,
    ATTR_CONFIG_PREFIX,
    ATTR_FAILURES,
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
    ATTR_FORMAT_VERSION,
    ATTR_KIND,
    ATTR_STATS_COUNT,
    ATTR_STATS_SUM,
    ATTR_STATS_SUMSQ,
    EVENT_EXAMPLE,
    EVENT_FIELDS,
    EVENTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABELS,
    MEL,
    MEL_OFFSET,
    MEL_SCALE,
    METADATA_CHUNK_ROWS,
    RECORDING_ID,
    START,
    VALID,
)
from melshards.shard_check import valid_problem
from melshards.shard_open import open_readonly


@dataclass
class ShardExample:
    """One window ready to store.

    mel : np.ndarray [shape=(n_mels, n_frames)], any float dtype (stored as ``config.dtype``:
        cast, or quantized for uint8 by ``melshards.codec.quantize``)
    labels : np.ndarray [shape=(n_classes,)], int8
    anchor : the manifest row the window was cut around (``ANCHOR_FIELDS``)
    events : per-event arrays (``EVENT_FIELDS``), each ``(m,)``
    valid : ``(first, stop)``, the frames that hold audio; None: every frame does
    """

    mel: np.ndarray
    labels: np.ndarray
    recording_id: str
    start: float
    anchor: Mapping[str, float | int]
    events: Mapping[str, np.ndarray] = field(default_factory=dict)
    valid: tuple[int, int] | None = None


@dataclass
class ShardStats:
    """Per-mel-bin sums of the stored values, merged across shards into the index's ``BinStats``."""

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

    def bin_stats(self) -> BinStats:
        n = max(self.count, 1)
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sumsq / n - mean**2, 0.0))
        return BinStats(
            mean=tuple(mean.round(6).tolist()), std=tuple(std.round(6).tolist()), frames=self.count
        )


@dataclass(frozen=True)
class ShardSummary:
    """What a finished shard says of itself in its attributes (read without its arrays)."""

    fingerprint: str
    n: int
    stats: ShardStats
    failures: list[dict]
    kind: str


def write_shard(
    final: Path,
    examples: Sequence[ShardExample],
    *,
    config: FeatureConfig,
    fingerprint: str,
    kind: str,
    failures: Sequence[Mapping[str, Any]] = (),
) -> tuple[ShardEntry, ShardStats]:
    """Write ``examples`` as the shard ``final``, atomically.

    ``fingerprint`` identifies the job that made it (a resumed run reuses the shard when it
    matches); ``failures`` are what the job skipped, kept in the shard so a reuse remembers them.
    Returns the index entry (with the sha256 of the finished file) and the shard's per-mel-bin
    statistics.
    """
    final = Path(final)
    stats = ShardStats.empty(config.n_mels)
    # The shard is built in memory and reaches the disk in one write: a full disk, a quota or a
    # kill then fails a plain write, never HDF5 halfway through its metadata.
    with h5py.File(final.name, "w", driver="core", backing_store=False, libver=("earliest", "v110")) as h5:
        _write_datasets(h5, examples, config=config, stats=stats)
        # Chunks are placed in the file when the chunk cache is flushed, i.e. when their
        # dataset is closed or the file flushed. A dataset handle can outlive its function
        # (a Dask worker's sampling profiler holds frames), which would place the chunks
        # after the attributes below and give other bytes for the same arrays: flush here,
        # so every backend writes byte-identical shards.
        h5.flush()
        h5.attrs[ATTR_STATS_COUNT] = stats.count
        h5.attrs[ATTR_STATS_SUM] = stats.sum
        h5.attrs[ATTR_STATS_SUMSQ] = stats.sumsq
        h5.attrs[ATTR_FORMAT] = FORMAT_NAME
        h5.attrs[ATTR_FORMAT_VERSION] = FORMAT_VERSION
        h5.attrs[ATTR_FINGERPRINT] = fingerprint
        h5.attrs[ATTR_CONFIG] = json.dumps(config.to_dict(), sort_keys=True)
        for key, value in config.to_dict().items():
            h5.attrs[f"{ATTR_CONFIG_PREFIX}{key}"] = "none" if value is None else value
        h5.attrs[ATTR_FAILURES] = json.dumps(list(failures))
        h5.attrs[ATTR_KIND] = kind
        h5.flush()
        image = h5.id.get_file_image()
    write_file_atomic(final, image, hint="finished shards are kept, free space and run again to resume")
    digest = hashlib.sha256(image).hexdigest()
    entry = ShardEntry(
        file=final.name, n=len(examples), sha256=digest, fingerprint=fingerprint, bytes=len(image)
    )
    return entry, stats


def _write_datasets(
    h5: h5py.File, examples: Sequence[ShardExample], *, config: FeatureConfig, stats: ShardStats
) -> None:
    n = len(examples)
    shape = (n, config.n_mels, config.n_frames)
    mel = h5.create_dataset(
        MEL,
        shape=shape,
        dtype=config.dtype,
        chunks=(1, config.n_mels, config.n_frames) if n else None,
        fletcher32=True,
        **(codec.dataset_options(config) if n else {}),
    )
    quantized = codec.is_quantized(config)
    offsets = np.zeros(n, dtype=np.float32)
    scales = np.zeros(n, dtype=np.float32)
    for i, ex in enumerate(examples):
        if ex.mel.shape != shape[1:]:
            raise ValueError(
                f"example {i} of {ex.recording_id}: mel shape {ex.mel.shape}, expected {shape[1:]}"
            )
        # Float dtypes are stored as they are cast here (no copy when they already are); codes
        # are made below from the values as computed.
        values = ex.mel if quantized else np.asarray(ex.mel, dtype=config.dtype)
        if not np.isfinite(values).all():
            # Callers check first and record the recording as a failure; this is the last guard.
            raise ValueError(f"example {i} of {ex.recording_id}: non-finite values in mel; not writing them")
        if quantized:
            codes, offsets[i], scales[i] = codec.quantize(values, config.quant_bits)
            mel[i] = codes
            stats.add(codec.dequantize(codes, offsets[i], scales[i]))  # what readers will see
        else:
            mel[i] = values
            stats.add(values)
    if quantized:
        _create_checked(h5, MEL_OFFSET, offsets)
        _create_checked(h5, MEL_SCALE, scales)
    _create_checked(
        h5, LABELS, np.array([ex.labels for ex in examples], dtype=np.int8).reshape(n, config.n_classes)
    )
    ids = [ex.recording_id.encode("utf-8") for ex in examples]
    id_dtype = h5py.string_dtype("utf-8", max((len(i) for i in ids), default=1))
    _create_checked(h5, RECORDING_ID, np.array(ids, dtype=id_dtype))
    _create_checked(h5, START, np.array([ex.start for ex in examples], dtype=np.float64))
    every = (0, config.n_frames)
    valid = np.array([every if ex.valid is None else ex.valid for ex in examples], dtype=np.int32)
    problem = valid_problem(valid.reshape(n, 2), config.n_frames)
    if problem:
        raise ValueError(f"{h5.filename}: {problem}; not writing it")
    _create_checked(h5, VALID, valid.reshape(n, 2))
    for key, dtype in ANCHOR_FIELDS.items():
        _create_checked(h5, f"{ANCHOR}/{key}", np.array([ex.anchor[key] for ex in examples], dtype=dtype))
    counts = [len(ex.events.get("species_id", ())) for ex in examples]
    _create_checked(h5, f"{EVENTS}/{EVENT_EXAMPLE}", np.repeat(np.arange(n, dtype=np.int32), counts))
    for key, dtype in EVENT_FIELDS.items():
        parts = [np.asarray(ex.events.get(key, ()), dtype=dtype) for ex in examples]
        _create_checked(h5, f"{EVENTS}/{key}", np.concatenate(parts) if parts else np.zeros(0, dtype=dtype))


def _create_checked(h5: h5py.File, name: str, data: np.ndarray) -> None:
    """A metadata dataset in fletcher32-checked chunks of up to ``METADATA_CHUNK_ROWS`` rows.

    The first axis is declared resizable only because HDF5 refuses a chunk larger than a fixed
    dimension, and an empty dataset still needs a chunk to carry the filter.
    """
    rows = min(max(data.shape[0], 1), METADATA_CHUNK_ROWS)
    dataset = h5.create_dataset(
        name,
        data=data,
        chunks=(rows, *data.shape[1:]),
        maxshape=(None, *data.shape[1:]),
        fletcher32=True,
    )
    # Place the chunks now, not when the handle happens to close: same bytes on every backend.
    dataset.flush()


def read_shard_summary(path: Path) -> ShardSummary:
    """Fingerprint, example count, statistics and failures of a finished shard, from its attributes.

    Raises OSError, KeyError or ValueError when the file is not a complete shard of this format.
    """
    with open_readonly(path) as h5:
        if h5.attrs.get(ATTR_FORMAT) != FORMAT_NAME or h5.attrs.get(ATTR_FORMAT_VERSION) != FORMAT_VERSION:
            raise KeyError(ATTR_FORMAT)
        stats = ShardStats(
            int(h5.attrs[ATTR_STATS_COUNT]),
            np.array(h5.attrs[ATTR_STATS_SUM]),
            np.array(h5.attrs[ATTR_STATS_SUMSQ]),
        )
        return ShardSummary(
            fingerprint=str(h5.attrs[ATTR_FINGERPRINT]),
            n=int(h5[MEL].shape[0]),
            stats=stats,
            failures=json.loads(str(h5.attrs.get(ATTR_FAILURES, "[]"))),
            kind=str(h5.attrs.get(ATTR_KIND, "")),
        )
