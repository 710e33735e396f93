"""Reading a feature set: its metadata once, then mel crops batch by batch.

``FeatureSet`` reads ``index.json`` and, from every shard, the small per-example arrays
(recording id, start, stored labels, events) and where each example's chunk lies in the file.
It holds only numpy arrays, so it pickles cheaply into worker processes.

``MelReader`` fills caller-provided batch buffers. Its fast path memory-maps each shard
(read-only) and, because every example is one chunk at a known byte offset, skips HDF5's
filter pipeline: an uncompressed chunk is gathered, cropped and cast (or, for uint8 codes,
decoded with its example's offset and scale) by one compiled loop (``loader.read_kernels``); a
chunk compressed by a plugin filter (``zstd``, ``bitshuffle-lz4``) is decompressed into a
small scratch array of codes and then goes through the same loop, so no float array is made
on the way. The fast path checks each chunk's Fletcher-32 itself the first time this process
reads that chunk. Shards written with gzip, lzf or another layout are read with h5py
``read_direct``, one sorted run of rows at a time, into a preallocated buffer.

Process rules: h5py handles are opened lazily and belong to the process that opened them
(keyed by ``os.getpid()``); a forked child never uses or closes its parent's handles, and
nothing with a handle is pickled. Memory maps, checksum bitmaps and the in-RAM cache are
plain memory, safe to inherit through ``fork``; they are dropped when pickling (``spawn``).
A user's plain ``h5py.File`` on a shard, opened before or after this reader's, does not clash
with it (``melshards.shard.open_shard``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from loader import read_kernels
from melshards import codec, remote
from melshards.config import FeatureConfig, crop_span
from melshards.errors import FormatError, IntegrityError
from melshards.index import Index, ShardEntry, read_index
from melshards.labels import overlap_mask
from melshards.names import EVENT_EXAMPLE, EVENT_FP, EVENT_TP, MEL
from melshards.shard import (
    check_shard,
    mel_chunks,
    metadata_parts,
    open_listed,
    open_shard,
    read_metadata,
    regular_file_problem,
)

# Each memory map keeps a file descriptor; beyond this many, the oldest map is dropped (its
# memory stays valid for whoever still holds an array into it).
MAX_OPEN_MAPS = 256

# Guards lazy opening (maps, handles, the cache); reentrant because loading the cache reads
# through the same path.
_open_lock = threading.RLock()


def _renew_open_lock() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _open_lock
    _open_lock = threading.RLock()


os.register_at_fork(after_in_child=_renew_open_lock)


@dataclass(frozen=True)
class ShardLayout:
    """Where a shard's examples lie in its file.

    ``byte_offsets`` and ``chunk_sizes`` are set when every example is one fletcher32-checked
    chunk (``melshards.shard.mel_chunks``) that the fast path can read straight from a memory
    map, decompressing it first when ``compressed``; None means read through h5py.
    """

    entry: ShardEntry
    path: Path
    n: int
    first: int
    byte_offsets: np.ndarray | None
    chunk_sizes: np.ndarray | None = None
    compressed: bool = False
    # (st_dev, st_ino, st_size) of the checked file; None for a shard of a set at a URL, whose
    # cached copy is checked against the index's sha256 whenever it is fetched
    identity: tuple[int, int, int] | None = (0, 0, 0)


class FeatureSet:
    """A feature set's index and per-example metadata, read once.

    Attributes (``n`` = ``n_examples``; example ids are global, shard by shard in index order):
    ``index``, ``config``, ``fingerprint``, ``classes``, ``kind``, ``shards`` (ShardLayout),
    ``shard_of`` / ``row_of`` (n,) -- where each example is stored,
    ``recording_id`` (n,) str, ``start`` (n,) float64, ``labels`` (n, n_classes) int8,
    ``valid`` (n, 2) int64 -- ``[first, stop)`` stored frames that hold audio (the others are
    padding beyond the recording),
    ``mel_offset`` / ``mel_scale`` (n,) float32 for uint8 codes (None for float dtypes),
    ``event_ptr`` (n + 1,) -- events of example i are ``event_ptr[i]:event_ptr[i + 1]`` of
    ``event_species``, ``event_kind``, ``event_t_min``, ``event_t_max``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | str | None = None,
        prefetch: bool = False,
    ) -> None:
        # A set at a URL: its shards are read from verified local copies (``ShardCache``),
        # fetched whole on first use; its metadata is read before that, with range requests,
        # unless ``prefetch`` fetches every shard first (then it is read from the copies).
        self.url = str(root).rstrip("/") if remote.is_url(root) else None
        self.cache = None if self.url is None else remote.ShardCache.at(cache_dir, limit=cache_limit)
        self.index: Index = read_index(
            root, cache_root=None if self.cache is None else self.cache.set_dir(self.url)
        )
        self.root = self.index.root
        config = self.config
        recording_ids, starts, labels, layouts, quant_offsets, quant_scales = [], [], [], [], [], []
        valid = []
        ev_example, ev_species, ev_kind, ev_t_min, ev_t_max = [], [], [], [], []
        first = 0
        if prefetch and self.url is not None:
            self._fetch(self.index.shards)
        parts = metadata_parts(self.index.shards, url=self.url, cache=self.cache)
        for entry in self.index.shards:
            meta, layout = self._read_shard(entry, first=first, parts=parts.pop(entry.file, None))
            recording_ids.append(meta.recording_id)
            if meta.mel_offset is not None:
                quant_offsets.append(meta.mel_offset)
                quant_scales.append(meta.mel_scale)
            starts.append(meta.start)
            labels.append(meta.labels)
            valid.append(meta.valid)
            ev_example.append(meta.events[EVENT_EXAMPLE] + first)
            ev_species.append(meta.events["species_id"])
            ev_kind.append(meta.events["kind"])
            ev_t_min.append(meta.events["t_min"])
            ev_t_max.append(meta.events["t_max"])
            layouts.append(layout)
            first += entry.n
        n = first
        self.shards: tuple[ShardLayout, ...] = tuple(layouts)
        self.shard_of = np.repeat(np.arange(len(layouts), dtype=np.int64), [lay.n for lay in layouts])
        self.row_of = np.arange(n, dtype=np.int64) - np.repeat(
            np.array([lay.first for lay in layouts], dtype=np.int64), [lay.n for lay in layouts]
        )
        self.recording_id = _concat(recording_ids, object)
        self.start = _concat(starts, np.float64)
        self.labels = _concat(labels, np.int8).reshape(n, config.n_classes)
        self.valid = _concat(valid, np.int64).reshape(n, 2)
        quantized = codec.is_quantized(config)
        self.mel_offset = _concat(quant_offsets, np.float32) if quantized else None
        self.mel_scale = _concat(quant_scales, np.float32) if quantized else None
        example = _concat(ev_example, np.int64)
        order = np.argsort(example, kind="stable")
        self.event_ptr = np.concatenate([[0], np.cumsum(np.bincount(example, minlength=n))]).astype(np.int64)
        self.event_species = _concat(ev_species, np.int64)[order]
        self.event_kind = _concat(ev_kind, np.int8)[order]
        self.event_t_min = _concat(ev_t_min, np.float64)[order]
        self.event_t_max = _concat(ev_t_max, np.float64)[order]
        mean = self.index.stats.mean
        self.bin_mean = (
            np.asarray(mean, dtype=np.float32)
            if len(mean) == config.n_mels
            else np.zeros(config.n_mels, dtype=np.float32)
        )

    def _read_shard(self, entry: ShardEntry, *, first: int, parts: dict[int, bytes] | None):
        """(metadata, layout) of one shard, checked against its index entry."""
        path, config = self.index.shard_path(entry), self.config
        with open_listed(self.index, entry, url=self.url, cache=self.cache, parts=parts) as h5:
            check_shard(h5, entry, config, path=path, size=self.url is None)
            meta = read_metadata(h5, entry, config, path=path)
            chunks = mel_chunks(h5[MEL], config, file_size=entry.bytes)
            identity = _identity(os.stat(path)) if self.url is None else None
        layout = ShardLayout(
            entry=entry,
            path=path,
            n=entry.n,
            first=first,
            byte_offsets=None if chunks is None else chunks.offsets,
            chunk_sizes=None if chunks is None else chunks.sizes,
            compressed=chunks is not None and chunks.compressed,
            identity=identity,
        )
        return meta, layout

    def local_shard(self, s: int) -> Path:
        """The local file of shard ``s``: for a set at a URL, its verified cached copy (fetched
        now when it is not in the cache)."""
        layout = self.shards[s]
        return layout.path if self.url is None else self._fetch_entry(layout.entry)

    def prefetch(self, example_ids: np.ndarray | None = None, *, threads: int = 4) -> list[Path]:
        """Fetch into the cache every shard holding one of ``example_ids`` (default: all);
        their local paths. Nothing to do for a local set."""
        shards = range(len(self.shards)) if example_ids is None else np.unique(self.shard_of[example_ids])
        if self.url is None:
            return [self.shards[int(s)].path for s in shards]
        return self._fetch([self.shards[int(s)].entry for s in shards], threads=threads)

    def _fetch(self, entries, *, threads: int = 4) -> list[Path]:
        """The verified copies of the shards ``entries``, ``threads`` fetched at a time."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(self._fetch_entry, entries))

    def _fetch_entry(self, entry: ShardEntry) -> Path:
        return self.cache.fetch(self.url, entry.file, entry.sha256, entry.bytes)

    @property
    def location(self) -> str:
        """Where the set lives: its URL (credentials hidden), or its directory."""
        return remote.redact(self.url) if self.url is not None else str(self.root)

    @property
    def config(self) -> FeatureConfig:
        return self.index.config

    @property
    def fingerprint(self) -> str:
        return self.index.fingerprint

    @property
    def classes(self) -> tuple[int, ...]:
        return self.index.classes

    @property
    def kind(self) -> str:
        return self.index.kind

    @property
    def n_examples(self) -> int:
        return int(self.shard_of.shape[0])

    def __repr__(self) -> str:
        return (
            f"FeatureSet({self.location!r}, kind={self.kind!r}, n_examples={self.n_examples}, "
            f"shards={len(self.shards)}, fingerprint={self.fingerprint!r})"
        )

    def crop_labels(
        self, ids: np.ndarray, crop_start: np.ndarray, crop_frames: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels of what a crop shows, from the events stored with each example.

        A crop of ``crop_frames`` starting at stored frame ``crop_start`` spans
        ``melshards.config.crop_span``; an event counts in it by ``melshards.labels.overlap_mask``
        with the config's ``min_overlap``. As in ``melshards.labels.label_rows``: positive where a TP counts,
        known negative where only FPs count, unknown elsewhere.

        Returns (y, known), both np.ndarray [shape=(B, n_classes)], float32: y is 1 where
        positive; known is 1 where positive or known negative.
        """
        ids = np.asarray(ids, dtype=np.int64)
        b = ids.shape[0]
        n_classes = self.config.n_classes
        y = np.zeros((b, n_classes), dtype=np.float32)
        known = np.zeros((b, n_classes), dtype=np.float32)
        lo, hi = self.event_ptr[ids], self.event_ptr[ids + 1]
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return y, known
        owner = np.repeat(np.arange(b), counts)
        events = np.arange(total) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
        t0, t1 = crop_span(self.config, self.start[ids], crop_start, crop_frames)
        present = overlap_mask(
            self.event_t_min[events],
            self.event_t_max[events],
            t0[owner],
            t1[owner],
            min_overlap=self.config.min_overlap,
        )
        kind = self.event_kind[events]
        species = self.event_species[events]
        tp = present & (kind == EVENT_TP)
        labelled = tp | (present & (kind == EVENT_FP))
        y[owner[tp], species[tp]] = 1.0
        known[owner[labelled], species[labelled]] = 1.0
        return y, known


def open_feature_set(root: str | os.PathLike, **cache) -> FeatureSet:
    """Read a feature set's index and metadata (validating every shard against the index);
    ``cache``: ``cache_dir`` and ``cache_limit`` for a set at a URL."""
    return FeatureSet(root, **cache)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    """Which file this is: a shard rebuilt or replaced since it was checked has another inode."""
    return (st.st_dev, st.st_ino, st.st_size)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


@dataclass
class _MappedShard:
    """A shard's file memory-mapped read-only, with the chunks this process has verified."""

    raw: np.ndarray  # the whole file as uint8
    values: np.ndarray  # the file as the stored values (uint16 bits for float16; uncompressed only)
    element_offsets: np.ndarray  # int64, start of each example in ``values`` (uncompressed only)
    verified: np.ndarray  # bool per example
    all_verified: bool = False


def _stored_view(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """uint8 bytes as the kernels' source type: float16 as uint16 bits, float32, uint8 codes."""
    if dtype == np.float16:
        return data.view(np.uint16)
    return data.view(dtype)


class MelReader:
    """Reads crops of examples into batch buffers; see the module docstring.

    features : the FeatureSet to read (the fast path checks each chunk's Fletcher-32 the first
        time this process reads it; there is no switch to skip it)
    cache_ids : example ids to hold in RAM (loaded once per process on first read), or None;
        uint8 sets keep their codes in RAM (decompressed), a quarter of float32
    direct : read through memory maps where the shard layout allows; False forces h5py
    """

    def __init__(
        self,
        features: FeatureSet,
        *,
        cache_ids: np.ndarray | None = None,
        direct: bool = True,
    ) -> None:
        self.features = features
        self.cache_ids = None if cache_ids is None else np.asarray(cache_ids, dtype=np.int64)
        self.direct = bool(direct)
        self._reset_local_state()

    def _reset_local_state(self) -> None:
        config = self.features.config
        self._n_frames = config.n_frames
        self._dtype = np.dtype(config.dtype)
        self._decode = codec.chunk_decoder(config)
        self._pid = os.getpid()
        self._handles: dict[int, h5py.File] = {}
        self._inherited_handles: list[dict[int, h5py.File]] = []
        self._maps: dict[int, _MappedShard] = {}
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {
            "features": self.features,
            "cache_ids": self.cache_ids,
            "direct": self.direct,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_local_state()

    # -- per-process handles -----------------------------------------------------------------

    def _own_handles(self) -> dict[int, h5py.File]:
        if self._pid != os.getpid():
            # Handles opened by the parent before a fork: keep them referenced (closing them
            # here would touch the parent's HDF5 state) and never read through them.
            self._inherited_handles.append(self._handles)
            self._handles = {}
            self._pid = os.getpid()
        return self._handles

    def _h5(self, s: int) -> h5py.File:
        with _open_lock:
            handles = self._own_handles()
            h5 = handles.get(s)
            if h5 is None:
                layout = self.features.shards[s]
                # Held across reads: opened so that a user's plain h5py.File on the same
                # shard, before or after, is not refused (``open_shard``).
                h5 = open_shard(self.features.local_shard(s), held=True)
                try:
                    check_shard(h5, layout.entry, self.features.config, path=layout.path)
                except BaseException:
                    h5.close()
                    raise
                handles[s] = h5
            return h5

    def _mapped(self, s: int) -> _MappedShard:
        mapped = self._maps.get(s)
        if mapped is not None:
            return mapped
        with _open_lock:
            mapped = self._maps.get(s)
            if mapped is not None:
                return mapped
            layout = self.features.shards[s]
            path = self.features.local_shard(s)
            problem = regular_file_problem(path)
            if problem:
                raise FormatError(f"{path}: {problem}")
            with open(path, "rb") as fh:
                # The file checked when the feature set was opened, not one put in its place
                # since (checking it again would cost milliseconds per shard).
                if layout.identity is not None and _identity(os.fstat(fh.fileno())) != layout.identity:
                    raise FormatError(
                        f"{layout.path}: shard was replaced since the feature set was opened; open it again"
                    )
                # a plain ndarray over the map: slicing a np.memmap runs Python code per slice
                raw = np.memmap(fh, dtype=np.uint8, mode="r").view(np.ndarray)
            itemsize = self._dtype.itemsize
            mapped = _MappedShard(
                raw=raw,
                values=_stored_view(raw[: raw.shape[0] // itemsize * itemsize], self._dtype),
                element_offsets=layout.byte_offsets // itemsize,
                verified=np.zeros(layout.n, dtype=bool),
            )
            while len(self._maps) >= MAX_OPEN_MAPS:
                del self._maps[next(iter(self._maps))]
            self._maps[s] = mapped
            return mapped

    def close(self) -> None:
        """Drop this process's handles, maps and cache (they reopen on the next read)."""
        with _open_lock:
            if self._pid == os.getpid():
                for h5 in self._handles.values():
                    h5.close()
            self._reset_local_state()

    # -- reading -----------------------------------------------------------------------------

    def read(
        self,
        ids: np.ndarray,
        crop_start: np.ndarray,
        out: np.ndarray,
        *,
        gain: np.ndarray | None = None,
        clip: tuple[float, float] | None = None,
    ) -> None:
        """Fill ``out`` with crops of examples ``ids``.

        ids : np.ndarray [shape=(B,)], int -- global example ids, any order
        crop_start : np.ndarray [shape=(B,)], int -- first stored frame of each crop
        out : np.ndarray [shape=(B, n_mels, crop, 1)], float32 or float16, C-contiguous
        gain : np.ndarray [shape=(B,)], float32 -- multiply each example, then ``clip``
        """
        ids = np.asarray(ids, dtype=np.int64)
        crop_start = np.asarray(crop_start, dtype=np.int64)
        b, n_mels, crop = out.shape[0], out.shape[1], out.shape[2]
        config = self.features.config
        if ids.shape != (b,) or crop_start.shape != (b,) or n_mels != config.n_mels:
            raise ValueError(f"read: ids {ids.shape}, starts {crop_start.shape} and out {out.shape} disagree")
        if b == 0:
            return
        if crop_start.min() < 0 or crop_start.max() + crop > config.n_frames:
            raise ValueError(
                f"read: crops of {crop} frames from {crop_start} exceed {config.n_frames} stored"
            )
        target = _Target(out, gain, clip)
        if self.cache_ids is not None:
            values, position = self._cached()
            where = position[ids]
            if (where < 0).any():
                raise ValueError("read: example ids outside the in-memory cache")
            offsets = where * (n_mels * config.n_frames)
            target.fill(
                values, offsets, crop_start, np.arange(b, dtype=np.int64), config.n_frames, self._quant(ids)
            )
            return
        self._read_by_shard(ids, crop_start, target)

    def _quant(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Offsets and scales of examples ``ids`` (uint8 codes), or None for float dtypes."""
        if self.features.mel_offset is None:
            return None
        return self.features.mel_offset[ids], self.features.mel_scale[ids]

    def _read_by_shard(self, ids: np.ndarray, crop_start: np.ndarray, target: _Target | _CopyTarget) -> None:
        """Read ``ids`` shard by shard, rows sorted; row ``j`` of ``ids`` goes to ``out[j]``."""
        shard = self.features.shard_of[ids]
        rows = self.features.row_of[ids]
        order = np.lexsort((rows, shard))
        sorted_shard = shard[order]
        bounds = [0, *(np.flatnonzero(sorted_shard[1:] != sorted_shard[:-1]) + 1).tolist(), order.shape[0]]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
            group = order[lo:hi]
            self._read_shard(int(sorted_shard[lo]), rows[group], crop_start[group], group, target)

    def _read_shard(
        self, s: int, rows: np.ndarray, starts: np.ndarray, out_pos: np.ndarray, target: _Target | _CopyTarget
    ) -> None:
        layout = self.features.shards[s]
        n_frames = self._n_frames
        quant = self._quant(layout.first + rows)
        if layout.byte_offsets is None or not self.direct:
            values, offsets = self._read_rows_h5(s, rows)
            target.fill(values, offsets, starts, out_pos, n_frames, quant)
            return
        mapped = self._mapped(s)
        if layout.compressed:
            self._read_compressed(s, mapped, rows, starts, out_pos, target, quant)
            return
        self._verify(s, mapped, rows)
        target.fill(mapped.values, mapped.element_offsets[rows], starts, out_pos, n_frames, quant)

    def _read_compressed(self, s, mapped, rows, starts, out_pos, target, quant) -> None:
        """Each chunk: checksum (first read), decompress into codes, then the same fill as uncompressed."""
        layout = self.features.shards[s]
        zero = np.zeros(1, dtype=np.int64)
        for k, row in enumerate(rows.tolist()):
            offset = int(layout.byte_offsets[row])
            raw = mapped.raw[offset : offset + int(layout.chunk_sizes[row])]
            if not mapped.verified[row]:
                if not read_kernels.chunk_ok(raw):
                    raise self._integrity_error(s, row)
                mapped.verified[row] = True
            values = _stored_view(self._decode(raw[:-4], f"{layout.path}: example {row}"), self._dtype)
            one = None if quant is None else (quant[0][k : k + 1], quant[1][k : k + 1])
            target.fill(values, zero, starts[k : k + 1], out_pos[k : k + 1], self._n_frames, one)

    def _verify(self, s: int, mapped: _MappedShard, rows: np.ndarray) -> None:
        if mapped.all_verified:
            return
        todo = rows[~mapped.verified[rows]]
        if not todo.size:
            return
        layout = self.features.shards[s]
        n_bytes = int(layout.chunk_sizes[0]) - 4
        if n_bytes % 2 == 0 and not (layout.byte_offsets[todo] % 2).any():
            bad = read_kernels.first_bad_chunk(
                mapped.raw[: mapped.raw.shape[0] // 2 * 2].view(np.uint16),
                layout.byte_offsets[todo] // 2,
                n_bytes // 2,
            )
        else:  # chunks of an odd number of bytes (uint8 codes): one at a time
            bad = next(
                (
                    j
                    for j, row in enumerate(todo.tolist())
                    if not read_kernels.chunk_ok(
                        mapped.raw[layout.byte_offsets[row] : layout.byte_offsets[row] + n_bytes + 4]
                    )
                ),
                -1,
            )
        if bad >= 0:
            raise self._integrity_error(s, int(todo[bad]))
        mapped.verified[todo] = True
        mapped.all_verified = bool(mapped.verified.all())

    def _integrity_error(self, s: int, row: int, detail: str = "") -> IntegrityError:
        layout = self.features.shards[s]
        example = layout.first + row
        return IntegrityError(
            f"{layout.path}: example {row} (global id {example}, recording "
            f"{self.features.recording_id[example]}) fails its fletcher32 checksum; the shard "
            f"is corrupt{detail}"
        )

    def _read_rows_h5(self, s: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole stored rows through h5py, in sorted runs, into one buffer (flat values, offsets)."""
        config = self.features.config
        per_example = config.n_mels * config.n_frames
        buffer = np.empty((rows.shape[0], config.n_mels, config.n_frames), dtype=self._dtype)
        ds = self._h5(s)[MEL]
        k = 0
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
            r0, r1 = int(run[0]), int(run[-1]) + 1
            try:
                ds.read_direct(buffer, source_sel=np.s_[r0:r1], dest_sel=np.s_[k : k + r1 - r0])
            except OSError as err:
                # A failing checksum, or a compression filter refusing a damaged chunk.
                if any(
                    word in str(err).lower() for word in ("fletcher32", "checksum", "filter returned failure")
                ):
                    bad = self._find_bad_row(ds, run)
                    raise self._integrity_error(s, bad, f" ({err})") from err
                raise FormatError(
                    f"{self.features.shards[s].path}: cannot read rows {r0}..{r1 - 1}: {err}"
                ) from err
            k += r1 - r0
        flat = _stored_view(buffer.reshape(-1), self._dtype)
        return flat, np.arange(rows.shape[0], dtype=np.int64) * per_example

    @staticmethod
    def _find_bad_row(ds: h5py.Dataset, run: np.ndarray) -> int:
        for r in run:
            try:
                ds[int(r)]
            except OSError:
                return int(r)
        return int(run[0])

    def _cached(self) -> tuple[np.ndarray, np.ndarray]:
        cache = self._cache
        if cache is not None:
            return cache
        with _open_lock:
            if self._cache is None:
                self._cache = self._load_cache()
            return self._cache

    def _load_cache(self) -> tuple[np.ndarray, np.ndarray]:
        """The cached examples' stored values (codes for uint8), flat, and each id's row in them."""
        config = self.features.config
        ids = self.cache_ids
        data = np.empty((ids.shape[0], config.n_mels, config.n_frames), dtype=self._dtype)
        position = np.full(self.features.n_examples, -1, dtype=np.int64)
        position[ids] = np.arange(ids.shape[0])
        # Whole stored examples through the normal path: grouped by shard, checksums verified.
        self._read_by_shard(ids, np.zeros(ids.shape[0], dtype=np.int64), _CopyTarget(data))
        return _stored_view(data.reshape(-1), self._dtype), position


_ONE = np.ones(1, dtype=np.float32)  # the kernel reads ``gain`` only when scaling


class _Target:
    """An output batch buffer and how to write into it (cast or decode codes, gain, clip)."""

    def __init__(self, out: np.ndarray, gain: np.ndarray | None, clip: tuple[float, float] | None) -> None:
        if out.dtype not in (np.float32, np.float16) or not out.flags.c_contiguous:
            raise ValueError(f"read: out must be a C-contiguous float32 or float16 array, got {out.dtype}")
        b, n_mels, crop = out.shape[0], out.shape[1], out.shape[2]
        self.out = out
        view = out.reshape(b, n_mels, crop)
        self.view = view.view(np.uint16) if out.dtype == np.float16 else view
        self.scale = gain is not None
        self.gain = _ONE if gain is None else np.asarray(gain, dtype=np.float32)
        if self.scale and self.gain.shape != (b,):
            raise ValueError(f"read: gain {self.gain.shape} does not match {b} examples")
        lo, hi = (-np.inf, np.inf) if clip is None else clip
        self.lo, self.hi = np.float32(lo), np.float32(hi)
        self.native = read_kernels.half_conversion_ok()

    def fill(
        self,
        values: np.ndarray,
        offsets: np.ndarray,
        starts: np.ndarray,
        out_pos: np.ndarray,
        n_frames: int,
        quant: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Crops of the examples at ``offsets`` of ``values`` into rows ``out_pos``.

        quant : (offset, scale) per example, float32, when ``values`` are uint8 codes
        """
        if self.native:
            if quant is None:
                read_kernels.gather_crop(
                    values,
                    offsets,
                    starts,
                    n_frames,
                    self.view,
                    out_pos,
                    self.gain,
                    self.lo,
                    self.hi,
                    self.scale,
                )
            else:
                read_kernels.gather_codes(
                    values,
                    offsets,
                    starts,
                    n_frames,
                    quant[0],
                    quant[1],
                    self.view,
                    out_pos,
                    self.gain,
                    self.lo,
                    self.hi,
                    self.scale,
                )
            return
        # Portable path for CPUs where the compiled half casts are unavailable: copy the
        # stored values with the compiled loop, cast and scale with numpy.
        b, n_mels, crop = self.view.shape
        raw = np.empty((out_pos.shape[0], n_mels, crop), dtype=values.dtype)
        read_kernels.copy_crop(
            values, offsets, starts, n_frames, raw, np.arange(out_pos.shape[0], dtype=np.int64)
        )
        stored = raw.view(np.float16) if values.dtype == np.uint16 else raw
        block = stored.astype(np.float32) if quant is None else codec.dequantize(stored, *quant)
        if self.scale:
            block *= self.gain[out_pos][:, None, None]
            np.clip(block, self.lo, self.hi, out=block)
        self.out.reshape(b, n_mels, crop)[out_pos] = block.astype(self.out.dtype)


class _CopyTarget:
    """Whole stored examples copied as they are (no cast, no decoding): the in-RAM cache's fill."""

    def __init__(self, out: np.ndarray) -> None:
        self.view = _stored_view(out, out.dtype)

    def fill(self, values, offsets, starts, out_pos, n_frames, quant=None) -> None:
        read_kernels.copy_crop(values, offsets, starts, n_frames, self.view, out_pos)
