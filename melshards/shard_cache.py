"""The local cache of a feature set's shards at a URL: whole shards, verified, shared, bounded.

``ShardCache`` fetches whole shards of a set at a URL (``melshards.remote``) into a local
directory, checks each against the sha256 of the index, and the loader then reads the local
file through its usual fast path.

Cache layout (``MELSHARDS_CACHE``, default ``~/.cache/melshards``)::

    <cache>/<set name>-<hash of its URL>/shard-00000.h5        a verified copy
                                         .shard-00000.h5.sha256  written after it: what it holds
                                         .shard-00000.h5.lock    held while one process fetches

A shard counts as cached only when its marker names the sha256 the index expects and its size
is the index's: a download is written under a temporary name, hashed as it streams, renamed
into place only when it matches, and the marker is written last, so a partial download or a
kill at any moment never becomes a cached shard. Several processes may share one cache: the
lock makes one of them fetch while the others wait and then use its copy. With a size limit,
the least recently used shards (by the time they were last fetched or opened) are evicted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from melshards.errors import ConfigError, IntegrityError
from melshards.files import atomic_write_text, fsync_dir
from melshards.remote import filesystem, join, redact, set_name, storage_errors

CACHE_ENV = "MELSHARDS_CACHE"
CACHE_LIMIT_ENV = "MELSHARDS_CACHE_LIMIT"
BLOCK = 8 << 20  # bytes per read while streaming a shard into the cache
PART_SUFFIX = ".part"
SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str | None) -> int | None:
    """Bytes from an int or a text such as ``"20G"``, ``"500MB"``; None stays None (no limit)."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        if value is not None and value <= 0:
            raise ConfigError(f"cache size limit must be > 0, got {value}")
        return value
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(value), flags=re.IGNORECASE)
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"cache size limit {value!r}: give bytes or a size such as 20G or 500MB")
    return int(float(found.group(1)) * SIZE_UNITS[found.group(2).upper()])


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "melshards")


@dataclass(frozen=True)
class ShardCache:
    """Verified local copies of the shards of feature sets at URLs (see the module docstring).

    root : the cache directory (shared by any number of processes and feature sets)
    max_bytes : evict least recently used shards beyond this many bytes; None keeps everything
    """

    root: Path
    max_bytes: int | None = None

    @classmethod
    def at(cls, root: str | os.PathLike | None = None, *, limit: int | str | None = None) -> ShardCache:
        """The cache at ``root`` (default ``MELSHARDS_CACHE`` or ``~/.cache/melshards``), with a
        size ``limit`` (default ``MELSHARDS_CACHE_LIMIT``, else none)."""
        root = default_cache_dir() if root is None else Path(root)
        return cls(
            root.expanduser(), parse_size(limit if limit is not None else os.environ.get(CACHE_LIMIT_ENV))
        )

    def set_dir(self, url: str) -> Path:
        return self.root / set_name(url)

    def cached(self, url: str, file: str, sha256: str, size: int) -> Path | None:
        """The verified copy of ``url``'s shard ``file``, or None when it is not in the cache."""
        path = self.set_dir(url) / file
        try:
            marker = _marker(path).read_text(encoding="ascii").strip()
            if marker == sha256 and path.stat().st_size == size:
                return path
        except (OSError, UnicodeDecodeError):
            pass
        return None

    def fetch(self, url: str, file: str, sha256: str, size: int, *, refresh: bool = False) -> Path:
        """The local copy of ``url/file``, downloaded and checked against ``sha256`` and
        ``size`` first when it is not in the cache (or always, with ``refresh``).
        IntegrityError when the bytes disagree, StorageError when they cannot be read."""
        path = None if refresh else self.cached(url, file, sha256, size)
        if path is None:
            directory = self.set_dir(url)
            directory.mkdir(parents=True, exist_ok=True)
            with _locked(directory / f".{file}.lock"):
                path = None if refresh else self.cached(url, file, sha256, size)
                if path is None:
                    # What a killed download left; only the lock holder writes here.
                    for stale in directory.glob(f".{file}.*{PART_SUFFIX}"):
                        stale.unlink(missing_ok=True)
                    path = directory / file
                    _marker(path).unlink(missing_ok=True)
                    download(join(url, file), path, sha256=sha256, size=size)
                    atomic_write_text(_marker(path), sha256 + "\n")
            self.evict(keep=path)
        touch(path)
        return path

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every verified shard in the cache, oldest first."""
        found = []
        for marker in self.root.glob("*/.*.sha256"):
            path = marker.with_name(marker.name[1 : -len(".sha256")])
            with contextlib.suppress(OSError):
                st = path.stat()
                found.append((st.st_mtime, st.st_size, path))
        return sorted(found)

    def evict(self, *, keep: Path | None = None) -> list[Path]:
        """Remove least recently used shards until the cache holds at most ``max_bytes``.

        A process that has a shard open keeps reading it (the file lives until closed); one
        that opens it next fetches it again.
        """
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            _marker(path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            removed.append(path)
            total -= size
        return removed


def touch(path: Path) -> None:
    """Mark ``path`` as just used (its modification time orders the evictions)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def download(url: str, path: Path, *, sha256: str, size: int) -> Path:
    """Stream the ``size`` bytes of ``url`` into ``path`` through a temporary file, hashing as
    it goes, and rename it into place only when they hash to ``sha256`` (else IntegrityError,
    and ``path`` is left as it was). One range request per ``BLOCK`` bytes."""
    part = path.with_name(f".{path.name}.{os.getpid()}{PART_SUFFIX}")
    fs, remote = filesystem(url)
    digest, written = hashlib.sha256(), 0
    try:
        with storage_errors(url, "download"), open(part, "wb") as dst:
            while written < size:
                block = fs.cat_file(remote, start=written, end=min(written + BLOCK, size))
                if not block:
                    break
                digest.update(block)
                dst.write(block)
                written += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        if written != size or digest.hexdigest() != sha256:
            raise IntegrityError(
                f"{redact(url)}: downloaded {written} bytes with sha256 {digest.hexdigest()[:12]}..., "
                f"the index says {size} bytes, {sha256[:12]}...; the object changed since its index "
                "was written, or is damaged"
            )
        os.replace(part, path)
        fsync_dir(path.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path
