"""The look-ahead across ``os.fork``, and batch indices counted from the end."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from loader import ShardSequence, rows

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
