"""The files of a run directory, written and read back without trusting what is already there.

A run writes every file as the precompute stage writes a shard: under a temp name beside it,
created exclusively and never through a link, fsynced, then renamed over the final name. A
symbolic link planted at ``RUN/model.keras`` is replaced by the run's own file; the file it
pointed to is never opened.

- ``write_run_file``: bytes or text (``run.json``, ``metrics.json``, ``submission.csv``);
- ``save_through_temp``: for writers that take a path (Keras ``model.save``, matplotlib
  ``savefig``): they write into a fresh private directory beside the file, whose result is
  renamed into place;
- ``AppendLog``: a log appended to line by line (``history.csv``, ``batches.log``): made
  anew (with what the run had written) through a temp name, then appended to through the
  descriptor kept open, never through its name;
- ``read_run_file`` and ``file_sha256``: what a resumed run reads back, refusing a symbolic
  link or anything but a regular file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from experiments.errors import ExperimentError
from melshards.files import fsync_dir, raise_if_storage_full, temp_name, write_file_atomic
from melshards.names import TEMP_SUFFIX

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a planted FIFO must not hang; a regular file reads the same with it.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def check_not_directory(path: Path) -> None:
    """ExperimentError naming ``path`` when it is a directory (a file is to be written there)."""
    if path.is_dir() and not path.is_symlink():
        raise ExperimentError(f"{path}: is a directory, not a file name to write")


def write_run_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) as ``path``: exclusive temp file beside it, no link
    followed, fsynced, renamed into place (``melshards.files.write_file_atomic``)."""
    path = Path(path)
    check_not_directory(path)
    write_file_atomic(path, data.encode("utf-8") if isinstance(data, str) else data)


def save_through_temp(path: str | os.PathLike, save: Callable[[Path], object]) -> str:
    """Have ``save(tmp)`` write the file, then rename it into place as ``path``; its sha256.

    ``tmp`` has the name of ``path`` (Keras wants the ``.keras`` suffix) in a directory made
    for this one save (``tempfile.mkdtemp``: created exclusively, private), beside ``path``
    so that the rename stays on one file system. A failure leaves neither behind.
    """
    path = Path(path)
    check_not_directory(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        tmp = folder / path.name
        save(tmp)
        digest = file_sha256(tmp, sync=True)
        os.replace(tmp, path)
    except BaseException as err:
        raise_if_storage_full(err, path)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    fsync_dir(path.parent)
    return digest


def remove_temp_files(directory: Path, names: tuple[str, ...]) -> None:
    """Remove what a save killed half-way left in ``directory`` for the files ``names`` (shell
    patterns allowed): their temp files and temp directories."""
    for name in names:
        for left in Path(directory).glob(f".{name}.*{TEMP_SUFFIX}"):
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)


def _open_regular(path: Path, *, what: str) -> int | None:
    """A read descriptor of the regular file ``path`` (None when there is none); ExperimentError
    for a symbolic link or another kind of file."""
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ExperimentError(f"{path}: is a symbolic link; {what} (remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ExperimentError(f"{path}: is not a regular file; {what} (remove it)")
    return fd


READ_BACK = "a run reads back only the files it wrote"


def read_run_file(path: str | os.PathLike) -> bytes | None:
    """The bytes of the run's file ``path``, None when it is absent; ExperimentError for a
    symbolic link or anything but a regular file (never read through)."""
    fd = _open_regular(Path(path), what=READ_BACK)
    if fd is None:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def file_sha256(path: str | os.PathLike, *, sync: bool = False) -> str:
    """sha256 (hex) of the regular file ``path``, read without following a link; ``sync``:
    fsync it first. ExperimentError when it is absent, a link or not a regular file."""
    fd = _open_regular(Path(path), what=READ_BACK)
    if fd is None:
        raise ExperimentError(f"{path}: no such file")
    digest = hashlib.sha256()
    try:
        if sync:
            os.fsync(fd)
        while chunk := os.read(fd, 1 << 22):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


class AppendLog:
    """A log of the run appended to while it trains (``history.csv``, ``batches.log``).

    Opening it writes what the file held (read back by ``read_run_file``: never through a
    link) to an exclusive temp file, renames that into place and keeps its descriptor: every
    line is appended to the run's own file, whatever its name comes to point at.
    ``size``: the bytes it held when opened.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        check_not_directory(self.path)
        held = read_run_file(self.path) or b""
        self.size = len(held)
        tmp = temp_name(self.path)
        try:
            tmp.unlink(missing_ok=True)
            self._fd: int | None = os.open(tmp, _CREATE | os.O_APPEND, 0o666)
            self._write(held)
            os.fsync(self._fd)
            os.replace(tmp, self.path)
        except BaseException as err:
            self.close()
            tmp.unlink(missing_ok=True)
            raise_if_storage_full(err, self.path)
            raise
        fsync_dir(self.path.parent)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, data: bytes) -> None:
        """Append ``data`` and fsync it."""
        if self._fd is None:
            raise ExperimentError(f"{self.path}: the log is closed")
        try:
            self._write(data)
            os.fsync(self._fd)
        except OSError as err:
            raise_if_storage_full(err, self.path)
            raise

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
