"""A shard: writing one atomically, reading its summary and metadata, checking it.

A shard under its final name is always whole: it is built in memory, written in one go as
``.shard-NNNNN.h5.<pid>.tmp``, fsynced and only then ``os.replace``d
(``melshards.files.write_file_atomic``), so a crash, a kill or a full disk leaves at most a
stray temp file, which the next run removes. Every dataset and attribute name comes from
``melshards.names``; ``docs/format.md`` describes the layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from melshards import codec, remote
from melshards.config import FeatureConfig
from melshards.errors import FormatError, IntegrityError
from melshards.files import write_file_atomic
from melshards.index import BinStats, Index, ShardEntry
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
    CHECKSUM_BYTES,
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
    METADATA_DATASETS,
    PLUGIN_FILTER_IDS,
    QUANT_DATASETS,
    RECORDING_ID,
    START,
    VALID,
    shard_datasets,
)


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


def open_shard(path: Path, *, held: bool = False) -> h5py.File:
    """Open a shard read-only without HDF5 file locking; FormatError if missing or unreadable.

    A shard must be a regular file in its directory: a symbolic link (which could lead anywhere)
    or a device, FIFO or directory under a shard's name is refused. File locking is off because
    it fails on NFS and many cluster file systems, and shards are written once and never
    modified in place.

    HDF5 opens a file only once per process and refuses a second open whose locking flags
    differ from the first ("file locking flag values don't match"), so a plain
    ``h5py.File(shard, "r")`` a user holds would block this open, and a handle held here would
    block the user's. A handle that stays open across calls (``held``, the loader's h5py read
    path) and an open refused that way go through a Python file object (``_FileObjectShard``):
    HDF5 sees a file of its own, with no lock to agree on.
    """
    problem = regular_file_problem(path)
    if problem:
        raise FormatError(f"{path}: {problem}")
    try:
        return open_readonly(path, held=held)
    except OSError as err:
        raise FormatError(f"{path}: cannot open shard: {err}") from err


@contextlib.contextmanager
def open_listed(
    index: Index,
    entry: ShardEntry,
    *,
    url: str | None = None,
    cache: remote.ShardCache | None = None,
    parts: dict[int, bytes] | None = None,
) -> Iterator[h5py.File]:
    """A shard of ``index`` open read-only, to read its metadata: the local file, or for a set
    at ``url`` its verified copy in ``cache`` when there is one, else the object itself through
    range requests (``parts``: bytes of it known already, ``remote.head_and_tail``)."""
    if url is not None and not is_cached(entry, url=url, cache=cache):
        where = remote.join(url, entry.file)
        with (
            remote.storage_errors(where, "read shard metadata"),
            remote.RangeFile(where, entry.bytes, parts) as fh,
            h5py.File(fh, "r") as h5,
        ):
            yield h5
        return
    with open_shard(index.shard_path(entry)) as h5:
        yield h5


def is_cached(entry: ShardEntry, *, url: str, cache: remote.ShardCache | None) -> bool:
    return cache is not None and cache.cached(url, entry.file, entry.sha256, entry.bytes) is not None


def metadata_parts(
    entries: Sequence[ShardEntry], *, url: str | None, cache: remote.ShardCache | None
) -> dict[str, dict[int, bytes]]:
    """For a set at ``url``: the bytes holding the metadata of each shard not in ``cache``,
    fetched concurrently (``remote.head_and_tail``), by file name; {} for a local set."""
    if url is None:
        return {}
    missing = [e for e in entries if not is_cached(e, url=url, cache=cache)]
    found = remote.head_and_tail([remote.join(url, e.file) for e in missing], [e.bytes for e in missing])
    return {e.file: parts for e, parts in zip(missing, found, strict=True)}


def open_readonly(path: Path, *, held: bool = False) -> h5py.File:
    """``h5py.File(path, "r", locking=False)``, or through a file object as ``open_shard`` says.

    Raises OSError when HDF5 cannot open the file.
    """
    if held:
        return _FileObjectShard(path)
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as err:
        if "file locking" not in str(err) or "match" not in str(err):
            raise
    return _FileObjectShard(path)


class _FileObjectShard(h5py.File):
    """A shard opened read-only through a Python file object (h5py's ``fileobj`` driver), which
    it closes with itself."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 -- closed by close()
        try:
            super().__init__(self._fh, "r")
        except BaseException:
            self._fh.close()
            raise

    def close(self) -> None:
        super().close()
        self._fh.close()


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file that may be read as a shard, or None."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "shard listed in the index is missing"
    except OSError as err:
        return f"cannot stat shard: {err.strerror}"
    if stat.S_ISLNK(mode):
        return "shard is a symbolic link; refusing it (copy the file into the feature directory)"
    if not stat.S_ISREG(mode):
        return "shard is not a regular file; refusing it"
    return None


def check_shard(
    h5: h5py.File, entry: ShardEntry, config: FeatureConfig, *, path: Path, size: bool = True
) -> None:
    """Check an open shard against its index entry; FormatError names the first disagreement.

    Refuses anything the index does not describe: another size (unless ``size`` is False, for
    callers that compare the sha256 themselves), wrong counts or shapes, another fingerprint,
    and HDF5 indirections (external links, external storage, virtual datasets) that would make
    the reader open files outside the feature directory.
    """
    if size:
        actual = path.stat().st_size
        if actual != entry.bytes:
            raise FormatError(f"{path}: shard is {actual} bytes, the index says {entry.bytes}")
    n = entry.n
    if h5.attrs.get(ATTR_FINGERPRINT) != entry.fingerprint:
        raise FormatError(
            f"{path}: shard fingerprint {h5.attrs.get(ATTR_FINGERPRINT)!r} disagrees with the index "
            f"({entry.fingerprint!r})"
        )

    def indirect(name: str, link: Any) -> str | None:
        # Returning a value stops the visit; raising inside an h5py callback is not safe.
        return name if isinstance(link, h5py.ExternalLink | h5py.SoftLink) else None

    codec.register_filters(config)
    linked = h5.visititems_links(indirect)
    if linked is not None:
        raise FormatError(f"{path}: link {linked!r} points outside the shard; refusing it")
    expected_shapes = {
        MEL: (n, config.n_mels, config.n_frames),
        LABELS: (n, config.n_classes),
        VALID: (n, 2),
    }
    for name in shard_datasets(config.dtype):
        if name not in h5:
            raise FormatError(f"{path}: dataset {name!r} is missing")
        ds = h5[name]
        if ds.is_virtual or ds.external:
            raise FormatError(f"{path}: dataset {name!r} uses virtual or external storage; refusing it")
        if not ds.fletcher32:
            raise FormatError(f"{path}: dataset {name!r} has no checksum; refusing it")
        shape = expected_shapes.get(name)
        if shape is None and not name.startswith(f"{EVENTS}/"):
            shape = (n,)
        if shape is not None and ds.shape != shape:
            raise FormatError(f"{path}: dataset {name!r} has shape {ds.shape}, index implies {shape}")
    if h5[MEL].dtype != np.dtype(config.dtype):
        raise FormatError(f"{path}: mel is stored as {h5[MEL].dtype}, the config says {config.dtype}")
    m = h5[f"{EVENTS}/{EVENT_EXAMPLE}"].shape[0]
    for name in METADATA_DATASETS:
        if name.startswith(f"{EVENTS}/") and h5[name].shape != (m,):
            raise FormatError(f"{path}: dataset {name!r} has shape {h5[name].shape}, expected ({m},)")


@dataclass(frozen=True)
class ShardMetadata:
    """The small per-example arrays of one shard (everything but ``mel``).

    ``events`` maps ``EVENT_FIELDS`` names (and ``EVENT_EXAMPLE``, the row each event belongs
    to, int64) to flat arrays, one value per stored event.
    """

    recording_id: np.ndarray  # (n,) object (str)
    start: np.ndarray  # (n,) float64
    labels: np.ndarray  # (n, n_classes) int8
    events: dict[str, np.ndarray]
    valid: np.ndarray  # (n, 2) int32: [first, stop) frames that hold audio
    mel_offset: np.ndarray | None = None  # (n,) float32, dtype uint8 only
    mel_scale: np.ndarray | None = None  # (n,) float32, dtype uint8 only


def read_metadata(h5: h5py.File, entry: ShardEntry, config: FeatureConfig, *, path: Path) -> ShardMetadata:
    """Read a checked shard's metadata, each chunk through its checksum.

    Raises IntegrityError when a chunk fails its checksum, FormatError when events point outside
    the shard or the config, or ``valid`` outside the stored frames.
    """
    example = read_checked(h5, f"{EVENTS}/{EVENT_EXAMPLE}", path=path).astype(np.int64)
    if example.size and (example.min() < 0 or example.max() >= entry.n):
        raise FormatError(f"{path}: {EVENTS}/{EVENT_EXAMPLE} points outside the shard's {entry.n} rows")
    species = read_checked(h5, f"{EVENTS}/species_id", path=path).astype(np.int64)
    if species.size and (species.min() < 0 or species.max() >= config.n_classes):
        raise FormatError(f"{path}: {EVENTS}/species_id outside [0, {config.n_classes}) of the config")
    events = {EVENT_EXAMPLE: example, "species_id": species}
    for key in EVENT_FIELDS:
        if key not in events:
            events[key] = read_checked(h5, f"{EVENTS}/{key}", path=path)
    quant = {}
    if codec.is_quantized(config):
        quant = {name: read_checked(h5, name, path=path).astype(np.float32) for name in QUANT_DATASETS}
        for name, values in quant.items():
            problem = quant_problem(name, values)
            if problem:
                raise FormatError(f"{path}: {problem}")
    valid = read_checked(h5, VALID, path=path)
    problem = valid_problem(valid, config.n_frames)
    if problem:
        raise FormatError(f"{path}: {problem}")
    return ShardMetadata(
        recording_id=read_checked(h5, RECORDING_ID, path=path),
        start=read_checked(h5, START, path=path),
        labels=read_checked(h5, LABELS, path=path),
        events=events,
        valid=valid,
        mel_offset=quant.get(MEL_OFFSET),
        mel_scale=quant.get(MEL_SCALE),
    )


def valid_problem(values: np.ndarray, n_frames: int) -> str | None:
    """What is wrong with a shard's ``valid`` rows (``0 <= first < stop <= n_frames``), or None."""
    if values.ndim != 2 or values.shape[1] != 2:
        return f"{VALID} has shape {values.shape}, expected (n, 2)"
    first, stop = values[:, 0], values[:, 1]
    bad = np.flatnonzero((first < 0) | (first >= stop) | (stop > n_frames))
    if bad.size:
        i = int(bad[0])
        return f"{VALID} of example {i} is [{first[i]}, {stop[i]}), outside 0 <= first < stop <= {n_frames}"
    return None


def quant_problem(name: str, values: np.ndarray) -> str | None:
    """What is wrong with a uint8 set's ``mel_offset`` or ``mel_scale`` values, or None."""
    if not np.isfinite(values).all():
        return f"{name} holds non-finite values"
    if name == MEL_SCALE and (values < 0).any():
        return f"{name} holds negative steps"
    return None


def read_checked(h5: h5py.File, name: str, *, path: Path | None = None) -> np.ndarray:
    """The whole dataset ``name`` (strings as an object array of ``str``), checksums verified.

    HDF5 checks each chunk's fletcher32 as it reads; a mismatch is an IntegrityError naming the
    shard and the dataset.
    """
    ds = h5[name]
    try:
        if ds.dtype.kind == "S" or h5py.check_string_dtype(ds.dtype) is not None:
            return np.asarray(ds.asstr()[()], dtype=object)
        return ds[()]
    except OSError as err:
        where = path if path is not None else h5.filename
        raise IntegrityError(
            f"{where}: dataset {name!r} fails its checksum or cannot be read ({err})"
        ) from None


def read_anchors(h5: h5py.File, names: Sequence[str] = tuple(ANCHOR_FIELDS)) -> dict[str, np.ndarray]:
    """The ``anchor`` fields ``names`` of every example of an open shard, checksums verified."""
    return {name: read_checked(h5, f"{ANCHOR}/{name}") for name in names}


_FLETCHER32 = 3  # H5Z_FILTER_FLETCHER32
_BITSHUFFLE_LZ4 = 2  # the bitshuffle filter's fifth option: 2 is LZ4, 3 is zstd


@dataclass(frozen=True)
class MelChunks:
    """Where each example's ``mel`` chunk lies in a shard file, for readers that skip HDF5.

    offsets, sizes : np.ndarray [shape=(n,)], int64 -- byte offset and stored size of each
        example's chunk; the last ``CHECKSUM_BYTES`` of a chunk are its fletcher32, which such
        a reader must verify itself
    compressed : False when a chunk is the example's values as they are (then every size is
        ``n_mels * n_frames * itemsize + CHECKSUM_BYTES``); True when it is the output of the
        config's plugin filter (``melshards.codec.chunk_decoder`` decodes it)
    """

    offsets: np.ndarray
    sizes: np.ndarray
    compressed: bool


def mel_chunks(ds: h5py.Dataset, config: FeatureConfig, *, file_size: int) -> MelChunks | None:
    """Where every example's ``mel`` chunk lies, when each can be read straight from the file.

    That holds when every example is one fletcher32-checked chunk of ``n_mels * n_frames``
    little-endian values, either unfiltered otherwise or compressed by the config's plugin
    filter (``zstd``, ``bitshuffle-lz4``) and nothing else. Returns None for any other layout
    (h5py's gzip or lzf, shuffle, other filters), which is read through h5py.
    """
    n = ds.shape[0]
    dtype = np.dtype(config.dtype)
    if (
        n == 0
        or sys.byteorder != "little"
        or ds.dtype != dtype.newbyteorder("<")
        or ds.chunks != (1, config.n_mels, config.n_frames)
    ):
        return None
    filters = [ds.id.get_create_plist().get_filter(i) for i in range(ds.id.get_create_plist().get_nfilters())]
    codes = [f[0] for f in filters]
    compressed = config.compression in PLUGIN_FILTER_IDS
    if compressed:
        wanted = [PLUGIN_FILTER_IDS[config.compression], _FLETCHER32]
        if codes != wanted or (
            config.compression == "bitshuffle-lz4" and filters[0][2][4:5] != (_BITSHUFFLE_LZ4,)
        ):
            return None
    elif codes != [_FLETCHER32]:
        return None
    plain = config.n_mels * config.n_frames * dtype.itemsize + CHECKSUM_BYTES
    offsets = np.full(n, -1, dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    ok = True

    def visit(info) -> None:
        nonlocal ok
        row = info.chunk_offset[0]
        if info.byte_offset is None or info.filter_mask != 0 or (not compressed and info.size != plain):
            ok = False
        else:
            offsets[row] = info.byte_offset
            sizes[row] = info.size

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)
    else:
        for i in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(i))
    if (
        not ok
        or (offsets < 0).any()
        or (sizes <= CHECKSUM_BYTES).any()
        or (not compressed and (offsets % dtype.itemsize).any())
        or (offsets + sizes > file_size).any()
    ):
        return None
    return MelChunks(offsets=offsets, sizes=sizes, compressed=compressed)
