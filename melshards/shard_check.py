"""Checking a shard against its index entry and config, before anything is read from it.

``check_shard`` refuses a shard the index does not describe (size, fingerprint, datasets,
shapes, dtype, checksums, HDF5 indirections); ``valid_problem`` and ``quant_problem`` say what
is wrong with the values of its ``valid`` rows, its events and a uint8 set's offsets and steps,
for the writer, the reader and ``melshards.verify`` alike.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5l, h5o, h5z

from melshards import codec
from melshards.config import FeatureConfig
from melshards.errors import FormatError
from melshards.index import ShardEntry
from melshards.names import (
    ATTR_FINGERPRINT,
    EVENT_EXAMPLE,
    EVENTS,
    LABELS,
    MEL,
    MEL_SCALE,
    METADATA_DATASETS,
    VALID,
    shard_datasets,
)


def check_shard(
    h5: h5py.File, entry: ShardEntry, config: FeatureConfig, *, path: Path, size: bool = True
) -> dict[str, h5d.DatasetID]:
    """Check an open shard against its index entry; FormatError names the first disagreement.

    Refuses anything the index does not describe: another size (unless ``size`` is False, for
    callers that compare the sha256 themselves), wrong counts or shapes, another fingerprint,
    and HDF5 indirections (external links, external storage, virtual datasets) that would make
    the reader open files outside the feature directory. Returns every dataset it checked, by
    name, open (low-level h5py ids), so that ``melshards.shard_read`` reads them without
    looking them up again.
    """
    if size:
        actual = path.stat().st_size
        if actual != entry.bytes:
            raise FormatError(f"{path}: shard is {actual} bytes, the index says {entry.bytes}")
    n = entry.n
    fingerprint = h5.attrs.get(ATTR_FINGERPRINT)
    if fingerprint != entry.fingerprint:
        raise FormatError(
            f"{path}: shard fingerprint {fingerprint!r} disagrees with the index ({entry.fingerprint!r})"
        )
    codec.register_filters(config)
    links = _links(h5)
    linked = next((name for name, kind in links.items() if kind != h5l.TYPE_HARD), None)
    if linked is not None:
        raise FormatError(f"{path}: link {linked!r} points outside the shard; refusing it")
    expected_shapes = {
        MEL: (n, config.n_mels, config.n_frames),
        LABELS: (n, config.n_classes),
        VALID: (n, 2),
    }
    datasets = {}
    for name in shard_datasets(config.dtype):
        # A group hard-linked under two names is visited once, under one of them.
        if name not in links and name not in h5:
            raise FormatError(f"{path}: dataset {name!r} is missing")
        ds = h5o.open(h5.id, name.encode())
        if not isinstance(ds, h5d.DatasetID):
            raise FormatError(f"{path}: {name!r} is not a dataset")
        problem = _storage_problem(ds.get_create_plist())
        if problem:
            raise FormatError(f"{path}: dataset {name!r} {problem}; refusing it")
        shape = expected_shapes.get(name)
        if shape is None and not name.startswith(f"{EVENTS}/"):
            shape = (n,)
        if shape is not None and ds.shape != shape:
            raise FormatError(f"{path}: dataset {name!r} has shape {ds.shape}, index implies {shape}")
        datasets[name] = ds
    if datasets[MEL].dtype != np.dtype(config.dtype):
        raise FormatError(f"{path}: mel is stored as {datasets[MEL].dtype}, the config says {config.dtype}")
    m = datasets[f"{EVENTS}/{EVENT_EXAMPLE}"].shape[0]
    for name in METADATA_DATASETS:
        if name.startswith(f"{EVENTS}/") and datasets[name].shape != (m,):
            raise FormatError(f"{path}: dataset {name!r} has shape {datasets[name].shape}, expected ({m},)")
    return datasets


def _links(h5: h5py.File) -> dict[str, int]:
    """Every link of the file by path (names as text), with its type (``h5l.TYPE_*``): one visit
    of HDF5's link table, without making an h5py object per link."""
    links: dict[str, int] = {}

    def visit(name: bytes, info) -> None:
        # Returns None: a value would stop the visit; raising inside an h5py callback is not safe.
        links[name.decode("utf-8", "backslashreplace")] = info.type

    h5.id.links.visit(visit, info=True)
    return links


def _storage_problem(dcpl) -> str | None:
    """Why a dataset's storage (its creation property list) is refused, or None."""
    if dcpl.get_layout() == h5d.VIRTUAL or dcpl.get_external_count() > 0:
        return "uses virtual or external storage"
    if not any(dcpl.get_filter(i)[0] == h5z.FILTER_FLETCHER32 for i in range(dcpl.get_nfilters())):
        return "has no checksum"
    return None


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


def events_problem(example: np.ndarray, species: np.ndarray, *, n: int, n_classes: int) -> str | None:
    """What is wrong with a shard's events (the row each belongs to, its class), or None."""
    if example.size and (example.min() < 0 or example.max() >= n):
        return f"{EVENTS}/{EVENT_EXAMPLE} points outside the shard's {n} rows"
    if species.size and (species.min() < 0 or species.max() >= n_classes):
        return f"{EVENTS}/species_id outside [0, {n_classes}) of the config"
    return None


def quant_problem(name: str, values: np.ndarray) -> str | None:
    """What is wrong with a uint8 set's ``mel_offset`` or ``mel_scale`` values, or None."""
    if not np.isfinite(values).all():
        return f"{name} holds non-finite values"
    if name == MEL_SCALE and (values < 0).any():
        return f"{name} holds negative steps"
    return None
