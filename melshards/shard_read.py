"""Reading a checked shard: its per-example metadata through the checksums, and where its
``mel`` chunks lie for readers that skip HDF5.

``read_metadata`` reads everything but ``mel`` (``ShardMetadata``) and refuses values that
point outside the shard or the config; ``read_checked`` reads one dataset whole, a failed
fletcher32 checksum being an IntegrityError; ``mel_chunks`` locates every example's ``mel``
chunk in the file (``MelChunks``) for the loader's direct reads, which must verify the
checksums themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5s

from melshards import codec
from melshards.config import FeatureConfig
from melshards.errors import FormatError, IntegrityError
from melshards.index import ShardEntry
from melshards.names import (
    ANCHOR,
    ANCHOR_FIELDS,
    CHECKSUM_BYTES,
    EVENT_EXAMPLE,
    EVENT_FIELDS,
    EVENTS,
    LABELS,
    MEL_OFFSET,
    MEL_SCALE,
    PLUGIN_FILTER_IDS,
    QUANT_DATASETS,
    RECORDING_ID,
    START,
    VALID,
)
from melshards.shard_check import events_problem, quant_problem, valid_problem


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


def read_metadata(
    h5: h5py.File,
    entry: ShardEntry,
    config: FeatureConfig,
    *,
    path: Path,
    datasets: Mapping[str, h5d.DatasetID] | None = None,
) -> ShardMetadata:
    """Read a checked shard's metadata, each chunk through its checksum.

    ``datasets``: the shard's datasets open already (what ``check_shard`` returns); others are
    looked up by name. Raises IntegrityError when a chunk fails its checksum, FormatError when
    events point outside the shard or the config, or ``valid`` outside the stored frames.
    """
    found = {} if datasets is None else datasets

    def read(name: str) -> np.ndarray:
        return read_checked(h5, name, path=path, dataset=found.get(name))

    example = read(f"{EVENTS}/{EVENT_EXAMPLE}").astype(np.int64)
    species = read(f"{EVENTS}/species_id").astype(np.int64)
    problem = events_problem(example, species, n=entry.n, n_classes=config.n_classes)
    if problem:
        raise FormatError(f"{path}: {problem}")
    events = {EVENT_EXAMPLE: example, "species_id": species}
    for key in EVENT_FIELDS:
        if key not in events:
            events[key] = read(f"{EVENTS}/{key}")
    quant = {}
    if codec.is_quantized(config):
        quant = {name: read(name).astype(np.float32) for name in QUANT_DATASETS}
        for name, values in quant.items():
            problem = quant_problem(name, values)
            if problem:
                raise FormatError(f"{path}: {problem}")
    valid = read(VALID)
    problem = valid_problem(valid, config.n_frames)
    if problem:
        raise FormatError(f"{path}: {problem}")
    return ShardMetadata(
        recording_id=read(RECORDING_ID),
        start=read(START),
        labels=read(LABELS),
        events=events,
        valid=valid,
        mel_offset=quant.get(MEL_OFFSET),
        mel_scale=quant.get(MEL_SCALE),
    )


def read_checked(
    h5: h5py.File, name: str, *, path: Path | None = None, dataset: h5d.DatasetID | None = None
) -> np.ndarray:
    """The whole dataset ``name`` (strings as an object array of ``str``), checksums verified.

    HDF5 checks each chunk's fletcher32 as it reads; a mismatch is an IntegrityError naming the
    shard and the dataset. ``dataset``: the dataset open already (a low-level id), else it is
    looked up by ``name``.
    """
    try:
        dsid = h5[name].id if dataset is None else dataset
        dtype = dsid.dtype
        if dtype.kind in "iuf" and dtype.fields is None and dsid.shape:
            # numbers: straight into an array of the stored type, as h5py's ``ds[()]`` reads them
            values = np.empty(dsid.shape, dtype=dtype)
            if values.size:
                dsid.read(h5s.ALL, h5s.ALL, values)
            return values
        ds = h5py.Dataset(dsid)
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
    chunks = MelChunks(offsets=offsets, sizes=sizes, compressed=compressed)
    return chunks if ok and chunks_fit(chunks, config, file_size=file_size) else None


def chunks_fit(chunks: MelChunks, config: FeatureConfig, *, file_size: int | np.ndarray) -> bool:
    """Whether every chunk of ``chunks`` lies inside a file of ``file_size`` bytes (one size, or
    one per chunk), holds more than its checksum, and (uncompressed) is ``n_mels * n_frames``
    values at an aligned offset."""
    offsets, sizes = chunks.offsets, chunks.sizes
    itemsize = np.dtype(config.dtype).itemsize
    plain = config.n_mels * config.n_frames * itemsize + CHECKSUM_BYTES
    return not (
        (offsets < 0).any()
        or (sizes <= CHECKSUM_BYTES).any()
        or (not chunks.compressed and ((offsets % itemsize).any() or (sizes != plain).any()))
        or (sizes > file_size).any()
        or (offsets > file_size - sizes).any()  # not offsets + sizes, which may overflow
    )
