"""``MelReader``: the stored mel values of a feature set, read crop by crop into batch buffers.

Its fast path memory-maps each shard (read-only) and, because every example is one chunk at a
known byte offset (``loader.feature_set.ShardLayout``), skips HDF5's filter pipeline: an
uncompressed chunk is gathered, cropped and cast (or, for uint8 codes, decoded with its
example's offset and scale) by one compiled loop (``loader.read_kernels``, through
``loader.targets``); a chunk compressed by a plugin filter (``zstd``, ``bitshuffle-lz4``) is
decompressed into a small array of stored values and then goes through the same loop, so no
float array is made on the way. The reader's ``loader.decode_pool.DecodePool``
(``decode_threads``; the codecs and the loop release the GIL) works on a batch side by side: it
decodes the compressed chunks and gathers the mapped ones in interleaved parts, with the same
bytes as one thread. The fast path checks each chunk's Fletcher-32 itself the first time this
process reads that chunk. Shards written with gzip, lzf or another layout are read with h5py
``read_direct``, one sorted run of rows at a time, into a preallocated buffer.

Process rules: h5py handles are opened lazily and belong to the process that opened them
(keyed by ``os.getpid()``); a forked child never uses or closes its parent's handles, and
nothing with a handle is pickled. Memory maps, checksum bitmaps and the in-RAM cache are
plain memory, safe to inherit through ``fork``; they are dropped when pickling (``spawn``).
Decoding threads belong to the process that started them (a child starts its own); ``close``
stops them, and so does collecting the reader. A user's plain ``h5py.File`` on a shard, opened
before or after this reader's, does not clash with it (``melshards.shard_open.open_shard``).

Shards changed under an open reader: the per-example metadata and chunk offsets were read when
the feature set was opened, so every read of a shard checks (``os.stat``, microseconds) that
it is still that file (device, inode, size, modification time; ``ShardLayout.identity``):
before a memory-mapped read (a map of a file cut short would fault) and after every read (a
rewrite during it). A shard replaced, or rewritten in place by another build, is an
IntegrityError naming it, never another file's values read at this file's offsets.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass

import h5py
import numpy as np

from loader import bitshuffle_kernels, read_kernels
from loader.compressed import Chunks, fill_compressed
from loader.decode_pool import DecodePool, default_threads
from loader.feature_set import FeatureSet, file_identity
from loader.targets import CopyTarget, Target, fill_side_by_side, stored_view
from melshards.checks import check_int
from melshards.errors import FormatError, IntegrityError
from melshards.names import MEL
from melshards.shard_check import check_shard
from melshards.shard_open import open_shard, regular_file_problem

# Each memory map keeps a file descriptor; beyond this many, the oldest map is dropped (its
# memory stays valid for whoever still holds an array into it).
MAX_OPEN_MAPS = 256
# What h5py's error says when a chunk is damaged: a failing checksum, or a filter refusing it.
_DAMAGE_WORDS = ("fletcher32", "checksum", "filter returned failure")
_ZERO = np.zeros(1, dtype=np.int64)

# Guards lazy opening (maps, handles, the cache); reentrant because loading the cache reads
# through the same path.
_open_lock = threading.RLock()


def _renew_open_lock() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _open_lock
    _open_lock = threading.RLock()


os.register_at_fork(after_in_child=_renew_open_lock)


@dataclass
class _MappedShard:
    """A shard's file memory-mapped read-only, with the chunks this process has verified."""

    raw: np.ndarray  # the whole file as uint8
    values: np.ndarray  # the file as the stored values (uint16 bits for float16; uncompressed only)
    element_offsets: np.ndarray  # int64, start of each example in ``values`` (uncompressed only)
    verified: np.ndarray  # bool per example
    all_verified: bool = False


class MelReader:
    """Reads crops of examples into batch buffers; see the module docstring.

    features : the FeatureSet to read (the fast path checks each chunk's Fletcher-32 the first
        time this process reads it; there is no switch to skip it)
    cache_ids : example ids to hold in RAM (loaded once per process on first read), or None;
        uint8 sets keep their codes in RAM (decompressed), a quarter of float32
    direct : read through memory maps where the shard layout allows; False forces h5py
    decode_threads : threads filling a batch side by side (default: one per core, at most 4);
        1 fills it in the calling thread
    """

    def __init__(
        self,
        features: FeatureSet,
        *,
        cache_ids: np.ndarray | None = None,
        direct: bool = True,
        decode_threads: int | None = None,
    ) -> None:
        self.features = features
        self.cache_ids = None if cache_ids is None else np.asarray(cache_ids, dtype=np.int64)
        self.direct = bool(direct)
        threads = default_threads() if decode_threads is None else decode_threads
        self.decode_threads = check_int("decode_threads", threads, low=1)
        self._reset_local_state()

    def _reset_local_state(self) -> None:
        config = self.features.config
        self._n_frames = config.n_frames
        self._dtype = np.dtype(config.dtype)
        self._decode = bitshuffle_kernels.chunk_decoder(config)
        self._pid = os.getpid()
        self._handles: dict[int, h5py.File] = {}
        self._inherited_handles: list[dict[int, h5py.File]] = []
        self._maps: dict[int, _MappedShard] = {}
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        # (path, identity) of each shard, for ``_check_unchanged``: the path as bytes, since
        # os.stat spends longer converting a Path than in the system call
        self._identities = [(os.fsencode(lay.path), lay.identity) for lay in self.features.shards]
        self._pool = DecodePool(self.decode_threads, limit_openmp=bitshuffle_kernels.uses_openmp(config))
        self._stop_pool = weakref.finalize(self, self._pool.close)  # the reader collected

    def __getstate__(self) -> dict:
        return {key: self.__dict__[key] for key in ("features", "cache_ids", "direct", "decode_threads")}

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
                if layout.identity is not None and file_identity(os.fstat(fh.fileno())) != layout.identity:
                    raise self._replaced_error(s)
                # a plain ndarray over the map: slicing a np.memmap runs Python code per slice
                raw = np.memmap(fh, dtype=np.uint8, mode="r").view(np.ndarray)
            itemsize = self._dtype.itemsize
            mapped = _MappedShard(
                raw=raw,
                values=stored_view(raw[: raw.shape[0] // itemsize * itemsize], self._dtype),
                element_offsets=layout.byte_offsets // itemsize,
                verified=np.zeros(layout.n, dtype=bool),
            )
            while len(self._maps) >= MAX_OPEN_MAPS:
                del self._maps[next(iter(self._maps))]
            self._maps[s] = mapped
            return mapped

    def close(self) -> None:
        """Drop this process's handles, maps and cache and stop its decoding threads (they
        reopen and restart on the next read)."""
        self._stop_pool()
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
        stored: bool = False,
    ) -> None:
        """Fill ``out`` with crops of examples ``ids``.

        ids : np.ndarray [shape=(B,)], int -- global example ids, any order
        crop_start : np.ndarray [shape=(B,)], int -- first stored frame of each crop
        out : np.ndarray [shape=(B, n_mels, crop, 1)], float32 or float16, C-contiguous; with
            ``stored``, (B, n_mels, crop) of the stored dtype, which gets the values undecoded
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
        target = CopyTarget(out) if stored else Target(out, gain, clip)
        if self.cache_ids is not None:
            values, position = self._cached()
            where = position[ids]
            if (where < 0).any():
                raise ValueError("read: example ids outside the in-memory cache")
            fill = (values, where * (n_mels * config.n_frames), crop_start, np.arange(b, dtype=np.int64))
            fill_side_by_side(self._pool, target, [(*fill, config.n_frames, self._quant(ids))])
            return
        self._read_by_shard(ids, crop_start, target)

    def _quant(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Offsets and scales of examples ``ids`` (uint8 codes), or None for float dtypes."""
        if self.features.mel_offset is None:
            return None
        return self.features.mel_offset[ids], self.features.mel_scale[ids]

    def _read_by_shard(self, ids: np.ndarray, crop_start: np.ndarray, target: Target | CopyTarget) -> None:
        """Read ``ids`` shard by shard, rows sorted; row ``j`` of ``ids`` goes to ``out[j]``."""
        shard = self.features.shard_of[ids]
        rows = self.features.row_of[ids]
        order = np.lexsort((rows, shard))
        sorted_shard = shard[order]
        bounds = [0, *(np.flatnonzero(sorted_shard[1:] != sorted_shard[:-1]) + 1).tolist(), order.shape[0]]
        shards = sorted_shard[bounds[:-1]].tolist()
        # The shards' files are checked together, before and after the reads rather than
        # between them: a system call between two gathers from memory maps costs more than one.
        for s in shards:
            if self._is_direct(s):  # a map of a file cut short since would fault (SIGBUS)
                self._check_unchanged(s)
        try:
            groups = list(zip(shards, bounds[:-1], bounds[1:], strict=True))
            plain = {s for s in shards if self._is_direct(s) and not self.features.shards[s].compressed}
            self._verify([(s, rows[order[lo:hi]]) for s, lo, hi in groups if s in plain])
            compressed = []  # positions in ``order`` of the chunks to decompress, in order
            mapped = []  # fills from memory maps, run side by side once all are found
            for s, lo, hi in groups:
                if self._is_direct(s) and self.features.shards[s].compressed:
                    compressed.append(order[lo:hi])
                    continue
                group = order[lo:hi]
                fill = self._shard_fill(s, rows[group], crop_start[group], group)
                if self._is_direct(s):
                    mapped.append(fill)
                else:  # rows read through h5py, filled now: one shard's buffer held at a time
                    fill_side_by_side(self._pool, target, [fill])
            fill_side_by_side(self._pool, target, mapped)
            if compressed:
                chosen = np.concatenate(compressed)
                self._read_compressed(ids[chosen], crop_start[chosen], chosen, target)
        finally:
            # A rewrite before or during the reads: the rows (or the error a read raised, such
            # as a checksum failing) came from another file's bytes at this file's offsets.
            for s in shards:
                self._check_unchanged(s)

    def _is_direct(self, s: int) -> bool:
        """Whether shard ``s`` is read through its memory map (else through h5py)."""
        return self.direct and self.features.shards[s].byte_offsets is not None

    def _check_unchanged(self, s: int) -> None:
        """IntegrityError unless shard ``s`` is still the file the feature set checked when it
        was opened: same device, inode, size and modification time. A shard replaced since, or
        rewritten in place (``cp other.h5 shard.h5`` keeps the inode), would otherwise be read
        against the metadata of the file it was. A cached copy of a set at a URL (no identity)
        was checked against the index's sha256 when fetched."""
        path, identity = self._identities[s]
        if identity is None:
            return
        try:
            same = file_identity(os.stat(path)) == identity
        except OSError:
            same = False
        if not same:
            raise self._replaced_error(s)

    def _replaced_error(self, s: int) -> IntegrityError:
        return IntegrityError(
            f"{self.features.shards[s].path}: shard was replaced since the feature set was opened; "
            "open it again"
        )

    def _shard_fill(self, s: int, rows: np.ndarray, starts: np.ndarray, out_pos: np.ndarray) -> tuple:
        """``fill``'s arguments for rows of shard ``s``: its memory map (checksums verified) or h5py's."""
        quant = self._quant(self.features.shards[s].first + rows)
        if self._is_direct(s):
            mapped = self._mapped(s)  # its chunks' checksums verified by ``_verify``
            values, offsets = mapped.values, mapped.element_offsets[rows]
        else:
            values, offsets = self._read_rows_h5(s, rows)
        return values, offsets, starts, out_pos, self._n_frames, quant

    def _read_compressed(self, ids: np.ndarray, starts: np.ndarray, out_pos: np.ndarray, target) -> None:
        """Compressed chunks of examples ``ids`` (by shard, rows sorted): checked, decompressed
        and filled on the decode pool (``loader.compressed``)."""
        shards = self.features.shard_of[ids].tolist()
        rows = self.features.row_of[ids].tolist()
        # Mapped here, in order: the threads never take the open lock, which this thread may
        # hold (loading the cache). A shard that does not map fails after the chunks before it.
        maps: dict[int, _MappedShard] = {}
        n_mapped, failure = len(rows), None
        for k, s in enumerate(shards):
            if s not in maps:
                try:
                    maps[s] = self._mapped(s)
                except (OSError, FormatError, IntegrityError) as err:
                    n_mapped, failure = k, err
                    break
        shards = shards[:n_mapped]
        chunks = Chunks(
            [maps[s] for s in shards],
            [self.features.shards[s] for s in shards],
            rows[:n_mapped],
            self._decode,
            lambda k: self._integrity_error(shards[k], rows[k]),
        )
        quant = self._quant(ids[:n_mapped])
        fused = self.features.config.compression == "bitshuffle-lz4" and self._dtype == np.uint8
        fill_compressed(
            self._pool, chunks, target, starts, out_pos, self._n_frames, self._dtype, quant, fused=fused
        )
        if failure is not None:
            raise failure

    def _verify(self, groups: list[tuple[int, np.ndarray]]) -> None:
        """The checksums of the chunks of ``(shard, rows)`` groups not verified yet in this
        process, one chunk per pool position (a first read's time goes mostly to faulting in the
        pages, which threads share); IntegrityError for the first bad one in shard and row order."""
        todo = []
        for s, rows in groups:
            mapped = self._mapped(s)
            if not mapped.all_verified:
                todo += [(s, mapped, row) for row in np.unique(rows[~mapped.verified[rows]]).tolist()]
        if not todo:
            return

        def check(k: int) -> None:
            s, mapped, row = todo[k]
            layout = self.features.shards[s]
            first, n_bytes = int(layout.byte_offsets[row]), int(layout.chunk_sizes[row]) - 4
            if n_bytes % 2 == 0 and first % 2 == 0:
                words = mapped.raw[first : first + n_bytes + 4].view(np.uint16)
                ok = read_kernels.first_bad_chunk(words, _ZERO, n_bytes // 2) < 0
            else:  # chunks of an odd number of bytes (uint8 codes)
                ok = read_kernels.chunk_ok(mapped.raw[first : first + n_bytes + 4])
            if not ok:
                raise self._integrity_error(s, row)
            mapped.verified[row] = True

        self._pool.run(check, len(todo))
        for mapped in {id(m): m for _, m, _ in todo}.values():
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
                if any(word in str(err).lower() for word in _DAMAGE_WORDS):
                    bad = self._find_bad_row(ds, run)
                    raise self._integrity_error(s, bad, f" ({err})") from err
                raise FormatError(
                    f"{self.features.shards[s].path}: cannot read rows {r0}..{r1 - 1}: {err}"
                ) from err
            k += r1 - r0
        flat = stored_view(buffer.reshape(-1), self._dtype)
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
        self._read_by_shard(ids, np.zeros(ids.shape[0], dtype=np.int64), CopyTarget(data))
        return stored_view(data.reshape(-1), self._dtype), position
