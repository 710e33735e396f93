"""``ShardBatches``: the batches of a feature set, with no training framework attached.

``loader.sequence.ShardSequence`` (Keras) and ``loader.torch.ShardDataset`` (PyTorch) wrap this
one class, so every framework gets the same arrays from the same code.

Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` (and the split, rank and
settings): the epoch order is a permutation seeded by ``(seed, e)``, every augmentation draw
comes from a generator seeded by ``(seed, e, rank, i)``. No global random state is read, so
a batch computed in a worker process (fork or spawn), a thread, or the main process is the
same array.

Epochs: ``on_epoch_end()`` advances ``epoch`` by one; ``set_epoch(e)`` sets it.

The device path: ``stored_batch(i)`` is batch ``i`` before decoding and augmenting, for the
accelerator to finish (``loader.stored_batch``); ``on_device`` makes ``get`` give it.

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
from collections.abc import Iterator
from typing import Any

import numpy as np

from loader import sampler
from loader.augment import AugmentParams
from loader.crop_labels import CropLabels, check_soft_labels, fill_unknown
from loader.feature_set import FeatureSet
from loader.frame_targets import FrameTargets, target_steps
from loader.options import BuildOptions, LoaderOptions
from loader.reader import MelReader
from loader.rows import InProcessRows, Lookahead, ProcessRows, ThreadRows
from loader.state import LoaderState
from loader.stored_batch import DeviceRecipe, StoredBatch, StoredReads
from melshards.checks import check_int
from melshards.config import FeatureConfig, center_offset
from melshards.errors import ConfigError
from melshards.names import SET_WINDOWS


class ShardBatches:
    """Batches ``(x, y)`` or ``(x, y, known)`` of a feature set, as numpy arrays.

    path : feature set directory or URL (or an open ``FeatureSet``)
    options : a ``LoaderOptions`` (default: every default); see ``loader.options`` for each
        option, in its group: what to read (``split``, ``fold``, ``n_folds``, ``split_seed``,
        ``rank``, ``world_size``, ``recordings``), how to batch (``batch_size``, ``shuffle``,
        ``seed``, ``dtype``, ``return_mask``, ``crop_frames``, ``drop_remainder``,
        ``soft_labels``, ``targets``, ``target_step``), ``augment``, how to build (``workers``,
        ``use_multiprocessing``, ``lookahead``, ``in_memory``) and a set at a URL
        (``cache_dir``, ``cache_limit``, ``prefetch``)
    **kwargs : any of those options by name, over ``options``:
        ``ShardBatches(path, split="val", batch_size=64)``; ConfigError for a name that is none

    The resolved settings are attributes too (``batch_size``, ``split``, ``shuffle``,
    ``augment``: an ``Augment``, ``dtype``: an ``np.dtype``, ``crop_frames``: the frames the
    model sees, ...); ``options`` holds them as given.

    ``x`` is (B, n_mels, crop_frames, 1); ``y`` is (B, n_classes) float32, 1 where a TP event
    counts in the crop, or with ``targets="frames"`` (B, steps, n_classes), 1 where a TP counts
    in the step (``loader.frame_targets``); ``known`` has ``y``'s shape (``label_shape``).
    Windows feature sets (inference) have no labels: y and known are 0.
    """

    def __init__(
        self, path: str | os.PathLike | FeatureSet, options: LoaderOptions | None = None, **kwargs: Any
    ) -> None:
        self.options = options = LoaderOptions.from_kwargs(options, who=type(self).__name__, **kwargs)
        self._take_settings(options)
        cache = options.cache
        # One worker reads the whole split, which may lie in any shard: a prefetch fetches them
        # all first, and the metadata is read from the copies; a rank fetches its own below.
        fetch_all = cache.prefetch and self.world_size == 1 and not isinstance(path, FeatureSet)
        if isinstance(path, FeatureSet):
            self.features = path
        else:
            self.features = FeatureSet(
                path, cache_dir=cache.cache_dir, cache_limit=cache.cache_limit, prefetch=fetch_all
            )
        config = self.features.config
        self.crop_frames = self._check_crop(options.batch.crop_frames)
        self.epoch = 0
        soft = options.batch.soft_labels
        self.soft_labels = None if soft is None else check_soft_labels(soft, self.features)

        self._choose_examples()
        if cache.prefetch and not fetch_all:
            self.features.prefetch(self.rank_ids)
        self.reader = MelReader(self.features, cache_ids=self.rank_ids if self.in_memory else None)
        self.clip = (0.0, 1.0) if config.normalize == "minmax" else None
        self.fill = (
            self.features.bin_mean
            if self.augment.mask_value == "mean"
            else np.zeros(config.n_mels, np.float32)
        )
        self._order: tuple[int, np.ndarray] | None = None
        self._center = center_offset(config, self.crop_frames)
        if self.targets == "frames":
            self._labels = FrameTargets(
                self.features, self.crop_frames, self.target_step, batch_size=self.batch_size
            )
        else:
            self._labels = CropLabels(self.features, self.crop_frames, self._center)
        self._lookahead = Lookahead(self._build)
        self._rows = self._row_builder(options.build)
        self._stored = StoredReads(self.reader, (self.batch_size, config.n_mels, self.crop_frames))

    def _take_settings(self, options: LoaderOptions) -> None:
        """The options as the attributes the rest of the class (and its users) read."""
        split, batch, build = options.split, options.batch, options.build
        self.split, self.fold, self.n_folds = split.split, split.fold, split.n_folds
        self.split_seed, self.recordings = split.split_seed, split.recordings
        self.rank, self.world_size = split.rank, split.world_size
        self.batch_size, self.seed = batch.batch_size, batch.seed
        self.shuffle, self.augment = options.shuffle, options.augmentation
        self.dtype = np.dtype(batch.dtype)
        self.return_mask, self.drop_remainder = batch.return_mask, batch.drop_remainder
        self.targets, self.target_step = batch.targets, batch.target_step
        self.in_memory, self.lookahead = build.in_memory, build.lookahead

    def _check_crop(self, crop_frames: int | None) -> int:
        """The frames the model sees (default: the config's); ConfigError for a crop longer
        than the stored examples, or a split other than "all" of a windows set."""
        config = self.features.config
        crop = config.crop_frames if crop_frames is None else crop_frames
        if crop > config.n_frames:
            raise ConfigError(
                f"crop_frames {crop} is longer than the {config.n_frames} frames stored "
                f"per example in {self.features.root}"
            )
        if self.features.kind == SET_WINDOWS and self.split != "all":
            raise ConfigError(
                f"{self.features.root} is a windows feature set (no labels): use split='all', not {self.split!r}"
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

    def _row_builder(self, build: BuildOptions) -> InProcessRows:
        """What fills a batch's rows: this thread, ``workers`` threads or processes."""
        shape = (self.batch_size, self.config.n_mels, self.crop_frames, 1)
        rows_args = (self.reader, self.augment)
        rows_kwargs = {"fill": self.fill, "clip": self.clip, "shape": shape, "dtype": self.dtype}
        if build.workers > 1 or build.use_multiprocessing:
            kind = ProcessRows if build.use_multiprocessing else ThreadRows
            return kind(*rows_args, **rows_kwargs, workers=build.workers)
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
        """Stop this sequence's look-ahead thread, workers and decoding threads, and close its
        files (all restart or reopen on the next batch)."""
        self._lookahead.close()
        self._rows.close()
        self.reader.close()

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
    def label_shape(self) -> tuple[int, ...]:
        """Shape of one example's ``y`` (and ``known``): ``(n_classes,)``, or ``(steps,
        n_classes)`` with ``targets="frames"``."""
        n_classes = self.config.n_classes
        if self.targets == "frames":
            return (target_steps(self.crop_frames, self.target_step), n_classes)
        return (n_classes,)

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
        epoch = check_int("epoch", epoch, low=0)
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
        batch = self.start_batch if next_batch is None else check_int("next_batch", next_batch, low=0)
        return LoaderState(
            seed=self.seed,
            epoch=self.epoch,
            batch=batch,
            rank=self.rank,
            world_size=self.world_size,
            fingerprint=self.fingerprint,
            batch_size=self.batch_size,
            batches=len(self),
            targets=self.targets,
            target_step=self.target_step,
        )

    def state_dict(self, *, next_batch: int | None = None) -> dict:
        """``loader_state(next_batch=...)`` as a plain dict (``LoaderState.to_dict``)."""
        return self.loader_state(next_batch=next_batch).to_dict()

    def load_state_dict(self, state: LoaderState | dict) -> None:
        """Go to a saved position: ``epoch`` becomes the state's, and the next pass over it starts
        at the state's batch. A state saved with another feature set, seed, rank, world size,
        batch size, number of batches per epoch or targets is refused (ConfigError naming the
        field)."""
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
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        positions = self._positions(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        return self.rank_ids[positions]

    # -- batches -----------------------------------------------------------------------------

    def batch(self, index: int, *, epoch: int | None = None) -> tuple[np.ndarray, ...]:
        """Batch ``index`` of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        ids = self.batch_example_ids(index, epoch=epoch)
        params = self.batch_params(index, ids.shape[0], epoch=epoch)
        x = self._rows.take(ids.shape[0])
        mixes = self.augment.mixes(params)
        self._rows.build(x, ids, params, masks=not mixes)
        if mixes:  # mixup reads rows built by other workers, then the masks (the gain is applied)
            self.augment.apply(x, params, fill=self.fill, gain=False)
        y, known = self._crop_labels(ids, params.crop_start)
        y, known = self.augment.mix_labels(y, known, params)
        return (x, y, known) if self.return_mask else (x, y)

    def _crop_labels(self, ids: np.ndarray, crop_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, known = self._labels(ids, crop_start)
        if self.soft_labels is not None:
            y, known = fill_unknown(y, known, self.soft_labels[ids])
        return y, known

    # -- the device path (loader.stored_batch) ------------------------------------------------

    # Set by an adapter made with ``on_device=True``: ``get`` then gives ``stored_batch``.
    on_device = False

    def stored_batch(self, index: int, *, epoch: int | None = None) -> StoredBatch:
        """Batch ``index`` of ``epoch`` as the stored values of its crops, its augmentation draws
        and its unmixed labels, for a framework to finish on its device (``loader.device_torch``,
        ``loader.device_keras``) into what ``batch`` gives."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        ids = self.batch_example_ids(index, epoch=epoch)
        params = self.batch_params(index, ids.shape[0], epoch=epoch)
        stored, quant = self._stored.read(ids, params.crop_start)
        y, known = self._crop_labels(ids, params.crop_start)
        return StoredBatch.of(stored, quant, params, y, known if self.return_mask else None)

    @property
    def device_recipe(self) -> DeviceRecipe:
        """What finishing this loader's stored batches needs besides each batch."""
        return DeviceRecipe.of(self)

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

    def get(self, index: int, *, epoch: int | None = None) -> tuple[np.ndarray, ...] | StoredBatch:
        """``batch(index, epoch=epoch)`` (``stored_batch`` when ``on_device``), and, with
        ``lookahead``, start building ``index + 1``."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, low=0)
        index = self._batch_position(index)
        if not self.lookahead:
            return self._build(index, epoch)
        return self._lookahead.get(index, epoch, len(self))

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return self.get(index)

    def _build(self, index: int, epoch: int) -> tuple[np.ndarray, ...] | StoredBatch:
        if self.on_device:
            return self.stored_batch(index, epoch=epoch)
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
        return state
