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

from commandline.flags import build, groups
from experiments.checkpoints import RUN_FILE
from experiments.models import available_models
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
from loader.options import BatchOptions


def _flag(p: argparse.ArgumentParser, flag: str, dest: str, **kwargs: Any) -> None:
    """Add the flag that sets option field ``dest`` (``"GROUP.FIELD"``, ``commandline.flags``).

    A flag that takes a value shows it as ``FIELD`` in the help, as it read before the groups.
    """
    if "choices" not in kwargs and "action" not in kwargs:
        kwargs["metavar"] = dest.rpartition(".")[2].upper()
    p.add_argument(*flag.split(), dest=dest, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The flags, in the help's order (the functions below add them a few at a time)."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train a model on a precomputed feature set (shards only, no audio).",
    )
    for add in (_add_run_flags, _add_schedule_flags, _add_batch_flags, _add_input_flags, _add_keeping_flags):
        add(p)
    return p


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The feature set, the model, the epochs, the fold, the run directory."""
    _flag(
        p, "--features", "data.features",
        help="feature set directory (with index.json); required unless --resume RUN",
    )  # fmt: skip
    _flag(
        p, "--model", "model.model", default=ModelOptions.model,
        help=f"model name: {', '.join(available_models())}",
    )  # fmt: skip
    _flag(
        p, "--epochs", "optim.epochs", type=int, default=OptimOptions.epochs, help="maximum number of epochs"
    )
    _flag(
        p, "--fold", "split.fold", type=int, default=SplitOptions.fold,
        help="validation fold (recordings grouped)",
    )  # fmt: skip
    _flag(p, "--n-folds", "split.n_folds", type=int, default=SplitOptions.n_folds)
    _flag(p, "--out", "keep.out", help="run directory, e.g. runs/baseline; required unless --resume RUN")


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    """The batch size, the learning rate and its schedule, the seed."""
    _flag(p, "--batch-size", "batch.batch_size", type=int, default=BatchOptions.batch_size)
    _flag(
        p, "--lr", "optim.lr", type=float, default=OptimOptions.lr,
        help="peak learning rate (AdamW, warm-up then cosine decay)",
    )  # fmt: skip
    _flag(
        p, "--warmup-epochs", "optim.warmup_epochs", type=float, default=OptimOptions.warmup_epochs,
        help="linear warm-up to --lr",
    )  # fmt: skip
    _flag(
        p, "--weight-decay", "optim.weight_decay", type=float, default=OptimOptions.weight_decay,
        help="AdamW weight decay",
    )  # fmt: skip
    _flag(
        p, "--seed", "optim.seed", type=int, default=OptimOptions.seed,
        help="seeds weights, shuffling and augmentation",
    )  # fmt: skip


def _add_batch_flags(p: argparse.ArgumentParser) -> None:
    """The batch workers, augmentation and mixup, the loss of unknown labels, early stopping."""
    _flag(
        p,
        "--workers",
        "build.workers",
        type=int,
        default=BuildOptions.workers,
        help="PyDataset worker threads",
    )
    _flag(
        p, "--augment", "data.augment", action=argparse.BooleanOptionalAction, default=DataOptions.augment,
        help="augment the training split: time shift, gain, SpecAugment masks (loader.Augment)",
    )  # fmt: skip
    _flag(
        p, "--mixup", "data.mixup", type=float, default=DataOptions.mixup,
        help="probability that a training example is mixed with another of its batch (with --augment)",
    )  # fmt: skip
    _flag(
        p, "--unknown", "loss.unknown", choices=UNKNOWN_MODES, default=LossOptions.unknown,
        help="how unannotated labels count in the loss",
    )  # fmt: skip
    _flag(
        p, "--unknown-weight", "loss.unknown_weight", type=float, default=LossOptions.unknown_weight,
        help="loss weight of an unknown label under --unknown negative",
    )  # fmt: skip
    _flag(
        p, "--patience", "optim.patience", type=int, default=OptimOptions.patience,
        help="early stopping patience in epochs",
    )  # fmt: skip


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    """The in-memory cache, the crop, soft labels, windows and the weights to start from."""
    _flag(
        p, "--in-memory", "build.in_memory", action=argparse.BooleanOptionalAction,
        default=BuildOptions.in_memory, help="cache the feature set in RAM",
    )  # fmt: skip
    _flag(
        p, "--crop-seconds", "data.crop_seconds", type=float,
        help="seconds the model sees (default: the feature set's duration)",
    )  # fmt: skip
    _flag(
        p, "--soft-labels", "data.soft_labels",
        help=".npy of soft labels for the unknown labels (experiments.pseudo)",
    )  # fmt: skip
    _flag(p, "--windows", "data.windows", help="windows feature set of the same recordings to train on too")
    _flag(
        p,
        "--window-labels",
        "data.window_labels",
        help=".npy of soft labels for --windows (experiments.pseudo)",
    )
    _flag(
        p, "--init-from", "model.init_from",
        help="model.keras to start from instead of fresh weights (fine-tuning)",
    )  # fmt: skip


def _add_keeping_flags(p: argparse.ArgumentParser) -> None:
    """Checkpoints, resuming, the batch log and the output: how a run is kept, not what it trains."""
    _flag(
        p, "--checkpoint-every", "keep.checkpoint_every", type=int, default=KeepOptions.checkpoint_every,
        help="also checkpoint every N batches of an epoch, besides every epoch end (0: epoch ends only)",
    )  # fmt: skip
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="go on with the unfinished run RUN from its last checkpoint, with the options in RUN/run.json "
        "(only --verbose/--quiet may be given too); without RUN: the run --out with these options",
    )
    _flag(
        p, "--batch-log", "keep.batch_log", action="store_true",
        help="write batches.log: the sha256 of every trained batch",
    )  # fmt: skip
    _flag(
        p, "--verbose", "keep.verbose", type=int, default=KeepOptions.verbose, choices=VERBOSITY,
        help="Keras fit output on stderr: 0 none, 1 progress bar, 2 one line per epoch (default)",
    )  # fmt: skip
    _flag(
        p, "-q --quiet", "keep.quiet", action="store_true",
        help="no log lines or Keras output (same as --verbose 0)",
    )  # fmt: skip


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
    for name in ("epochs", "batch_size", "workers", "n_folds", "patience"):
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
