"""A loader's options, grouped the way a user thinks of them, as frozen, validated dataclasses.

``ShardBatches``, ``ShardSequence``, ``loader.torch.ShardDataset`` and the experiments' runs
(``experiments.sequences``) share these types::

    LoaderOptions
      split    SplitOptions    what to read: split, fold, n_folds, split_seed, rank, world_size,
                               recordings
      batch    BatchOptions    how to batch: batch_size, shuffle, seed, dtype, return_mask,
                               crop_frames, drop_remainder, soft_labels, targets, target_step
      augment  Augment         what to change in each example (``loader.augment``)
      build    BuildOptions    how batches are built: workers, use_multiprocessing, lookahead,
                               in_memory
      cache    CacheOptions    a feature set at a URL: cache_dir, cache_limit, prefetch

Each group checks its own fields when it is made (``__post_init__``), so a bad value is refused
before any file is opened. The flat keyword arguments of ``ShardSequence(path, batch_size=64)``
map to these fields by name (``LoaderOptions.from_kwargs``): every field name is unique across
the groups. What needs the feature set itself (a crop longer than the stored frames, soft
labels of the wrong shape) is checked by ``ShardBatches`` once the set is open.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from loader.augment import Augment
from loader.frame_targets import TARGETS
from loader.sampler import check_rank, check_split
from melshards.checks import check_int
from melshards.errors import ConfigError

DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """What to read.

    split : ``"train"`` (every fold but ``fold``), ``"val"`` (``fold``) or ``"all"``
    fold, n_folds, split_seed : which fold is held out; folds group examples by recording and
        are stratified by species (``sampler.assign_folds``). ``split_seed`` is separate from
        the batch ``seed`` so train and val loaders agree on the folds whatever their shuffles.
    rank, world_size : this worker's block of the split for multi-worker training
        (``sampler.rank_members``); every rank gets the same number of batches per epoch
    recordings : keep only the split's examples of these recordings (for instance the windows
        of a training fold's recordings, ``experiments.pseudo``)
    """

    split: str = "train"
    fold: int = 0
    n_folds: int = 5
    split_seed: int = 0
    rank: int = 0
    world_size: int = 1
    recordings: frozenset[str] | None = None

    def __post_init__(self) -> None:
        check_split(self.split, fold=self.fold, n_folds=self.n_folds)
        object.__setattr__(self, "split_seed", check_int("split_seed", self.split_seed, low=0))
        object.__setattr__(self, "world_size", check_int("world_size", self.world_size, low=1))
        object.__setattr__(self, "rank", check_int("rank", self.rank, low=0))
        check_rank(self.rank, world_size=self.world_size)
        if self.recordings is not None:
            object.__setattr__(self, "recordings", frozenset(str(r) for r in self.recordings))


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How to batch.

    batch_size : examples per batch
    shuffle : visit examples in a new order each epoch (None: for the train split only)
    seed : seed of the epoch orders and of every augmentation draw
    dtype : ``"float32"`` or ``"float16"`` for x (float16 lets the model cast on the accelerator)
    return_mask : also yield ``known``, float32 of ``y``'s shape: 1 where the label is known
        (a TP or an FP counts in the crop), 0 where unknown
    crop_frames : frames the model sees (None: the feature set's ``crop_frames``)
    drop_remainder : drop the last incomplete batch
    soft_labels : np.ndarray [shape=(n_examples, n_classes)] or the path of one (``.npy``),
        values in [0, 1] or NaN, rows in the feature set's example order: where a crop's label
        is unknown and the value is not NaN, ``y`` takes it (pseudo labels); known labels stay,
        and ``known`` is unchanged. Compared by identity, never copied. With frame targets a
        class whose crop label is unknown (every step unknown) takes the value on every step.
    targets : ``"clip"``: ``y`` (and ``known``) is (B, n_classes), one vector per crop;
        ``"frames"``: (B, steps, n_classes), one vector per step of ``target_step`` frames
        (``loader.frame_targets``; the clip labels are their maximum over steps)
    target_step : frames per step of frame targets, an int >= 1 (a model's time stride; 8:
        85 ms at the default config's hop); ``steps = ceil(crop_frames / target_step)``, the
        last step holding what remains
    """

    batch_size: int = 32
    shuffle: bool | None = None
    seed: int = 0
    dtype: str = "float32"
    return_mask: bool = False
    crop_frames: int | None = None
    drop_remainder: bool = False
    soft_labels: np.ndarray | str | os.PathLike | None = dataclasses.field(default=None, compare=False)
    targets: str = "clip"
    target_step: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, low=1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, low=0))
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.crop_frames is not None:
            object.__setattr__(self, "crop_frames", check_int("crop_frames", self.crop_frames, low=1))
        if self.shuffle is not None:
            object.__setattr__(self, "shuffle", bool(self.shuffle))
        object.__setattr__(self, "return_mask", bool(self.return_mask))
        object.__setattr__(self, "drop_remainder", bool(self.drop_remainder))
        if self.targets not in TARGETS:
            raise ConfigError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        object.__setattr__(self, "target_step", check_int("target_step", self.target_step, low=1))


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How batches are built (``loader.rows``); none of these changes a batch's values.

    workers, use_multiprocessing : build each batch with ``workers`` threads, or processes
        writing into shared memory
    lookahead : build batch ``i + 1`` in a background thread while the model trains on batch
        ``i`` (pass ``shuffle=False`` to ``fit`` to keep it useful; the loader shuffles itself)
    in_memory : hold this rank's stored examples in RAM (loaded once per process)
    """

    workers: int = 1
    use_multiprocessing: bool = False
    lookahead: bool = True
    in_memory: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", check_int("workers", self.workers, low=1))
        for name in ("use_multiprocessing", "lookahead", "in_memory"):
            object.__setattr__(self, name, bool(getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    """A feature set at a URL (``s3://``, ``gs://``, ``https://``; ``melshards.remote``).

    cache_dir : where its verified shards are cached (None: ``MELSHARDS_CACHE`` or
        ``~/.cache/melshards``)
    cache_limit : the most bytes the cache may hold (``"20G"``; None: no limit), least
        recently used shards evicted first
    prefetch : fetch the shards of this rank's examples into the cache now, not at first read
    """

    cache_dir: str | os.PathLike | None = None
    cache_limit: int | str | None = None
    prefetch: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefetch", bool(self.prefetch))


# The group of each option group's field, for flat keyword arguments.
GROUPS: dict[str, type] = {
    "split": SplitOptions,
    "batch": BatchOptions,
    "build": BuildOptions,
    "cache": CacheOptions,
}
FIELD_GROUP: dict[str, str] = {
    f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)
} | {"augment": "augment"}


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """Every option of a loader, in its groups (see the module docstring).

    ``augment`` is an ``Augment``, True (``Augment()``), False (``Augment.off()``), a mapping,
    or None: augment the train split only. ``augmentation`` resolves it.
    """

    split: SplitOptions = dataclasses.field(default_factory=SplitOptions)
    batch: BatchOptions = dataclasses.field(default_factory=BatchOptions)
    augment: Augment | bool | Mapping[str, Any] | None = None
    build: BuildOptions = dataclasses.field(default_factory=BuildOptions)
    cache: CacheOptions = dataclasses.field(default_factory=CacheOptions)

    def __post_init__(self) -> None:
        for group, cls in GROUPS.items():
            if not isinstance(getattr(self, group), cls):
                raise ConfigError(
                    f"loader options: {group} must be a {cls.__name__}, got {getattr(self, group)!r}"
                )
        if self.augment is not None and not isinstance(self.augment, Augment):
            object.__setattr__(self, "augment", Augment.coerce(self.augment))

    @classmethod
    def from_kwargs(
        cls, options: LoaderOptions | None = None, /, *, who: str = "loader", **kwargs: Any
    ) -> LoaderOptions:
        """``options`` (default: every default) with the flat keyword arguments ``kwargs`` set,
        each in its group: ``from_kwargs(batch_size=64, fold=1)``. ConfigError naming ``who``
        for a name that is no option (with the closest one)."""
        base = cls() if options is None else options
        unknown = sorted(set(kwargs) - set(FIELD_GROUP))
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(FIELD_GROUP), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{who} got unknown argument(s) {', '.join(unknown)}{hint}")
        changes: dict[str, Any] = {}
        for group in GROUPS:
            values = {name: value for name, value in kwargs.items() if FIELD_GROUP[name] == group}
            if values:
                changes[group] = dataclasses.replace(getattr(base, group), **values)
        if "augment" in kwargs:
            changes["augment"] = kwargs["augment"]
        return dataclasses.replace(base, **changes) if changes else base

    def to_kwargs(self) -> dict[str, Any]:
        """The flat keyword arguments that make these options (``from_kwargs(**to_kwargs())``)."""
        flat: dict[str, Any] = {"augment": self.augment}
        for group in GROUPS:
            value = getattr(self, group)
            flat.update({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
        return flat

    @property
    def shuffle(self) -> bool:
        """Whether epochs are shuffled: as given, else for the train split only."""
        given = self.batch.shuffle
        return self.split.split == "train" if given is None else given

    @property
    def augmentation(self) -> Augment:
        """The ``Augment`` to apply: as given, else the defaults for the train split, off otherwise."""
        return Augment.coerce(self.split.split == "train" if self.augment is None else self.augment)
