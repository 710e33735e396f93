"""A local feature set's parsed shard metadata, kept between processes in one small file.

Opening a feature set reads, from every shard, its per-example arrays and where its ``mel``
chunks lie (``loader.feature_set.FeatureSet``): milliseconds of HDF5 per shard, in every
process. ``MetaCache`` keeps what was read, for every shard, in one file per feature set,
outside the set (which may be read-only)::

    <cache>/meta/<set name>-<hash of its directory>.meta

where ``<cache>`` is ``cache_dir``, else ``MELSHARDS_CACHE``, else ``~/.cache/melshards``. A
shard is served from that file only while every part of its key holds:

- the set: its resolved directory, the index fingerprint, the config, the byte order, this
  file's version;
- the shard's index entry: file name, examples, sha256, fingerprint, bytes;
- the shard's file: device, inode, size, modification time and status-change time. The last
  changes with every write, rename or ``os.utime`` and no call sets it back, so a matching key
  means the very file that was checked (``melshards.shard_check.check_shard``) and read, untouched
  since. File times are coarse (a rewrite within the same clock tick can keep them), so a
  shard changed less than ``RECENT_NS`` before it was read is not kept.

The file holds a sha256 of everything after it, and the values it serves are checked again
as ``melshards.shard_read`` checks them (events, ``valid``, quantization steps, chunks inside
the file). Whatever does not hold (no file, another key, a damaged, truncated or foreign file,
a cache directory that cannot be written) only means that the shard is read from its file, as
without the cache; the file is then written anew when it can be (a temp name, then a rename).
Never an error, never other data. ``MELSHARDS_META_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melshards import codec
from melshards.config import FeatureConfig
from melshards.errors import ConfigError
from melshards.files import fingerprint_of
from melshards.index import Index, ShardEntry
from melshards.names import EVENT_EXAMPLE, EVENT_FIELDS, FORMAT_VERSION, MEL_OFFSET, MEL_SCALE
from melshards.remote import set_name
from melshards.shard_cache import default_cache_dir
from melshards.shard_check import quant_problem, valid_problem
from melshards.shard_read import MelChunks, ShardMetadata, chunks_fit

ENV = "MELSHARDS_META_CACHE"
OFF, ON = ("0", "off", "false", "no"), ("1", "on", "true", "yes")
MAGIC = b"melmeta\x01"
VERSION = 1
SUFFIX = ".meta"
RECENT_NS = 2_000_000_000  # a shard changed this recently when it was read is not kept
MAX_SETS = 64  # cache files kept in <cache>/meta, least recently written dropped first
ALIGN = 16  # every field starts at a multiple of this many bytes of the payload

# field -> dtype of what is kept, the dtypes ``FeatureSet`` gathers into (recording ids as
# fixed-width unicode, object arrays back when read)
FIELDS = {
    "recording_id": "U",
    "start": "float64",
    "labels": "int8",
    "valid": "int64",
    **{f"events/{key}": "int64" for key in (EVENT_EXAMPLE, "species_id")},
    "events/kind": "int8",
    **{f"events/{key}": "float64" for key in EVENT_FIELDS if key not in ("species_id", "kind")},
    MEL_OFFSET: "float32",
    MEL_SCALE: "float32",
    "chunk_offsets": "int64",
    "chunk_sizes": "int64",
}


@dataclass(frozen=True)
class ParsedShard:
    """What opening a feature set reads from one shard.

    meta : its per-example arrays (``melshards.shard_read.read_metadata``)
    chunks : where its ``mel`` chunks lie (``melshards.shard_read.mel_chunks``), or None
    identity : (st_dev, st_ino, st_size, st_mtime_ns) of the file read; None at a URL
    key : ``identity`` and st_ctime_ns when the file may be kept in the cache (a local file,
        unchanged while it was read and not changed just before), else None
    """

    meta: ShardMetadata
    chunks: MelChunks | None
    identity: tuple[int, ...] | None
    key: tuple[int, ...] | None = None


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): which file, and its last change."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cache_key(before: os.stat_result | None, after: os.stat_result) -> tuple[int, ...] | None:
    """The key of a shard statted ``before`` and ``after`` it was read: None unless both agree
    and its last change (st_ctime) lies ``RECENT_NS`` before the read began."""
    if before is None or stat_key(before) != stat_key(after):
        return None
    # Any change sets st_ctime to the clock's time: one more than a tick away can't look like it.
    return stat_key(after) if before.st_ctime_ns <= time.time_ns() - RECENT_NS else None


def enabled() -> bool:
    """Whether ``MELSHARDS_META_CACHE`` leaves the cache on (unset: on)."""
    value = os.environ.get(ENV, "1").strip().lower()
    if value not in OFF + ON:
        raise ConfigError(f"${ENV} is {os.environ[ENV]!r}: give 1 (keep parsed metadata) or 0 (off)")
    return value in ON


class MetaCache:
    """The cached metadata of one local feature set (see the module docstring).

    ``get`` serves a shard whose key holds, ``put`` records one read from its file, ``save``
    writes the file when something new was recorded.
    """

    def __init__(self, index: Index, cache_dir: str | os.PathLike | None = None) -> None:
        root = Path(index.root).resolve()
        directory = (default_cache_dir() if cache_dir is None else Path(cache_dir)).expanduser() / "meta"
        self.path = directory / f"{set_name(str(root))}{SUFFIX}"
        self.index = index
        self.stamp = {
            "version": VERSION,
            "format": FORMAT_VERSION,
            "root": str(root),
            "fingerprint": index.fingerprint,
            "config": fingerprint_of(index.config.to_dict()),
            "byteorder": sys.byteorder,
        }
        self.kept: dict[str, ParsedShard] = {}
        self._found = _load(self.path, self.stamp, index.config)
        self.changed = self._found is None

    @classmethod
    def of(cls, index: Index, cache_dir: str | os.PathLike | None = None) -> MetaCache | None:
        """The cache of a local set's ``index``; None when ``MELSHARDS_META_CACHE`` turns it off."""
        return cls(index, cache_dir) if enabled() else None

    def get(self, entry: ShardEntry) -> ParsedShard | None:
        """Shard ``entry`` as it was read before, when its key holds; else None."""
        found = None if self._found is None else self._found.get(entry.file)
        if found is None or found["entry"] != _entry_key(entry):
            return None
        try:
            st = os.lstat(self.index.shard_path(entry))
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or list(stat_key(st)) != found["key"]:
            return None
        shard = self.kept[entry.file] = _shard_of(found)
        return shard

    def put(self, entry: ShardEntry, shard: ParsedShard) -> None:
        """Keep ``shard``, just read from its file, when it may be kept (``ParsedShard.key``)."""
        if shard.key is not None and _ids_as_text(shard.meta.recording_id) is not None:
            self.kept[entry.file] = shard
            self.changed = True

    def save(self) -> None:
        """Write the file anew when something was read from the shards since it was loaded; a
        directory that cannot be written leaves things as they are."""
        if not self.changed or not self.kept:
            return
        data = _encode(self.stamp, [(e, self.kept[e.file]) for e in self.index.shards if e.file in self.kept])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            return
        self.changed = False
        _prune(self.path.parent, keep=self.path)


def _entry_key(entry: ShardEntry) -> list:
    return [entry.file, entry.n, entry.sha256, entry.fingerprint, entry.bytes]


def _ids_as_text(ids: np.ndarray) -> np.ndarray | None:
    """Recording ids as a fixed-width unicode array, when that gives them back exactly."""
    try:
        text = np.asarray(ids, dtype=str)
    except (TypeError, ValueError):
        return None
    return text if text.shape == ids.shape and (text.astype(object) == ids).all() else None


def _columns(shard: ParsedShard) -> dict[str, np.ndarray]:
    """A shard's arrays under their ``FIELDS`` names, cast to the kept dtypes."""
    meta, chunks = shard.meta, shard.chunks
    columns = {
        "recording_id": _ids_as_text(meta.recording_id),
        "start": meta.start,
        "labels": meta.labels,
        "valid": meta.valid,
        **{f"events/{key}": values for key, values in meta.events.items()},
    }
    if meta.mel_offset is not None:
        columns[MEL_OFFSET], columns[MEL_SCALE] = meta.mel_offset, meta.mel_scale
    if chunks is not None:
        columns["chunk_offsets"], columns["chunk_sizes"] = chunks.offsets, chunks.sizes
    return {
        name: np.ascontiguousarray(
            values if name == "recording_id" else values.astype(FIELDS[name], copy=False)
        )
        for name, values in columns.items()
    }


def _encode(stamp: dict, shards: list[tuple[ShardEntry, ParsedShard]]) -> bytes:
    """The file: MAGIC, sha256 of the rest, header length, JSON header, arrays one after another."""
    records, parts = [], {name: [] for name in FIELDS}
    for entry, shard in shards:
        columns = _columns(shard)
        for name, values in columns.items():
            parts[name].append(values)
        chunks = shard.chunks
        records.append(
            {
                "entry": _entry_key(entry),
                "key": list(shard.key),
                "events": int(shard.meta.events[EVENT_EXAMPLE].shape[0]),
                "quantized": MEL_OFFSET in columns,
                "chunks": None if chunks is None else ("compressed" if chunks.compressed else "plain"),
            }
        )
    fields, blobs, offset = {}, [], 0
    for name, arrays in parts.items():
        if not arrays:
            continue
        values = np.concatenate(arrays)
        fields[name] = [values.dtype.str, offset, list(values.shape[1:])]
        blobs.append(values.tobytes() + bytes(-values.nbytes % ALIGN))
        offset += len(blobs[-1])
    header = json.dumps({**stamp, "shards": records, "fields": fields}).encode()
    body = len(header).to_bytes(8, "little") + header + b"".join(blobs)
    return MAGIC + hashlib.sha256(body).digest() + body


def _load(path: Path, stamp: dict, config: FeatureConfig) -> dict[str, dict] | None:
    """The shards a cache file holds (by file name: its record and its rows of every field),
    when the file is whole, of this set, and its values pass the checks of a shard's values;
    None otherwise (missing, damaged, truncated, foreign, older)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    start = len(MAGIC) + 32
    if data[: len(MAGIC)] != MAGIC or hashlib.sha256(data[start:]).digest() != data[len(MAGIC) : start]:
        return None
    try:
        size = int.from_bytes(data[start : start + 8], "little")
        header = json.loads(data[start + 8 : start + 8 + size].decode())
        if any(header.get(name) != value for name, value in stamp.items()):
            return None
        records = header["shards"]
        # a copy: writable arrays, as those read from a shard, aligned (a new buffer is)
        columns = _arrays(header["fields"], records, bytearray(data[start + 8 + size :]), config)
        if _values_problem(records, columns, config):
            return None
        return _split(records, columns)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
        return None


def _arrays(
    fields: dict, records: list[dict], payload: bytearray, config: FeatureConfig
) -> dict[str, np.ndarray]:
    """Every field's rows of all shards, over ``payload``; ValueError when the header's dtypes,
    shapes or offsets do not fit."""
    trailing = {"labels": [config.n_classes], "valid": [2]}
    columns = {}
    for name, kept in FIELDS.items():
        rows = sum(_rows(record, name) for record in records)
        shape = trailing.get(name, [])
        if name not in fields:
            if rows:
                raise ValueError(f"{name} is missing")
            columns[name] = np.zeros((0, *shape), dtype="U1" if kept == "U" else kept)
            continue
        dtype, offset, stored_shape = fields[name]
        dtype = np.dtype(dtype)
        if stored_shape != shape or dtype.kind != np.dtype(kept).kind or (kept != "U" and dtype != kept):
            raise ValueError(f"{name} is stored as {dtype} {stored_shape}")
        if offset % ALIGN:
            raise ValueError(f"{name} is not aligned")
        count = rows * int(np.prod(shape, dtype=np.int64))
        columns[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(rows, *shape)
    columns["recording_id"] = columns["recording_id"].astype(object)
    return columns


def _values_problem(records: list[dict], columns: dict[str, np.ndarray], config: FeatureConfig) -> bool:
    """Whether the kept values fail a check that reading them from the shards would make
    (``melshards.shard_read.read_metadata``, ``mel_chunks``): all shards at once."""
    quantized = codec.is_quantized(config)
    if any(r["quantized"] != quantized or r["chunks"] not in (None, "plain", "compressed") for r in records):
        return True
    n = np.array([r["entry"][1] for r in records], dtype=np.int64)
    example, species = columns[f"events/{EVENT_EXAMPLE}"], columns["events/species_id"]
    rows_of_owner = np.repeat(n, [r["events"] for r in records])
    if ((example < 0) | (example >= rows_of_owner) | (species < 0) | (species >= config.n_classes)).any():
        return True
    if valid_problem(columns["valid"], config.n_frames):
        return True
    if quantized and any(quant_problem(name, columns[name]) for name in (MEL_OFFSET, MEL_SCALE)):
        return True
    with_chunks = [r for r in records if r["chunks"] is not None]
    rows = [r["entry"][1] for r in with_chunks]
    file_size = np.repeat(np.array([r["entry"][4] for r in with_chunks], dtype=np.int64), rows)
    compressed = np.repeat(np.array([r["chunks"] == "compressed" for r in with_chunks], dtype=bool), rows)
    offsets, sizes = columns["chunk_offsets"], columns["chunk_sizes"]
    return not all(
        chunks_fit(
            MelChunks(offsets=offsets[rows], sizes=sizes[rows], compressed=kind),
            config,
            file_size=file_size[rows],
        )
        for kind, rows in ((False, ~compressed), (True, compressed))
    )


def _rows(record: dict, name: str) -> int:
    """Rows of field ``name`` that the shard of ``record`` holds."""
    n = record["entry"][1]
    if name.startswith("events/"):
        return record["events"]
    if name in (MEL_OFFSET, MEL_SCALE):
        return n if record["quantized"] else 0
    if name.startswith("chunk_"):
        return n if record["chunks"] is not None else 0
    return n


def _split(records: list[dict], columns: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each shard's record with its own rows of every field (``arrays``), by file name."""
    first = dict.fromkeys(columns, 0)
    out = {}
    for record in records:
        arrays = {}
        for name, values in columns.items():
            rows = _rows(record, name)
            arrays[name] = values[first[name] : first[name] + rows]
            first[name] += rows
        out[record["entry"][0]] = {**record, "arrays": arrays}
    return out


def _shard_of(found: dict) -> ParsedShard:
    """The shard of a cache record (its values checked when the file was loaded)."""
    arrays, key = found["arrays"], tuple(found["key"])
    chunks = None
    if found["chunks"] is not None:
        chunks = MelChunks(
            offsets=arrays["chunk_offsets"],
            sizes=arrays["chunk_sizes"],
            compressed=found["chunks"] == "compressed",
        )
    meta = ShardMetadata(
        recording_id=arrays["recording_id"],
        start=arrays["start"],
        labels=arrays["labels"],
        events={key: arrays[f"events/{key}"] for key in (EVENT_EXAMPLE, *EVENT_FIELDS)},
        valid=arrays["valid"],
        mel_offset=arrays[MEL_OFFSET] if found["quantized"] else None,
        mel_scale=arrays[MEL_SCALE] if found["quantized"] else None,
    )
    return ParsedShard(meta=meta, chunks=chunks, identity=key[:4], key=key)


def _prune(directory: Path, *, keep: Path) -> None:
    """Drop the least recently written cache files beyond ``MAX_SETS`` (never ``keep``), and
    temp files a killed process left an hour ago or more."""
    try:
        files = [(f.stat().st_mtime_ns, f) for f in directory.glob(f"*{SUFFIX}") if f != keep]
        for _, old in sorted(files)[: max(0, len(files) + 1 - MAX_SETS)]:
            old.unlink(missing_ok=True)
        for temp in directory.glob(f".*{SUFFIX}.*.tmp"):
            if temp.stat().st_mtime < time.time() - 3600:
                temp.unlink(missing_ok=True)
    except OSError:
        return
