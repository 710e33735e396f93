"""``ShardBatches``: the batches of a feature set, with no training framework attached.

``loader.sequence.ShardSequence`` (Keras) and ``loader.torch.ShardDataset`` (PyTorch) wrap this
one class, so every framework gets the same arrays from the same code.

Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` (and the split, rank and
settings): the epoch order is a permutation seeded by ``(seed, e)``, every augmentation draw
comes from a generator seeded by ``(seed, e, rank, i)``. No global random state is read, so
a batch computed in a worker process (fork or spawn), a thread, or the main process is the
same array.

Epochs: ``on_epoch_end()`` advances ``epoch`` by one; ``set_epoch(e)`` sets it.

Resuming: ``state_dict(next_batch=b)`` is the position as a ``loader.state.LoaderState`` dict;
``load_state_dict(state)`` goes back to it: the next pass over the current epoch
(``iter_numpy()``, the PyTorch sampler, the Keras sequence) starts at the saved batch, the
passes after it are whole epochs, as in an uninterrupted run.

Building: each batch is built with the calling thread, ``workers`` threads or ``workers``
shared-memory processes (``use_multiprocessing``; ``loader.rows``). ``get(i)`` (and
``seq[i]``) also builds batch ``i + 1`` in a look-ahead thread while the caller trains on batch
``i``. Batch arrays come from a pool and are reused once nothing refers to them
(``loader.buffers``).

Ranks: for multi-worker training (``rank``, ``world_size``) each rank holds a fixed contiguous
block of the split in storage order (``sampler.rank_members``): disjoint, together the whole
split, sizes differing by at most one, the same whatever the seed and epoch. Each epoch a rank
shuffles its own block and visits ``n // world_size`` of it, so every rank has the same
``len()`` (``sampler.rank_epoch_size``). Augmentation draws also depend on the rank.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Collection, Iterator

import numpy as np

from loader import sampler
from loader.augment import Augment, AugmentParams
from loader.reader import FeatureSet, MelReader
from loader.rows import InProcessRows, Lookahead, ProcessRows, ThreadRows
from loader.state import LoaderState
from melshards.config import FeatureConfig, center_offset
from melshards.errors import ConfigError
from melshards.names import SET_WINDOWS

DTYPES = ("float32", "float16")


def _check_int(name: str, value, *, low: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ShardBatches:
    """Batches ``(x, y)`` or ``(x, y, known)`` of a feature set, as numpy arrays.

    Parameters
    ----------
    path : feature set directory (or an open ``FeatureSet``)
    split : ``"train"`` (every fold but ``fold``), ``"val"`` (``fold``) or ``"all"``
    fold, n_folds, split_seed : which fold is held out; folds group examples by recording and
        are stratified by species (``sampler.assign_folds``). ``split_seed`` is separate from
        ``seed`` so train and val sequences agree on the folds whatever their shuffle seeds.
    batch_size : examples per batch
    shuffle : visit examples in a new order each epoch (default: True for train only)
    seed : seed of the epoch orders and of every augmentation draw
    augment : True (``Augment()``), False (``Augment.off()``), an ``Augment`` or a mapping;
        default True for train only
    dtype : ``"float32"`` or ``"float16"`` for x (float16 lets the model cast on the accelerator)
    return_mask : also yield ``known`` (B, n_classes) float32: 1 where the label is known
        (a TP or an FP counts in the crop), 0 where unknown
    in_memory : hold this rank's stored examples in RAM (loaded once per process)
    crop_frames : frames the model sees (default: the config's ``crop_frames``)
    drop_remainder : drop the last incomplete batch
    lookahead : build batch ``i + 1`` in a background thread while the model trains on batch
        ``i`` (``loader.rows.Lookahead``); pass ``shuffle=False`` to ``fit`` to keep it
        useful, the sequence shuffles examples itself
    rank, world_size : this worker's block of the split for multi-worker training (see
        ``sampler.rank_members``); every rank gets the same number of batches per epoch
    workers, use_multiprocessing : build each batch with ``workers`` threads, or processes
        writing into shared memory (``loader.rows``)
    soft_labels : np.ndarray [shape=(n_examples, n_classes)] or the path of one (``.npy``),
        values in [0, 1] or NaN, rows in the feature set's example order: where a crop's label
        is unknown and the value is not NaN, ``y`` takes it (pseudo labels,
        ``experiments.pseudo``); known labels stay, and ``known`` is unchanged, so the loss
        weighs a soft label as it weighs an unknown one. The features are not copied.
    recordings : keep only the split's examples of these recordings (for instance the windows
        of a training fold's recordings, ``experiments.pseudo``)
    cache_dir, cache_limit : for a feature set at a URL (``s3://``, ``gs://``, ``https://``):
        where its verified shards are cached (default ``MELSHARDS_CACHE`` or
        ``~/.cache/melshards``) and the most bytes the cache may hold (``"20G"``; default none),
        least recently used shards evicted first (``melshards.remote.ShardCache``)
    prefetch : fetch the shards of this rank's examples into the cache now, not at first read

    ``x`` is (B, n_mels, crop_frames, 1); ``y`` is (B, n_classes) float32, 1 where a TP event
    counts in the crop. Windows feature sets (inference) have no labels: y and known are 0.
    """

    def __init__(
        self,
        path: str | os.PathLike | FeatureSet,
        *,
        split: str = "train",
        fold: int = 0,
        n_folds: int = 5,
        batch_size: int = 32,
        shuffle: bool | None = None,
        seed: int = 0,
        augment: Augment | bool | dict | None = None,
        dtype: str = "float32",
        return_mask: bool = False,
        in_memory: bool = False,
        crop_frames: int | None = None,
        drop_remainder: bool = False,
        lookahead: bool = True,
        rank: int = 0,
        world_size: int = 1,
        split_seed: int = 0,
        workers: int = 1,
        use_multiprocessing: bool = False,
        soft_labels: np.ndarray | str | os.PathLike | None = None,
        recordings: Collection[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | str | None = None,
        prefetch: bool = False,
    ) -> None:
        workers = _check_int("workers", workers, low=1)
        use_multiprocessing = bool(use_multiprocessing)
        sampler.check_split(split, fold=fold, n_folds=n_folds)
        self.batch_size = _check_int("batch_size", batch_size, low=1)
        self.seed = _check_int("seed", seed, low=0)
        self.split_seed = _check_int("split_seed", split_seed, low=0)
        self.world_size = _check_int("world_size", world_size, low=1)
        self.rank = _check_int("rank", rank, low=0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be in [0, {self.world_size}), got {rank!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        # One worker reads the whole split, which may lie in any shard: a prefetch fetches them
        # all first, and the metadata is read from the copies; a rank fetches its own below.
        fetch_all = prefetch and world_size == 1 and not isinstance(path, FeatureSet)
        cache = {"cache_dir": cache_dir, "cache_limit": cache_limit, "prefetch": fetch_all}
        self.features = path if isinstance(path, FeatureSet) else FeatureSet(path, **cache)
        config = self.features.config
        self.crop_frames = self._check_crop(crop_frames, split)
        self.split, self.fold, self.n_folds = split, fold, n_folds
        self.shuffle = (split == "train") if shuffle is None else bool(shuffle)
        self.augment = Augment.coerce(split == "train" if augment is None else augment)
        self.dtype = np.dtype(dtype)
        self.return_mask = bool(return_mask)
        self.in_memory = bool(in_memory)
        self.drop_remainder = bool(drop_remainder)
        self.lookahead = bool(lookahead)
        self._lookahead = Lookahead(self._build)
        self.epoch = 0
        self.recordings = None if recordings is None else frozenset(str(r) for r in recordings)
        self.soft_labels = None if soft_labels is None else self._check_soft_labels(soft_labels)

        self._choose_examples()
        if prefetch and not fetch_all:
            self.features.prefetch(self.rank_ids)
        self.reader = MelReader(self.features, cache_ids=self.rank_ids if self.in_memory else None)
        self.clip = (0.0, 1.0) if config.normalize == "minmax" else None
        self.fill = (
            self.features.bin_mean
            if self.augment.mask_value == "mean"
            else np.zeros(config.n_mels, np.float32)
        )
        self._order: tuple[int, np.ndarray] | None = None
        self._center_labels: tuple[np.ndarray, np.ndarray] | None = None
        self._center = center_offset(config, self.crop_frames)
        self._rows = self._row_builder(workers, use_multiprocessing)

    def _check_crop(self, crop_frames: int | None, split: str) -> int:
        """The frames the model sees (default: the config's); ConfigError for a crop longer
        than the stored examples, or a split other than "all" of a windows set."""
        config = self.features.config
        crop = config.crop_frames if crop_frames is None else _check_int("crop_frames", crop_frames, low=1)
        if crop > config.n_frames:
            raise ConfigError(
                f"crop_frames {crop} is longer than the {config.n_frames} frames stored "
                f"per example in {self.features.root}"
            )
        if self.features.kind == SET_WINDOWS and split != "all":
            raise ConfigError(
                f"{self.features.root} is a windows feature set (no labels): use split='all', not {split!r}"
            )
        return crop

    def _choose_examples(self) -> None:
        """``folds``, this split's ``example_ids`` and this rank's ``rank_ids``."""
        split, fold, n_folds = self.split, self.fold, self.n_folds
        self.folds = sampler.assign_folds(
            self.features.recording_id, self.features.labels == 1, n_folds=n_folds, seed=self.split_seed
        )
        self.example_ids = sampler.split_members(self.folds, split, fold=fold)
        if self.recordings is not None:
            chosen = np.isin(self.features.recording_id[self.example_ids].astype(str), list(self.recordings))
            self.example_ids = self.example_ids[chosen]
        if self.example_ids.size == 0:
            raise ConfigError(
                f"split {split!r} (fold {fold} of {n_folds}) of {self.features.root} is empty: "
                f"{np.unique(self.features.recording_id).size} recording(s) for {n_folds} folds"
            )
        # The split stays in example_ids; this rank reads only rank_ids.
        self.rank_ids = sampler.rank_members(self.example_ids, rank=self.rank, world_size=self.world_size)

    def _row_builder(self, workers: int, use_multiprocessing: bool) -> InProcessRows:
        """What fills a batch's rows: this thread, ``workers`` threads or processes."""
        shape = (self.batch_size, self.config.n_mels, self.crop_frames, 1)
        rows_args = (self.reader, self.augment)
        rows_kwargs = {"fill": self.fill, "clip": self.clip, "shape": shape, "dtype": self.dtype}
        if workers > 1 or use_multiprocessing:
            kind = ProcessRows if use_multiprocessing else ThreadRows
            return kind(*rows_args, **rows_kwargs, workers=workers)
        return InProcessRows(*rows_args, **rows_kwargs)

    # -- description -------------------------------------------------------------------------

    @property
    def worker_mode(self) -> str:
        """How batches are built: ``"in-process"``, ``"threads"`` or ``"processes"``."""
        return self._rows.mode

    @property
    def n_workers(self) -> int:
        """Threads or processes that build the rows of each batch (1 in process)."""
        return self._rows.workers

    def close(self) -> None:
        """Stop this sequence's look-ahead thread and workers (they restart on the next batch)."""
        self._lookahead.close()
        self._rows.close()

    def __enter__(self) -> ShardBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def config(self) -> FeatureConfig:
        return self.features.config

    @property
    def classes(self) -> tuple[int, ...]:
        return self.features.classes

    @property
    def fingerprint(self) -> str:
        return self.features.fingerprint

    @property
    def n_examples(self) -> int:
        """Examples in this split (all ranks together)."""
        return int(self.example_ids.shape[0])

    @property
    def recording_id(self) -> np.ndarray:
        """Recording of each example of the split, in ``example_ids`` order."""
        return self.features.recording_id[self.example_ids]

    @property
    def start(self) -> np.ndarray:
        """Stored window start (seconds, context included) of each example, ``example_ids`` order."""
        return self.features.start[self.example_ids]

    @property
    def valid(self) -> np.ndarray:
        """``[first, stop)`` stored frames holding audio of each example (the others are padding
        beyond its recording), (n, 2) int64, ``example_ids`` order."""
        return self.features.valid[self.example_ids]

    @property
    def center_offset(self) -> int:
        """First stored frame of the centred crop (the crop without time shift)."""
        return self._center

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.features.root)!r}, split={self.split!r}, fold={self.fold}, "
            f"n_examples={self.n_examples}, batch_size={self.batch_size}, batches={len(self)}, "
            f"epoch={self.epoch})"
        )

    # -- epochs ------------------------------------------------------------------------------

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        epoch = _check_int("epoch", epoch, low=0)
        if epoch != self.epoch:  # a loaded position holds for its own epoch only
            self.start_batch = 0
        self.epoch = epoch

    # -- position (mid-epoch resume, loader.state) -------------------------------------------

    # First batch of the next pass over ``epoch``: 0, or where a loaded state left off.
    start_batch = 0

    def loader_state(self, *, next_batch: int | None = None) -> LoaderState:
        """This loader's position: ``epoch`` and ``next_batch``, the first batch of the epoch not
        yet trained on (default ``start_batch``; only the consumer knows how far it got, the
        batches it asked for may have been prefetched)."""
        batch = self.start_batch if next_batch is None else _check_int("next_batch", next_batch, low=0)
        return LoaderState(
            seed=self.seed,
            epoch=self.epoch,
            batch=batch,
            rank=self.rank,
            world_size=self.world_size,
            fingerprint=self.fingerprint,
            batch_size=self.batch_size,
            batches=len(self),
        )

    def state_dict(self, *, next_batch: int | None = None) -> dict:
        """``loader_state(next_batch=...)`` as a plain dict (``LoaderState.to_dict``)."""
        return self.loader_state(next_batch=next_batch).to_dict()

    def load_state_dict(self, state: LoaderState | dict) -> None:
        """Go to a saved position: ``epoch`` becomes the state's, and the next pass over it starts
        at the state's batch. A state saved with another feature set, seed, rank, world size,
        batch size or number of batches per epoch is refused (ConfigError naming the field)."""
        loaded = LoaderState.coerce(state)
        loaded.check_fits(self.loader_state(next_batch=0))
        loaded = loaded.normalized()
        self.epoch, self.start_batch = loaded.epoch, loaded.batch

    def _positions(self, epoch: int) -> np.ndarray:
        """Positions into ``rank_ids`` that this rank visits in ``epoch``, in order."""
        cached = self._order
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = sampler.epoch_order(self.rank_ids.shape[0], seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        positions = order[: self._rank_size()]
        self._order = (epoch, positions)
        return positions

    def _rank_size(self) -> int:
        return sampler.rank_epoch_size(self.n_examples, world_size=self.world_size)

    def __len__(self) -> int:
        n = self._rank_size()
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    def _batch_position(self, index: int) -> int:
        """``index`` in ``range(len(self))``; a negative one counts from the end, as in a list."""
        index = operator.index(index)
        n_batches = len(self)
        position = index + n_batches if index < 0 else index
        if not 0 <= position < n_batches:
            raise IndexError(f"batch {index} out of range for {n_batches} batches")
        return position

    def batch_example_ids(self, index: int, *, epoch: int | None = None) -> np.ndarray:
        """Global example ids of batch ``index`` in ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        positions = self._positions(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        return self.rank_ids[positions]

    # -- batches -----------------------------------------------------------------------------

    def batch(self, index: int, *, epoch: int | None = None) -> tuple[np.ndarray, ...]:
        """Batch ``index`` of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        ids = self.batch_example_ids(index, epoch=epoch)
        params = self.batch_params(index, ids.shape[0], epoch=epoch)
        x = self._rows.take(ids.shape[0])
        mixes = self.augment.mixes(params)
        self._rows.build(x, ids, params, masks=not mixes)
        if mixes:  # mixup reads rows built by other workers, then the masks (the gain is applied)
            self.augment.apply(x, params, fill=self.fill, gain=False)
        y, known = self._labels(ids, params.crop_start)
        if self.soft_labels is not None:
            y, known = fill_unknown(y, known, self.soft_labels[ids])
        y, known = self.augment.mix_labels(y, known, params)
        return (x, y, known) if self.return_mask else (x, y)

    def _check_soft_labels(self, soft: np.ndarray | str | os.PathLike) -> np.ndarray:
        """``soft_labels`` as a float32 array of this feature set's shape, or ConfigError naming it."""
        where = "soft_labels"
        if not isinstance(soft, np.ndarray):
            where = os.fspath(soft)
            try:
                soft = np.load(where, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ConfigError(f"{where}: cannot read soft labels: {err}") from None
        expected = (self.features.n_examples, self.features.config.n_classes)
        if soft.shape != expected or soft.dtype.kind != "f":
            raise ConfigError(
                f"{where}: soft labels must be floats of shape {expected} (examples, classes) for "
                f"{self.features.root}, got {soft.dtype} {soft.shape}"
            )
        soft = soft.astype(np.float32, copy=False)
        outside = np.flatnonzero(((soft < 0) | (soft > 1)).any(axis=1))
        if outside.size:
            raise ConfigError(f"{where}: example {outside[0]} has a soft label outside [0, 1]")
        return soft

    def _labels(self, ids: np.ndarray, crop_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, known) of the crops; centred crops come from a table made once per process."""
        center = self._center
        if not (crop_start == center).all():
            return self.features.crop_labels(ids, crop_start, self.crop_frames)
        table = self._center_labels
        if table is None:
            every = np.arange(self.features.n_examples)
            y, known = self.features.crop_labels(every, np.full(every.shape[0], center), self.crop_frames)
            table = self._center_labels = (y.astype(np.int8), known.astype(np.int8))
        return table[0][ids].astype(np.float32), table[1][ids].astype(np.float32)

    def batch_params(self, index: int, size: int, *, epoch: int) -> AugmentParams:
        """The augmentation draws of batch ``index`` of ``epoch`` (``size`` examples).

        Time shifts keep each crop on its example's valid frames (``FeatureSet.valid``); a
        ``size`` other than the batch's draws as if every frame held audio.
        """
        index = self._batch_position(index)
        rng = None
        if self.augment.enabled:
            rng = sampler.batch_rng(seed=self.seed, epoch=epoch, rank=self.rank, index=index)
        ids = self.batch_example_ids(index, epoch=epoch)
        return self.augment.sample_params(
            rng,
            size,
            n_mels=self.config.n_mels,
            n_frames=self.config.n_frames,
            crop_frames=self.crop_frames,
            valid=self.features.valid[ids] if ids.shape[0] == size else None,
        )

    def get(self, index: int, *, epoch: int | None = None) -> tuple[np.ndarray, ...]:
        """``batch(index, epoch=epoch)``, and, with ``lookahead``, start building ``index + 1``."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        if not self.lookahead:
            return self.batch(index, epoch=epoch)
        return self._lookahead.get(index, epoch, len(self))

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return self.get(index)

    def _build(self, index: int, epoch: int) -> tuple[np.ndarray, ...]:
        return self.batch(index, epoch=epoch)

    def iter_numpy(self, *, epoch: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        """Every batch of one epoch (default: the current one, from ``start_batch``), as numpy arrays."""
        first = 0
        if epoch is None:
            epoch, first, self.start_batch = self.epoch, self.start_batch, 0
        for index in range(first, len(self)):
            yield self.batch(index, epoch=epoch)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        return self.iter_numpy()

    # -- pickling ----------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_order"] = None
        state["_center_labels"] = None
        return state


def fill_unknown(y: np.ndarray, known: np.ndarray, soft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with every unknown label that has a soft value (not NaN) set to it; ``known`` as given.

    y, known, soft : np.ndarray [shape=(B, n_classes)]; y is changed in place.
    """
    fill = (known == 0) & ~np.isnan(soft)
    y[fill] = soft[fill]
    return y, known
