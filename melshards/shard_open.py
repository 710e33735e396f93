"""Opening a shard for reading: a regular file, read-only, without HDF5 file locking.

``open_shard`` refuses what cannot be a shard (a missing file, a symbolic link, a device) and
opens the rest read-only through ``open_readonly``, which works around HDF5's refusal of a
second open with other locking flags. For a feature set at a URL, ``open_listed`` opens a
shard's verified copy in the cache (``melshards.shard_cache``) when there is one, else the object
itself through range requests (``melshards.remote``), so its metadata can be read without
downloading it; ``metadata_parts`` fetches the bytes that hold that metadata for many shards
at once.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py

from melshards import remote
from melshards.errors import FormatError
from melshards.index import Index, ShardEntry
from melshards.shard_cache import ShardCache


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
    cache: ShardCache | None = None,
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


def is_cached(entry: ShardEntry, *, url: str, cache: ShardCache | None) -> bool:
    return cache is not None and cache.cached(url, entry.file, entry.sha256, entry.bytes) is not None


def metadata_parts(
    entries: Sequence[ShardEntry], *, url: str | None, cache: ShardCache | None
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
