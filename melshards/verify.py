"""Re-checking a whole feature set against its index (``precompute verify``)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from melshards import remote, shard_cache
from melshards.errors import FormatError, IntegrityError, StorageError
from melshards.files import sha256_file
from melshards.index import Index, ShardEntry, read_index
from melshards.names import (
    LABEL_VALUES,
    LABELS,
    MEL,
    QUANT_DATASETS,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    VALID,
    shard_datasets,
)
from melshards.shard_check import check_shard, quant_problem, valid_problem
from melshards.shard_open import open_readonly, regular_file_problem
from melshards.shard_read import read_checked


def verify(root: str | Path, *, progress: bool = False, cache_dir: str | Path | None = None) -> list[str]:
    """Re-check every shard against the index; one line per problem (empty: all good).

    Checks the sha256 of each file, its schema and fingerprint against the index, reads every
    ``mel`` chunk through HDF5's fletcher32 filter, and checks the label values and the valid
    frames (``0 <= first < stop <= n_frames``). For a set at a URL, every shard is downloaded
    again (into the cache at ``cache_dir``, replacing its copy there) and checked the same way.
    """
    from tqdm.auto import tqdm

    url = str(root).rstrip("/") if remote.is_url(root) else None
    cache = shard_cache.ShardCache.at(cache_dir) if url is not None else None
    try:
        index = read_index(root, cache_root=None if cache is None else cache.set_dir(url))
    except FormatError as err:
        return [str(err)]
    problems = []
    listed = {entry.file for entry in index.shards}
    total = sum(entry.n for entry in index.shards)
    name = remote.redact(root).rstrip("/").rsplit("/", 1)[-1]
    with tqdm(total=total, unit="example", desc=f"verify {name}", disable=not progress) as bar:
        for entry in index.shards:
            try:
                if cache is not None:
                    cache.fetch(url, entry.file, entry.sha256, entry.bytes, refresh=True)
                problems += _verify_shard(index, entry)
            except (IntegrityError, StorageError) as err:
                problems.append(str(err))
            bar.update(entry.n)
    if url is None:
        present = [p.name for p in sorted(Path(root).glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))]
    else:
        present = [
            n for n in remote.list_names(url) if n.startswith(SHARD_PREFIX) and n.endswith(SHARD_SUFFIX)
        ]
    for file in present:
        if file not in listed:
            where = remote.redact(remote.join(url, file)) if url else Path(root) / file
            problems.append(f"{where}: not listed in the index (ignored by readers)")
    return problems


def _verify_shard(index: Index, entry: ShardEntry) -> list[str]:
    path = index.shard_path(entry)
    problem = regular_file_problem(path)
    if problem:
        return [f"{path}: {problem}"]
    problems = []
    digest = sha256_file(path)
    if digest != entry.sha256:
        problems.append(f"{path}: sha256 {digest[:12]}... disagrees with the index ({entry.sha256[:12]}...)")
    try:
        with open_readonly(path) as h5:
            check_shard(h5, entry, index.config, path=path, size=False)
            problems += _verify_mel(h5[MEL], path)
            for name in shard_datasets(index.config.dtype)[1:]:  # every dataset but mel
                try:
                    values = read_checked(h5, name, path=path)
                except IntegrityError as err:
                    problems.append(str(err))
                    continue
                if name == LABELS and not np.all(np.isin(values, LABEL_VALUES)):
                    problems.append(f"{path}: labels hold values other than -1, 0, 1")
                problem = quant_problem(name, values) if name in QUANT_DATASETS else None
                if name == VALID:
                    problem = valid_problem(values, index.config.n_frames)
                if problem:
                    problems.append(f"{path}: {problem}")
    except FormatError as err:
        problems.append(str(err))
    except OSError as err:
        problems.append(f"{path}: unreadable HDF5: {err}")
    return problems


def _verify_mel(mel: h5py.Dataset, path: Path) -> list[str]:
    """Read every example through its checksum; every stored value must be finite."""
    problems = []
    buf = np.empty(mel.shape[1:], dtype=mel.dtype)
    for i in range(mel.shape[0]):
        try:
            mel.read_direct(buf, np.s_[i])
        except OSError as err:
            problems.append(f"{path}: example {i}: checksum or read error ({err})")
            continue
        if not np.isfinite(buf).all():
            problems.append(f"{path}: example {i}: non-finite values (NaN or inf) in mel")
    return problems
