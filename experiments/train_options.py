"""A training run's options, grouped the way a user thinks of them, as frozen, validated dataclasses.

``experiments.train`` (its ``train()`` keywords and its command line) and ``experiments.sweep``
read them from here::

    TrainOptions
      data   DataOptions    what to train on: features, augment, mixup, crop_seconds,
                            soft_labels, windows, window_labels
      split  SplitOptions   (loader.options) which fold validates: fold, n_folds
      batch  BatchOptions   (loader.options) batch_size, targets, target_step
      build  BuildOptions   (loader.options) how batches are built: workers, in_memory
      model  ModelOptions   which network: model, init_from
      optim  OptimOptions   how it learns: epochs, lr, warmup_epochs, weight_decay, patience, seed
      loss   LossOptions    how unannotated labels count: unknown, unknown_weight; clip_weight
      keep   KeepOptions    where and how the run is kept: out, checkpoint_every, batch_log,
                            threshold_rule, verbose, quiet

Every field has a flat name, unique across the groups: the keywords of ``train()``, the keys of
``run.json`` and of ``metrics.json``'s ``config["train"]`` (``from_kwargs`` / ``to_kwargs``), and,
spelt ``--batch-size``, the command line's flags, whose ``dest`` names the field they set
(``"batch.batch_size"``, ``commandline.flags``). Of the loader's groups a run takes only the
fields named above; it sets the others itself (``experiments.sequences``): the shuffle, the seed
(``optim.seed``), float16 batches with the known-label mask, the crop and the soft labels.
``targets="frames"`` trains on the loader's frame targets, one label per step of
``target_step`` frames: a frame model's (``experiments.models.is_frame_model``), whose builder
gets the same ``target_step``.

Each group checks its own fields when it is made (``__post_init__``), so a bad value is refused
before the run directory is touched. What needs Keras or the feature set (a registered model
name, a crop longer than the stored windows) is checked when the run builds them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from experiments.thresholds import check_rule
from loader.augment import Augment
from loader.options import BatchOptions, BuildOptions, SplitOptions
from melshards.checks import check_int, check_number
from melshards.errors import ConfigError

# How an unannotated label counts in the loss (``experiments.losses.MaskedBinaryCrossentropy``).
UNKNOWN_MODES = ("negative", "ignore")
VERBOSITY = (0, 1, 2)


def _path(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    """``check_number``; a value out of range is shown as the float it became."""
    number = check_number(name, value)
    return number if low is None and high is None else check_number(name, number, low=low, high=high)


def train_augmentation(augment: bool, mixup: float) -> Augment:
    """What the training batches get: the loader's defaults plus ``mixup``, or nothing."""
    return Augment(mixup_p=mixup) if augment else Augment.off()


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """What to train on.

    features : a labelled feature set (directory or URL), read through ``ShardSequence``
    augment : augment the training split (time shift, gain, SpecAugment masks: ``loader.Augment``)
    mixup : probability in [0, 1] that a training example is mixed with another of its batch
        (with ``augment``)
    crop_seconds : seconds the model sees (None: the feature set's ``duration``); crops are
        centred for validation, shifted for training
    soft_labels : ``.npy`` of soft labels (examples x classes, NaN where none) that fill the
        unknown labels of the training split (``experiments.pseudo``)
    windows, window_labels : a windows feature set over the same recordings and a ``.npy`` of
        soft labels for its windows: each training batch is followed by a batch of the training
        fold's windows (``loader.sequence.PairedSequence``), weighted as unknown labels
    """

    features: str
    augment: bool = True
    mixup: float = 0.5
    crop_seconds: float | None = None
    soft_labels: str | None = None
    windows: str | None = None
    window_labels: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "features", os.fspath(self.features))
        set_(self, "augment", bool(self.augment))
        set_(self, "mixup", _number("mixup", self.mixup, low=0, high=1))
        if self.crop_seconds is not None:
            set_(self, "crop_seconds", _number("crop_seconds", self.crop_seconds))
        for name in ("soft_labels", "windows", "window_labels"):
            set_(self, name, _path(getattr(self, name)))

    @property
    def augmentation(self) -> Augment:
        """What the training batches get (``train_augmentation``)."""
        return train_augmentation(self.augment, self.mixup)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Which network.

    model : a registered model name (``experiments.models.available_models()``; checked when the
        model is built)
    init_from : a saved ``model.keras`` of the same architecture and input whose weights the run
        starts from instead of fresh ones: fine-tuning (``experiments.pseudo``'s ``warm_start``)
    """

    model: str = "baseline"
    init_from: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "init_from", _path(self.init_from))


@dataclasses.dataclass(frozen=True)
class OptimOptions:
    """How the model learns.

    epochs : maximum number of epochs (early stopping may end sooner)
    lr : peak learning rate of AdamW (> 0), reached after the warm-up, then cosine decay
    warmup_epochs : length of the linear warm-up from ``lr / 10`` to ``lr``, in epochs
    weight_decay : AdamW weight decay
    patience : early stopping patience in epochs, on ``val_lwlrap``
    seed : seeds the weights, the shuffling and the augmentation (``keras.utils.set_random_seed``)
    """

    epochs: int = 40
    lr: float = 5e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    patience: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "epochs", check_int("epochs", self.epochs, low=1))
        lr = check_number("lr", self.lr)
        if not lr > 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        set_(self, "lr", lr)
        set_(self, "warmup_epochs", check_number("warmup_epochs", self.warmup_epochs))
        set_(self, "weight_decay", check_number("weight_decay", self.weight_decay))
        set_(self, "patience", check_int("patience", self.patience, low=1))
        # Any integer's message first: the loader's own check says ">= 0" for a negative one.
        set_(self, "seed", check_int("seed", check_int("seed", self.seed), low=0))


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """How unannotated labels count in the loss (``experiments.losses.MaskedBinaryCrossentropy``).

    unknown : ``"negative"`` (weighted by ``unknown_weight``) or ``"ignore"``
    unknown_weight : loss weight (>= 0) of an unknown label under ``unknown="negative"``
    clip_weight : weight (>= 0) of the clip term added to the loss of frame targets (each crop's
        maximum score over steps against its clip label); 0, the default: the frame term alone
    """

    unknown: str = "negative"
    unknown_weight: float = 1.0
    clip_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.unknown not in UNKNOWN_MODES:
            raise ConfigError(f"unknown must be one of {', '.join(UNKNOWN_MODES)}, got {self.unknown!r}")
        object.__setattr__(self, "unknown_weight", _number("unknown_weight", self.unknown_weight, low=0))
        object.__setattr__(self, "clip_weight", _number("clip_weight", self.clip_weight, low=0))


@dataclasses.dataclass(frozen=True)
class KeepOptions:
    """Where and how the run is kept; none of these changes what is trained.

    out : the run directory, created if missing (``experiments.checkpoints`` lists its files)
    checkpoint_every : checkpoint (model, optimizer, loader position) every that many batches of
        an epoch, besides the end of every epoch; 0: epoch ends only
    batch_log : write ``batches.log``: epoch, index and sha256 of every trained batch
    threshold_rule : how the per-class thresholds of ``thresholds.json`` are fitted on the
        validation split when the run ends: ``f1`` or ``precision:P`` (``experiments.thresholds``)
    verbose : Keras ``fit`` output on stderr: 0 none, 1 progress bar, 2 one line per epoch
    quiet : no log line and no Keras output (``verbose`` becomes 0)
    """

    out: str
    checkpoint_every: int = 100
    batch_log: bool = False
    threshold_rule: str = "f1"
    verbose: int = 2
    quiet: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "out", os.fspath(self.out))
        set_(self, "checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, low=0))
        set_(self, "batch_log", bool(self.batch_log))
        check_rule(self.threshold_rule)
        if self.verbose not in VERBOSITY or isinstance(self.verbose, bool):
            raise ConfigError(f"verbose must be 0, 1 or 2, got {self.verbose!r}")
        set_(self, "quiet", bool(self.quiet))
        if self.quiet:
            set_(self, "verbose", 0)


# The groups of TrainOptions: our own, whose every field is an option, and the loader's, of
# which a run takes the fields listed.
OWN_GROUPS: dict[str, type] = {
    "data": DataOptions,
    "model": ModelOptions,
    "optim": OptimOptions,
    "loss": LossOptions,
    "keep": KeepOptions,
}
LOADER_GROUPS: dict[str, tuple[type, tuple[str, ...]]] = {
    "split": (SplitOptions, ("fold", "n_folds")),
    "batch": (BatchOptions, ("batch_size", "targets", "target_step")),
    "build": (BuildOptions, ("workers", "in_memory")),
}
GROUP_TYPES: dict[str, type] = OWN_GROUPS | {group: cls for group, (cls, _) in LOADER_GROUPS.items()}
FIELD_GROUP: dict[str, str] = {
    f.name: group for group, cls in OWN_GROUPS.items() for f in dataclasses.fields(cls)
} | {name: group for group, (_, names) in LOADER_GROUPS.items() for name in names}
# The order run.json and config["train"] have always listed the options in (the command line's).
RECORDED = (
    "features",
    "model",
    "epochs",
    "fold",
    "n_folds",
    "out",
    "batch_size",
    "lr",
    "warmup_epochs",
    "weight_decay",
    "seed",
    "workers",
    "augment",
    "mixup",
    "unknown",
    "unknown_weight",
    "clip_weight",
    "patience",
    "in_memory",
    "crop_seconds",
    "targets",
    "target_step",
    "soft_labels",
    "windows",
    "window_labels",
    "init_from",
    "checkpoint_every",
    "batch_log",
    "threshold_rule",
    "verbose",
    "quiet",
)
# Options runs record since frame targets (then thresholds) exist: a run recorded before has
# none of them and was trained with these values (its run.json reads so, and a sweep counts it so).
ADDED_OPTIONS = {
    "targets": BatchOptions.targets,
    "target_step": BatchOptions.target_step,
    "threshold_rule": "f1",
    "clip_weight": 0.0,
}
# Options a resumed run may change: they do not change what is trained.
FREE_ON_RESUME = ("out", "workers", "checkpoint_every", "batch_log", "verbose", "quiet")


def check_fold(fold: Any, n_folds: Any) -> tuple[int, int]:
    """``(fold, n_folds)`` as ints, or ConfigError in ``train()``'s words (the loader then wants
    ``n_folds >= 2``)."""
    n_folds = check_int("n_folds", n_folds, low=1)
    fold = check_int("fold", fold, low=0)
    if fold >= n_folds:
        raise ConfigError(f"fold must be in [0, {n_folds}), got {fold}")
    return fold, n_folds


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Every option of a training run, in its groups (see the module docstring)."""

    data: DataOptions
    keep: KeepOptions
    split: SplitOptions = dataclasses.field(default_factory=SplitOptions)
    batch: BatchOptions = dataclasses.field(default_factory=BatchOptions)
    build: BuildOptions = dataclasses.field(default_factory=BuildOptions)
    model: ModelOptions = dataclasses.field(default_factory=ModelOptions)
    optim: OptimOptions = dataclasses.field(default_factory=OptimOptions)
    loss: LossOptions = dataclasses.field(default_factory=LossOptions)

    def __post_init__(self) -> None:
        for group, cls in GROUP_TYPES.items():
            if not isinstance(getattr(self, group), cls):
                raise ConfigError(
                    f"train options: {group} must be a {cls.__name__}, got {getattr(self, group)!r}"
                )
        if self.loss.clip_weight and self.batch.targets != "frames":
            raise ConfigError(
                f"clip_weight {self.loss.clip_weight:g} adds a clip term to frame targets; "
                f"targets are {self.batch.targets!r} (use targets 'frames' or clip_weight 0)"
            )

    @classmethod
    def from_kwargs(cls, **flat: Any) -> TrainOptions:
        """The options of ``train()``'s flat keywords (``features``, ``out``, ``batch_size``, ...),
        each in its group; a name that is no option is a ConfigError."""
        unknown = sorted(set(flat) - set(FIELD_GROUP))
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}")
        values: dict[str, dict[str, Any]] = {group: {} for group in GROUP_TYPES}
        for name, value in flat.items():
            values[FIELD_GROUP[name]][name] = value
        split, default = values["split"], SplitOptions()
        if split:  # train()'s own words for a bad fold, before the loader's
            split["fold"], split["n_folds"] = check_fold(
                split.get("fold", default.fold), split.get("n_folds", default.n_folds)
            )
        return cls(**{group: group_cls(**values[group]) for group, group_cls in GROUP_TYPES.items()})

    def to_kwargs(self) -> dict[str, Any]:
        """The flat options in ``RECORDED`` order, paths as strings: what ``run.json`` and
        ``config["train"]`` hold, and ``from_kwargs(**to_kwargs())`` gives these options back."""
        return {name: getattr(getattr(self, FIELD_GROUP[name]), name) for name in RECORDED}
