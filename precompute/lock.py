"""The output lock: one precompute run at a time writes a feature set directory.

``output_lock`` holds an exclusive ``flock`` on ``OUT/.lock`` for the whole run (and while a
URL's stage is pulled, or a fully rejected run writes its rejected rows). The kernel releases
it when the process ends, however it ends, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from melshards.errors import ConfigError
from melshards.names import LOCK_FILE
from precompute.errors import LockedError


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run; released even when the process is killed.

    The lock file is opened without following a symbolic link and must be a regular file: a
    link planted at ``OUT/.lock`` cannot make the run overwrite another file, nor a FIFO hang it.
    """
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(
                f"{path}: is a symbolic link; refusing to write through it (remove it)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: is not a regular file; refusing to use it as the lock (remove it)")
    with os.fdopen(fd, "r+", encoding="ascii", errors="replace") as fh:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read(32).strip() or "unknown"
            raise LockedError(
                f"{out}: another precompute run (pid {holder}) is writing here; wait for it or stop it"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
