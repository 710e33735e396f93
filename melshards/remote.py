"""Feature sets at a URL: addresses, and object storage read and written through fsspec.

A feature set may live in object storage (``s3://bucket/prefix``, ``gs://``, ``http(s)://``,
anything fsspec knows) as well as in a local directory (a path or ``file://``). This module
parses and joins those addresses, redacts them for messages, and reads, writes, uploads, lists
and range-reads objects (``RangeFile``, ``head_and_tail``: a shard's metadata without
downloading it). Readers never read shard bytes from the network on the hot path: the verified
local copies of ``melshards.shard_cache`` serve them.

Credentials come from each backend's usual environment variables and configuration files
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``,
fsspec's config); URLs in messages are shown without user, password or query string. Every
request is bounded by the timeouts and attempts of ``melshards.remote_limits``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from melshards.errors import ConfigError, IntegrityError, MelShardsError, StorageError
from melshards.remote_limits import Limits, bound, is_missing_bucket, is_timeout, merged_options, retried

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
    """``(fs, path)`` for ``url`` through fsspec, with the timeouts and attempts of
    ``remote_limits.Limits.from_env``; StorageError when no backend serves it."""
    try:
        import fsspec
    except ImportError:
        raise StorageError(
            f"{redact(url)}: feature sets at a URL need fsspec (pip install 'melshards[remote]')"
        ) from None
    kind, limits = scheme(url), Limits.from_env()
    try:
        fs, path = fsspec.core.url_to_fs(url, **merged_options(kind, limits))
    except (ImportError, ValueError) as err:
        raise StorageError(f"{redact(url)}: no storage backend for this URL: {_reason(err)}") from None
    bound(fs, kind)
    return fs, path


def bucket_of(url: str) -> str:
    """The bucket (or host) of ``url``: ``s3://b/prefix`` -> ``b``."""
    return urlsplit(os.fspath(url)).netloc.rsplit("@", 1)[-1]


def missing_bucket_message(url: str) -> str:
    """What to say when the bucket of ``url`` does not exist: its name, and what to check."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") if scheme(url) in ("s3", "s3a") else None
    at = f" at {redact(endpoint)}" if endpoint else ""
    check = "AWS_ENDPOINT_URL and the credentials" if endpoint else "the endpoint and the credentials"
    return f"{redact(url)}: bucket '{bucket_of(url)}' does not exist{at} (create it, or check {check})"


@contextlib.contextmanager
def storage_errors(url: str, doing: str) -> Iterator[None]:
    """Turn what a storage backend raises into one line naming the URL (credentials hidden)."""
    try:
        yield
    except (MelShardsError, KeyboardInterrupt):
        raise
    except Exception as err:  # network, server and client errors of any backend
        raise storage_error(url, doing, err) from None


def storage_error(url: str, doing: str, err: BaseException) -> StorageError:
    """The one line that says why ``doing`` failed on ``url``: a missing bucket (named), a
    missing object, access denied, no answer in time (and how to wait longer), or the backend's
    reason."""
    if isinstance(err, FileNotFoundError) and is_missing_bucket(err):
        return StorageError(missing_bucket_message(url))
    if isinstance(err, FileNotFoundError):
        return StorageError(f"{redact(url)}: cannot {doing}: no such object")
    if isinstance(err, PermissionError):
        return StorageError(f"{redact(url)}: cannot {doing}: access denied (check the credentials)")
    if is_timeout(err):
        return StorageError(f"{redact(url)}: cannot {doing}: {Limits.from_env().hint()}")
    return StorageError(f"{redact(url)}: cannot {doing}: {_reason(err)}")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    # Never repeat a secret a backend may have put in its message.
    text = re.sub(r"(?i)(signature|credential|token|secret|key)=[^&\s]+", r"\1=...", text)
    return text[:200]


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with storage_errors(url, "read"):
        return retried(scheme(url), lambda: fs.cat_file(path))


def read_bytes_if_present(url: str) -> bytes | None:
    """The object at ``url``, or None when there is none (one request either way); a missing
    bucket is a StorageError that names it."""
    fs, path = filesystem(url)
    with storage_errors(url, "read"):
        try:
            return retried(scheme(url), lambda: fs.cat_file(path))
        except FileNotFoundError as err:
            if is_missing_bucket(err):
                raise
            return None


def info_of(url: str) -> dict | None:
    """What the backend says of the object at ``url`` (``size``, and an ``ETag`` or
    ``md5Hash`` where it keeps one), or None when there is none."""
    fs, path = filesystem(url)
    with storage_errors(url, "look up"):
        fs.invalidate_cache(path)
        try:
            return dict(retried(scheme(url), lambda: fs.info(path)))
        except FileNotFoundError as err:
            if is_missing_bucket(err):
                raise
            return None


def size_of(url: str) -> int | None:
    """The size of the object at ``url``, or None when there is none."""
    info = info_of(url)
    return None if info is None else int(info["size"])


def reported_md5(info: dict) -> str | None:
    """The MD5 of an object's bytes as its backend reports it (hex), or None: S3's ``ETag`` of
    a single-part upload (32 hex digits), GCS's ``md5Hash``. An ``ETag`` of another kind
    (a multipart upload, an encrypted object) never matches a file's MD5, so it only costs a
    download (``holds``)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        return etag
    md5 = info.get("md5Hash")
    with contextlib.suppress(ValueError, TypeError):
        return base64.b64decode(md5, validate=True).hex() if md5 else None
    return None


def sha256_of(url: str, size: int, *, block: int = 8 << 20) -> str:
    """The sha256 of the first ``size`` bytes of the object at ``url``, streamed (nothing stored)."""
    fs, path = filesystem(url)
    digest, done = hashlib.sha256(), 0
    while done < size:
        start, end = done, min(done + block, size)
        with storage_errors(url, "read"):
            data = retried(scheme(url), lambda: fs.cat_file(path, start=start, end=end))  # noqa: B023
        if not data:
            break
        digest.update(data)
        done += len(data)
    return digest.hexdigest()


def holds(url: str, local: Path) -> bool:
    """True when the object at ``url`` holds exactly the bytes of the file ``local``: the same
    size, and the same MD5 as the backend reports it or, when it reports none that matches,
    the same sha256 of the object's bytes, read back."""
    info = info_of(url)
    size = local.stat().st_size
    if info is None or int(info["size"]) != size:
        return False
    md5 = reported_md5(info)
    if md5 is not None and md5 == _file_digest(local, hashlib.md5(usedforsecurity=False)):
        return True
    return sha256_of(url, size) == _file_digest(local, hashlib.sha256())


def _file_digest(path: Path, digest) -> str:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


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
    with storage_errors(url, "delete"):
        try:
            fs.rm_file(path)
        except FileNotFoundError as err:
            if is_missing_bucket(err):
                raise


def list_names(url: str) -> list[str]:
    """The names of the objects directly under ``url`` ([] when there is nothing)."""
    fs, path = filesystem(url)
    with storage_errors(url, "list"):
        try:
            found = retried(scheme(url), lambda: fs.ls(path, detail=False, refresh=True))
        except FileNotFoundError as err:
            if is_missing_bucket(err):
                raise
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
        blocks = retried(scheme(urls[0]), lambda: fs.cat_ranges(paths, starts, ends))
    parts: list[dict[int, bytes]] = [{} for _ in urls]
    for k, start, end, block in zip(owners, starts, ends, blocks, strict=True):
        if isinstance(block, BaseException) and (is_timeout(block) or isinstance(block, PermissionError)):
            raise storage_error(urls[k], "read shard metadata", block)
        # Another answer (an object shorter than the index says, say) leaves the span out: the
        # shard's reader asks for it and fails on that shard, which the loader then checks whole.
        if not isinstance(block, BaseException) and len(block) == end - start:
            parts[k][start] = block
    return parts


def changed_object(url: str) -> str:
    """What an object whose bytes are not its index's means, and how to fix it."""
    where = redact(url).rsplit("/", 1)[0]
    return (
        "the object changed since its index was written, or is damaged: run again the "
        f"`precompute features ... --out {where}` that wrote it (it checks every shard's sha256 "
        "and uploads a damaged one anew)"
    )


def size_mismatch(url: str, actual: int, size: int) -> IntegrityError:
    return IntegrityError(
        f"{redact(url)}: the object holds {actual} bytes, the index says {size} bytes; {changed_object(url)}"
    )


class RangeFile(io.RawIOBase):
    """A read-only file over the object at ``url`` for h5py: reads inside the ``parts`` known
    in advance (``head_and_tail``) cost nothing, any other read is one range request.

    Used as a context manager, a failure inside it (h5py's "truncated file", say) is checked
    against the object's size: an object of another size than the index's is an IntegrityError
    that names both sizes."""

    def __init__(self, url: str, size: int, parts: dict[int, bytes] | None = None) -> None:
        super().__init__()
        self.url, self.size, self.pos = url, size, 0
        self.parts = dict(parts or {})
        self.fs, self.path = filesystem(url)
        self.unreachable = False  # a request failed: asking the size again would fail too

    def __exit__(self, kind, err, traceback) -> bool:
        self.close()
        if err is None or self.unreachable or isinstance(err, IntegrityError | KeyboardInterrupt):
            return False
        try:
            info = info_of(self.url)
        except MelShardsError:
            return False
        if info is not None and int(info["size"]) != self.size:
            raise size_mismatch(self.url, int(info["size"]), self.size) from None
        return False

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
            try:
                with storage_errors(self.url, "read"):
                    block = retried(
                        scheme(self.url), lambda: self.fs.cat_file(self.path, start=start, end=end)
                    )
            except StorageError:
                self.unreachable = True
                raise
            if len(block) != n:
                info = info_of(self.url)
                if info is None:
                    raise StorageError(f"{redact(self.url)}: cannot read: no such object")
                raise size_mismatch(self.url, int(info["size"]), self.size)
            view[:n] = block
        self.pos = end
        return n
