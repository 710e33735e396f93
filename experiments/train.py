"""Train a registered model on a precomputed feature set: ``train()`` and the command line.

    python -m experiments.train --features features/demo --model baseline --epochs 40 \\
        --fold 0 --out runs/baseline

or, from Python (a sweep, a notebook), with the same defaults::

    from experiments.train import train
    metrics = train("features/demo", out="runs/baseline", model="baseline", epochs=40, fold=0)

The defaults are the tuned demo recipe: AdamW at 5e-3 with a one-epoch warm-up and cosine
decay, the loader's augmentations plus mixup on half the examples, unknown labels counted
as negatives, early stopping after 10 epochs without a better ``val_lwlrap``.

Both ends make one ``experiments.train_options.TrainOptions`` (``train()``'s keywords by their flat
names; each flag by its ``dest``, ``"optim.epochs"``, the field it sets) and hand it to
``experiments.train_run.run_training``. Reads only the shards (through ``ShardSequence``), never
audio. Writes into the run directory ``--out`` (``out=`` from Python):

- ``model.keras``: the model of the epoch with the best ``val_lwlrap`` (``callbacks.BestModel``);
- ``history.csv``: loss and metrics per epoch (``callbacks.HistoryLog``: CSVLogger's rows);
- ``metrics.json``: ``val_lwlrap``, ``val_top1`` (of the saved model, recomputed on the
  whole validation split), per-class LWLRAP keyed by class name, the feature set
  ``fingerprint``, the full ``config`` (these arguments, the feature config, the class names
  in output order and the class scheme, which ``experiments.predict`` reads), timings and
  versions;
- ``curves.png``: loss and LWLRAP per epoch;
- ``thresholds.json``: a threshold per class fitted on the validation split by
  ``--threshold-rule`` (``f1``, or ``precision:P``), which ``experiments.predict`` uses, and
  ``validation_scores.npz``, the validation scores they were fitted on
  (``experiments.thresholds``);
- ``run.json``: these options, written when the run starts;
- while it runs, ``checkpoint.loader.json`` and the ``checkpoint-*.keras`` it names: the model
  with its optimizer and the loader's position, every ``--checkpoint-every`` batches and at
  the end of every epoch (``experiments.checkpoints.LoaderCheckpoint``), removed once the run is done;
- with ``--batch-log``: ``batches.log``, the sha256 of every trained batch (epoch, index, digest).

``metrics.json`` is written last: its presence marks a finished run. A run that did not finish
goes on from its last checkpoint with ``--resume RUN`` (``resume_run``): the remaining
batches of the saved epoch, then the following epochs, with the bookkeeping of the epochs
already run (history, best epoch, early stopping), and ends with the same outputs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from experiments.checkpoints import (
    BATCH_LOG_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FILE,
    read_run_options,
)
from experiments.train_flags import build_parser, options_of, parse_args, parse_flags
from experiments.train_options import KeepOptions, TrainOptions
from experiments.train_run import run_training
from melshards.errors import FormatError, MelShardsError
from melshards.names import INDEX_FILE
from melshards.remote import is_url

# Named here too for the callers of train(): the run directory's files (experiments.checkpoints)
# and the command line (experiments.train_flags).
__all__ = [
    "BATCH_LOG_FILE",
    "CURVES_FILE",
    "HISTORY_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "RUN_FILE",
    "build_parser",
    "main",
    "parse_args",
    "resume_run",
    "train",
]
PROG = "experiments.train"


def train(
    features: str | os.PathLike,
    *,
    out: str | os.PathLike,
    model: str = "baseline",
    epochs: int = 40,
    fold: int = 0,
    n_folds: int = 5,
    batch_size: int = 32,
    lr: float = 5e-3,
    warmup_epochs: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
    workers: int = 1,
    augment: bool = True,
    mixup: float = 0.5,
    unknown: str = "negative",
    unknown_weight: float = 1.0,
    clip_weight: float = 0.0,
    patience: int = 10,
    in_memory: bool = False,
    crop_seconds: float | None = None,
    targets: str = "clip",
    target_step: int = 8,
    soft_labels: str | os.PathLike | None = None,
    windows: str | os.PathLike | None = None,
    window_labels: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    batch_log: bool = False,
    threshold_rule: str = "f1",
    verbose: int = 2,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one experiment: fit, save the best epoch, score it; returns what ``metrics.json`` holds.

    The keywords are the fields of ``experiments.train_options``' groups, which document them, with
    the command line's defaults, option for option: what to train on (``DataOptions``:
    ``features``, a labelled feature set, ``augment``, ``mixup``, ``crop_seconds``,
    ``soft_labels``, ``windows``, ``window_labels``); the loader's (``fold``, ``n_folds``,
    ``batch_size``, ``workers``, ``in_memory``); the model (``ModelOptions``: ``model``,
    ``init_from``); ``OptimOptions`` (``epochs``, ``lr``, ``warmup_epochs``, ``weight_decay``,
    ``patience``, ``seed``); ``LossOptions`` (``unknown``, ``unknown_weight``, ``clip_weight``);
    ``KeepOptions`` (``out``, ``checkpoint_every``, ``batch_log``, ``threshold_rule``, ``verbose``,
    ``quiet``).

    ``resume``: go on with the unfinished run in ``out`` from its last checkpoint. The options
    must be those in ``out/run.json`` (``workers``, ``checkpoint_every``, ``batch_log``,
    ``verbose`` and ``quiet`` may change); ``resume_run(out)`` reads them for you.

    Returns ``val_lwlrap``, ``val_top1``, ``val_loss``, per-class LWLRAP and weights,
    ``best_epoch``, ``epochs_run``, the feature set ``fingerprint``, timings, and ``config``
    (``config["train"]``: these options). Raises ConfigError for an option out of range or an
    unknown model name (with ``resume``: an option other than ``out/run.json``'s), FormatError
    when ``features`` is not a finished feature set, ExperimentError with ``resume`` when
    ``out`` holds no unfinished run with a checkpoint.
    """
    flat = dict(locals())  # every keyword above: the options by their flat names, and resume
    resume = flat.pop("resume")
    return _run(TrainOptions.from_kwargs(**flat), resume=bool(resume))


def resume_run(
    run_dir: str | os.PathLike, *, verbose: int | None = None, quiet: bool | None = None
) -> dict[str, Any]:
    """Go on with the unfinished run in ``run_dir`` (``train(..., resume=True)`` with the options
    of its ``run.json``); ``verbose`` and ``quiet`` replace the recorded ones when given."""
    options = read_run_options(run_dir)
    if verbose is not None:
        options["verbose"] = verbose
    if quiet is not None:
        options["quiet"] = quiet
    options.pop("resume", None)
    options["out"] = os.fspath(run_dir)
    return _run(TrainOptions.from_kwargs(**options), resume=True)


# The command that makes each feature set a run reads, named when the set is not there.
MAKERS = {
    "features": "precompute features --audio-dir AUDIO --tp TP.csv --out {path}",
    "windows": "precompute windows --audio-dir AUDIO --out {path}",
}


def check_feature_sets(options: TrainOptions) -> None:
    """FormatError naming the command that makes a feature set the options name that does not
    exist (a local path); a directory without an index is ``melshards.index``'s to explain."""
    for field, maker in MAKERS.items():
        path = getattr(options.data, field)
        if path is None or is_url(path) or Path(path).exists():
            continue
        raise FormatError(
            f"{Path(path) / INDEX_FILE}: no index; not a finished feature set "
            f"(make one with {maker.format(path=path)})"
        )


def _run(options: TrainOptions, *, resume: bool) -> dict[str, Any]:
    check_feature_sets(options)
    return run_training(options, resume=resume)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_flags(argv)
    quiet, verbose, resume = getattr(args, "keep.quiet"), getattr(args, "keep.verbose"), args.resume
    setup_logging(quiet=quiet)
    run = resume if isinstance(resume, str) else getattr(args, "keep.out")
    try:
        if isinstance(resume, str):
            # The recorded verbosity unless one is given (the parser's defaults are train()'s).
            given = None if verbose == KeepOptions.verbose and not quiet else verbose
            metrics = resume_run(resume, verbose=given, quiet=quiet or None)
        else:
            metrics = _run(options_of(args), resume=bool(resume))
    except (MelShardsError, OSError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    log.info(f"wrote {MODEL_FILE}, {HISTORY_FILE}, {METRICS_FILE} and {CURVES_FILE} to {run}")
    print(
        f"{metrics['model']}: val_lwlrap {metrics['val_lwlrap']:.4f}, val_top1 {metrics['val_top1']:.4f} "
        f"(best epoch {metrics['best_epoch']} of {metrics['epochs_run']}), "
        f"{metrics['seconds']:.0f} s, {metrics['samples_per_second']} samples/s -> {run}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
