"""The local cache of a feature set's shards at a URL: whole shards, verified, shared, bounded.

``ShardCache`` fetches whole shards of a set at a URL (``melshards.remote``) into a local
directory, checks each against the size and sha256 of the index, and the loader then reads
the local file through its usual fast path.

Cache layout (``cache_dir``, else ``MELSHARDS_CACHE``, else ``~/.cache/melshards``)::

    <cache>/<set name>-<hash of its URL>/shard-00000.h5        a verified copy
                                         .shard-00000.h5.sha256  written after it: what it holds
                                         .shard-00000.h5.lock    held while one process fetches
                                         .shard-00000.h5.pin     held (shared) while in use

A shard counts as cached only when its marker names the sha256 the index expects and its size
is the index's: a download is written under a temporary name, hashed as it streams, renamed
into place only when it matches, and the marker is written last, so a partial download or a
kill at any moment never becomes a cached shard. A copy is hashed again the first time each
process uses it (``fetch``); a damaged copy is fetched anew, once. Several processes may share
one cache: the lock makes one of them fetch while the others wait and then use its copy. With
a size limit, the least recently used shards (by the time they were last fetched or opened)
are evicted, except those that a thread of any process has pinned (``use``, ``pin``) between
finding a copy and opening it; once open or mapped, a file stays readable after an eviction.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from melshards.errors import ConfigError, IntegrityError, MelShardsError, StorageError
from melshards.files import atomic_write_text, fsync_dir, sha256_file
from melshards.remote import (
    changed_object,
    filesystem,
    info_of,
    join,
    redact,
    scheme,
    set_name,
    size_mismatch,
    storage_errors,
)
from melshards.remote_limits import retried

CACHE_ENV = "MELSHARDS_CACHE"
CACHE_LIMIT_ENV = "MELSHARDS_CACHE_LIMIT"
BLOCK = 8 << 20  # bytes per read while streaming a shard into the cache
PART_SUFFIX = ".part"
SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

log = logging.getLogger("melshards")

# What this process found when it hashed a cached copy: (path, inode, size, mtime) -> sha256.
_hashed: dict[tuple[str, int, int, int], str] = {}
# The pin each thread holds last (``ShardCache.pin``), and the caches this process described.
_pins = threading.local()
_described: set[Path] = set()


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

    def describe(self, url: str) -> str:
        """Where the shards of ``url`` are cached, how much the cache holds, and how to move or
        bound it: the line said once per process (``announce``)."""
        held = sum(size for _, size, _ in self.entries()) / 1e6
        limit = "no size limit" if self.max_bytes is None else f"limit {self.max_bytes / 1e6:.1f} MB"
        return (
            f"caching the shards of {redact(url)} in {self.set_dir(url)} (the cache holds "
            f"{held:.1f} MB, {limit}; move it with cache_dir or ${CACHE_ENV}, bound it with "
            f"cache_limit or ${CACHE_LIMIT_ENV})"
        )

    def announce(self, url: str) -> None:
        """Log ``describe(url)``, the first time this process opens or caches the set."""
        directory = self.set_dir(url)
        if directory not in _described:
            _described.add(directory)
            log.info(self.describe(url))

    def cached(self, url: str, file: str, sha256: str, size: int) -> Path | None:
        """The copy of ``url``'s shard ``file`` when the cache holds one of the index's size and
        sha256 (its marker; the bytes are hashed again by ``fetch``), else None."""
        path = self.set_dir(url) / file
        try:
            marker = _marker(path).read_text(encoding="ascii").strip()
            if marker == sha256 and path.stat().st_size == size:
                return path
        except (OSError, UnicodeDecodeError):
            pass
        return None

    def verified(self, url: str, file: str, sha256: str, size: int) -> Path | None:
        """``cached``, with the copy's bytes hashed (once per process and file) to the index's
        sha256; None, with a warning, when they disagree (the copy is damaged)."""
        path = self.cached(url, file, sha256, size)
        if path is None:
            return None
        try:
            st = path.stat()
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
            found = _hashed.get(key)
            if found is None:
                found = _hashed[key] = sha256_file(path)
                if found != sha256:
                    log.warning(
                        f"{path}: the cached copy of {redact(join(url, file))} is damaged (sha256 "
                        f"{found[:12]}..., the index says {sha256[:12]}...); fetching it again"
                    )
        except OSError:
            return None
        return path if found == sha256 else None

    def fetch(self, url: str, file: str, sha256: str, size: int, *, refresh: bool = False) -> Path:
        """The local copy of ``url/file``, downloaded and checked against ``sha256`` and
        ``size`` first when the cache holds no good copy (or always, with ``refresh``).
        IntegrityError when the object's bytes disagree, StorageError when they cannot be read
        or the cache cannot be written."""
        self.announce(url)
        path = None if refresh else self.verified(url, file, sha256, size)
        if path is None:
            directory = self.set_dir(url)
            with _cache_errors(directory):
                directory.mkdir(parents=True, exist_ok=True)
                with _locked(directory / f".{file}.lock"):
                    path = None if refresh else self.verified(url, file, sha256, size)
                    if path is None:
                        path = self._download(url, file, sha256, size)
            self.evict(keep=path)
        touch(path)
        return path

    def _download(self, url: str, file: str, sha256: str, size: int) -> Path:
        """Replace the copy of ``file`` with a fresh download; called under its lock."""
        directory = self.set_dir(url)
        # What a killed download left; only the lock holder writes here.
        for stale in directory.glob(f".{file}.*{PART_SUFFIX}"):
            stale.unlink(missing_ok=True)
        path = directory / file
        _marker(path).unlink(missing_ok=True)
        download(join(url, file), path, sha256=sha256, size=size)
        atomic_write_text(_marker(path), sha256 + "\n")
        st = path.stat()
        _hashed[(str(path), st.st_ino, st.st_size, st.st_mtime_ns)] = sha256
        return path

    def pin(self, url: str, file: str) -> None:
        """Keep ``url``'s shard ``file`` from eviction until this thread pins another shard:
        long enough to open or map it (an open file outlives an eviction)."""
        directory = self.set_dir(url)
        with _cache_errors(directory):
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                directory / f".{file}.pin", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an eviction of this shard runs
        except BaseException:
            os.close(fd)
            raise
        previous, _pins.fd = getattr(_pins, "fd", None), fd
        if previous is not None:
            with contextlib.suppress(OSError):
                os.close(previous)

    def use(self, url: str, file: str, sha256: str, size: int) -> Path:
        """``fetch``, with the shard pinned first (``pin``): the path stays there until this
        thread asks for another shard."""
        self.pin(url, file)
        return self.fetch(url, file, sha256, size)

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

        A shard pinned by any thread of any process stays (the cache may then hold more than
        ``max_bytes`` for a while); a process that has a shard open keeps reading it (the file
        lives until closed); one that opens it next fetches it again.
        """
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if path != keep and _evict_unpinned(path):
                removed.append(path)
                total -= size
        return removed


def _evict_unpinned(path: Path) -> bool:
    """Delete ``path`` and its marker unless a thread holds its pin; True when deleted."""
    try:
        fd = os.open(
            path.with_name(f".{path.name}.pin"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
        )
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # in use
    try:
        _marker(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


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


@contextlib.contextmanager
def _cache_errors(directory: Path) -> Iterator[None]:
    """A local failure of the cache (no space, no permission, a directory removed) as one line
    naming it and how to put the cache elsewhere."""
    try:
        yield
    except MelShardsError:
        raise
    except OSError as err:
        raise StorageError(
            f"{directory}: cannot write the shard cache: {err.strerror or err} (put it elsewhere "
            f"with cache_dir or ${CACHE_ENV}, or bound it with cache_limit or ${CACHE_LIMIT_ENV})"
        ) from None


def download(url: str, path: Path, *, sha256: str, size: int) -> Path:
    """Stream the ``size`` bytes of ``url`` into ``path`` through a temporary file, hashing as
    it goes, and rename it into place only when the object has ``size`` bytes that hash to
    ``sha256`` (else IntegrityError, and ``path`` is left as it was). One range request per
    ``BLOCK`` bytes, after one that asks the object's size."""
    info = info_of(url)
    if info is not None and int(info["size"]) != size:
        raise size_mismatch(url, int(info["size"]), size)
    part = path.with_name(f".{path.name}.{os.getpid()}{PART_SUFFIX}")
    fs, remote = filesystem(url)
    digest, written = hashlib.sha256(), 0
    try:
        with open(part, "wb") as dst:
            while written < size:
                start, end = written, min(written + BLOCK, size)
                with storage_errors(url, "download"):
                    block = retried(scheme(url), lambda: fs.cat_file(remote, start=start, end=end))  # noqa: B023
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
                f"the index says {size} bytes, {sha256[:12]}...; {changed_object(url)}"
            )
        os.replace(part, path)
        fsync_dir(path.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path
