"""``FeatureSet``: a feature set's index and every shard's small per-example arrays, read once.

Opening a feature set reads ``index.json`` (``melshards.index``) and, from every shard, checked
against its index entry (``melshards.shard_check.check_shard``), the per-example metadata: recording
id, window start, stored labels, valid frames, the uint8 codes' offset and scale, the events
each example holds, and where each example's chunk lies in the file (``ShardLayout``, for the
memory-mapped reads of ``loader.reader.MelReader``). Everything is concatenated into numpy
arrays in global example order (shard by shard in index order), so a ``FeatureSet`` holds no
open file and pickles cheaply into worker processes.

What a local set's shards gave is kept between processes (``loader.meta_cache``): a shard that
is still the very file read then (device, inode, size, modification and change times, and its
index entry) is not opened again; any other is read and checked as above.

``FeatureSet.crop_labels`` gives the labels of what a crop shows, from the stored events (the
``min_overlap`` rule of ``melshards.labels``), so labels follow the crop, not the stored window.

A set at a URL (``s3://``, ``gs://``, ``https://``) is read through ``melshards.remote``: its
metadata with range requests, its shards from verified local copies (``ShardCache``). Where
that cache lies is logged once per process when the set is opened. A shard whose metadata
cannot be read that way is fetched whole and checked against the index's size and sha256, so
an object replaced since its index was written is named as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from loader.meta_cache import MetaCache, ParsedShard, cache_key
from melshards import codec, remote, shard_cache
from melshards.config import FeatureConfig, crop_span
from melshards.errors import FormatError, IntegrityError, StorageError
from melshards.index import Index, ShardEntry, read_index
from melshards.labels import overlap_mask
from melshards.names import EVENT_EXAMPLE, EVENT_FP, EVENT_TP, MEL
from melshards.shard_check import check_shard
from melshards.shard_open import metadata_parts, open_listed
from melshards.shard_read import mel_chunks, read_metadata


@dataclass(frozen=True)
class ShardLayout:
    """Where a shard's examples lie in its file.

    ``byte_offsets`` and ``chunk_sizes`` are set when every example is one fletcher32-checked
    chunk (``melshards.shard_read.mel_chunks``) that the fast path can read straight from a memory
    map, decompressing it first when ``compressed``; None means read through h5py.
    """

    entry: ShardEntry
    path: Path
    n: int
    first: int
    byte_offsets: np.ndarray | None
    chunk_sizes: np.ndarray | None = None
    compressed: bool = False
    # (st_dev, st_ino, st_size, st_mtime_ns) of the checked file; None for a shard of a set at a
    # URL, whose cached copy is checked against the index's sha256 whenever it is fetched
    identity: tuple[int, ...] | None = (0, 0, 0, 0)


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
        self.cache = None if self.url is None else shard_cache.ShardCache.at(cache_dir, limit=cache_limit)
        self.index: Index = read_index(
            root, cache_root=None if self.cache is None else self.cache.set_dir(self.url)
        )
        if self.cache is not None:
            self.cache.announce(self.url)
        self.root = self.index.root
        if prefetch and self.url is not None:
            self._fetch(self.index.shards)
        parts = metadata_parts(self.index.shards, url=self.url, cache=self.cache)
        # A local set's shards as read by an earlier process, while each is still that file.
        kept = None if self.url is not None else MetaCache.of(self.index, cache_dir)
        metas, layouts, first = [], [], 0
        for entry in self.index.shards:
            shard = None if kept is None else kept.get(entry)
            if shard is None:
                shard = self._read_shard(entry, parts=parts.pop(entry.file, None))
                if kept is not None:
                    kept.put(entry, shard)
            metas.append(shard.meta)
            layouts.append(_layout(entry, self.index.shard_path(entry), first, shard))
            first += entry.n
        if kept is not None:
            kept.save()
        self.shards: tuple[ShardLayout, ...] = tuple(layouts)
        self._gather(metas)
        self._gather_events([meta.events for meta in metas])
        mean, n_mels = self.index.stats.mean, self.config.n_mels
        self.bin_mean = (
            np.asarray(mean, dtype=np.float32) if len(mean) == n_mels else np.zeros(n_mels, dtype=np.float32)
        )

    def _gather(self, metas: list) -> None:
        """The shards' per-example arrays (``read_metadata``), one array each, in global order."""
        layouts, config = self.shards, self.config
        sizes = [lay.n for lay in layouts]
        n = sum(sizes)
        self.shard_of = np.repeat(np.arange(len(layouts), dtype=np.int64), sizes)
        self.row_of = np.arange(n, dtype=np.int64) - np.repeat(
            np.array([lay.first for lay in layouts], dtype=np.int64), sizes
        )
        self.recording_id = _concat([meta.recording_id for meta in metas], object)
        self.start = _concat([meta.start for meta in metas], np.float64)
        self.labels = _concat([meta.labels for meta in metas], np.int8).reshape(n, config.n_classes)
        self.valid = _concat([meta.valid for meta in metas], np.int64).reshape(n, 2)
        quantized = [meta for meta in metas if meta.mel_offset is not None]
        is_quantized = codec.is_quantized(config)
        self.mel_offset = _concat([m.mel_offset for m in quantized], np.float32) if is_quantized else None
        self.mel_scale = _concat([m.mel_scale for m in quantized], np.float32) if is_quantized else None

    def _gather_events(self, events: list) -> None:
        """The shards' event tables as one, sorted by global example (``event_ptr``)."""
        n = self.n_examples
        example = _concat(
            [ev[EVENT_EXAMPLE] + lay.first for ev, lay in zip(events, self.shards, strict=True)], np.int64
        )
        order = np.argsort(example, kind="stable")
        self.event_ptr = np.concatenate([[0], np.cumsum(np.bincount(example, minlength=n))]).astype(np.int64)
        self.event_species = _concat([ev["species_id"] for ev in events], np.int64)[order]
        self.event_kind = _concat([ev["kind"] for ev in events], np.int8)[order]
        self.event_t_min = _concat([ev["t_min"] for ev in events], np.float64)[order]
        self.event_t_max = _concat([ev["t_max"] for ev in events], np.float64)[order]

    def _read_shard(self, entry: ShardEntry, *, parts: dict[int, bytes] | None) -> ParsedShard:
        """One shard read from its file, checked against its index entry.

        For a set at a URL: from its cached copy (pinned while it is read) or its object. When
        that fails, the shard is fetched whole, which checks the object's size and sha256
        against the index (IntegrityError naming both when they differ; a damaged cached copy
        is fetched anew), and read from that copy."""
        if self.url is None:
            return self._read_checked(entry, parts=None)
        if self.cache.cached(self.url, entry.file, entry.sha256, entry.bytes) is not None:
            self.cache.pin(self.url, entry.file)
        try:
            return self._read_checked(entry, parts=parts)
        except (FormatError, StorageError) as err:
            try:
                self.cache.use(self.url, entry.file, entry.sha256, entry.bytes)
            except IntegrityError:
                raise
            except (FormatError, StorageError):
                raise err from None
        return self._read_checked(entry, parts=None)

    def _read_checked(self, entry: ShardEntry, *, parts: dict[int, bytes] | None) -> ParsedShard:
        path, config = self.index.shard_path(entry), self.config
        before = _stat(path) if self.url is None else None
        with open_listed(self.index, entry, url=self.url, cache=self.cache, parts=parts) as h5:
            datasets = check_shard(h5, entry, config, path=path, size=self.url is None)
            meta = read_metadata(h5, entry, config, path=path, datasets=datasets)
            chunks = mel_chunks(h5py.Dataset(datasets[MEL]), config, file_size=entry.bytes)
            if self.url is not None:
                return ParsedShard(meta=meta, chunks=chunks, identity=None)
            after = os.stat(path)
        return ParsedShard(
            meta=meta, chunks=chunks, identity=file_identity(after), key=cache_key(before, after)
        )

    def local_shard(self, s: int) -> Path:
        """The local file of shard ``s``: for a set at a URL, its verified cached copy (fetched
        now when it is not in the cache), kept from eviction until this thread asks for another
        shard, long enough to open or map it."""
        layout = self.shards[s]
        if self.url is None:
            return layout.path
        entry = layout.entry
        # Pinned: no process evicts it before this thread asks for another shard.
        return self.cache.use(self.url, entry.file, entry.sha256, entry.bytes)

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
    ``cache``: ``cache_dir`` (also where a local set's parsed metadata is kept,
    ``loader.meta_cache``) and ``cache_limit`` for a set at a URL."""
    return FeatureSet(root, **cache)


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """Which file this is: a shard rebuilt or replaced since it was checked has another inode,
    one rewritten in place another modification time (and often size)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _layout(entry: ShardEntry, path: Path, first: int, shard: ParsedShard) -> ShardLayout:
    chunks = shard.chunks
    return ShardLayout(
        entry=entry,
        path=path,
        n=entry.n,
        first=first,
        byte_offsets=None if chunks is None else chunks.offsets,
        chunk_sizes=None if chunks is None else chunks.sizes,
        compressed=chunks is not None and chunks.compressed,
        identity=shard.identity,
    )


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
