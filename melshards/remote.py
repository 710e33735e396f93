"""Feature sets at a URL: addresses, and object storage read and written through fsspec.

A feature set may live in object storage (``s3://bucket/prefix``, ``gs://``, ``http(s)://``,
anything fsspec knows) as well as in a local directory (a path or ``file://``). This module
parses and joins those addresses, redacts them for messages, and reads, writes, uploads, lists
and range-reads objects (``RangeFile``, ``head_and_tail``: a shard's metadata without
downloading it). Readers never read shard bytes from the network on the hot path: the verified
local copies of ``melshards.shard_cache`` serve them.

Credentials come from each backend's usual environment variables and configuration files
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``,
fsspec's config); URLs in messages are shown without user, password or query string.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from melshards.errors import ConfigError, MelShardsError, StorageError

LOCAL_SCHEMES = ("", "file")
READ_ONLY_SCHEMES = ("http", "https")


# -- addresses ---------------------------------------------------------------------------------


def scheme(location: str | os.PathLike) -> str:
    """The URL scheme of ``location`` in lower case; "" for a plain path."""
    text = os.fspath(location)
    found = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    return found.group(1).lower() if found else ""


def is_url(location: str | os.PathLike) -> bool:
    """True when ``location`` is remote (a URL other than ``file://``)."""
    return scheme(location) not in LOCAL_SCHEMES


def local_path(location: str | os.PathLike) -> Path:
    """``location`` as a local path (``file:///data/x`` -> ``/data/x``); ConfigError for a URL."""
    if is_url(location):
        raise ConfigError(f"{redact(location)}: not a local path")
    text = os.fspath(location)
    return Path(urlsplit(text).path) if scheme(text) == "file" else Path(text)


def redact(url: str | os.PathLike) -> str:
    """``url`` without user, password, query or fragment: what messages may show."""
    text = os.fspath(url)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def join(url: str, name: str) -> str:
    """``url/name`` (one slash between them)."""
    return url.rstrip("/") + "/" + name


def set_name(url: str) -> str:
    """A directory name for the cache of the feature set at ``url``: its last path component
    and a hash of the whole (redacted) URL, so two sets never share one."""
    clean = redact(url).rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", clean.rsplit("/", 1)[-1]) or "set"
    return f"{tail[:40]}-{hashlib.sha256(clean.encode()).hexdigest()[:12]}"


# -- object storage ------------------------------------------------------------------------------


def filesystem(url: str):
    """``(fs, path)`` for ``url`` through fsspec; StorageError when no backend serves it."""
    try:
        import fsspec
    except ImportError:
        raise StorageError(
            f"{redact(url)}: feature sets at a URL need fsspec (pip install 'melshards[remote]')"
        ) from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise StorageError(f"{redact(url)}: no storage backend for this URL: {_reason(err)}") from None


@contextlib.contextmanager
def storage_errors(url: str, doing: str) -> Iterator[None]:
    """Turn what a storage backend raises into one line naming the URL (credentials hidden)."""
    try:
        yield
    except (MelShardsError, KeyboardInterrupt):
        raise
    except FileNotFoundError:
        raise StorageError(f"{redact(url)}: cannot {doing}: no such bucket or object") from None
    except PermissionError:
        raise StorageError(f"{redact(url)}: cannot {doing}: access denied (check the credentials)") from None
    except Exception as err:  # network, server and client errors of any backend
        raise StorageError(f"{redact(url)}: cannot {doing}: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    # Never repeat a secret a backend may have put in its message.
    text = re.sub(r"(?i)(signature|credential|token|secret|key)=[^&\s]+", r"\1=...", text)
    return text[:200]


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with storage_errors(url, "read"):
        return fs.cat_file(path)


def read_bytes_if_present(url: str) -> bytes | None:
    """The object at ``url``, or None when there is none (one request either way)."""
    fs, path = filesystem(url)
    with storage_errors(url, "read"):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None


def size_of(url: str) -> int | None:
    """The size of the object at ``url``, or None when there is none."""
    fs, path = filesystem(url)
    with storage_errors(url, "look up"):
        fs.invalidate_cache(path)
        try:
            return int(fs.info(path)["size"])
        except FileNotFoundError:
            return None


def check_writable(url: str) -> None:
    if scheme(url) in READ_ONLY_SCHEMES:
        raise ConfigError(f"{redact(url)}: HTTP URLs are read-only; write to s3://, gs:// or a path")


def write_bytes(url: str, data: bytes) -> None:
    """Store ``data`` at ``url`` in one request (an object appears whole or not at all)."""
    check_writable(url)
    fs, path = filesystem(url)
    with storage_errors(url, "write"):
        fs.pipe_file(path, data)


def upload(local: Path, url: str) -> None:
    """Store the file ``local`` at ``url``; object stores publish an object only once complete."""
    check_writable(url)
    fs, path = filesystem(url)
    with storage_errors(url, "upload"):
        fs.put_file(os.fspath(local), path)


def remove(url: str) -> None:
    """Delete the object at ``url``; nothing when there is none."""
    fs, path = filesystem(url)
    with storage_errors(url, "delete"), contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def list_names(url: str) -> list[str]:
    """The names of the objects directly under ``url`` ([] when there is nothing)."""
    fs, path = filesystem(url)
    with storage_errors(url, "list"):
        try:
            found = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
    return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found)


def open_remote(url: str, *, block_size: int = 1 << 20):
    """A read-only file object on ``url`` with a block cache, for small reads (h5py metadata)."""
    fs, path = filesystem(url)
    with storage_errors(url, "open"):
        return fs.open(path, "rb", block_size=block_size, cache_type="blockcache")


HEAD_BYTES = 64 << 10  # HDF5 keeps its superblock and root group at the start of a file ...
TAIL_BYTES = 1 << 20  # ... and the shard writer puts the small datasets after the mel chunks


def head_and_tail(urls: list[str], sizes: list[int]) -> list[dict[int, bytes]]:
    """The first ``HEAD_BYTES`` and last ``TAIL_BYTES`` of each object, fetched concurrently
    (one request each, all in flight together on s3/gcs/http), as ``{offset: bytes}``: where a
    shard's metadata lies, so ``RangeFile`` rarely asks the server for more."""
    if not urls:
        return []
    fs, _ = filesystem(urls[0])
    paths, starts, ends, owners = [], [], [], []
    for k, (url, size) in enumerate(zip(urls, sizes, strict=True)):
        spans = (
            [(0, size)] if size <= HEAD_BYTES + TAIL_BYTES else [(0, HEAD_BYTES), (size - TAIL_BYTES, size)]
        )
        for start, end in spans:
            paths.append(filesystem(url)[1])
            starts.append(start)
            ends.append(end)
            owners.append(k)
    with storage_errors(urls[0].rsplit("/", 1)[0], "read shard metadata"):
        blocks = fs.cat_ranges(paths, starts, ends)
    parts: list[dict[int, bytes]] = [{} for _ in urls]
    for k, start, block in zip(owners, starts, blocks, strict=True):
        if isinstance(block, BaseException):
            raise StorageError(f"{redact(urls[k])}: cannot read shard metadata: {_reason(block)}")
        parts[k][start] = block
    return parts


class RangeFile(io.RawIOBase):
    """A read-only file over the object at ``url`` for h5py: reads inside the ``parts`` known
    in advance (``head_and_tail``) cost nothing, any other read is one range request."""

    def __init__(self, url: str, size: int, parts: dict[int, bytes] | None = None) -> None:
        super().__init__()
        self.url, self.size, self.pos = url, size, 0
        self.parts = dict(parts or {})
        self.fs, self.path = filesystem(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        start, end = self.pos, self.pos + n
        for first, block in self.parts.items():
            if first <= start and end <= first + len(block):
                view[:n] = block[start - first : end - first]
                break
        else:
            with storage_errors(self.url, "read"):
                view[:n] = self.fs.cat_file(self.path, start=start, end=end)
        self.pos = end
        return n
