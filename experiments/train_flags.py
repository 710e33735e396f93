"""The command line of ``python -m experiments.train``: its flags, their checks, the options they make.

Each flag's ``dest`` names the option field it sets, ``"GROUP.FIELD"`` (``commandline.flags``):
``--batch-size`` stores into ``batch.batch_size``, the ``batch_size`` of the run's
``loader.options.BatchOptions``, which goes on to the loader (``experiments.sequences``). Its
default is that field's. ``options_of`` builds ``experiments.train_options.TrainOptions`` group by group
from the parsed flags; ``parse_args`` gives them by ``train()``'s flat keyword names instead.
``--resume`` (no group) is the command's own: which run, not an option of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from commandline.flags import add_flag, build, groups
from commandline.parser import CommandParser
from experiments.checkpoints import RUN_FILE
from experiments.models import available_models, frame_models
from experiments.train_options import (
    GROUP_TYPES,
    UNKNOWN_MODES,
    VERBOSITY,
    BuildOptions,
    DataOptions,
    KeepOptions,
    LossOptions,
    ModelOptions,
    OptimOptions,
    SplitOptions,
    TrainOptions,
)
from loader.frame_targets import TARGETS
from loader.options import BatchOptions


def build_parser() -> argparse.ArgumentParser:
    """The flags, in the help's order (the functions below add them a few at a time)."""
    p = CommandParser(
        prog="python -m experiments.train",
        description="Train a model on a precomputed feature set (shards only, no audio).",
    )
    for add in (_add_run_flags, _add_schedule_flags, _add_batch_flags, _add_input_flags, _add_keeping_flags):
        add(p)
    return p


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The feature set, the model, the epochs, the fold, the run directory."""
    add_flag(
        p,
        "--features",
        field="data.features",
        help="feature set directory (with index.json); required unless --resume RUN",
    )
    add_flag(
        p,
        "--model",
        field="model.model",
        default=ModelOptions.model,
        help=f"model name: {', '.join(available_models())}",
    )
    add_flag(
        p,
        "--epochs",
        field="optim.epochs",
        type=int,
        default=OptimOptions.epochs,
        help="maximum number of epochs",
    )
    add_flag(
        p,
        "--fold",
        field="split.fold",
        type=int,
        default=SplitOptions.fold,
        help="validation fold (recordings grouped)",
    )
    add_flag(p, "--n-folds", field="split.n_folds", type=int, default=SplitOptions.n_folds)
    add_flag(
        p, "--out", field="keep.out", help="run directory, e.g. runs/baseline; required unless --resume RUN"
    )


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    """The batch size, the learning rate and its schedule, the seed."""
    add_flag(p, "--batch-size", field="batch.batch_size", type=int, default=BatchOptions.batch_size)
    add_flag(
        p,
        "--lr",
        field="optim.lr",
        type=float,
        default=OptimOptions.lr,
        help="peak learning rate (AdamW, warm-up then cosine decay)",
    )
    add_flag(
        p,
        "--warmup-epochs",
        field="optim.warmup_epochs",
        type=float,
        default=OptimOptions.warmup_epochs,
        help="linear warm-up to --lr",
    )
    add_flag(
        p,
        "--weight-decay",
        field="optim.weight_decay",
        type=float,
        default=OptimOptions.weight_decay,
        help="AdamW weight decay",
    )
    add_flag(
        p,
        "--seed",
        field="optim.seed",
        type=int,
        default=OptimOptions.seed,
        help="seeds weights, shuffling and augmentation",
    )


def _add_batch_flags(p: argparse.ArgumentParser) -> None:
    """The batch workers, augmentation and mixup, the loss of unknown labels, early stopping."""
    add_flag(
        p,
        "--workers",
        field="build.workers",
        type=int,
        default=BuildOptions.workers,
        help="PyDataset worker threads",
    )
    add_flag(
        p,
        "--augment",
        field="data.augment",
        action=argparse.BooleanOptionalAction,
        default=DataOptions.augment,
        help="augment the training split: time shift, gain, SpecAugment masks (loader.Augment)",
    )
    add_flag(
        p,
        "--mixup",
        field="data.mixup",
        type=float,
        default=DataOptions.mixup,
        help="probability that a training example is mixed with another of its batch (with --augment)",
    )
    add_flag(
        p,
        "--unknown",
        field="loss.unknown",
        choices=UNKNOWN_MODES,
        default=LossOptions.unknown,
        help="how unannotated labels count in the loss",
    )
    add_flag(
        p,
        "--unknown-weight",
        field="loss.unknown_weight",
        type=float,
        default=LossOptions.unknown_weight,
        help="loss weight of an unknown label under --unknown negative",
    )
    add_flag(
        p,
        "--clip-weight",
        field="loss.clip_weight",
        type=float,
        default=LossOptions.clip_weight,
        help="with --targets frames: weight of a clip term added to the loss (each crop's maximum "
        "score over steps against its clip label); 0: the frame term alone",
    )
    add_flag(
        p,
        "--patience",
        field="optim.patience",
        type=int,
        default=OptimOptions.patience,
        help="early stopping patience in epochs",
    )


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    """The in-memory cache, the crop, the targets, soft labels, windows and the weights to start from."""
    add_flag(
        p,
        "--in-memory",
        field="build.in_memory",
        action=argparse.BooleanOptionalAction,
        default=BuildOptions.in_memory,
        help="cache the feature set in RAM",
    )
    add_flag(
        p,
        "--crop-seconds",
        field="data.crop_seconds",
        type=float,
        help="seconds the model sees (default: the feature set's duration)",
    )
    add_flag(
        p,
        "--targets",
        field="batch.targets",
        choices=TARGETS,
        default=BatchOptions.targets,
        help=f"what the model learns: clip labels, or frame targets per step (a frame model: {', '.join(frame_models())})",
    )
    add_flag(
        p,
        "--target-step",
        field="batch.target_step",
        type=int,
        default=BatchOptions.target_step,
        help="frames per step of frame targets: the frame model's time stride",
    )
    add_flag(
        p,
        "--soft-labels",
        field="data.soft_labels",
        help=".npy of soft labels for the unknown labels (experiments.pseudo)",
    )
    add_flag(
        p,
        "--windows",
        field="data.windows",
        help="windows feature set of the same recordings to train on too",
    )
    add_flag(
        p,
        "--window-labels",
        field="data.window_labels",
        help=".npy of soft labels for --windows (experiments.pseudo)",
    )
    add_flag(
        p,
        "--init-from",
        field="model.init_from",
        help="model.keras to start from instead of fresh weights (fine-tuning)",
    )


def _add_keeping_flags(p: argparse.ArgumentParser) -> None:
    """Checkpoints, resuming, the batch log and the output: how a run is kept, not what it trains."""
    add_flag(
        p,
        "--checkpoint-every",
        field="keep.checkpoint_every",
        type=int,
        default=KeepOptions.checkpoint_every,
        help="also checkpoint every N batches of an epoch, besides every epoch end (0: epoch ends only)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="go on with the unfinished run RUN from its last checkpoint, with the options in RUN/run.json "
        "(only --verbose/--quiet may be given too); without RUN: the run --out with these options",
    )
    add_flag(
        p,
        "--batch-log",
        field="keep.batch_log",
        action="store_true",
        help="write batches.log: the sha256 of every trained batch",
    )
    add_flag(
        p,
        "--threshold-rule",
        field="keep.threshold_rule",
        default=KeepOptions.threshold_rule,
        help="how the per-class thresholds (thresholds.json) are fitted on the validation split at the "
        "end: f1, or precision:P (the lowest threshold of precision >= P)",
    )
    add_flag(
        p,
        "--verbose",
        field="keep.verbose",
        type=int,
        default=KeepOptions.verbose,
        choices=VERBOSITY,
        help="Keras fit output on stderr: 0 none, 1 progress bar, 2 one line per epoch (default); "
        "given as 1 or 2, also TensorFlow's start-up lines, held back otherwise",
    )
    add_flag(
        p,
        "-q",
        "--quiet",
        field="keep.quiet",
        action="store_true",
        help="no log lines or Keras output (same as --verbose 0)",
    )


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check itself; ``p.error`` on the first bad option."""
    if getattr(args, "keep.quiet"):
        setattr(args, "keep.verbose", 0)
    if isinstance(args.resume, str):
        given = [
            dest
            for dest, value in vars(args).items()
            if dest not in ("resume", "keep.verbose", "keep.quiet") and value != p.get_default(dest)
        ]
        if given:
            flag = given[0].rpartition(".")[2].replace("_", "-")
            p.error(f"--resume RUN takes the options from RUN/{RUN_FILE}; drop --{flag}")
        return
    flat = _flat(args)
    if flat["features"] is None or flat["out"] is None:
        p.error("--features and --out are required (or --resume RUN)")
    if flat["checkpoint_every"] < 0:
        p.error(f"--checkpoint-every must be >= 0, got {flat['checkpoint_every']}")
    for name in ("epochs", "batch_size", "workers", "n_folds", "patience", "target_step"):
        if flat[name] < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {flat[name]}")
    if not 0 <= flat["fold"] < flat["n_folds"]:
        p.error(f"--fold must be in [0, {flat['n_folds']}), got {flat['fold']}")
    if not flat["lr"] > 0:
        p.error(f"--lr must be > 0, got {flat['lr']}")
    if not 0 <= flat["mixup"] <= 1:
        p.error(f"--mixup must be in [0, 1], got {flat['mixup']}")
    if flat["unknown_weight"] < 0:
        p.error(f"--unknown-weight must be >= 0, got {flat['unknown_weight']}")
    if flat["clip_weight"] < 0:
        p.error(f"--clip-weight must be >= 0, got {flat['clip_weight']}")


def _flat(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags by field name (``"optim.epochs"`` -> ``"epochs"``), in the flags' order."""
    return {dest.rpartition(".")[2]: value for dest, value in vars(args).items()}


def parse_flags(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed and checked flags, by ``dest`` (``"optim.epochs"``); ``p.error`` on a bad one."""
    p = build_parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags by ``train()``'s keyword names: ``train(**vars(parse_args(argv)))``."""
    return argparse.Namespace(**_flat(parse_flags(argv)))


def options_of(args: argparse.Namespace) -> TrainOptions:
    """The options the parsed flags set, built group by group (``commandline.flags``)."""
    values = groups(args)
    return TrainOptions(**{group: build(cls, values[group]) for group, cls in GROUP_TYPES.items()})
