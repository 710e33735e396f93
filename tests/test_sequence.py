"""ShardSequence: splits, epochs, determinism across processes, content, Keras and tf.data."""

from __future__ import annotations

import multiprocessing
import pickle

import h5py
import keras
import numpy as np
import pytest

from loader import ShardSequence
from loader.augment import Augment
from melshards.errors import ConfigError, FormatError
from synthetic_features import decode_example, decode_frames, make_feature_set

# labelled_set and labelled_features (conftest.py): 50 examples of 16 mels x 151 frames.
N_FRAMES, CROP, CENTER = 151, 101, 25


def ids_of(x: np.ndarray) -> list[int]:
    return [decode_example(row) for row in x]


def stored_crops(features, ids, starts):
    out = []
    for i, a in zip(ids, starts, strict=True):
        with h5py.File(features.shards[features.shard_of[i]].path, "r") as h5:
            out.append(h5["mel"][features.row_of[i], :, a : a + CROP])
    return np.stack(out)[..., None]


# -- splits and epochs -----------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "all"])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_each_example_once_per_epoch(labelled_features, split, drop_remainder):
    seq = ShardSequence(
        labelled_features,
        split=split,
        batch_size=8,
        shuffle=True,
        augment=False,
        drop_remainder=drop_remainder,
    )
    for epoch in (0, 1):
        seq.set_epoch(epoch)
        seen = [i for x, _ in seq for i in ids_of(x)]
        assert len(seen) == len(set(seen))
        if drop_remainder:
            assert len(seen) == seq.n_examples // 8 * 8 == len(seq) * 8
            assert set(seen) <= set(seq.example_ids)
        else:
            assert sorted(seen) == seq.example_ids.tolist()


def test_splits_are_disjoint_by_recording_and_complete(labelled_features):
    val_ids = []
    for fold in range(5):
        train = ShardSequence(labelled_features, split="train", fold=fold)
        val = ShardSequence(labelled_features, split="val", fold=fold)
        assert not set(train.recording_id) & set(val.recording_id)
        assert sorted([*train.example_ids, *val.example_ids]) == list(range(50))
        val_ids.extend(val.example_ids)
    assert sorted(val_ids) == list(range(50))
    all_ = ShardSequence(labelled_features, split="all")
    assert all_.example_ids.tolist() == list(range(50)) and not all_.shuffle


def test_split_seed_is_independent_of_the_shuffle_seed(labelled_features):
    a = ShardSequence(labelled_features, split="val", fold=1, seed=0)
    b = ShardSequence(labelled_features, split="val", fold=1, seed=9)
    c = ShardSequence(labelled_features, split="val", fold=1, split_seed=4)
    assert np.array_equal(a.example_ids, b.example_ids)
    assert not np.array_equal(a.example_ids, c.example_ids)


def test_batches_are_a_function_of_seed_epoch_and_index(labelled_features):
    a = ShardSequence(labelled_features, split="train", batch_size=8, seed=3, augment=Augment(mixup_p=0.5))
    b = ShardSequence(labelled_features, split="train", batch_size=8, seed=3, augment=Augment(mixup_p=0.5))
    x0, y0 = a[1]
    for _ in range(3):
        b.on_epoch_end()
    x3, _ = b[1]
    b.set_epoch(0)
    assert all(np.array_equal(u, v) for u, v in zip(a[1], b[1], strict=True))
    assert np.array_equal(a.batch(1, epoch=3)[0], x3)
    assert not np.array_equal(x0, x3)
    c = ShardSequence(labelled_features, split="train", batch_size=8, seed=4, augment=Augment(mixup_p=0.5))
    assert not np.array_equal(c[1][0], x0)
    assert a.epoch == 0 and b.epoch == 0


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_ranks_split_the_split_into_fixed_disjoint_complete_blocks(labelled_features, world_size):
    def ranks(**kw):
        kw = {"split": "train", "fold": 1, "batch_size": 4, "shuffle": True, "augment": False, **kw}
        return [
            ShardSequence(labelled_features, rank=r, world_size=world_size, **kw) for r in range(world_size)
        ]

    seqs, again, reseeded = ranks(), ranks(), ranks(seed=7)
    split = ShardSequence(labelled_features, split="train", fold=1).example_ids
    blocks = [s.rank_ids for s in seqs]
    assert sorted(np.concatenate(blocks).tolist()) == split.tolist()
    assert sum(b.size for b in blocks) == split.size  # pairwise disjoint
    assert max(b.size for b in blocks) - min(b.size for b in blocks) <= 1
    # contiguous in storage order: a rank reads a run of neighbouring shards
    assert all(blocks[r][-1] < blocks[r + 1][0] for r in range(world_size - 1))
    per_epoch = split.size // world_size
    assert {len(s) for s in seqs} == {-(-per_epoch // 4)}
    for r, s in enumerate(seqs):
        # the same block whatever the construction or the seed
        assert np.array_equal(s.rank_ids, again[r].rank_ids) and np.array_equal(
            s.rank_ids, reseeded[r].rank_ids
        )
        for epoch in (0, 1):
            seen = [i for index in range(len(s)) for i in ids_of(s.batch(index, epoch=epoch)[0])]
            assert len(seen) == len(set(seen)) == per_epoch
            assert set(seen) <= set(s.rank_ids.tolist())
            assert all(
                np.array_equal(u, v)
                for u, v in zip(s.batch(0, epoch=epoch), again[r].batch(0, epoch=epoch), strict=True)
            )


def test_ranks_draw_different_augmentations_and_one_rank_equals_no_ranks(labelled_features):
    kw = {"split": "all", "batch_size": 8, "augment": True}
    a, b = (ShardSequence(labelled_features, rank=r, world_size=2, **kw) for r in (0, 1))
    pa, pb = a.batch_params(0, 8, epoch=0), b.batch_params(0, 8, epoch=0)
    assert not np.array_equal(pa.crop_start, pb.crop_start)
    single, plain = (
        ShardSequence(labelled_features, rank=0, world_size=1, **kw),
        ShardSequence(labelled_features, **kw),
    )
    assert np.array_equal(single.rank_ids, np.arange(50))
    assert all(np.array_equal(u, v) for u, v in zip(single[2], plain[2], strict=True))


def test_bad_ranks_are_refused(labelled_features):
    with pytest.raises(ConfigError, match=r"rank must be in \[0, 3\), got 3"):
        ShardSequence(labelled_features, rank=3, world_size=3)
    with pytest.raises(ConfigError, match="world_size must be an integer >= 1, got 0"):
        ShardSequence(labelled_features, world_size=0)
    with pytest.raises(ConfigError, match=r"cannot split \d+ example\(s\) across world_size 60 workers"):
        ShardSequence(labelled_features, split="val", rank=0, world_size=60)


# -- content ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_unaugmented_batches_are_the_stored_centre_crops(labelled_features, dtype):
    seq = ShardSequence(
        labelled_features,
        split="train",
        batch_size=16,
        shuffle=True,
        augment=False,
        dtype=dtype,
        return_mask=True,
    )
    for index in range(len(seq)):
        x, y, known = seq[index]
        ids = seq.batch_example_ids(index)
        assert x.dtype == dtype and x.shape == (ids.size, 16, CROP, 1)
        assert ids_of(x) == ids.tolist()
        assert np.array_equal(x, stored_crops(labelled_features, ids, [CENTER] * ids.size).astype(dtype))
        labels = labelled_features.labels[ids]
        assert np.array_equal(y, (labels == 1).astype(np.float32))
        assert np.array_equal(known, (labels != -1).astype(np.float32))


def test_shift_crops_the_frames_it_claims_and_labels_follow(labelled_features):
    seq = ShardSequence(
        labelled_features,
        split="train",
        batch_size=16,
        augment=Augment(freq_masks=0, time_masks=0, gain=(1.0, 1.0)),
        return_mask=True,
    )
    starts_seen = set()
    for index in range(len(seq)):
        x, y, known = seq[index]
        ids = seq.batch_example_ids(index)
        starts = seq.batch_params(index, ids.size, epoch=0).crop_start
        starts_seen.update(starts.tolist())
        for j in range(ids.size):
            assert np.array_equal(decode_frames(x[j]), np.arange(starts[j], starts[j] + CROP))
        want_y, want_known = labelled_features.crop_labels(ids, starts, CROP)
        assert np.array_equal(y, want_y) and np.array_equal(known, want_known)
    assert len(starts_seen) > 10
    # shifting really changes some labels against the stored (centred) ones
    seq_all = ShardSequence(
        labelled_features,
        split="all",
        batch_size=50,
        augment=Augment(freq_masks=0, time_masks=0, gain=(1.0, 1.0)),
    )
    ids = seq_all.batch_example_ids(0)
    changed = 0
    for epoch in range(4):
        starts = seq_all.batch_params(0, ids.size, epoch=epoch).crop_start
        _, y = seq_all.batch(0, epoch=epoch)
        assert np.array_equal(y, labelled_features.crop_labels(ids, starts, CROP)[0])
        changed += int((y != (labelled_features.labels[ids] == 1)).any(axis=1).sum())
    assert changed > 0


def test_default_augmentation_equals_its_parts(labelled_features):
    seq = ShardSequence(labelled_features, split="train", batch_size=16, augment=True, return_mask=True)
    x, y, known = seq[2]
    ids = seq.batch_example_ids(2)
    p = seq.batch_params(2, ids.size, epoch=0)
    assert p.gain is not None and p.freq.shape[1] == 2 and p.time.shape[1] == 2
    manual = stored_crops(labelled_features, ids, p.crop_start).astype(np.float32)
    seq.augment.apply(manual, p, fill=labelled_features.bin_mean, clip=(0.0, 1.0))
    assert np.array_equal(x, manual)
    assert np.array_equal(y, labelled_features.crop_labels(ids, p.crop_start, CROP)[0])


def test_float16_output_equals_float32_rounded(labelled_features):
    kw = {"split": "train", "batch_size": 16, "augment": True}
    x32, y32 = ShardSequence(labelled_features, dtype="float32", **kw)[1]
    x16, y16 = ShardSequence(labelled_features, dtype="float16", **kw)[1]
    assert x16.dtype == np.float16
    assert np.array_equal(x16, x32.astype(np.float16)) and np.array_equal(y16, y32)


def test_in_memory_equals_streaming(labelled_features):
    kw = {"split": "train", "batch_size": 16, "augment": Augment(mixup_p=0.3)}
    streaming = ShardSequence(labelled_features, **kw)
    cached = ShardSequence(labelled_features, in_memory=True, **kw)
    for epoch in (0, 1):
        for index in range(len(streaming)):
            a, b = streaming.batch(index, epoch=epoch), cached.batch(index, epoch=epoch)
            assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def test_windows_feature_set_for_inference(tmp_path):
    root = make_feature_set(tmp_path / "win", n_recordings=3, per_recording=5, kind="windows", shard_size=4)
    seq = ShardSequence(root, split="all", batch_size=4, return_mask=True)
    assert not seq.shuffle and not seq.augment.enabled
    assert seq.recording_id.tolist() == [f"rec{r:03d}" for r in range(3) for _ in range(5)]
    assert seq.start.tolist() == [float(k) for _ in range(3) for k in range(5)]
    assert seq.center_offset == CENTER
    seen = []
    for index, (x, y, known) in enumerate(seq):
        assert not y.any() and not known.any()
        assert ids_of(x) == seq.batch_example_ids(index).tolist()
        seen.extend(ids_of(x))
    assert seen == list(range(15))
    with pytest.raises(ConfigError, match="windows feature set"):
        ShardSequence(root, split="train")


# -- processes -------------------------------------------------------------------------------


def _batch_in_child(seq, index, epoch, queue):
    queue.put(seq.batch(index, epoch=epoch))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_same_batch_in_a_child_process(labelled_features, method):
    seq = ShardSequence(
        labelled_features, split="train", batch_size=8, augment=Augment(mixup_p=0.5), return_mask=True, seed=5
    )
    seq.set_epoch(2)
    here = seq[3]
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_batch_in_child, args=(seq, 3, 2, queue))
    child.start()
    there = queue.get(timeout=180)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert all(np.array_equal(u, v) for u, v in zip(here, there, strict=True))
    assert not np.array_equal(here[0], seq.batch(3, epoch=1)[0])


def test_pickle_round_trip(labelled_features):
    seq = ShardSequence(labelled_features, split="train", batch_size=8, in_memory=True)
    before = seq[0]
    clone = pickle.loads(pickle.dumps(seq))
    assert clone.reader._cache is None and clone.reader._maps == {}
    assert all(np.array_equal(u, v) for u, v in zip(before, clone[0], strict=True))
    assert clone.fingerprint == seq.fingerprint and clone.classes == (0, 1, 2, 3)


def tiny_model():
    model = keras.Sequential(
        [
            keras.Input((16, CROP, 1)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def test_model_fit_with_worker_processes(labelled_set):
    train = ShardSequence(labelled_set, split="train", batch_size=8, workers=2, use_multiprocessing=True)
    val = ShardSequence(labelled_set, split="val", batch_size=8, workers=2, use_multiprocessing=True)
    history = tiny_model().fit(train, validation_data=val, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    # batches made by worker processes equal the ones made in process
    model = tiny_model()
    kw = {"split": "train", "batch_size": 8, "augment": Augment(mixup_p=0.5)}
    in_process = model.predict(ShardSequence(labelled_set, **kw), verbose=0)
    workers = model.predict(ShardSequence(labelled_set, workers=2, use_multiprocessing=True, **kw), verbose=0)
    assert np.array_equal(in_process, workers)


def test_tf_dataset_yields_the_same_batches(labelled_features):
    seq = ShardSequence(labelled_features, split="train", batch_size=16, return_mask=True, dtype="float16")
    seq.set_epoch(1)
    ds = seq.as_tf_dataset()
    first = list(ds.as_numpy_iterator())
    assert len(first) == len(seq)
    for index, batch in enumerate(first):
        assert batch[0].dtype == np.float16
        assert all(np.array_equal(u, v) for u, v in zip(batch, seq[index], strict=True))
    second = list(ds.as_numpy_iterator())  # the next pass is the next epoch
    assert all(np.array_equal(u, v) for u, v in zip(second[0], seq.batch(0, epoch=2), strict=True))


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"crop_frames": 152}, ConfigError, "crop_frames 152 is longer than the 151 frames stored"),
        ({"batch_size": 0}, ConfigError, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, ConfigError, "batch_size must be an integer"),
        ({"split": "test"}, ConfigError, "split must be one of"),
        ({"fold": 5}, ConfigError, r"fold must be an integer in \[0, 5\)"),
        ({"dtype": "int8"}, ConfigError, "dtype must be one of"),
        ({"augment": "heavy"}, ConfigError, "augment must be"),
        ({"worker": 2}, ConfigError, "unknown argument"),
        ({"n_folds": 60, "split": "val", "fold": 59}, ConfigError, "is empty"),
    ],
)
def test_refusals(labelled_set, kwargs, error, message):
    with pytest.raises(error, match=message):
        ShardSequence(labelled_set, **kwargs)


def test_refuses_a_missing_index(tmp_path):
    with pytest.raises(FormatError, match="no index"):
        ShardSequence(tmp_path)


def test_shorter_crop(labelled_features):
    seq = ShardSequence(labelled_features, split="all", batch_size=5, crop_frames=51)
    x, _ = seq[0]
    assert x.shape == (5, 16, 51, 1)
    assert np.array_equal(decode_frames(x[0]), np.arange(50, 101))
