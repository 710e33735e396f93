"""Folds, splits, epoch orders and rank shares."""

from __future__ import annotations

import numpy as np
import pytest

from loader import sampler
from melshards.errors import ConfigError


def grouped_labels(n_recordings=60, seed=0, n_classes=6):
    """Recordings of 1-6 examples; species frequencies from common to rare."""
    rng = np.random.default_rng(seed)
    recording_ids, positives = [], []
    weights = 1.0 / np.arange(1, n_classes + 1) ** 1.5
    for r in range(n_recordings):
        species = rng.choice(n_classes, p=weights / weights.sum())
        for _ in range(rng.integers(1, 7)):
            row = np.zeros(n_classes, dtype=bool)
            row[species] = True
            if rng.random() < 0.2:
                row[rng.integers(n_classes)] = True
            if rng.random() < 0.1:
                row[:] = False  # an FP-only example
            recording_ids.append(f"r{r:03d}")
            positives.append(row)
    return np.array(recording_ids), np.array(positives)


def test_folds_group_recordings_and_are_deterministic():
    ids, pos = grouped_labels()
    folds = sampler.assign_folds(ids, pos, n_folds=5, seed=0)
    assert folds.min() == 0 and folds.max() == 4
    for rec in np.unique(ids):
        assert len(np.unique(folds[ids == rec])) == 1
    assert np.array_equal(folds, sampler.assign_folds(ids, pos, n_folds=5, seed=0))
    assert not np.array_equal(folds, sampler.assign_folds(ids, pos, n_folds=5, seed=1))


def test_folds_are_stratified():
    ids, pos = grouped_labels(n_recordings=100)
    folds = sampler.assign_folds(ids, pos, n_folds=5, seed=3)
    for c in range(pos.shape[1]):
        recordings_with_c = np.unique(ids[pos[:, c]])
        if recordings_with_c.size >= 5:
            per_fold = np.bincount(folds[pos[:, c]], minlength=5)
            assert (per_fold > 0).all(), (c, per_fold)
            # as even as whole recordings allow: no fold far above its share
            largest_recording = max((pos[ids == r, c]).sum() for r in recordings_with_c)
            assert per_fold.max() - per_fold.min() <= 2 * largest_recording, (c, per_fold)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() <= 1.25 * sizes.mean() and sizes.min() >= 0.75 * sizes.mean()


def test_splits_are_disjoint_and_complete():
    ids, pos = grouped_labels()
    folds = sampler.assign_folds(ids, pos, n_folds=4, seed=0)
    seen = []
    for fold in range(4):
        train = sampler.split_members(folds, "train", fold=fold)
        val = sampler.split_members(folds, "val", fold=fold)
        assert not set(ids[train]) & set(ids[val])
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(ids.size))
        seen.append(val)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(ids.size))
    assert np.array_equal(sampler.split_members(folds, "all", fold=0), np.arange(ids.size))


@pytest.mark.parametrize(
    ("split", "fold", "n_folds", "message"),
    [
        ("test", 0, 5, "split must be one of"),
        ("val", 5, 5, r"fold must be an integer in \[0, 5\), got 5"),
        ("val", -1, 5, "fold must be"),
        ("train", 0, 1, "n_folds must be an integer >= 2"),
    ],
)
def test_check_split_refuses(split, fold, n_folds, message):
    with pytest.raises(ConfigError, match=message):
        sampler.check_split(split, fold=fold, n_folds=n_folds)


def test_epoch_orders():
    a = sampler.epoch_order(50, seed=1, epoch=0, shuffle=True)
    assert np.array_equal(np.sort(a), np.arange(50))
    assert np.array_equal(a, sampler.epoch_order(50, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(a, sampler.epoch_order(50, seed=1, epoch=1, shuffle=True))
    assert not np.array_equal(a, sampler.epoch_order(50, seed=2, epoch=0, shuffle=True))
    assert np.array_equal(sampler.epoch_order(50, seed=1, epoch=3, shuffle=False), np.arange(50))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [7, 40, 101])
def test_rank_blocks_are_disjoint_complete_balanced_and_contiguous(n, world_size):
    split = np.sort(np.random.default_rng(n).choice(3 * n, size=n, replace=False)).astype(np.int64)
    blocks = [sampler.rank_members(split, rank=r, world_size=world_size) for r in range(world_size)]
    # In rank order the blocks are the split itself: disjoint, complete, each contiguous.
    assert np.array_equal(np.concatenate(blocks), split)
    sizes = [b.size for b in blocks]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and min(sizes) == n // world_size
    assert all(
        np.array_equal(b, sampler.rank_members(split, rank=r, world_size=world_size))
        for r, b in enumerate(blocks)
    )
    assert sampler.rank_epoch_size(n, world_size=world_size) == n // world_size


def test_rank_blocks_worked_example():
    split = np.arange(10, dtype=np.int64) * 2
    blocks = [sampler.rank_members(split, rank=r, world_size=3).tolist() for r in range(3)]
    assert blocks == [[0, 2, 4], [6, 8, 10], [12, 14, 16, 18]]


@pytest.mark.parametrize(
    ("rank", "world_size", "message"),
    [
        (0, 0, r"world_size must be an integer >= 1, got 0"),
        (3, 3, r"rank must be in \[0, 3\), got 3"),
        (-1, 2, r"rank must be in \[0, 2\), got -1"),
        (True, 2, r"rank must be in \[0, 2\), got True"),
        (0, 2.0, r"world_size must be an integer >= 1, got 2\.0"),
    ],
)
def test_bad_ranks_are_refused(rank, world_size, message):
    with pytest.raises(ConfigError, match=message):
        sampler.rank_members(np.arange(10), rank=rank, world_size=world_size)


def test_fewer_examples_than_workers_is_refused():
    with pytest.raises(ConfigError, match="cannot split 3 example\\(s\\) across world_size 4 workers"):
        sampler.rank_members(np.arange(3), rank=0, world_size=4)


def test_batch_rng_depends_on_every_coordinate():
    def draw(**kw):
        base = {"seed": 0, "epoch": 0, "rank": 0, "index": 0}
        return sampler.batch_rng(**{**base, **kw}).random(4)

    first = draw()
    assert np.array_equal(first, draw())
    for key in ("seed", "epoch", "rank", "index"):
        assert not np.array_equal(first, draw(**{key: 1})), key
