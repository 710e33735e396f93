"""Train a registered model on a precomputed feature set.

    python -m experiments.train --features features/demo --model baseline --epochs 40 \\
        --fold 0 --out runs/baseline

or, from Python (a sweep, a notebook), with the same defaults::

    from experiments.train import train
    metrics = train("features/demo", out="runs/baseline", model="baseline", epochs=40, fold=0)

The defaults are the tuned demo recipe: AdamW at 5e-3 with a one-epoch warm-up and cosine
decay, the loader's augmentations plus mixup on half the examples, unknown labels counted
as negatives, early stopping after 10 epochs without a better ``val_lwlrap``.

Reads only the shards (through ``ShardSequence``), never audio. Writes into the run
directory ``--out`` (``out=`` from Python):

- ``model.keras``: the model of the epoch with the best ``val_lwlrap`` (ModelCheckpoint);
- ``history.csv``: loss and metrics per epoch (CSVLogger);
- ``metrics.json``: ``val_lwlrap``, ``val_top1`` (of the saved model, recomputed on the
  whole validation split), per-class LWLRAP keyed by class name, the feature set
  ``fingerprint``, the full ``config`` (these arguments, the feature config, the class names
  in output order and the class scheme, which ``experiments.predict`` reads), timings and
  versions;
- ``curves.png``: loss and LWLRAP per epoch;
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

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from experiments.checkpoints import CHECKPOINT_PREFIX, CHECKPOINT_STATE, LoaderCheckpoint
from experiments.errors import ExperimentError
from experiments.losses import UNKNOWN_MODES, MaskedBinaryCrossentropy
from experiments.metrics import Lwlrap, Top1, class_lwlrap, lwlrap, top1
from experiments.models import available_models, build_model
from experiments.plots import plot_curves, read_history
from loader import Augment, ShardSequence
from loader.sequence import PairedSequence
from loader.state import read_state
from melshards.config import frames_for
from melshards.errors import ConfigError, MelShardsError
from melshards.files import atomic_write_text
from melshards.index import read_index
from melshards.remote import is_url

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
RUN_FILE = "run.json"
BATCH_LOG_FILE = "batches.log"
MONITOR = "val_lwlrap"
# Options a resumed run may change: they do not change what is trained.
FREE_ON_RESUME = ("out", "workers", "checkpoint_every", "batch_log", "verbose", "quiet", "resume")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train a model on a precomputed feature set (shards only, no audio).",
    )
    p.add_argument("--features", help="feature set directory (with index.json); required unless --resume RUN")
    p.add_argument("--model", default="baseline", help=f"model name: {', '.join(available_models())}")
    p.add_argument("--epochs", type=int, default=40, help="maximum number of epochs")
    p.add_argument("--fold", type=int, default=0, help="validation fold (recordings grouped)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--out", help="run directory, e.g. runs/baseline; required unless --resume RUN")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--lr", type=float, default=5e-3, help="peak learning rate (AdamW, warm-up then cosine decay)"
    )
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up to --lr")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and augmentation")
    p.add_argument("--workers", type=int, default=1, help="PyDataset worker threads")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="augment the training split: time shift, gain, SpecAugment masks (loader.Augment)",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=0.5,
        help="probability that a training example is mixed with another of its batch (with --augment)",
    )
    p.add_argument(
        "--unknown",
        choices=UNKNOWN_MODES,
        default="negative",
        help="how unannotated labels count in the loss",
    )
    p.add_argument(
        "--unknown-weight",
        type=float,
        default=1.0,
        help="loss weight of an unknown label under --unknown negative",
    )
    p.add_argument("--patience", type=int, default=10, help="early stopping patience in epochs")
    p.add_argument(
        "--in-memory",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="cache the feature set in RAM",
    )
    p.add_argument(
        "--crop-seconds", type=float, help="seconds the model sees (default: the feature set's duration)"
    )
    p.add_argument("--soft-labels", help=".npy of soft labels for the unknown labels (experiments.pseudo)")
    p.add_argument("--windows", help="windows feature set of the same recordings to train on too")
    p.add_argument("--window-labels", help=".npy of soft labels for --windows (experiments.pseudo)")
    p.add_argument("--init-from", help="model.keras to start from instead of fresh weights (fine-tuning)")
    _add_keeping_options(p)
    p.add_argument(
        "--verbose",
        type=int,
        default=2,
        choices=(0, 1, 2),
        help="Keras fit output on stderr: 0 none, 1 progress bar, 2 one line per epoch (default)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no log lines or Keras output (same as --verbose 0)"
    )
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _add_keeping_options(p: argparse.ArgumentParser) -> None:
    """Checkpoints, resuming and the batch log: how a run is kept, not what it trains."""
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
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
    p.add_argument(
        "--batch-log", action="store_true", help="write batches.log: the sha256 of every trained batch"
    )


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check itself; ``p.error`` on the first bad option."""
    if args.quiet:
        args.verbose = 0
    if isinstance(args.resume, str):
        given = [
            name
            for name, value in vars(args).items()
            if name not in ("resume", "verbose", "quiet") and value != p.get_default(name)
        ]
        if given:
            p.error(
                f"--resume RUN takes the options from RUN/{RUN_FILE}; drop --{given[0].replace('_', '-')}"
            )
        return
    if args.features is None or args.out is None:
        p.error("--features and --out are required (or --resume RUN)")
    if args.checkpoint_every < 0:
        p.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    for name in ("epochs", "batch_size", "workers", "n_folds", "patience"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.fold < args.n_folds:
        p.error(f"--fold must be in [0, {args.n_folds}), got {args.fold}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.mixup <= 1:
        p.error(f"--mixup must be in [0, 1], got {args.mixup}")
    if args.unknown_weight < 0:
        p.error(f"--unknown-weight must be >= 0, got {args.unknown_weight}")


class TrainTimer(keras.callbacks.Callback):
    """Seconds spent in the training part of each epoch (validation excluded).

    ``carry``: seconds an earlier process spent on the first epoch timed here (a resumed run).
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.carry = 0.0
        self._start = 0.0
        self._open = False

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()
        self._open = True

    def running(self) -> float:
        """Seconds of the epoch in progress so far (0 between epochs)."""
        return self.carry + time.perf_counter() - self._start if self._open else 0.0

    def _stop(self) -> None:
        if self._open:
            self.seconds.append(self.running())
            self.carry = 0.0
            self._open = False

    def on_test_begin(self, logs: Any = None) -> None:
        self._stop()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._stop()


class FitLedger(keras.callbacks.Callback):
    """What a run knows of its epochs, kept across ``fit`` calls and processes.

    ``history`` holds the logs of every finished epoch (as ``keras.callbacks.History`` does);
    ``state()`` is written into each checkpoint and ``fit_state`` (a checkpoint's) starts a
    resumed run from it. At the start of every ``fit`` call the best ``val_lwlrap`` so far goes
    back into ``best_model`` (ModelCheckpoint) and ``early`` (EarlyStopping: best, best epoch,
    epochs waited), which a call resets.
    """

    def __init__(
        self, *, best_model, early, timer: TrainTimer, started: float, fit_state: dict | None
    ) -> None:
        super().__init__()
        state = fit_state or {}
        self.best_model, self.early, self.timer = best_model, early, timer
        self.history: dict[str, list[float]] = {k: list(v) for k, v in state.get("history", {}).items()}
        self.stopped = bool(state.get("stopped", False))
        timer.seconds = list(state.get("train_seconds", []))
        timer.carry = float(state.get("partial_train_seconds", 0.0))
        # perf_counter readings that the run's wall and fit seconds count from, earlier processes included
        self.started = started - float(state.get("seconds", 0.0))
        self._fit_before = float(state.get("fit_seconds", 0.0))
        self.fit_started: float | None = None  # when this process's fit calls began

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("loss", []))

    def fit_seconds(self) -> float:
        return self._fit_before + (
            0.0 if self.fit_started is None else time.perf_counter() - self.fit_started
        )

    def on_train_begin(self, logs: Any = None) -> None:
        scores = self.history.get(MONITOR, [])
        if scores:  # the first best, as the callbacks' strict "greater than" keeps it
            best = int(np.argmax(scores))
            self.best_model.best = self.early.best = scores[best]
            self.early.best_epoch, self.early.wait = best, len(scores) - 1 - best

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.stopped = bool(self.model.stop_training)

    def state(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "stopped": self.stopped,
            "train_seconds": list(self.timer.seconds),
            "partial_train_seconds": self.timer.running(),
            "seconds": time.perf_counter() - self.started,
            "fit_seconds": self.fit_seconds(),
        }


def batch_digest(batch: tuple[np.ndarray, ...]) -> str:
    """sha256 of a batch's arrays, in order."""
    digest = hashlib.sha256()
    for array in batch:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class BatchLog(keras.callbacks.Callback):
    """``batches.log``: one line ``epoch index sha256`` per trained batch (``--batch-log``).

    ``sequence`` is what ``fit`` gets: the training sequence, noting the digest of every batch
    it hands out; a line is written once the batch is trained.
    """

    def __init__(self, seq: Any, path: Path) -> None:
        super().__init__()
        self.path, self.digests = path, {}
        self.sequence = _DigestedSequence(seq, self.digests)
        self._epoch, self._first = 0, 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        seq = self.sequence.seq
        self._epoch, self._first = seq.epoch, seq.start_batch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        index = self._first + batch
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{self._epoch} {index} {self.digests.pop((self._epoch, index))}\n")


class _DigestedSequence(keras.utils.PyDataset):
    """``seq`` for ``fit``, keeping the digest of each batch by (epoch, index in the epoch)."""

    def __init__(self, seq: Any, digests: dict) -> None:
        super().__init__()
        self.seq, self.digests = seq, digests

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def num_batches(self) -> int:
        return self.seq.num_batches

    def __getitem__(self, index: int) -> tuple:
        batch = self.seq[index]
        self.digests[(self.seq.epoch, self.seq.start_batch + index)] = batch_digest(batch)
        return batch

    def on_epoch_begin(self) -> None:
        self.seq.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.seq.on_epoch_end()


def truncate_run_logs(out: Path, *, epochs_done: int, epoch: int, batch: int) -> None:
    """Drop what a killed run logged after its last checkpoint: ``history.csv`` rows beyond the
    first ``epochs_done`` epochs, ``batches.log`` lines at or after (``epoch``, ``batch``)."""
    history = out / HISTORY_FILE
    if history.exists():
        lines = history.read_text(encoding="utf-8").splitlines(keepends=True)
        atomic_write_text(history, "".join(lines[: 1 + epochs_done]) if epochs_done else "")
    log_file = out / BATCH_LOG_FILE
    if log_file.exists():
        kept = [
            line
            for line in log_file.read_text(encoding="utf-8").splitlines(keepends=True)
            if tuple(int(v) for v in line.split()[:2]) < (epoch, batch)
        ]
        atomic_write_text(log_file, "".join(kept))


def score_sequence(model: keras.Model, seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 truth for every batch of ``seq``, in order.

    Returns (truth, scores), both np.ndarray [shape=(n, n_classes)], float32.
    """
    truths, scores = [], []
    for i in range(len(seq)):
        batch = seq[i]
        x, y = batch[0], batch[1]
        scores.append(keras.ops.convert_to_numpy(model(x, training=False)))
        truths.append(np.asarray(y))
    n_classes = model.output_shape[-1]
    if not scores:
        return np.zeros((0, n_classes), np.float32), np.zeros((0, n_classes), np.float32)
    return (np.concatenate(truths) > 0.5).astype(np.float32), np.concatenate(scores)


def make_sequences(
    features: str | os.PathLike,
    *,
    fold: int,
    n_folds: int,
    batch_size: int,
    seed: int,
    workers: int,
    augment: bool,
    mixup: float,
    in_memory: bool,
    crop_seconds: float | None = None,
    soft_labels: str | os.PathLike | None = None,
    windows: str | os.PathLike | None = None,
    window_labels: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """The training sequence (shuffled, augmented) and the validation sequence of ``features``.

    ``soft_labels`` fill the unknown labels of the training split only: validation scores
    stay against the annotations.
    """
    common = dict(
        fold=fold,
        n_folds=n_folds,
        batch_size=batch_size,
        seed=seed,
        dtype="float16",  # half the bytes; the model casts to float32 inside
        return_mask=True,
        in_memory=in_memory,
    )
    if crop_seconds is not None:
        config = read_index(features).config
        common["crop_frames"] = frames_for(
            crop_seconds, sample_rate=config.sample_rate, hop_length=config.hop_length
        )
    extra = {"workers": workers} if workers > 1 else {}
    if soft_labels is not None:
        extra["soft_labels"] = soft_labels
    augmentation = Augment(mixup_p=mixup) if augment else Augment.off()
    train_seq = ShardSequence(features, split="train", shuffle=True, augment=augmentation, **common, **extra)
    val_seq = ShardSequence(features, split="val", shuffle=False, augment=False, **common)
    if windows is not None:
        train_seq = PairedSequence(
            train_seq, _window_sequence(windows, window_labels, train_seq, augmentation, common)
        )
    return train_seq, val_seq


def _window_sequence(windows, labels, train_seq, augmentation, common: dict) -> Any:
    """The windows of the training fold's recordings (the validation fold stays unseen), in
    batches of the training batch size: each training batch is followed by one of them.

    (Measured on the sparse demo: as many windows as labelled examples per epoch raised test
    LWLRAP by 0.033 over round 0; every window each epoch, 4.4x more, lowered it by 0.089.)
    """
    return ShardSequence(
        windows,
        split="all",
        shuffle=True,
        augment=augmentation,
        soft_labels=labels,
        recordings=set(np.unique(train_seq.recording_id).tolist()),
        **common,
    )


# train()'s options that make_sequences takes, as checked by _checked_arguments.
SEQUENCE_OPTIONS = tuple(name for name in inspect.signature(make_sequences).parameters if name != "features")


def compile_model(
    model: keras.Model,
    *,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    warmup_epochs: float,
    weight_decay: float,
    unknown: str,
    unknown_weight: float,
) -> None:
    """AdamW with a linear warm-up to ``lr`` then cosine decay, the masked loss, LWLRAP and top-1."""
    total = max(epochs * steps_per_epoch, 1)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1 if warmup else lr,
        decay_steps=total - warmup,
        alpha=0.02,
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay),
        loss=MaskedBinaryCrossentropy(unknown=unknown, unknown_weight=unknown_weight),
        metrics=[Lwlrap(), Top1()],
    )


def fit_run(
    net: keras.Model,
    train_seq: Any,
    val_seq: Any,
    *,
    out: Path,
    epochs: int,
    patience: int,
    verbose: int,
    checkpoint: LoaderCheckpoint,
    started: float,
    fit_state: dict | None = None,
    batch_log: bool = False,
) -> tuple[FitLedger, TrainTimer]:
    """``net.fit`` with the run's callbacks: best-epoch model and early stopping on
    ``val_lwlrap``, the history CSV, the training timer, the ledger of the epochs and the
    checkpoints (``checkpoint``). ``fit_state``: a restored checkpoint's ledger, to go on from.

    A sequence loaded in the middle of an epoch gets two ``fit`` calls, that epoch's remaining
    batches then the epochs after it (``loader.sequence``). Returns the ledger (``.history``:
    every epoch's logs, earlier processes' included) and the timer.
    """
    timer = TrainTimer()
    best_model = keras.callbacks.ModelCheckpoint(
        out / MODEL_FILE, monitor=MONITOR, mode="max", save_best_only=True
    )
    # The run's model is model.keras (the best epoch's), never the one in memory: no weights to restore.
    early = keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=patience)
    ledger = FitLedger(best_model=best_model, early=early, timer=timer, started=started, fit_state=fit_state)
    checkpoint.extra = ledger.state
    # In this order: the ledger restores the callbacks before it, and has the epoch's logs
    # before the checkpoint that records them.
    callbacks = [timer, best_model, early, keras.callbacks.CSVLogger(out / HISTORY_FILE, append=True), ledger]
    fed = train_seq
    if batch_log:
        logger = BatchLog(train_seq, out / BATCH_LOG_FILE)
        fed = logger.sequence
        callbacks.append(logger)
    callbacks.append(checkpoint)
    ledger.fit_started = time.perf_counter()
    first = ledger.epochs_done
    calls = [(first, first + 1), (first + 1, epochs)] if train_seq.start_batch else [(first, epochs)]
    for initial_epoch, last in calls:
        if initial_epoch >= last or ledger.stopped:
            break
        # Keras writes its progress to stdout; stdout is for the result line only.
        with contextlib.redirect_stdout(sys.stderr):
            net.fit(
                fed,
                validation_data=val_seq,
                initial_epoch=initial_epoch,
                epochs=last,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the sequence shuffles examples; in-order batches keep its look-ahead useful
            )
    return ledger, timer


def _check_int(name: str, value: Any, *, low: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def _checked_arguments(**arguments: Any) -> dict[str, Any]:
    """``train``'s parameters, checked and normalized (ints, floats, ``verbose`` 0 under ``quiet``).

    batch_size is checked by ShardSequence, unknown and unknown_weight's range by
    MaskedBinaryCrossentropy: both are built before the run directory is made. The seed is
    checked here because keras.utils.set_random_seed takes it before either of them.
    """
    checked = dict(arguments)
    epochs = _check_int("epochs", arguments["epochs"], low=1)
    n_folds = _check_int("n_folds", arguments["n_folds"], low=1)
    fold = _check_int("fold", arguments["fold"], low=0)
    if fold >= n_folds:
        raise ConfigError(f"fold must be in [0, {n_folds}), got {fold}")
    seed = arguments["seed"]
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    lr = _check_float("lr", arguments["lr"])
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    mixup = _check_float("mixup", arguments["mixup"])
    if not 0 <= mixup <= 1:
        raise ConfigError(f"mixup must be in [0, 1], got {mixup}")
    verbose = arguments["verbose"]
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ConfigError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    checked.update(
        epochs=epochs,
        n_folds=n_folds,
        fold=fold,
        workers=_check_int("workers", arguments["workers"], low=1),
        patience=_check_int("patience", arguments["patience"], low=1),
        seed=int(seed),
        lr=lr,
        mixup=mixup,
        unknown_weight=_check_float("unknown_weight", arguments["unknown_weight"]),
        warmup_epochs=_check_float("warmup_epochs", arguments["warmup_epochs"]),
        weight_decay=_check_float("weight_decay", arguments["weight_decay"]),
        crop_seconds=None
        if arguments["crop_seconds"] is None
        else _check_float("crop_seconds", arguments["crop_seconds"]),
        checkpoint_every=_check_int("checkpoint_every", arguments["checkpoint_every"], low=0),
        batch_log=bool(arguments["batch_log"]),
        verbose=0 if arguments["quiet"] else verbose,
    )
    return checked


def class_names(seq: Any) -> tuple[str, ...]:
    """The name of each class (model output) of a sequence's feature set, from its index."""
    return tuple(seq.features.index.class_names)


def class_scheme(seq: Any) -> str:
    """``species`` or ``species_songtype``: how the feature set's classes were made (its index's source)."""
    scheme = (seq.features.index.source or {}).get("class_scheme", "species")
    return scheme if scheme in ("species", "species_songtype") else "species"


def _run_metrics(
    truth: np.ndarray,
    scores: np.ndarray,
    *,
    history,
    timer,
    train_seq,
    val_seq,
    net,
    arguments: dict[str, Any],
    input_shape: tuple[int, ...],
    best_epoch: int,
    seconds: float,
    fit_seconds: float,
) -> dict[str, Any]:
    """What ``metrics.json`` holds: validation scores of the best epoch, timings, the config."""
    model, features, config = arguments["model"], arguments["features"], train_seq.config
    per_class, weight = class_lwlrap(truth, scores)
    names = class_names(train_seq)
    epochs_run = len(history.history.get("loss", []))
    train_seconds = float(sum(timer.seconds))
    seen = train_seq.n_examples * len(timer.seconds)
    metrics = {
        "val_lwlrap": lwlrap(truth, scores),
        "val_top1": top1(truth, scores),
        "val_loss": float(history.history["val_loss"][best_epoch - 1]) if best_epoch else None,
        "val_class_lwlrap": {c: round(float(v), 6) for c, v in zip(names, per_class, strict=True)},
        "val_class_weight": {c: round(float(v), 6) for c, v in zip(names, weight, strict=True)},
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "n_train": int(train_seq.n_examples),
        "n_val": int(val_seq.n_examples),
        "fingerprint": train_seq.fingerprint,
        "model": model,
        "params": int(net.count_params()),
        "seconds": round(seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "samples_per_second": round(seen / train_seconds, 1) if train_seconds > 0 else None,
        "config": {
            "train": _plain(arguments),
            "features": config.to_dict(),
            "features_path": train_seq.features.location
            if is_url(features)
            else str(Path(features).resolve()),
            "input_shape": list(input_shape),
            "classes": list(train_seq.classes),
            "class_names": list(names),
            "class_scheme": class_scheme(train_seq),
        },
        "versions": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "numpy": np.__version__,
        },
    }
    return metrics


def _start_from(net: keras.Model, path: Path) -> None:
    """Give ``net`` the weights of the model saved at ``path``; ExperimentError when they do not fit."""
    if not path.is_file():
        raise ExperimentError(f"{path}: init_from: no such model file")
    saved = keras.saving.load_model(path, compile=False)
    ours, theirs = [w.shape for w in net.weights], [w.shape for w in saved.weights]
    if ours != theirs:
        raise ExperimentError(
            f"{path}: init_from: its {len(theirs)} weight arrays do not fit this model's {len(ours)} "
            f"(another model, input shape or class count)"
        )
    net.set_weights(saved.get_weights())


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
    patience: int = 10,
    in_memory: bool = False,
    crop_seconds: float | None = None,
    soft_labels: str | os.PathLike | None = None,
    windows: str | os.PathLike | None = None,
    window_labels: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    batch_log: bool = False,
    verbose: int = 2,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one experiment: fit, save the best epoch, score it; returns what ``metrics.json`` holds.

    The defaults are the command line's (``python -m experiments.train``), option for option.

    Parameters
    ----------
    features : str or os.PathLike
        Labelled feature set directory (with ``index.json``), read through ``ShardSequence``.
    out : str or os.PathLike
        Run directory, created if missing; gets ``model.keras``, ``history.csv``,
        ``curves.png`` and, last, ``metrics.json`` (a stale one is removed first).
    model : str
        A registered model name (``experiments.models.available_models()``).
    epochs : int >= 1
        Maximum number of epochs (early stopping may end sooner).
    fold : int in [0, n_folds)
        Validation fold; folds group examples by recording.
    n_folds : int >= 1
        Number of folds.
    batch_size : int >= 1
        Examples per batch, for training and validation.
    lr : float > 0
        Peak learning rate of AdamW, reached after the warm-up, then cosine decay.
    warmup_epochs : float
        Length of the linear warm-up (from ``lr / 10`` to ``lr``), in epochs.
    weight_decay : float
        AdamW weight decay.
    seed : int
        Seeds the weights, the shuffling and the augmentation (``keras.utils.set_random_seed``).
    workers : int >= 1
        Threads that build each batch (``ShardSequence(workers=...)``).
    augment : bool
        Augment the training split (time shift, gain, SpecAugment masks: ``loader.Augment``).
    mixup : float in [0, 1]
        Probability that a training example is mixed with another of its batch (with
        ``augment``).
    unknown : {"negative", "ignore"}
        How unannotated labels count in the loss (``MaskedBinaryCrossentropy``).
    unknown_weight : float >= 0
        Loss weight of an unknown label under ``unknown="negative"``.
    patience : int >= 1
        Early stopping patience in epochs, on ``val_lwlrap``.
    in_memory : bool
        Cache the feature set in RAM.
    crop_seconds : float or None
        Seconds the model sees, up to the stored duration plus context (default: the feature
        set's ``duration``); crops are centred for validation, shifted for training.
    soft_labels : path or None
        ``.npy`` of soft labels (examples x classes, NaN where none) that fill the unknown
        labels of the training split (``ShardSequence(soft_labels=...)``, ``experiments.pseudo``).
    windows, window_labels : path or None
        A windows feature set over the same recordings and a ``.npy`` of soft labels for its
        windows: each training batch is followed by a batch of the training fold's windows
        (``loader.sequence.PairedSequence``), weighted as unknown labels.
    init_from : path or None
        A saved model (``model.keras``) of the same architecture and input whose weights the
        run starts from instead of fresh ones: fine-tuning (``experiments.pseudo``'s
        ``warm_start``).
    checkpoint_every : int >= 0
        Checkpoint (model, optimizer, loader position) every that many batches of an epoch,
        besides the end of every epoch; 0: epoch ends only.
    resume : bool
        Go on with the unfinished run in ``out`` from its last checkpoint. The options must be
        those in ``out/run.json`` (``workers``, ``checkpoint_every``, ``batch_log``, ``verbose``
        and ``quiet`` may change); ``resume_run(out)`` reads them for you.
    batch_log : bool
        Write ``batches.log``: epoch, index and sha256 of every trained batch.
    verbose : {0, 1, 2}
        Keras ``fit`` output on stderr: 0 none, 1 progress bar, 2 one line per epoch.
    quiet : bool
        No log line and no Keras output (``verbose`` becomes 0), like ``--quiet``.

    Returns
    -------
    dict
        The contents of ``metrics.json``: ``val_lwlrap``, ``val_top1``, ``val_loss``,
        per-class LWLRAP and weights, ``best_epoch``, ``epochs_run``, the feature set
        ``fingerprint``, timings, and ``config`` (``config["train"]``: these parameters).

    Raises
    ------
    ConfigError
        A parameter out of range, or an unknown model name; with ``resume``, an option other
        than ``out/run.json``'s.
    FormatError
        ``features`` is not a finished feature set.
    ExperimentError
        With ``resume``: ``out`` holds no unfinished run with a checkpoint.
    """
    # What config["train"] records: every parameter, checked, in the command line's order.
    arguments = _checked_arguments(
        features=features,
        model=model,
        epochs=epochs,
        fold=fold,
        n_folds=n_folds,
        out=out,
        batch_size=batch_size,
        lr=lr,
        warmup_epochs=warmup_epochs,
        weight_decay=weight_decay,
        seed=seed,
        workers=workers,
        augment=augment,
        mixup=mixup,
        unknown=unknown,
        unknown_weight=unknown_weight,
        patience=patience,
        in_memory=in_memory,
        crop_seconds=crop_seconds,
        soft_labels=None if soft_labels is None else os.fspath(soft_labels),
        windows=None if windows is None else os.fspath(windows),
        window_labels=None if window_labels is None else os.fspath(window_labels),
        init_from=None if init_from is None else os.fspath(init_from),
        checkpoint_every=checkpoint_every,
        batch_log=batch_log,
        verbose=verbose,
        quiet=quiet,
    )
    if resume:
        _check_resumable(Path(out), arguments)
    # The checked values replace the parameters as given.
    epochs, fold, n_folds, seed = (arguments[k] for k in ("epochs", "fold", "n_folds", "seed"))
    lr, warmup_epochs, weight_decay = arguments["lr"], arguments["warmup_epochs"], arguments["weight_decay"]
    unknown_weight, patience, verbose = (
        arguments["unknown_weight"],
        arguments["patience"],
        arguments["verbose"],
    )

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    train_seq, val_seq = make_sequences(features, **{k: arguments[k] for k in SEQUENCE_OPTIONS})
    config = train_seq.config
    input_shape = (config.n_mels, train_seq.crop_frames, 1)
    net = build_model(model, input_shape=input_shape, n_classes=len(train_seq.classes))
    if arguments["init_from"] is not None:
        _start_from(net, Path(arguments["init_from"]))
    compile_model(
        net,
        steps_per_epoch=len(train_seq),
        epochs=epochs,
        lr=lr,
        warmup_epochs=warmup_epochs,
        weight_decay=weight_decay,
        unknown=unknown,
        unknown_weight=unknown_weight,
    )
    if not quiet:
        log.info(
            f"{features}: {train_seq.n_examples} train examples ({len(train_seq)} batches), "
            f"{val_seq.n_examples} validation (fold {fold} of {n_folds}); model {model}, "
            f"{net.count_params():,} parameters, input {input_shape}"
        )

    out = Path(out)
    checkpoint = LoaderCheckpoint(train_seq, out, every=arguments["checkpoint_every"])
    fit_state = _restore(out, checkpoint, net) if resume else _start_run(out, arguments)
    history, timer = fit_run(
        net,
        train_seq,
        val_seq,
        out=out,
        epochs=epochs,
        patience=patience,
        verbose=verbose,
        checkpoint=checkpoint,
        started=started,
        fit_state=fit_state,
        batch_log=arguments["batch_log"],
    )
    return _finish_run(
        out, history=history, timer=timer, train_seq=train_seq, val_seq=val_seq, net=net, arguments=arguments
    )


def _finish_run(
    out: Path, *, history: FitLedger, timer: TrainTimer, train_seq, val_seq, net, arguments
) -> dict:
    """Score the best epoch's model, draw the curves, write ``metrics.json`` (last: the run is
    finished), then remove the checkpoint; returns the metrics."""
    fit_seconds = history.fit_seconds()
    truth, scores, best_epoch = _score_best(out, history, val_seq)
    plot_curves(
        read_history(out / HISTORY_FILE),
        out / CURVES_FILE,
        title=f"run {out.name}: model {arguments['model']} on {Path(arguments['features']).name}, "
        f"fold {arguments['fold']}",
    )
    metrics = _run_metrics(
        truth,
        scores,
        history=history,
        timer=timer,
        train_seq=train_seq,
        val_seq=val_seq,
        net=net,
        arguments=arguments,
        input_shape=(train_seq.config.n_mels, train_seq.crop_frames, 1),
        best_epoch=best_epoch,
        seconds=time.perf_counter() - history.started,
        fit_seconds=fit_seconds,
    )
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=1) + "\n")
    remove_checkpoints(out)
    return metrics


def _plain(arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with paths as strings, for JSON."""
    return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in arguments.items()}


def _start_run(out: Path, arguments: dict[str, Any]) -> None:
    """Make the run directory, clear what an earlier run left there, record the options."""
    out.mkdir(parents=True, exist_ok=True)
    # A stale metrics.json would mark this run finished before it is; the logs are appended to.
    for name in (METRICS_FILE, HISTORY_FILE, BATCH_LOG_FILE):
        (out / name).unlink(missing_ok=True)
    remove_checkpoints(out)
    atomic_write_text(out / RUN_FILE, json.dumps({"train": _plain(arguments)}, indent=1) + "\n")


def remove_checkpoints(out: Path) -> None:
    """Remove a run's checkpoint: the loader state, its model files, partial ones."""
    (out / CHECKPOINT_STATE).unlink(missing_ok=True)
    for path in out.glob(f"{CHECKPOINT_PREFIX}*.keras"):
        path.unlink(missing_ok=True)
    LoaderCheckpoint.clean(out)


def read_run_options(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``train()`` options a run recorded in ``run.json`` when it started."""
    path = Path(run_dir) / RUN_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{run_dir}: no {RUN_FILE}, so no run to resume there") from None
    except (OSError, ValueError) as err:
        raise ExperimentError(f"{path}: cannot read the run's options: {err}") from None
    options = document.get("train") if isinstance(document, dict) else None
    known = set(inspect.signature(train).parameters)
    if not isinstance(options, dict) or "features" not in options or not set(options) <= known:
        raise ExperimentError(f"{path}: not the options of a run of this version of experiments.train")
    return options


def _check_resumable(out: Path, arguments: dict[str, Any]) -> None:
    """Refuse to resume a finished run, or with options other than those the run started with."""
    recorded = read_run_options(out)
    if (out / METRICS_FILE).exists():
        raise ExperimentError(f"{out}: the run is finished ({METRICS_FILE} is there), nothing to resume")
    for name, value in _plain(arguments).items():
        # The feature set may be spelt another way: the checkpoint's fingerprint checks it.
        if name not in FREE_ON_RESUME and name != "features" and recorded.get(name) != value:
            raise ConfigError(
                f"{out / RUN_FILE}: the run started with {name} {recorded.get(name)!r}, not {value!r}"
            )
    if not (out / CHECKPOINT_STATE).exists():
        raise _no_checkpoint(out)


def _no_checkpoint(out: Path) -> ExperimentError:
    return ExperimentError(
        f"{out}: no checkpoint to resume from (no {CHECKPOINT_STATE}); start the run again"
    )


def _restore(out: Path, checkpoint: LoaderCheckpoint, net: keras.Model) -> dict[str, Any]:
    """Load the run's last checkpoint into ``net`` and the training sequence; its ledger state.

    What the killed process logged after the checkpoint is dropped: it is trained again.
    """
    fit_state = checkpoint.restore(net)
    if fit_state is None:
        raise _no_checkpoint(out)
    state = read_state(out / CHECKPOINT_STATE)[0].normalized()
    epochs_done = len(fit_state.get("history", {}).get("loss", []))
    truncate_run_logs(out, epochs_done=epochs_done, epoch=state.epoch, batch=state.batch)
    return fit_state


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
    options.update(out=os.fspath(run_dir), resume=True)
    return train(options.pop("features"), **options)


def _score_best(out: Path, history, val_seq) -> tuple[np.ndarray, np.ndarray, int]:
    """Validation truth and scores of the saved model (not the in-memory one: metrics.json
    describes model.keras), and its epoch (1-based; 0 without validation history)."""
    best = keras.saving.load_model(out / MODEL_FILE, compile=False)
    truth, scores = score_sequence(best, val_seq)
    val_history = history.history.get("val_lwlrap", [])
    return truth, scores, int(np.argmax(val_history)) + 1 if val_history else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(quiet=args.quiet)
    run = args.resume if isinstance(args.resume, str) else args.out
    try:
        if isinstance(args.resume, str):
            # The recorded verbosity unless one is given (the parser's defaults are train()'s).
            default = inspect.signature(train).parameters["verbose"].default
            verbose = None if args.verbose == default and not args.quiet else args.verbose
            metrics = resume_run(args.resume, verbose=verbose, quiet=args.quiet or None)
        else:
            options = vars(args)  # the parser's options are train()'s parameters, name for name
            metrics = train(options.pop("features"), **options)
    except (MelShardsError, OSError) as err:
        return report_error("experiments.train", err)
    except KeyboardInterrupt:
        print("experiments.train: interrupted", file=sys.stderr)
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
