"""``DecodePool``: threads that decode a batch's compressed chunks side by side.

A chunk compressed by a plugin filter (``zstd``, ``bitshuffle-lz4``) costs more to decompress
than to read: 40-200 us per example against 20-30 us for the crop and cast. The decoders
(``zstandard``, ``loader.bitshuffle_kernels``, ``bitshuffle``) and the reader's compiled fill
loops release the GIL, so ``MelReader`` decodes each batch's chunks with a few threads, the
calling thread among them: each takes the next chunk not yet taken, checks, decompresses and
fills it, until none is left. The rows come out the same as decoded one after another in the
calling thread (``threads=1``), and a failing chunk raises what the serial order would have
raised first (the lowest position that fails).

OpenMP: the ``bitshuffle`` package (the decoder of float16 and float32 bitshuffle-lz4 chunks)
decompresses one chunk's blocks with an OpenMP team of one thread per core; beside other
decoding threads those teams' spinning threads take the very cores the pool needs. Given
``limit_openmp``, each pool thread limits the OpenMP runtimes loaded to one thread for itself
(``threadpoolctl``; the limit is per thread, the caller's threads keep theirs).

Lifetime: threads start on first use and stop on ``close``, when the pool's owner is collected
(``MelReader`` holds a finalizer), or after ``IDLE_EXIT_S`` seconds without work, so that a
reader left open holds no thread for long. Fork: a child never uses its parent's threads (they
do not exist there) nor their locks and queue; it starts threads of its own on first use.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import warnings
from collections.abc import Callable

# Seconds a pool thread waits for work before it exits.
IDLE_EXIT_S = 2.0
MAX_DEFAULT_THREADS = 4
THREAD_NAME = "melshards-decode"


def default_threads() -> int:
    """Decoding threads for a reader: one per core this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


class _Job:
    """``fn(k)`` for ``k`` in ``range(n)``, shared by ``helpers`` threads; the lowest failure kept."""

    def __init__(self, fn: Callable[[int], None], n: int, helpers: int) -> None:
        self.fn, self.n = fn, n
        self.failed_at = n  # the lowest position that raised
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._next = itertools.count()  # next() on it is atomic: each k goes to one thread
        self._lock = threading.Lock()
        self._running = helpers

    def work(self) -> None:
        try:
            while True:
                k = next(self._next)
                # Positions after a failure are skipped; those before it all run, so the one
                # kept is the failure the serial order meets first.
                if k >= self.failed_at:
                    return
                try:
                    self.fn(k)
                except BaseException as err:
                    with self._lock:
                        if k < self.failed_at:
                            self.failed_at, self.error = k, err
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.done.set()


class _Crew:
    """The threads of one pool in one process, and the queue they take jobs from."""

    def __init__(self, size: int, idle_exit: float, limit_openmp: bool) -> None:
        self.pid = os.getpid()
        self.size, self.idle_exit, self.limit_openmp = size, idle_exit, limit_openmp
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads: set[threading.Thread] = set()
        self._names = itertools.count()

    def submit(self, job: _Job, copies: int) -> None:
        with self.lock:
            for _ in range(copies):
                self.jobs.put(job)
            while len(self.threads) < self.size:
                thread = threading.Thread(
                    target=_serve, args=(self,), name=f"{THREAD_NAME}-{next(self._names)}", daemon=True
                )
                self.threads.add(thread)
                thread.start()

    def stop(self) -> None:
        with self.lock:
            threads, self.threads = list(self.threads), set()
            for _ in threads:
                self.jobs.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()


def _serve(crew: _Crew) -> None:
    if crew.limit_openmp:
        _limit_openmp()
    while True:
        try:
            job = crew.jobs.get(timeout=crew.idle_exit)
        except queue.Empty:
            # Decided under the lock: a job submitted meanwhile either finds this thread still
            # counted (and it goes on) or starts another one.
            with crew.lock:
                if crew.jobs.empty():
                    crew.threads.discard(threading.current_thread())
                    return
            continue
        if job is None:
            return
        job.work()
        job = None  # hold nothing of the job (nor of its reader) while idle


_openmp = None  # the OpenMP runtimes loaded when the first pool thread of this process started
_openmp_lock = threading.Lock()


def _limit_openmp() -> None:
    """One OpenMP thread for the calling thread in the OpenMP runtimes loaded (bitshuffle's
    teams); best effort, since the pool works without it, only slower."""
    global _openmp
    with _openmp_lock:
        if _openmp is None:
            _openmp = _openmp_runtimes()
    with contextlib.suppress(Exception):
        _openmp.limit(limits=1)


def _openmp_runtimes():
    """threadpoolctl's controller of the OpenMP runtimes loaded (about 0.1 s to find them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # about several OpenMP runtimes loaded side by side
        try:
            from threadpoolctl import ThreadpoolController

            return ThreadpoolController().select(user_api="openmp")
        except Exception:  # a dependency, but nothing here needs it to be correct
            return ()


class DecodePool:
    """``threads`` threads running one job's positions side by side; see the module docstring.

    threads : how many, the calling thread included (it waits instead, given ``limit_openmp``);
        1 runs every job in the calling thread, in order
    limit_openmp : each thread runs OpenMP with one thread (for ``bitshuffle``'s decoder)
    idle_exit : seconds a thread waits for work before it exits
    """

    def __init__(self, threads: int, *, limit_openmp: bool = False, idle_exit: float = IDLE_EXIT_S) -> None:
        self.threads = int(threads)
        self.limit_openmp = bool(limit_openmp)
        self.idle_exit = float(idle_exit)
        self._crew: _Crew | None = None

    def run(self, fn: Callable[[int], None], n: int) -> None:
        """``fn(k)`` for every ``k`` in ``range(n)``; returns when all have run, or raises the
        exception of the lowest ``k`` that raised."""
        if self.threads <= 1 or n <= 1:
            for k in range(n):
                fn(k)
            return
        # The calling thread works too (it is running; a sleeping thread, on a sleeping core of a
        # virtual machine, can take longer to wake than a batch takes), except beside OpenMP
        # teams, whose limit belongs to the pool's threads.
        caller = not self.limit_openmp
        crew = self._crew
        if crew is None or crew.pid != os.getpid():  # a forked child leaves its parent's be
            crew = self._crew = _Crew(self.threads - caller, self.idle_exit, self.limit_openmp)
        helpers = min(self.threads - caller, n - caller)
        job = _Job(fn, n, helpers + caller)
        crew.submit(job, helpers)
        if caller:
            job.work()
        job.done.wait()
        if job.error is not None:
            raise job.error

    def live_threads(self) -> int:
        """Threads this pool has running in this process."""
        crew = self._crew
        if crew is None or crew.pid != os.getpid():
            return 0
        with crew.lock:
            return len(crew.threads)

    def close(self) -> None:
        """Stop this process's threads (they start again on the next job)."""
        crew, self._crew = self._crew, None
        if crew is not None and crew.pid == os.getpid():
            crew.stop()
