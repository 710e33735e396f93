"""Building a batch's rows: in the calling thread, with threads, or with worker processes.

``ShardBatches`` decides which examples and which augmentation draws make a batch; the code
here only fills the rows of an output array. A batch is split into contiguous row ranges, one
per worker; each range is gathered, cropped, cast and scaled (``MelReader.read``) and, unless
the batch uses mixup, masked (``Augment.apply_masks``). Mixup needs rows from other ranges, so
when a batch mixes, the caller applies mixup and then the masks over the whole batch, which
keeps the order the ``loader.augment`` docstring states. Every row is computed by the same
code from the same inputs in every mode, so the modes give bit-identical batches.

- ``InProcessRows``: the calling thread builds every row.
- ``ThreadRows``: ``workers`` threads. The compiled kernels release the GIL, so the threads
  run in parallel; batches are never copied.
- ``ProcessRows``: ``workers`` processes (forked; spawned where fork is unavailable) write
  their rows straight into batch arrays in shared memory (``multiprocessing.RawArray``: a file
  unlinked as soon as it is made and inherited by the workers, so no name is ever left on disk
  or in ``/dev/shm``). Only row ranges and small draws travel through pipes, never batches.
  Workers exit when told, when their parent exits or dies, or when the pool is collected.

``Lookahead`` sits in front of any of them: while the model trains on batch ``i`` it builds
batch ``i + 1`` in a background thread.

Fork: locks, threads, worker processes, shared arrays and the batch being built ahead belong to
the process that made them. A child forked at any moment (even while the look-ahead thread
holds a lock halfway through a batch) drops what it inherited and starts from the state a
spawned child unpickles (``_fresh_state``): it builds the batch its parent was building ahead
itself, and makes its own threads or workers when it next needs them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

import numpy as np

from loader.buffers import ALIGNMENT, BufferPool
from melshards.errors import MelShardsError

if TYPE_CHECKING:
    from loader.augment import Augment, AugmentParams
    from loader.reader import MelReader

# Forked workers start at once and inherit the reader and the shared arrays, like the worker
# processes Keras itself forks for ``use_multiprocessing=True``; where fork is unavailable,
# spawned workers need the usual ``if __name__ == "__main__":`` guard in the user's script.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"

# Every live object with per-process state, renewed in a forked child.
_per_process: weakref.WeakSet = weakref.WeakSet()


def _renew_per_process_state() -> None:
    # A lock held by another thread at fork time would stay held forever in the child, and the
    # threads and workers it would wait for do not exist there (or are the parent's).
    for owner in list(_per_process):
        owner._after_fork_in_child()


os.register_at_fork(after_in_child=_renew_per_process_state)


def fill_rows(
    reader: MelReader,
    augment: Augment,
    x: np.ndarray,
    ids: np.ndarray,
    params: AugmentParams,
    *,
    fill: np.ndarray,
    clip: tuple[float, float] | None,
    masks: bool,
) -> None:
    """Gather, crop, cast and scale examples ``ids`` into ``x``; then mask them when ``masks``.

    x : np.ndarray [shape=(b, n_mels, crop, 1)] -- rows to fill, C-contiguous
    ids : np.ndarray [shape=(b,)], int64 -- global example ids
    params : the draws of exactly these rows (``AugmentParams.rows``)
    """
    reader.read(ids, params.crop_start, x, gain=params.gain, clip=clip)
    if masks:
        augment.apply_masks(x, params, fill=fill)


def row_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, near-equal ``(lo, hi)`` ranges covering ``range(n)``; empty ones dropped."""
    edges = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


class InProcessRows:
    """Every row built by the calling thread."""

    mode = "in-process"
    workers = 1

    def __init__(self, reader: MelReader, augment: Augment, *, fill: np.ndarray, clip, shape, dtype) -> None:
        self.reader, self.augment, self.fill, self.clip = reader, augment, fill, clip
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.buffers = BufferPool(self.shape, self.dtype)
        _per_process.add(self)

    def take(self, n: int) -> np.ndarray:
        return self.buffers.take(n)

    def build(self, x: np.ndarray, ids: np.ndarray, params: AugmentParams, *, masks: bool) -> None:
        fill_rows(self.reader, self.augment, x, ids, params, fill=self.fill, clip=self.clip, masks=masks)

    def close(self) -> None:
        pass

    def _fresh_state(self) -> dict:
        """Per-process state: dropped when pickling, made anew when unpickled or forked."""
        return {"buffers": BufferPool(self.shape, self.dtype)}

    def _after_fork_in_child(self) -> None:
        self.__dict__.update(self._fresh_state())

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in self._fresh_state():
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.update(self._fresh_state())
        _per_process.add(self)


class ThreadRows(InProcessRows):
    """Rows split across ``workers`` threads of one process."""

    mode = "threads"

    def __init__(self, reader, augment, *, fill, clip, shape, dtype, workers: int) -> None:
        super().__init__(reader, augment, fill=fill, clip=clip, shape=shape, dtype=dtype)
        self.workers = workers
        self.__dict__.update(self._fresh_state())

    def build(self, x: np.ndarray, ids: np.ndarray, params: AugmentParams, *, masks: bool) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.workers, thread_name_prefix="shard-rows"
                )
            executor = self._executor
        futures = [
            executor.submit(
                fill_rows,
                self.reader,
                self.augment,
                x[lo:hi],
                ids[lo:hi],
                params.rows(lo, hi),
                fill=self.fill,
                clip=self.clip,
                masks=masks,
            )
            for lo, hi in row_ranges(ids.shape[0], self.workers)
        ]
        for future in futures:
            future.result()

    def _fresh_state(self) -> dict:
        return {**super()._fresh_state(), "_executor": None, "_lock": threading.Lock()}

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _worker_main(reader, augment, fill, clip, shared, slot_bytes, shape, dtype, conn) -> None:
    """Loop of one worker process: fill the rows it is sent, answer ``None`` or the error."""
    count = int(np.prod(shape))
    parent = multiprocessing.parent_process()
    watched = [conn] if parent is None else [conn, parent.sentinel]
    while True:
        if conn not in multiprocessing.connection.wait(watched):
            return  # the parent is gone
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        slot, lo, hi, ids, params, masks = task
        x = np.frombuffer(shared, dtype, count=count, offset=slot * slot_bytes).reshape(shape)
        try:
            fill_rows(reader, augment, x[lo:hi], ids, params, fill=fill, clip=clip, masks=masks)
        except Exception as error:  # noqa: BLE001 -- sent back and raised in the parent
            conn.send(error)
        else:
            conn.send(None)


def _stop(processes: list, conns: list) -> None:
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):  # the worker is already gone
            conn.send(None)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join()
    for conn in conns:
        conn.close()


class ProcessRows(InProcessRows):
    """Rows split across ``workers`` processes that write into shared batch arrays.

    ``slots`` shared arrays are made when the workers start; a batch whose array is not one of
    them (all held elsewhere) is built in the calling thread instead.
    """

    mode = "processes"

    def __init__(self, reader, augment, *, fill, clip, shape, dtype, workers: int, slots: int = 4) -> None:
        super().__init__(reader, augment, fill=fill, clip=clip, shape=shape, dtype=dtype)
        self.workers, self.slots = workers, slots
        self.__dict__.update(self._fresh_state())

    def _start(self) -> None:
        context = multiprocessing.get_context(START_METHOD)
        n_bytes = self.buffers.n_bytes
        slot_bytes = -(-n_bytes // ALIGNMENT) * ALIGNMENT  # every slot starts aligned
        shared = context.RawArray("b", self.slots * slot_bytes)  # page-aligned
        processes, conns = [], []
        for k in range(self.workers):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(
                    self.reader,
                    self.augment,
                    self.fill,
                    self.clip,
                    shared,
                    slot_bytes,
                    self.shape,
                    self.dtype,
                    theirs,
                ),
                name=f"shard-rows-{k}",
                daemon=True,
            )
            process.start()
            theirs.close()
            processes.append(process)
            conns.append(mine)
        self._conns, self._processes = conns, processes
        self._finalizer = weakref.finalize(self, _stop, processes, conns)
        self.buffers = BufferPool(self.shape, self.dtype, capacity=self.slots)
        self.buffers.adopt(
            [
                np.frombuffer(shared, np.uint8, count=slot_bytes, offset=k * slot_bytes)
                for k in range(self.slots)
            ]
        )

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (none before the first batch or after ``close``)."""
        running = self._finalizer is not None and self._finalizer.alive
        return [p.pid for p in self._processes] if running else []

    def take(self, n: int) -> np.ndarray:
        with self._lock:
            if self._finalizer is None or not self._finalizer.alive:
                self._start()
        return self.buffers.take(n)

    def build(self, x: np.ndarray, ids: np.ndarray, params: AugmentParams, *, masks: bool) -> None:
        slot = self.buffers.block_of(x)
        if slot is None:  # every shared block is held by someone: build here
            super().build(x, ids, params, masks=masks)
            return
        errors = []
        with self._lock:
            try:
                ranges = row_ranges(ids.shape[0], self.workers)
                for conn, (lo, hi) in zip(self._conns, ranges, strict=False):
                    conn.send((slot, lo, hi, ids[lo:hi], params.rows(lo, hi), masks))
                for conn in self._conns[: len(ranges)]:
                    answer = conn.recv()
                    if answer is not None:
                        errors.append(answer)
            except (EOFError, OSError):
                self._finalizer()
                raise MelShardsError(
                    "a ShardSequence worker process exited while building a batch (killed? out of memory?)"
                ) from None
            except BaseException:
                # Interrupted with answers outstanding: stop the workers so the next batch
                # starts from fresh ones, never reading a stale answer.
                self._finalizer()
                raise
        if errors:
            raise errors[0]

    def _fresh_state(self) -> dict:
        return {
            **super()._fresh_state(),
            "_conns": [],
            "_processes": [],
            "_finalizer": None,
            "_lock": threading.Lock(),
        }

    def _after_fork_in_child(self) -> None:
        # The workers are the parent's to stop: an exiting child must not send them ``None``.
        if self._finalizer is not None:
            self._finalizer.detach()
        super()._after_fork_in_child()

    def close(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._conns, self._processes, self._finalizer = [], [], None
            self.buffers = BufferPool(self.shape, self.dtype)


class Lookahead:
    """Builds the next batch in a background thread while the caller trains on this one.

    ``get(index, epoch)`` returns ``build(index, epoch)``; meanwhile a thread builds batch
    ``index + 1`` of the same epoch, the batch an in-order consumer asks for next. Keras asks
    in order unless ``fit(shuffle=True)`` reorders whole batches; after two wrong guesses in a
    row the look-ahead stops until the next epoch, so a shuffled order costs at most two
    wasted batches per epoch. The batch returned is the same array either way: only the
    thread that builds it differs. The compiled kernels release the GIL, so the thread runs
    alongside the training step even with an in-process Keras loop (JAX, PyTorch backends).

    A caller that asks again at once gains nothing from it: a build ahead can only overlap with
    what the caller does between two asks, and handing a batch between threads costs two thread
    wake-ups (float16 batches of 32 x 128 x 938 took 1.64 ms each through the look-ahead
    against 1.17 ms built in the caller, asked for in a tight loop on the 2-core machine of
    docs/performance.md). So batch ``index + 1`` is built ahead only when the caller spent at
    least ``MIN_GAP_S`` between getting batch ``index - 1`` and asking for batch ``index`` (an
    ask out of that order, such as an epoch's first, goes by the last such gap; the very first
    builds ahead). Training loops spend more than that: Keras on JAX 0.3-1.8 ms between
    asks (its step dispatched), ``tf.data``'s thread 0.4-2.7 ms (10th to 90th percentiles,
    ``model.fit`` of the tiny model on that machine); where the host loop is the limit, on a
    GPU, building ahead pays. A loop that only collects batches gets each one built in its own
    thread.

    A forked child never waits for its parent's thread: it forgets the batch being built ahead
    (its thread does not exist in the child, and its future's lock may be held for good), builds
    the batch it asks for itself, and starts its own thread for the next one.
    """

    MIN_GAP_S = 0.1e-3
    clock = staticmethod(time.perf_counter)

    def __init__(self, build) -> None:
        self.build = build
        self.__dict__.update(self._fresh_state())
        _per_process.add(self)

    @staticmethod
    def _fresh_state() -> dict:
        return {
            "_executor": None,
            "_pid": None,
            "_pending": None,
            "_misses": 0,
            "_epoch": None,
            "_gave": None,
            "_last": None,
            "_gap": None,
        }

    def get(self, index: int, epoch: int, n_batches: int) -> tuple[np.ndarray, ...]:
        asked = self.clock()
        if self._gave is not None and (epoch, index) == (self._epoch, self._last + 1):
            self._gap = asked - self._gave  # what the caller spent on the batch before
        busy = self._gap is None or self._gap >= self.MIN_GAP_S
        if self._epoch != epoch:
            self._epoch, self._misses = epoch, 0
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == (epoch, index):
            result = pending[1].result()
            self._misses = 0
        else:
            if pending is not None:
                pending[1].cancel()
                self._misses += 1
            result = self.build(index, epoch)
        if busy and index + 1 < n_batches and self._misses < 2:
            self._pending = ((epoch, index + 1), self._pool().submit(self.build, index + 1, epoch))
        self._last, self._gave = index, self.clock()
        return result

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pid != os.getpid():  # a forked child never uses its parent's thread
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-lookahead")
            self._pid = os.getpid()
        return self._executor

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].cancel()
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=True)
        self._executor, self._pid = None, None

    def _after_fork_in_child(self) -> None:
        self.__dict__.update(self._fresh_state())

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(self._fresh_state())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        _per_process.add(self)
