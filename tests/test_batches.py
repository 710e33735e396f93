"""Worker modes and recycled batch arrays: what reaches the model, and what is left behind."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from loader import ShardSequence
from loader.augment import Augment
from loader.buffers import ALIGNMENT, BufferPool
from loader.rows import row_ranges
from melshards.errors import IntegrityError
from synthetic_features import make_feature_set

MODES = {
    "in-process": {},
    "threads": {"workers": 2},
    "processes": {"workers": 2, "use_multiprocessing": True},
}


# What Python's multiprocessing would leave behind: shared_memory segments, heap arenas
# (``RawArray``) and its temporary directories. Other processes on the machine (joblib, loky)
# use other names, so the check is not thrown off by them.
SHARED_PREFIXES = ("psm_", "pym-", "pymp-", "mp-")


def leftovers() -> set[str]:
    """Shared-memory segments and multiprocessing temporary files that exist now."""
    names = set()
    for place in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(place):
            names |= {f"{place}/{n}" for n in os.listdir(place) if n.startswith(SHARED_PREFIXES)}
    return names


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is gone for our purposes.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ")[-1][0] != "Z"


# -- BufferPool --------------------------------------------------------------------------------


def test_pool_reuses_an_array_only_when_nobody_holds_it():
    pool = BufferPool((4, 3), np.float32, capacity=3)
    a = pool.take()
    a_address = a.ctypes.data
    assert a_address % ALIGNMENT == 0 and a.shape == (4, 3) and a.dtype == np.float32
    b = pool.take()
    assert b.ctypes.data != a_address  # a is still held
    del a
    c = pool.take()
    assert c.ctypes.data == a_address and len(pool) == 2  # a's memory came back
    part = c[1:]  # a view keeps the memory in use
    del c
    d = pool.take()
    assert d.ctypes.data not in (a_address, b.ctypes.data) and len(pool) == 3
    del part
    assert pool.take(2).ctypes.data == a_address  # the first two rows of a full array


def test_pool_beyond_capacity_hands_out_arrays_it_does_not_keep():
    pool = BufferPool((2, 2), np.float16, capacity=1)
    held = pool.take()
    extra = pool.take()
    assert extra.ctypes.data != held.ctypes.data and len(pool) == 1
    assert pool.block_of(extra) is None and pool.block_of(held) == 0


def test_pool_adopts_given_memory():
    pool = BufferPool((2, 4), np.float32, capacity=1)
    pool.adopt([np.zeros(64 * 3, dtype=np.uint8)])  # the pool must be its only holder
    x = pool.take()
    x[...] = 7
    assert pool.block_of(x) == 0 and x.base.shape == (192,)
    assert (x.base[:32].view(np.float32) == 7).all() and (x.base[32:] == 0).all()
    address = x.ctypes.data
    del x
    assert pool.take().ctypes.data == address
    with pytest.raises(ValueError, match="at most 1 blocks"):
        pool.adopt([np.zeros(64, np.uint8)])


@pytest.mark.parametrize(
    ("n", "parts", "expected"), [(10, 3, [(0, 3), (3, 7), (7, 10)]), (2, 4, [(0, 1), (1, 2)])]
)
def test_row_ranges_cover_the_batch(n, parts, expected):
    assert row_ranges(n, parts) == expected


# -- every mode gives the in-process batches -------------------------------------------------


class Recorder(keras.Model):
    """Keeps a copy of every (x, y) that ``fit`` hands to a training step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def call(self, x):
        return x

    def train_step(self, data):
        x, y = data
        self.seen.append((np.array(x), np.array(y)))
        return {"batches": len(self.seen)}


def fit_batches(data, *, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    model = Recorder()
    model.compile(run_eagerly=True)
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return model.seen


@pytest.mark.parametrize("mode", [*MODES, "as_tf_dataset"])
@pytest.mark.parametrize("augment", [True, {"mixup_p": 0.5}], ids=["default", "mixup"])
def test_fit_gets_the_in_process_batches(labelled_set, mode, augment):
    kw = {"split": "train", "batch_size": 8, "seed": 4, "augment": augment}
    reference = ShardSequence(labelled_set, **kw)
    seq = ShardSequence(labelled_set, **kw, **MODES.get(mode, {}))
    assert seq.worker_mode == ("in-process" if mode == "as_tf_dataset" else mode)
    # Keras sees an in-process dataset: no enqueuer, no batch through a pipe or a queue
    assert seq.workers == 1 and not seq.use_multiprocessing
    data = seq.as_tf_dataset() if mode == "as_tf_dataset" else seq
    seen = fit_batches(data, epochs=2)
    # fit calls on_epoch_end once before its first epoch: it trains on epochs 1 and 2 of a
    # PyDataset; the tf.data view starts at the sequence's epoch when it was made (0)
    first = 0 if mode == "as_tf_dataset" else 1
    expected = [reference.batch(i, epoch=e) for e in (first, first + 1) for i in range(len(reference))]
    assert len(seen) == len(expected) == 2 * len(seq)
    for (x, y), (x_ref, y_ref) in zip(seen, expected, strict=True):
        assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    seq.close()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_float16_batches_match_in_every_mode(labelled_set, mode):
    kw = {"split": "all", "batch_size": 16, "dtype": "float16", "augment": Augment(gain=(0.5, 1.5))}
    with ShardSequence(labelled_set, **kw, **MODES[mode]) as seq:
        reference = ShardSequence(labelled_set, **kw)
        for i in range(len(seq)):
            x, y = seq[i]
            assert x.dtype == np.float16
            assert np.array_equal(x, reference[i][0]) and np.array_equal(y, reference[i][1])


def test_process_workers_report_a_bad_chunk_like_in_process(tmp_path):
    root = make_feature_set(tmp_path / "fs", n_recordings=3, per_recording=4, shard_size=12)
    seq = ShardSequence(root, split="all", batch_size=12, augment=False, shuffle=False, **MODES["processes"])
    first = seq.reader.features.shards[0]
    offset = int(first.byte_offsets[5]) + 100
    st = os.stat(first.path)  # the disk flips it: in place, modification time kept
    with open(first.path, "r+b") as fh:  # flip one byte of example 5's chunk
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(first.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError, match=r"shard-00000\.h5.*example 5"):
        seq[0]
    with pytest.raises(IntegrityError, match=r"shard-00000\.h5.*example 5"):
        ShardSequence(root, split="all", batch_size=12, augment=False, shuffle=False)[0]
    seq.close()


def test_sequence_with_workers_pickles_and_builds_the_same_batch(labelled_set):
    seq = ShardSequence(labelled_set, split="train", batch_size=8, seed=2, **MODES["processes"])
    x, y = seq[1]
    clone = pickle.loads(pickle.dumps(seq))
    assert clone.worker_mode == "processes"
    x2, y2 = clone[1]
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    seq.close()
    clone.close()


# -- nothing outlives a fit ---------------------------------------------------------------------


def test_finished_and_interrupted_fits_leave_nothing_behind(labelled_set):
    before = leftovers()
    seq = ShardSequence(labelled_set, split="train", batch_size=8, **MODES["processes"])
    fit_batches(seq, epochs=1)
    pids = seq._rows.pids
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    assert leftovers() == before  # the shared memory has no name, even while in use

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    model = Recorder()
    model.compile(run_eagerly=True)
    with pytest.raises(KeyboardInterrupt):
        model.fit(seq, epochs=3, verbose=0, shuffle=False, callbacks=[Stop()])
    # still usable after the interrupt: the batch a fresh in-process sequence makes for that epoch
    x, y = seq[0]
    config = seq.features.config
    assert x.shape == (8, config.n_mels, config.crop_frames, 1)
    x_ref, y_ref = ShardSequence(labelled_set, split="train", batch_size=8).batch(0, epoch=seq.epoch)
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    pids = seq._rows.pids
    seq.close()
    assert not any(alive(pid) for pid in pids)
    assert leftovers() == before


def test_killed_training_process_takes_its_workers_along(labelled_set, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from loader import ShardSequence
        seq = ShardSequence({str(labelled_set)!r}, split="train", batch_size=8, workers=2, use_multiprocessing=True)
        seq[0]
        print(" ".join(map(str, seq._rows.pids)), flush=True)
        while True:
            for i in range(len(seq)):
                seq[i]
        """
    )
    before = leftovers()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    time.sleep(0.5)  # mid-batch, most likely
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)
    assert leftovers() == before


# -- look-ahead ----------------------------------------------------------------------------------


def test_lookahead_builds_the_next_batch_in_its_thread_and_gives_up_on_a_shuffled_order():
    import threading

    from loader.rows import Lookahead

    built = []

    def build(index, epoch):
        built.append((index, epoch, threading.current_thread().name.startswith("shard-lookahead")))
        return (np.full(3, 10 * epoch + index),)

    ahead = Lookahead(build)
    ahead.MIN_GAP_S = 0.0  # as if the caller trained between asks
    in_order = [ahead.get(i, 0, 4)[0][0] for i in range(4)]
    assert in_order == [0, 1, 2, 3]
    # batch 0 in the caller, 1..3 ahead of time in the look-ahead thread, none past the end
    assert sorted(built) == [(0, 0, False), (1, 0, True), (2, 0, True), (3, 0, True)]
    built.clear()
    shuffled = [ahead.get(i, 1, 4)[0][0] for i in (2, 0, 3, 1)]
    assert shuffled == [12, 10, 13, 11]  # always the batch asked for
    ahead.close()
    # guesses 3 and 1 were wrong: after the second miss nothing more is built ahead
    assert sum(1 for _, _, thread in built if thread) <= 2
    assert [i for i, _, thread in built if not thread] == [2, 0, 3, 1]


def test_lookahead_builds_ahead_only_for_a_caller_that_spends_time_between_asks():
    import threading

    from loader.rows import Lookahead

    now = [0.0]
    built = []

    def build(index, epoch):
        built.append((index, threading.current_thread().name.startswith("shard-lookahead")))
        return (index,)

    ahead = Lookahead(build)
    ahead.clock = lambda: now[0]
    ahead.MIN_GAP_S = 1e-3

    def ask(index, epoch=0, gap=0.0):
        now[0] += gap
        return ahead.get(index, epoch, 8)[0]

    # first ask of the epoch: batch 1 is built ahead; the caller asks at once after each batch
    assert [ask(0), ask(1), ask(2), ask(3)] == [0, 1, 2, 3]
    assert built == [(0, False), (1, True), (2, False), (3, False)]
    built.clear()
    # a caller that trains 5 ms between asks gets each next batch built ahead
    assert [ask(k, gap=5e-3) for k in (4, 5, 6, 7)] == [4, 5, 6, 7]
    assert built == [(4, False), (5, True), (6, True), (7, True)]  # none past the last batch
    built.clear()
    # an epoch's first ask goes by the last gap between two batches in order (5 ms): ahead
    assert [ask(0, epoch=1, gap=1.0), ask(1, epoch=1), ask(2, epoch=1)] == [0, 1, 2]
    assert built == [(0, False), (1, True), (2, False)]
    built.clear()
    # a pause before starting over says nothing of the caller: the last gap (at once) holds
    assert [ask(0, epoch=1, gap=1.0), ask(1, epoch=1)] == [0, 1]
    ahead.close()
    assert built == [(0, False), (1, False)]


def test_sequence_lookahead_gives_the_batches_of_batch(labelled_set):
    seq = ShardSequence(labelled_set, split="train", batch_size=8, seed=9)
    plain = ShardSequence(labelled_set, split="train", batch_size=8, seed=9, lookahead=False)
    for epoch in (0, 1):
        seq.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in [*range(len(seq)), 3, 1]:
            x, y = seq[i]
            assert np.array_equal(x, plain[i][0]) and np.array_equal(y, plain[i][1])
            assert np.array_equal(x, plain.batch(i, epoch=epoch)[0])
    seq.close()
