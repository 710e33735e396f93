"""Which examples a sequence sees, and in which order: folds, splits, epochs, ranks.

Everything here is a pure function of its arguments; randomness comes from generators
seeded with explicit tuples, never from global state, so every process computes the same
folds and the same epoch order.
"""

from __future__ import annotations

import numpy as np

from melshards.errors import ConfigError

SPLITS = ("train", "val", "all")

# Distinct first words keep the random streams of folds, epoch orders and augmentation apart.
FOLD_STREAM = 0x5F01D
ORDER_STREAM = 0x0DE5
AUGMENT_STREAM = 0xA06


def check_split(split: str, *, fold: int, n_folds: int) -> None:
    """Refuse an unknown split name or a fold outside ``[0, n_folds)``."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < n_folds:
        raise ConfigError(f"fold must be an integer in [0, {n_folds}), got {fold!r}")


def assign_folds(
    recording_ids: np.ndarray, positives: np.ndarray, *, n_folds: int, seed: int = 0
) -> np.ndarray:
    """Fold of every example, grouped by recording and stratified by species.

    recording_ids : np.ndarray [shape=(n,)] -- group of each example
    positives : np.ndarray [shape=(n, n_classes)], bool -- species present in each example

    Whole recordings are dealt out, those holding the rarest species first (larger
    recordings first within a species, ties in a random order drawn from ``seed``). Each
    goes to the fold that has the fewest examples of its rarest species so far, then the
    fewest examples of all its species (relative to their totals), then the fewest examples
    overall, then a seeded coin. Recordings without any positive come last and only balance
    sizes. Returns np.ndarray [shape=(n,)], int64, values in ``[0, n_folds)``.
    """
    recording_ids = np.asarray(recording_ids)
    positives = np.asarray(positives, dtype=bool)
    n = recording_ids.shape[0]
    folds = np.zeros(n, dtype=np.int64)
    if n == 0:
        return folds
    groups, group_of = np.unique(recording_ids, return_inverse=True)
    n_groups = groups.shape[0]
    n_classes = positives.shape[1]
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(counts, group_of, positives.astype(np.int64))
    sizes = np.bincount(group_of, minlength=n_groups)
    totals = counts.sum(axis=0)

    rng = np.random.default_rng([FOLD_STREAM, seed])
    tiebreak = rng.permutation(n_groups)
    present = counts > 0
    rarity = np.where(present, totals[None, :], np.iinfo(np.int64).max)
    rarest = rarity.argmin(axis=1)
    has_positive = present.any(axis=1)
    key_total = np.where(has_positive, rarity.min(axis=1), np.iinfo(np.int64).max)
    order = np.lexsort((tiebreak, -sizes, rarest, key_total))

    fold_counts = np.zeros((n_folds, n_classes), dtype=np.int64)
    fold_sizes = np.zeros(n_folds, dtype=np.int64)
    weights = 1.0 / np.maximum(totals, 1)
    group_fold = np.empty(n_groups, dtype=np.int64)
    for g in order:
        coin = rng.random(n_folds)
        if has_positive[g]:
            own = fold_counts[:, rarest[g]]
            share = fold_counts[:, present[g]] @ weights[present[g]]
        else:
            own = np.zeros(n_folds, dtype=np.int64)
            share = np.zeros(n_folds)
        best = np.lexsort((coin, fold_sizes, share, own))[0]
        group_fold[g] = best
        fold_counts[best] += counts[g]
        fold_sizes[best] += sizes[g]
    folds[:] = group_fold[group_of]
    return folds


def split_members(folds: np.ndarray, split: str, *, fold: int) -> np.ndarray:
    """Example ids (sorted) of ``split``: train = every fold but ``fold``, val = ``fold``."""
    if split == "all":
        return np.arange(folds.shape[0], dtype=np.int64)
    chosen = folds == fold if split == "val" else folds != fold
    return np.flatnonzero(chosen).astype(np.int64)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Positions ``0..n-1`` in the order one epoch visits them."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([ORDER_STREAM, seed, epoch]).permutation(n).astype(np.int64)


def check_rank(rank: int, *, world_size: int) -> None:
    """Refuse a ``world_size`` below 1 or a ``rank`` outside ``[0, world_size)``."""
    if not isinstance(world_size, int | np.integer) or isinstance(world_size, bool) or world_size < 1:
        raise ConfigError(f"world_size must be an integer >= 1, got {world_size!r}")
    if not isinstance(rank, int | np.integer) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got {rank!r}")


def rank_members(example_ids: np.ndarray, *, rank: int, world_size: int) -> np.ndarray:
    """The examples of one training worker: block ``rank`` of ``world_size`` contiguous blocks.

    example_ids : np.ndarray [shape=(n,)], int64 -- one split, ascending, i.e. in storage order
        (shard by shard, row by row)

    Block ``r`` is ``example_ids[r * n // world_size : (r + 1) * n // world_size]``: blocks are
    disjoint, together the whole split, and hold ``n // world_size`` or one more examples. They
    depend on nothing else (not the seed, not the epoch), so a worker reads the same few
    shards every epoch (its page cache stays warm, shared storage serves each shard to one
    worker) and neighbouring examples of a recording stay on one worker.

    Returns np.ndarray [shape=(n_r,)], int64, ascending. Raises ConfigError for a bad rank or
    when the split has fewer examples than workers.
    """
    check_rank(rank, world_size=world_size)
    n = example_ids.shape[0]
    if n < world_size:
        raise ConfigError(f"cannot split {n} example(s) across world_size {world_size} workers")
    return example_ids[rank * n // world_size : (rank + 1) * n // world_size]


def rank_epoch_size(n: int, *, world_size: int) -> int:
    """Examples every worker visits per epoch when ``n`` are split across ``world_size``.

    Synchronous multi-worker training needs every worker to run the same number of steps,
    so every worker visits ``n // world_size`` examples: the ``n % world_size`` workers whose
    block holds one more leave one out each epoch (the last of that epoch's order: a
    different one every epoch when shuffled).
    """
    return n // world_size


def batch_rng(*, seed: int, epoch: int, rank: int, index: int) -> np.random.Generator:
    """The generator of every random draw for one batch: a function of its coordinates."""
    return np.random.default_rng([AUGMENT_STREAM, seed, epoch, rank, index])
