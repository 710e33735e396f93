"""File helpers of the format: atomic writes, durable renames, hashes and fingerprints."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from melshards.errors import StorageError
from melshards.names import TEMP_SUFFIX

# errno values that mean "the storage is full": free space (or raise a limit) and run again.
STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); what a run writes follows the umask instead,
        # like any other tool's output, so that others can read a shared feature set.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        raise_if_storage_full(err, path)
        raise
    fsync_dir(path.parent)


def temp_name(final: Path) -> Path:
    """The name ``final`` is written under before it is renamed into place."""
    return final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")


def write_file_atomic(path: Path, data: bytes, *, hint: str = "free space and run again") -> None:
    """Write ``data`` as ``path``: a temp file beside it (created exclusively, never through a
    link), fsynced, then renamed into place; a failure leaves no temp file behind.

    A kill can leave the temp file (``temp_name``); the next run removes it. A full disk is a
    StorageError naming ``path``, ending with ``hint``.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        raise_if_storage_full(err, path, hint=hint)
        raise
    fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` durably (created if absent, never through a link)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise_if_storage_full(err, path)
        raise


def storage_errno(err: BaseException) -> int | None:
    """The errno of ``err`` when it says the storage is full (HDF5 puts it only in its message)."""
    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    return code if code in STORAGE_FULL else None


def raise_if_storage_full(err: BaseException, path: Path, *, hint: str = "free space and run again") -> None:
    """Raise StorageError naming ``path`` when ``err`` means the storage is full; else return."""
    code = storage_errno(err)
    if code is not None:
        raise StorageError(f"{path}: cannot write: {os.strerror(code)}; {hint}") from None


def current_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, *, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_of(obj: Any) -> str:
    """sha256 (hex, first 16 bytes) of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
