"""Batches filled side by side (``loader.decode_pool``): compressed chunks decoded, mapped ones
gathered; and the compiled bitshuffle-lz4 decoder (``loader.bitshuffle_kernels``).

The pool must give the bytes the serial path gives, for every codec and output dtype, raise
what the serial order meets first, stop its threads with its reader or loader, and start its
own in a forked child.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import struct
import threading
import time

import numpy as np
import pytest

from loader import bitshuffle_kernels, decode_pool, open_feature_set
from loader.batches import ShardBatches
from loader.decode_pool import IDLE_EXIT_S, THREAD_NAME, DecodePool, default_threads
from loader.reader import MelReader
from melshards import codec
from melshards.errors import ConfigError, IntegrityError
from reference import hdf5_fletcher32
from synthetic_features import LABELLED_SET, make_feature_set

pytest.importorskip("hdf5plugin")  # the plugin filters write these sets

# (dtype, quant_bits, compression) of the compressed codecs
COMPRESSED = [
    ("uint8", 8, "zstd"),
    ("uint8", 8, "bitshuffle-lz4"),
    ("uint8", 6, "zstd"),
    ("uint8", 3, "bitshuffle-lz4"),
    ("float16", 8, "zstd"),
    ("float16", 8, "bitshuffle-lz4"),
]


# (dtype, quant_bits) of uncompressed sets, read from their memory maps
UNCOMPRESSED = [("float16", 8), ("float32", 8), ("uint8", 8), ("uint8", 5)]


def decode_threads_alive() -> int:
    return sum(t.name.startswith(THREAD_NAME) for t in threading.enumerate())


@pytest.fixture
def no_decode_threads():
    """No pool thread left by earlier tests: their readers collected, idle threads gone."""
    gc.collect()
    deadline = time.monotonic() + IDLE_EXIT_S + 5
    while decode_threads_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert decode_threads_alive() == 0


@pytest.fixture(scope="module", params=COMPRESSED, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def compressed_set(request, tmp_path_factory):
    dtype, bits, compression = request.param
    root = make_feature_set(
        tmp_path_factory.mktemp("set"), dtype=dtype, quant_bits=bits, compression=compression, **LABELLED_SET
    )
    return open_feature_set(root)


def read(features, ids, starts, crop, out_dtype, **kwargs) -> bytes:
    config = features.config
    out = np.empty((ids.size, config.n_mels, crop, 1), dtype=out_dtype)
    gain = np.linspace(0.5, 1.5, ids.size, dtype=np.float32)
    reader = MelReader(features, **kwargs)
    try:
        reader.read(ids, starts, out, gain=gain, clip=(0.05, 0.9))
    finally:
        reader.close()
    return out.tobytes()


# -- the same bytes --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=UNCOMPRESSED, ids=lambda c: f"{c[0]}-{c[1]}")
def mapped_set(request, tmp_path_factory):
    dtype, bits = request.param
    root = make_feature_set(tmp_path_factory.mktemp("set"), dtype=dtype, quant_bits=bits, **LABELLED_SET)
    return open_feature_set(root)


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_mapped_chunks_filled_side_by_side_give_the_serial_and_h5py_bytes(mapped_set, out_dtype):
    """Uncompressed chunks are gathered on the pool too, in interleaved parts of each shard's
    examples (``loader.targets.fill_side_by_side``): the same bytes as one thread, as h5py's
    reads and as the in-RAM cache, whatever the number of threads."""
    config = mapped_set.config
    rng = np.random.default_rng(11)
    ids = rng.permutation(mapped_set.n_examples)
    crop = config.n_frames - 4
    starts = rng.integers(0, 5, ids.size)
    serial = read(mapped_set, ids, starts, crop, out_dtype, decode_threads=1)
    assert read(mapped_set, ids, starts, crop, out_dtype, direct=False) == serial
    for threads in (2, 3, 8):
        assert read(mapped_set, ids, starts, crop, out_dtype, decode_threads=threads) == serial
        cached = read(
            mapped_set, ids, starts, crop, out_dtype, decode_threads=threads, cache_ids=np.arange(ids.size)
        )
        assert cached == serial
    # and one example, one thread's worth, goes through the same path
    one = read(mapped_set, ids[:1], starts[:1], crop, out_dtype, decode_threads=2)
    assert one == np.frombuffer(serial, dtype=out_dtype)[: len(one) // np.dtype(out_dtype).itemsize].tobytes()


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_the_pool_gives_the_serial_bytes(compressed_set, out_dtype):
    config = compressed_set.config
    rng = np.random.default_rng(7)
    ids = rng.permutation(compressed_set.n_examples)  # every example, shuffled, across shards
    crop = config.n_frames - 5
    starts = rng.integers(0, 6, ids.size)
    serial = read(compressed_set, ids, starts, crop, out_dtype, decode_threads=1)
    for threads in (2, 3, 8):
        assert read(compressed_set, ids, starts, crop, out_dtype, decode_threads=threads) == serial
    # the in-RAM cache is loaded through the pool too
    cached = read(
        compressed_set, ids, starts, crop, out_dtype, cache_ids=np.arange(compressed_set.n_examples)
    )
    assert cached == serial


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("threads", [1, 3])
def test_chunks_decoded_and_gathered_in_one_call_give_hdf5s_bytes(
    compressed_set, out_dtype, threads, monkeypatch
):
    """uint8 + bitshuffle-lz4 chunks go through ``decode_fill`` (decoding only the bit planes a
    crop needs); the bytes are those of the chunk-by-chunk path and of HDF5's own filter."""
    from loader import compressed, reader

    config = compressed_set.config
    rng = np.random.default_rng(3)
    ids = rng.permutation(compressed_set.n_examples)
    for crop in (config.n_frames - 5, config.n_frames // 2 - 3, 1):
        starts = rng.integers(0, config.n_frames - crop + 1, ids.size)
        got = read(compressed_set, ids, starts, crop, out_dtype, decode_threads=threads)
        assert got == read(compressed_set, ids, starts, crop, out_dtype, direct=False)
        calls = []

        def chunk_by_chunk(*args, fused, calls=calls, **kwargs):
            calls.append(fused)
            return compressed.fill_compressed(*args, fused=False, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(reader, "fill_compressed", chunk_by_chunk)
            assert read(compressed_set, ids, starts, crop, out_dtype, decode_threads=threads) == got
        fused = config.compression == "bitshuffle-lz4" and config.dtype == "uint8"
        assert calls and set(calls) == {fused}


def test_the_compiled_bitshuffle_decoder_matches_the_package_on_stored_chunks(tmp_path):
    root = make_feature_set(tmp_path / "set", dtype="uint8", compression="bitshuffle-lz4", **LABELLED_SET)
    features = open_feature_set(root)
    compiled = bitshuffle_kernels.chunk_decoder(features.config)
    package = codec.chunk_decoder(features.config)
    assert compiled is not package and compiled.__name__ == package.__name__ == "decode_bitshuffle"
    checked = 0
    for layout in features.shards:
        raw = np.fromfile(layout.path, dtype=np.uint8)
        for offset, size in zip(layout.byte_offsets.tolist(), layout.chunk_sizes.tolist(), strict=True):
            chunk = raw[offset : offset + size - 4]
            np.testing.assert_array_equal(compiled(chunk, "x"), package(chunk, "x"))
            checked += 1
    assert checked == features.n_examples


def bitshuffle_chunk(values: np.ndarray, block: int) -> np.ndarray:
    """``values`` (uint8) as the HDF5 bitshuffle-lz4 filter stores them: header, then blocks."""
    bitshuffle = pytest.importorskip("bitshuffle")
    header = struct.pack(">QI", values.size, block)
    body = np.asarray(bitshuffle.compress_lz4(values, block), dtype=np.uint8)
    return np.concatenate([np.frombuffer(header, dtype=np.uint8), body])


@pytest.mark.parametrize("block", [8, 64, 8192])
@pytest.mark.parametrize("frames", [1, 3, 65, 1003])  # 128 mels: partial blocks, 8k+ values
@pytest.mark.parametrize("pattern", ["random", "codes", "zeros", "period"])
def test_the_compiled_bitshuffle_decoder_restores_every_pattern(block, frames, pattern):
    rng = np.random.default_rng(frames)
    n = 128 * frames
    if pattern == "random":
        values = rng.integers(0, 256, n)
    elif pattern == "codes":  # 6-bit codes of a smooth signal: long matches, two zero planes
        values = np.round(31.5 + 31.5 * np.sin(np.arange(n) / 50.0)) + rng.integers(0, 2, n)
    elif pattern == "zeros":
        values = np.zeros(n)
    else:  # repeats every 2..7 values: matches that overlap their own output
        values = np.tile(rng.integers(0, 256, int(rng.integers(2, 8))), n)[:n]
    values = values.astype(np.uint8)
    decoded = bitshuffle_kernels.byte_decoder(n)(bitshuffle_chunk(values, block), "x")
    np.testing.assert_array_equal(decoded, values)


def test_a_damaged_bitshuffle_chunk_is_an_integrity_error_never_a_crash():
    rng = np.random.default_rng(0)
    n = 128 * 200
    values = (np.round(31.5 + 31.5 * np.sin(np.arange(n) / 40.0)) + rng.integers(0, 3, n)).astype(np.uint8)
    chunk = bitshuffle_chunk(values, 8192)
    decode = bitshuffle_kernels.byte_decoder(n)
    with pytest.raises(
        IntegrityError, match=r"^where: bitshuffle-lz4 chunk does not decode \(block 3 is corrupt\)$"
    ):
        decode(chunk[:-300], "where")  # cut short: the last (fourth) block is missing bytes
    with pytest.raises(IntegrityError, match=r"^where: bitshuffle chunk holds 25601 bytes, expected 25600$"):
        decode(
            np.concatenate([np.frombuffer(struct.pack(">QI", n + 1, 8192), np.uint8), chunk[12:]]), "where"
        )
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(400):  # random damage anywhere after the header: an error or some values
        damaged = chunk.copy()
        where = rng.integers(12, damaged.size, int(rng.integers(1, 4)))
        damaged[where] = rng.integers(0, 256, where.size)
        try:
            decode(damaged, "x")
            outcomes["decoded"] += 1
        except IntegrityError as err:
            assert "bitshuffle-lz4 chunk does not decode" in str(err)
            outcomes["error"] += 1
    assert outcomes["error"] > 100


# -- errors in the serial order ----------------------------------------------------------------


def rewrite_chunk(layout, row: int, change) -> None:
    """Change chunk ``row``'s bytes in place and store a matching Fletcher-32 after them."""
    offset, size = int(layout.byte_offsets[row]), int(layout.chunk_sizes[row])
    with open(layout.path, "r+b") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(size - 4))
        change(data)
        fh.seek(offset)
        fh.write(bytes(data) + int(hdf5_fletcher32(bytes(data))).to_bytes(4, "little"))


def cut_short(data: bytearray) -> None:
    """The second half of a compressed stream zeroed: lengths and offsets that do not add up."""
    half = len(data) // 2
    data[half:] = bytes(len(data) - half)


def flip_byte(layout, row: int) -> None:
    position = int(layout.byte_offsets[row] + layout.chunk_sizes[row] // 2)
    with open(layout.path, "r+b") as fh:
        fh.seek(position)
        byte = fh.read(1)
        fh.seek(position)
        fh.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_mapped_chunks_are_checked_side_by_side_and_the_first_bad_one_named(tmp_path, dtype):
    root = make_feature_set(tmp_path / "set", dtype=dtype, **LABELLED_SET)
    layouts = open_feature_set(root).shards
    flip_byte(layouts[2], 1)
    flip_byte(layouts[1], 6)  # the first bad chunk in shard and row order
    flip_byte(layouts[1], 3)
    features = open_feature_set(root)
    config = features.config
    ids = np.random.default_rng(2).permutation(features.n_examples)
    out = np.empty((ids.size, config.n_mels, config.n_frames, 1), dtype=np.float32)
    first = layouts[1].first + 3
    for threads in (1, 3):
        reader = MelReader(features, decode_threads=threads)
        with pytest.raises(IntegrityError) as caught:
            reader.read(ids, np.zeros(ids.size, dtype=np.int64), out)
        assert str(caught.value) == (
            f"{layouts[1].path}: example 3 (global id {first}, recording "
            f"{features.recording_id[first]}) fails its fletcher32 checksum; the shard is corrupt"
        )
        # the good chunks were verified and stay readable; the bad ones fail each time
        good = ids[~np.isin(ids, [first, layouts[1].first + 6, layouts[2].first + 1])]
        zeros = np.zeros(good.size, dtype=np.int64)
        reader.read(good, zeros, out[: good.size])
        through_h5py = np.empty_like(out[: good.size])
        MelReader(features, direct=False).read(good, zeros, through_h5py)
        assert np.array_equal(out[: good.size], through_h5py)
        with pytest.raises(IntegrityError, match="example 1 "):
            reader.read(np.array([layouts[2].first + 1]), np.zeros(1, dtype=np.int64), out[:1])
        reader.close()


@pytest.mark.parametrize("compression", ["zstd", "bitshuffle-lz4"])
def test_a_corrupt_chunk_raises_the_serial_error_from_the_pool(tmp_path, compression):
    root = make_feature_set(tmp_path / "set", dtype="uint8", compression=compression, **LABELLED_SET)
    layout = open_feature_set(root).shards[1]
    flip_byte(layout, 5)  # fails its checksum
    flip_byte(layout, 2)  # so does this one, first in the serial order
    # a chunk whose checksum holds but whose compressed stream is cut short
    rewrite_chunk(layout, 4, cut_short)
    features = open_feature_set(root)
    config = features.config
    out = np.empty((features.n_examples, config.n_mels, config.n_frames, 1), dtype=np.float32)
    starts = np.zeros(features.n_examples, dtype=np.int64)
    everything = np.random.default_rng(1).permutation(features.n_examples)
    damaged = everything[everything != layout.first + 2]
    messages = {}
    for threads in (1, 3):
        for name, ids in (("checksum", everything), ("stream", damaged[damaged != layout.first + 5])):
            with pytest.raises(IntegrityError) as caught:
                MelReader(features, decode_threads=threads).read(ids, starts[: ids.size], out[: ids.size])
            messages.setdefault(name, set()).add(str(caught.value))
    assert messages["checksum"] == {
        f"{layout.path}: example 2 (global id {layout.first + 2}, recording "
        f"{features.recording_id[layout.first + 2]}) fails its fletcher32 checksum; the shard is corrupt"
    }
    (stream,) = messages["stream"]  # one message, serial and pool alike
    assert stream.startswith(f"{layout.path}: example 4: ")
    assert "chunk does not decode" in stream


def test_the_pool_raises_the_lowest_failing_position_and_runs_all_before_it():
    ran = []

    def job(k: int) -> None:
        time.sleep(0.001 * (k % 3))
        if k in (11, 5, 17):
            raise ValueError(f"position {k}")
        ran.append(k)

    pool = DecodePool(3)
    try:
        with pytest.raises(ValueError, match=r"^position 5$"):
            pool.run(job, 40)
        assert set(range(5)) <= set(ran)
        ran.clear()
        pool.run(lambda k: ran.append(k), 40)
        assert sorted(ran) == list(range(40))
    finally:
        pool.close()
    serial = []
    inline = DecodePool(1)
    inline.run(serial.append, 5)  # one thread: in order, in the calling thread
    assert serial == [0, 1, 2, 3, 4] and inline.live_threads() == 0


def test_decode_threads_is_checked(compressed_set):
    with pytest.raises(ConfigError, match=r"^decode_threads must be an integer >= 1, got 0$"):
        MelReader(compressed_set, decode_threads=0)
    assert 1 <= MelReader(compressed_set).decode_threads == default_threads() <= 4


# -- threads: started, limited, stopped ------------------------------------------------------


def test_pool_threads_stop_with_the_reader_and_with_the_loader(tmp_path, no_decode_threads):
    root = make_feature_set(tmp_path / "set", dtype="uint8", compression="zstd", **LABELLED_SET)
    features = open_feature_set(root)
    baseline = threading.active_count()
    reader = MelReader(features, decode_threads=3)  # the calling thread and two of the pool
    config = features.config
    out = np.empty((10, config.n_mels, config.n_frames, 1), dtype=np.float32)
    reader.read(np.arange(10), np.zeros(10, dtype=np.int64), out)
    assert decode_threads_alive() == 2
    reader.close()
    assert decode_threads_alive() == 0 and threading.active_count() == baseline
    reader.read(np.arange(10), np.zeros(10, dtype=np.int64), out)  # they start again
    assert decode_threads_alive() == 2
    del reader
    gc.collect()
    assert decode_threads_alive() == 0 and threading.active_count() == baseline

    loader = ShardBatches(root, split="all", batch_size=8, seed=0, lookahead=False)
    loader.batch(0)
    assert decode_threads_alive() == default_threads() - 1
    loader.close()  # stops them at once, not only when collected or idle
    assert decode_threads_alive() == 0 and threading.active_count() == baseline
    loader.batch(1)  # and they start again with the next batch
    assert decode_threads_alive() == default_threads() - 1
    del loader
    gc.collect()
    assert decode_threads_alive() == 0 and threading.active_count() == baseline


def test_idle_pool_threads_exit_by_themselves():
    pool = DecodePool(3, idle_exit=0.05)  # the calling thread and two of its own
    pool.run(lambda k: None, 4)
    assert pool.live_threads() == 2
    deadline = time.monotonic() + 10
    while pool.live_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.live_threads() == 0
    pool.run(lambda k: None, 4)  # and start again when needed
    assert pool.live_threads() == 2
    pool.close()


def test_pool_threads_run_openmp_with_one_thread_each():
    pytest.importorskip("bitshuffle")  # its decoder (float16, float32) starts OpenMP teams
    from threadpoolctl import threadpool_info

    def openmp_threads(k: int) -> None:
        seen.append({i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"})

    seen: list[dict] = []
    pool = DecodePool(2, limit_openmp=True)
    try:
        pool.run(openmp_threads, 6)
    finally:
        pool.close()
    limited = {lib.filepath for lib in decode_pool._openmp.lib_controllers}  # found at first start
    assert limited and len(seen) == 6
    assert all(counts[path] == 1 for counts in seen for path in limited)
    openmp_threads(0)  # the calling thread keeps its own
    assert any(seen[-1][path] > 1 for path in limited) or os.cpu_count() == 1


def _read_in_child(reader, ids, conn) -> None:
    config = reader.features.config
    out = np.empty((ids.size, config.n_mels, config.n_frames, 1), dtype=np.float32)
    reader.read(ids, np.zeros(ids.size, dtype=np.int64), out)
    conn.send((out.tobytes(), decode_threads_alive()))
    conn.close()


def test_a_forked_child_starts_its_own_threads(tmp_path, no_decode_threads):
    root = make_feature_set(tmp_path / "set", dtype="uint8", compression="zstd", **LABELLED_SET)
    features = open_feature_set(root)
    reader = MelReader(features, decode_threads=3)
    ids = np.arange(features.n_examples)
    config = features.config
    out = np.empty((ids.size, config.n_mels, config.n_frames, 1), dtype=np.float32)
    reader.read(ids, np.zeros(ids.size, dtype=np.int64), out)  # the parent's threads run
    assert decode_threads_alive() == 2
    context = multiprocessing.get_context("fork")
    theirs, ours = context.Pipe(duplex=False)
    child = context.Process(target=_read_in_child, args=(reader, ids, ours))
    child.start()
    ours.close()
    values, alive = theirs.recv()
    child.join(60)
    assert child.exitcode == 0
    assert values == out.tobytes() and alive == 2  # its own two threads (the parent's are not there)
    reader.read(ids, np.zeros(ids.size, dtype=np.int64), out)  # the parent's pool still works
    assert out.tobytes() == values
    reader.close()
