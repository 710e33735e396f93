"""The look-ahead across ``os.fork``, batch indices counted from the end, and shards changed on
disk under an open reader."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from loader import ShardSequence, rows
from loader.batches import ShardBatches
from loader.reader import MelReader
from synthetic_features import LABELLED_SET, decode_example, make_feature_set

MODES = {
    "in-process": {},
    "threads": {"workers": 2},
    "processes": {"workers": 2, "use_multiprocessing": True},
}

# labelled_set (conftest.py), split "train" of fold 0: 40 examples, 5 batches of 8.
N_BATCHES = 5


def digest(batch: tuple[np.ndarray, ...]) -> str:
    """SHA-256 of every array of a batch: equal digests mean bit-for-bit equal batches."""
    h = hashlib.sha256()
    for array in batch:
        h.update(str((array.dtype, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def wait_child(pid: int, *, deadline_s: float) -> int | None:
    """Exit status of child ``pid``, or None when it has not exited within ``deadline_s`` (then killed)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


# -- fork while the look-ahead builds a batch ------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_forked_child_builds_the_batches_the_look_ahead_was_building(labelled_set, monkeypatch, mode):
    seq = ShardSequence(labelled_set, split="train", batch_size=8, seed=3, lookahead=True, **MODES[mode])
    seq.set_epoch(1)
    assert len(seq) == N_BATCHES
    # Rows of batch 1 wait at a gate until the parent has forked, so the look-ahead thread is
    # in the middle of building batch 1 (holding whatever it holds) when the fork happens.
    # The gate is made of process-shared events: with worker processes the rows are filled
    # there, and the forked child's copy of the gate opens when the parent opens it.
    gated = seq.batch_example_ids(1)
    context = multiprocessing.get_context("fork")
    reached, opened = context.Event(), context.Event()
    fill_rows = rows.fill_rows

    def fill_rows_at_gate(reader, augment, x, ids, params, **kwargs):
        if not opened.is_set() and np.isin(ids, gated).any():
            reached.set()
            opened.wait(60)
        fill_rows(reader, augment, x, ids, params, **kwargs)

    monkeypatch.setattr(rows, "fill_rows", fill_rows_at_gate)
    first = seq[0]  # built here; batch 1 goes to the look-ahead thread and stops at the gate
    assert reached.wait(30), "the look-ahead never started batch 1"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the digests of batches 1 and 2, never return to pytest
        code = 1
        try:
            os.close(read_end)
            message = " ".join(digest(seq[i]) for i in (1, 2))
            seq.close()
            os.write(write_end, message.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    opened.set()
    here = [digest(seq[i]) for i in (1, 2)]  # the parent's look-ahead finishes batch 1
    status = wait_child(pid, deadline_s=60)
    with os.fdopen(read_end, "rb") as fh:
        there = fh.read().decode().split()
    seq.close()
    assert status is not None, "the forked child hung on its first batch"
    assert status == 0
    expected = [digest(seq.batch(i, epoch=1)) for i in (1, 2)]
    assert there == expected and here == expected
    assert digest(first) == digest(seq.batch(0, epoch=1))
    assert expected[0] != expected[1] != digest(first)


# -- indices counted from the end --------------------------------------------------------------


@pytest.mark.parametrize("lookahead", [True, False])
def test_negative_indices_count_from_the_end_once(labelled_set, lookahead):
    seq = ShardSequence(labelled_set, split="train", batch_size=8, seed=3, lookahead=lookahead)
    assert len(seq) == N_BATCHES
    forward = [digest(seq.batch(i, epoch=0)) for i in range(N_BATCHES)]
    assert len(set(forward)) == N_BATCHES
    for i in range(N_BATCHES):
        negative = i - N_BATCHES  # -5 .. -1
        assert digest(seq[negative]) == forward[i]
        assert digest(seq.batch(negative, epoch=0)) == forward[i]
        assert np.array_equal(seq.batch_example_ids(negative), seq.batch_example_ids(i))
        size = seq.batch_example_ids(i).size
        drawn, plain = seq.batch_params(negative, size, epoch=0), seq.batch_params(i, size, epoch=0)
        for field in ("crop_start", "gain", "freq", "time", "partner", "weight"):
            assert np.array_equal(getattr(drawn, field), getattr(plain, field))
    assert digest(seq[-1]) == forward[4] and digest(seq[-N_BATCHES]) == forward[0]
    for index in (-N_BATCHES - 1, -2 * N_BATCHES, N_BATCHES, N_BATCHES + 1):
        with pytest.raises(IndexError, match=rf"batch {index} out of range for 5 batches"):
            seq[index]
        with pytest.raises(IndexError, match=rf"batch {index} out of range for 5 batches"):
            seq.batch(index, epoch=0)
        with pytest.raises(IndexError, match=rf"batch {index} out of range for 5 batches"):
            seq.batch_example_ids(index)
        with pytest.raises(IndexError, match=rf"batch {index} out of range for 5 batches"):
            seq.batch_params(index, 8, epoch=0)
    seq.close()


# -- shards changed on disk under an open reader ---------------------------------------------------

# make_feature_set(**LABELLED_SET): 8 shards of 7 examples (the last holds 1); with batches of 7,
# unshuffled, batch i is shard i.
CHANGED = "shard-00002.h5"


def another_build(root: Path, out: Path, size: str) -> Path:
    """``CHANGED`` as another build wrote it, in ``out``: the same examples in reverse order (a
    file of the same size), that plus an attribute of 4 kB ("larger"), or the 1-example last
    shard ("smaller")."""
    out.mkdir()
    other = out / CHANGED
    if size == "smaller":
        shutil.copyfile(root / "shard-00007.h5", other)
        return other
    shutil.copyfile(root / CHANGED, other)
    with h5py.File(other, "r+") as h5:
        h5["mel"][:] = np.ascontiguousarray(h5["mel"][:][::-1])
        if size == "larger":
            h5.attrs["padding"] = np.zeros(4096, np.uint8)
    grown = other.stat().st_size - (root / CHANGED).stat().st_size
    assert (grown == 0) == (size == "same size") and grown >= 0
    return other


def opened_before_the_copy(tmp_path: Path, size: str, **options) -> tuple[ShardBatches, Path, list[str]]:
    """A set, batches of it opened (and every batch read once, so maps and handles are open),
    and the other build's ``CHANGED``; the batches' digests."""
    root = make_feature_set(tmp_path / "set", **LABELLED_SET)
    other = another_build(root, tmp_path / "other", size)
    # Written long ago: the copy below gets another modification time even where the clock
    # of the file system is coarse.
    st = (root / CHANGED).stat()
    os.utime(root / CHANGED, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))
    batches = ShardBatches(root, split="all", batch_size=7, shuffle=False, augment=False, **options)
    assert [decode_example(x) for x in batches.batch(2)[0]] == list(range(14, 21))
    return batches, other, [digest(batches.batch(i)) for i in range(len(batches))]


def overwrite_in_place(other: Path, shard: Path) -> None:
    """``cp other shard``: the same file (inode), new bytes."""
    inode = shard.stat().st_ino
    shutil.copyfile(other, shard)
    assert shard.stat().st_ino == inode


def in_child(work: Callable[[], str]) -> str:
    """What ``work()`` returns (or raises, as ``Name: message``), computed in a forked child:
    reading a file cut short through its memory map kills a process (SIGBUS), here the child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            try:
                text = work()
            except Exception as err:  # noqa: BLE001 -- reported to the parent
                text = f"{type(err).__name__}: {err}"
            os.write(write_end, text.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    status = wait_child(pid, deadline_s=120)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode()
    return text if status == 0 else f"the child died: exit status {status}"


def replaced(batches: ShardBatches) -> str:
    path = batches.features.shards[2].path
    return f"IntegrityError: {path}: shard was replaced since the feature set was opened; open it again"


@pytest.mark.parametrize("path", ["memory map", "h5py"])
@pytest.mark.parametrize("size", ["same size", "larger", "smaller"])
def test_a_shard_overwritten_in_place_under_open_batches_is_an_error_not_its_data(tmp_path, path, size):
    batches, other, before = opened_before_the_copy(tmp_path, size)
    batches.reader.direct = path == "memory map"
    overwrite_in_place(other, batches.features.shards[2].path)

    def read_on() -> str:
        untouched = [digest(batches.batch(i)) == before[i] for i in (1, 3)]
        try:
            batches.batch(2)
        finally:
            batches.close()
        return f"untouched shards read as before: {untouched}"

    assert in_child(read_on) == replaced(batches)
    assert in_child(lambda: str([digest(batches.batch(i)) == before[i] for i in (1, 3)])) == "[True, True]"


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_workers_refuse_a_shard_overwritten_in_place_too(tmp_path, mode):
    batches, other, _ = opened_before_the_copy(tmp_path, "same size", **MODES[mode])
    overwrite_in_place(other, batches.features.shards[2].path)

    def read_on() -> str:
        try:
            batches.batch(2)
        finally:
            batches.close()
        return "read"

    assert in_child(read_on) == replaced(batches)
    batches.close()


def test_a_shard_rewritten_while_it_is_read_is_an_error(tmp_path, monkeypatch):
    # The check before a mapped read passes; the rewrite lands between it and the copy of the
    # rows (here, just before it): the check after the read refuses what was read.
    batches, other, _ = opened_before_the_copy(tmp_path, "same size")
    read_shard = MelReader._shard_fill

    def rewritten_first(self, s, *args, **kwargs):
        if s == 2:
            overwrite_in_place(other, batches.features.shards[2].path)
        return read_shard(self, s, *args, **kwargs)

    monkeypatch.setattr(MelReader, "_shard_fill", rewritten_first)
    assert in_child(lambda: str(batches.batch(2)[0].shape)) == replaced(batches)
