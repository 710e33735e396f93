"""Checking a shard against its index entry and config, before anything is read from it.

``check_shard`` refuses a shard the index does not describe (size, fingerprint, datasets,
shapes, dtype, checksums, HDF5 indirections); ``valid_problem`` and ``quant_problem`` say what
is wrong with the values of its ``valid`` rows and of a uint8 set's offsets and steps, for the
writer, the reader and ``melshards.verify`` alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

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
