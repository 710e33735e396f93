"""Reader: metadata, the memory-mapped fast path, the h5py fallback, checksums, errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle

import h5py
import numpy as np
import pytest

from loader import read_kernels
from loader.feature_set import FeatureSet
from loader.reader import MelReader
from melshards.config import crop_span
from melshards.errors import FormatError, IntegrityError
from melshards.labels import label_rows, overlap_mask
from melshards.names import INDEX_FILE
from reference import hdf5_fletcher32
from synthetic_features import LABELLED_SET, decode_example, decode_frames, expected_mel, make_feature_set


def h5py_crops(features: FeatureSet, ids, starts, crop) -> np.ndarray:
    """Reference: plain h5py reads, one row at a time."""
    rows = []
    for i, a in zip(ids, starts, strict=True):
        layout = features.shards[features.shard_of[i]]
        with h5py.File(layout.path, "r") as h5:
            rows.append(h5["mel"][features.row_of[i], :, a : a + crop])
    return np.stack(rows)[..., None]


# -- Fletcher-32 -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_words", [1, 255, 256, 257, 360, 361, 1000, 4099])
@pytest.mark.parametrize("pattern", ["random", "zeros", "ones", "high"])
def test_fletcher32_matches_the_hdf5_algorithm(n_words, pattern):
    rng = np.random.default_rng(n_words)
    words = {
        "random": rng.integers(0, 65536, n_words),
        "zeros": np.zeros(n_words),
        "ones": np.full(n_words, 0xFFFF),  # every word is 0 mod 65535, sums are not 0
        "high": rng.integers(65000, 65536, n_words),
    }[pattern].astype(np.uint16)
    data = words.astype(">u2").tobytes()  # the bytes as they would sit in the file
    want = hdf5_fletcher32(data)
    assert read_kernels.fletcher32(np.frombuffer(data, dtype=np.uint16), 0, n_words) == want


def test_fletcher32_matches_checksums_hdf5_wrote(tmp_path):
    path = tmp_path / "chunks.h5"
    rows = np.random.default_rng(0).integers(0, 65536, (5, 8, 37)).astype(np.uint16)
    rows[1] = 0
    rows[2] = 0xFFFF  # a NaN bit pattern: h5py stores the bits as they are
    rows[3] = 0x3C00  # 1.0
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("mel", data=rows.view(np.float16), chunks=(1, 8, 37), fletcher32=True)
        infos = [ds.id.get_chunk_info(i) for i in range(5)]
    raw = np.fromfile(path, dtype=np.uint8)
    words = raw[: raw.size // 2 * 2].view(np.uint16)
    for info in infos:
        assert info.byte_offset % 2 == 0 and info.size == 8 * 37 * 2 + 4
        stored = int.from_bytes(
            raw[info.byte_offset + 8 * 37 * 2 : info.byte_offset + info.size].tobytes(), "little"
        )
        assert read_kernels.fletcher32(words, info.byte_offset // 2, 8 * 37) == stored
    offsets = np.array([i.byte_offset // 2 for i in infos], dtype=np.int64)
    assert read_kernels.first_bad_chunk(words, offsets, 8 * 37) == -1


def test_half_conversion_agrees_with_numpy():
    assert read_kernels.half_conversion_ok()


# -- metadata --------------------------------------------------------------------------------


def test_metadata_matches_the_shards(labelled_features):
    # LABELLED_SET: 10 recordings x 5 examples, 7 per shard
    assert labelled_features.n_examples == 50 and len(labelled_features.shards) == 8
    assert all(layout.byte_offsets is not None for layout in labelled_features.shards)
    for s, layout in enumerate(labelled_features.shards):
        with h5py.File(layout.path, "r") as h5:
            ids = np.flatnonzero(labelled_features.shard_of == s)
            assert np.array_equal(labelled_features.row_of[ids], np.arange(layout.n))
            assert list(labelled_features.recording_id[ids]) == list(h5["recording_id"].asstr()[()])
            assert np.array_equal(labelled_features.start[ids], h5["start"][()])
            assert np.array_equal(labelled_features.labels[ids], h5["labels"][()])
            example = h5["events/example"][()]
            for row, i in enumerate(ids):
                lo, hi = labelled_features.event_ptr[i], labelled_features.event_ptr[i + 1]
                assert np.array_equal(
                    labelled_features.event_t_min[lo:hi], h5["events/t_min"][()][example == row]
                )
                assert np.array_equal(
                    labelled_features.event_species[lo:hi], h5["events/species_id"][()][example == row]
                )
            for i, info in zip(ids, [h5["mel"].id.get_chunk_info(r) for r in range(layout.n)], strict=True):
                assert layout.byte_offsets[labelled_features.row_of[i]] == info.byte_offset


def test_centre_crop_labels_equal_the_stored_labels(labelled_features):
    ids = np.arange(labelled_features.n_examples)
    center = (labelled_features.config.n_frames - labelled_features.config.crop_frames) // 2
    y, known = labelled_features.crop_labels(
        ids, np.full(ids.size, center), labelled_features.config.crop_frames
    )
    assert np.array_equal(y, (labelled_features.labels == 1).astype(np.float32))
    assert np.array_equal(known, (labelled_features.labels != -1).astype(np.float32))


def test_crop_labels_follow_the_crop_and_min_overlap(labelled_features):
    config = labelled_features.config  # 100 frames/s, 151 stored, crop 101, min_overlap 0.2 s
    i = 3
    start = labelled_features.start[i]
    lo, hi = labelled_features.event_ptr[i], labelled_features.event_ptr[i + 1]
    features_events = (labelled_features.event_species[lo:hi], labelled_features.event_kind[lo:hi])
    crop = 101
    for a in (0, 17, 50):
        t0, t1 = start + a * 0.01, start + a * 0.01 + 1.0  # by hand: frame k at start + k/100
        assert np.allclose(crop_span(config, start, a, crop), (t0, t1))
        present = overlap_mask(
            labelled_features.event_t_min[lo:hi],
            labelled_features.event_t_max[lo:hi],
            t0,
            t1,
            min_overlap=0.2,
        )
        want = label_rows(*features_events, present, n_classes=4)
        y, known = labelled_features.crop_labels(np.array([i]), np.array([a]), crop)
        assert np.array_equal(y[0], want == 1) and np.array_equal(known[0], want != -1)


def test_crop_labels_by_hand(tmp_path):
    # One event [2.0, 2.5] s; window stored from 1.0 s, 100 frames/s, crops of 101 frames.
    from melshards.names import EVENT_TP

    fs = FeatureSet(make_feature_set(tmp_path / "one", n_recordings=1, per_recording=1))
    fs.start[:] = 1.0
    fs.event_ptr = np.array([0, 2])
    fs.event_species = np.array([2, 1])
    fs.event_kind = np.array([EVENT_TP, 0], dtype=np.int8)  # species 1 is a confirmed FP
    fs.event_t_min = np.array([2.0, 1.0])
    fs.event_t_max = np.array([2.5, 1.1])
    # crop at frame 0: [1.0, 2.0] -> TP overlaps 0 s (no); FP fully inside -> known negative
    # crop at frame 20: [1.2, 2.2] -> TP overlaps 0.2 s = min_overlap (yes); FP outside
    # crop at frame 19: [1.19, 2.19] -> TP overlaps 0.19 s (no)
    # crop at frame 50: [1.5, 2.5] -> TP fully inside (yes)
    y, known = fs.crop_labels(np.zeros(4, dtype=np.int64), np.array([0, 20, 19, 50]), 101)
    assert y.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert known.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0]]


# -- reading ---------------------------------------------------------------------------------


def shuffled_batch(features, seed, size=16, crop=101):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(features.n_examples)[:size]
    starts = rng.integers(0, features.config.n_frames - crop + 1, size)
    return ids, starts


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fast_path_equals_plain_h5py(labelled_features, dtype):
    reader = MelReader(labelled_features)
    for seed in range(3):
        ids, starts = shuffled_batch(labelled_features, seed)
        assert len(np.unique(labelled_features.shard_of[ids])) > 2
        out = np.empty((ids.size, 16, 101, 1), dtype=dtype)
        reader.read(ids, starts, out)
        want = h5py_crops(labelled_features, ids, starts, 101)
        assert np.array_equal(out, want.astype(dtype))
        for j, i in enumerate(ids):
            assert decode_example(out[j]) == i
            assert np.array_equal(decode_frames(out[j]), np.arange(starts[j], starts[j] + 101))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gain_and_clip_equal_numpy(labelled_features, dtype):
    ids, starts = shuffled_batch(labelled_features, 7)
    gain = np.random.default_rng(1).uniform(0.8, 1.2, ids.size).astype(np.float32)
    out = np.empty((ids.size, 16, 101, 1), dtype=dtype)
    MelReader(labelled_features).read(ids, starts, out, gain=gain, clip=(0.0, 1.0))
    want = np.clip(
        h5py_crops(labelled_features, ids, starts, 101).astype(np.float32) * gain[:, None, None, None], 0, 1
    )
    assert np.array_equal(out, want.astype(dtype))
    assert out.max() == 1.0


def test_in_memory_equals_streaming(labelled_features):
    ids, starts = shuffled_batch(labelled_features, 3, size=20)
    cached = MelReader(labelled_features, cache_ids=np.arange(5, labelled_features.n_examples))
    ids = ids[ids >= 5]
    starts = starts[: ids.size]
    a = np.empty((ids.size, 16, 101, 1), np.float32)
    b = np.empty_like(a)
    cached.read(ids, starts, a)
    MelReader(labelled_features).read(ids, starts, b)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="cache"):
        cached.read(np.array([0]), np.array([0]), a[:1])


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_shards_fall_back_to_h5py(tmp_path, labelled_features, compression):
    packed = FeatureSet(make_feature_set(tmp_path / compression, **LABELLED_SET, compression=compression))
    assert all(layout.byte_offsets is None for layout in packed.shards)
    ids, starts = shuffled_batch(labelled_features, 5)
    ids = np.concatenate([ids, [10, 11, 12]])  # a sorted run read in one call
    starts = np.concatenate([starts, [0, 1, 2]])
    a = np.empty((ids.size, 16, 101, 1), np.float32)
    b = np.empty_like(a)
    MelReader(packed).read(ids, starts, a)
    MelReader(labelled_features).read(ids, starts, b)
    assert np.array_equal(a, b)
    c = np.empty_like(a)
    MelReader(packed, cache_ids=np.arange(packed.n_examples)).read(ids, starts, c)
    assert np.array_equal(c, b)
    MelReader(labelled_features, direct=False).read(ids, starts, c)
    assert np.array_equal(c, b)


def test_float32_storage(tmp_path, labelled_features):
    wide = FeatureSet(make_feature_set(tmp_path / "f32", **LABELLED_SET, dtype="float32"))
    assert all(layout.byte_offsets is not None for layout in wide.shards)
    ids, starts = shuffled_batch(labelled_features, 2)
    for dtype in (np.float32, np.float16):
        a = np.empty((ids.size, 16, 101, 1), dtype)
        b = np.empty_like(a)
        MelReader(wide).read(ids, starts, a)
        MelReader(labelled_features).read(ids, starts, b)
        assert np.array_equal(a, b)


def test_portable_path_equals_compiled_casts(labelled_features, monkeypatch):
    ids, starts = shuffled_batch(labelled_features, 11)
    gain = np.linspace(0.8, 1.2, ids.size, dtype=np.float32)
    results = {}
    for native in (True, False):
        monkeypatch.setattr(read_kernels, "_HALF_OK", native)
        for dtype in (np.float32, np.float16):
            out = np.empty((ids.size, 16, 101, 1), dtype)
            MelReader(labelled_features).read(ids, starts, out, gain=gain, clip=(0.0, 1.0))
            results[native, dtype] = out
    for dtype in (np.float32, np.float16):
        assert np.array_equal(results[True, dtype], results[False, dtype])


def _read_in_child(reader, ids, starts, queue):
    out = np.empty((ids.size, 16, 101, 1), np.float32)
    reader.read(ids, starts, out)
    queue.put((os.getpid(), out))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_after_fork_and_pickle(labelled_features, method):
    reader = MelReader(labelled_features)
    ids, starts = shuffled_batch(labelled_features, 4)
    here = np.empty((ids.size, 16, 101, 1), np.float32)
    reader.read(ids, starts, here)  # opens maps in the parent first
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, ids, starts, queue))
    child.start()
    pid, there = queue.get(timeout=120)
    child.join(timeout=60)
    assert pid != os.getpid() and child.exitcode == 0
    assert np.array_equal(here, there)


def test_pickle_drops_handles(labelled_features):
    reader = MelReader(labelled_features)
    ids, starts = shuffled_batch(labelled_features, 6)
    a = np.empty((ids.size, 16, 101, 1), np.float32)
    reader.read(ids, starts, a)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._maps == {} and clone._handles == {}
    b = np.empty_like(a)
    clone.read(ids, starts, b)
    assert np.array_equal(a, b)


# -- integrity and refusals ------------------------------------------------------------------


def flip_byte(path, position):
    """Flip one bit as the disk would: in place, the modification time kept (a write through the
    file system would change it, and the reader would refuse the shard as replaced)."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(position)
        byte = fh.read(1)
        fh.seek(position)
        fh.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_flipped_byte_raises_integrity_error(tmp_path):
    root = make_feature_set(tmp_path / "bad", n_recordings=4, per_recording=5, shard_size=7)
    features = FeatureSet(root)
    layout = features.shards[1]
    row = 3
    flip_byte(layout.path, int(layout.byte_offsets[row]) + 1001)
    reader = MelReader(features)
    out = np.empty((2, 16, 101, 1), np.float32)
    reader.read(np.array([0, 7]), np.array([0, 0]), out)  # untouched chunks still read
    ids = np.array([2, layout.first + row])
    with pytest.raises(IntegrityError, match=r"shard-00001\.h5: example 3 .*fletcher32"):
        reader.read(ids, np.array([0, 0]), out)
    with pytest.raises(IntegrityError, match="shard-00001"):
        MelReader(features, cache_ids=np.arange(features.n_examples)).read(ids, np.array([0, 0]), out)
    # the h5py path refuses the same corruption (HDF5 checks the checksum itself)
    with pytest.raises(FormatError, match="shard-00001"):
        MelReader(features, direct=False).read(ids, np.array([0, 0]), out)


def edit_index(root, change):
    path = root / INDEX_FILE
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def test_refuses_a_shard_whose_count_disagrees(tmp_path):
    root = make_feature_set(tmp_path / "n", n_recordings=2, per_recording=4, shard_size=4)

    def change(index):
        index["shards"][1]["n"] = 3
        index["n_examples"] = 7

    edit_index(root, change)
    with pytest.raises(FormatError, match=r"shard-00001\.h5.*shape"):
        FeatureSet(root)


def test_refuses_a_missing_shard(tmp_path):
    root = make_feature_set(tmp_path / "gone", n_recordings=2, per_recording=4, shard_size=4)
    (root / "shard-00001.h5").unlink()
    with pytest.raises(FormatError, match=r"shard-00001\.h5: shard listed in the index is missing"):
        FeatureSet(root)


def test_refuses_a_shard_replaced_after_open(tmp_path):
    root = make_feature_set(tmp_path / "swap", n_recordings=2, per_recording=4, shard_size=4)
    features = FeatureSet(root)
    other = make_feature_set(tmp_path / "other", n_recordings=2, per_recording=4, shard_size=4, n_mels=8)
    os.replace(other / "shard-00000.h5", root / "shard-00000.h5")
    out = np.empty((1, 16, 101, 1), np.float32)
    with pytest.raises(FormatError, match="shard-00000"):
        MelReader(features).read(np.array([0]), np.array([0]), out)


def test_refuses_missing_index_and_unknown_version(tmp_path):
    with pytest.raises(FormatError, match="no index"):
        FeatureSet(tmp_path)
    root = make_feature_set(tmp_path / "v", n_recordings=1, per_recording=2)
    edit_index(root, lambda index: index["format"].update(version=99))
    with pytest.raises(FormatError, match="version 99 is unknown"):
        FeatureSet(root)


def test_expected_mel_helper_is_exact():
    mel = expected_mel(77, n_mels=4, n_frames=300)
    assert decode_example(mel) == 77
    assert np.array_equal(decode_frames(mel), np.arange(300))
    assert (mel[0, 1:] < np.float16(6.2e-5)).all()  # subnormal float16 values are exercised
