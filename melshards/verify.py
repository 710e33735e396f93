"""Re-checking a whole feature set against its index (``precompute verify``)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from melshards.errors import FormatError
from melshards.files import sha256_file
from melshards.index import Index, ShardEntry, read_index
from melshards.names import LABEL_VALUES, LABELS, MEL, SHARD_PREFIX, SHARD_SUFFIX
from melshards.shard import check_shard


def verify(root: str | Path, *, progress: bool = False) -> list[str]:
    """Re-check every shard against the index; one line per problem (empty: all good).

    Checks the sha256 of each file, its schema and fingerprint against the index, reads every
    ``mel`` chunk through HDF5's fletcher32 filter, and checks the label values.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    try:
        index = read_index(root)
    except FormatError as err:
        return [str(err)]
    problems = []
    listed = {entry.file for entry in index.shards}
    total = sum(entry.n for entry in index.shards)
    with tqdm(total=total, unit="example", desc=f"verify {root.name}", disable=not progress) as bar:
        for entry in index.shards:
            problems += _verify_shard(index, entry)
            bar.update(entry.n)
    for path in sorted(root.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")):
        if path.name not in listed:
            problems.append(f"{path}: not listed in the index (ignored by readers)")
    return problems


def _verify_shard(index: Index, entry: ShardEntry) -> list[str]:
    path = index.shard_path(entry)
    if not path.is_file():
        return [f"{path}: missing (listed in the index)"]
    problems = []
    digest = sha256_file(path)
    if digest != entry.sha256:
        problems.append(f"{path}: sha256 {digest[:12]}... disagrees with the index ({entry.sha256[:12]}...)")
    try:
        with h5py.File(path, "r", locking=False) as h5:
            check_shard(h5, entry, index.config, path=path, size=False)
            mel = h5[MEL]
            buf = np.empty(mel.shape[1:], dtype=mel.dtype)
            for i in range(mel.shape[0]):
                try:
                    mel.read_direct(buf, np.s_[i])
                except OSError as err:
                    problems.append(f"{path}: example {i}: checksum or read error ({err})")
            if not np.all(np.isin(h5[LABELS][:], LABEL_VALUES)):
                problems.append(f"{path}: labels hold values other than -1, 0, 1")
    except FormatError as err:
        problems.append(str(err))
    except OSError as err:
        problems.append(f"{path}: unreadable HDF5: {err}")
    return problems
