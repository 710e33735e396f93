"""Train a registered model on a precomputed feature set.

    python -m experiments.train --features features/demo --model baseline --epochs 40 \\
        --fold 0 --out runs/baseline

The defaults are the tuned demo recipe: AdamW at 5e-3 with a one-epoch warm-up and cosine
decay, the loader's augmentations plus mixup on half the examples, unknown labels counted
as negatives, early stopping after 10 epochs without a better ``val_lwlrap``.

Reads only the shards (through ``ShardSequence``), never audio. Writes into ``--out``:

- ``model.keras``: the model of the epoch with the best ``val_lwlrap`` (ModelCheckpoint);
- ``history.csv``: loss and metrics per epoch (CSVLogger);
- ``metrics.json``: ``val_lwlrap``, ``val_top1`` (of the saved model, recomputed on the
  whole validation split), the feature set ``fingerprint``, the full ``config`` (these
  arguments and the feature config), timings and versions;
- ``curves.png``: loss and LWLRAP per epoch.

``metrics.json`` is written last: its presence marks a finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from experiments.losses import UNKNOWN_MODES, MaskedBinaryCrossentropy
from experiments.metrics import Lwlrap, Top1, class_lwlrap, lwlrap, top1
from experiments.models import available_models, build_model
from experiments.plots import plot_curves, read_history
from loader import Augment, ShardSequence
from melshards.console import EXIT_INTERRUPTED, EXIT_OK, log, report_error, setup_logging
from melshards.errors import MelShardsError
from melshards.files import atomic_write_text

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description="Train a model on a precomputed feature set (shards only, no audio).",
    )
    p.add_argument("--features", required=True, help="feature set directory (with index.json)")
    p.add_argument("--model", default="baseline", help=f"model name: {', '.join(available_models())}")
    p.add_argument("--epochs", type=int, default=40, help="maximum number of epochs")
    p.add_argument("--fold", type=int, default=0, help="validation fold (recordings grouped)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--out", required=True, help="run directory, e.g. runs/baseline")
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
    if args.quiet:
        args.verbose = 0
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
    return args


class TrainTimer(keras.callbacks.Callback):
    """Seconds spent in the training part of each epoch (validation excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0
        self._open = False

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()
        self._open = True

    def _stop(self) -> None:
        if self._open:
            self.seconds.append(time.perf_counter() - self._start)
            self._open = False

    def on_test_begin(self, logs: Any = None) -> None:
        self._stop()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._stop()


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


def make_sequences(args: argparse.Namespace) -> tuple[Any, Any]:
    common = dict(
        fold=args.fold,
        n_folds=args.n_folds,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype="float16",  # half the bytes; the model casts to float32 inside
        return_mask=True,
        in_memory=args.in_memory,
    )
    workers = {"workers": args.workers} if args.workers > 1 else {}
    augment = Augment(mixup_p=args.mixup) if args.augment else Augment.off()
    train_seq = ShardSequence(
        args.features, split="train", shuffle=True, augment=augment, **common, **workers
    )
    val_seq = ShardSequence(args.features, split="val", shuffle=False, augment=False, **common)
    return train_seq, val_seq


def compile_model(model: keras.Model, args: argparse.Namespace, steps_per_epoch: int) -> None:
    total = max(args.epochs * steps_per_epoch, 1)
    warmup = min(int(round(args.warmup_epochs * steps_per_epoch)), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr * 0.1 if warmup else args.lr,
        decay_steps=total - warmup,
        alpha=0.02,
        warmup_target=args.lr if warmup else None,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay),
        loss=MaskedBinaryCrossentropy(unknown=args.unknown, unknown_weight=args.unknown_weight),
        metrics=[Lwlrap(), Top1()],
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one experiment; returns what is written to ``metrics.json``."""
    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    train_seq, val_seq = make_sequences(args)
    config = train_seq.config
    input_shape = (config.n_mels, config.crop_frames, 1)
    model = build_model(args.model, input_shape=input_shape, n_classes=len(train_seq.classes))
    compile_model(model, args, len(train_seq))
    log.info(
        f"{args.features}: {train_seq.n_examples} train examples ({len(train_seq)} batches), "
        f"{val_seq.n_examples} validation (fold {args.fold} of {args.n_folds}); model {args.model}, "
        f"{model.count_params():,} parameters, input {input_shape}"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A stale metrics.json would mark this run finished before it is.
    (out / METRICS_FILE).unlink(missing_ok=True)

    timer = TrainTimer()
    callbacks = [
        timer,
        keras.callbacks.ModelCheckpoint(
            out / MODEL_FILE, monitor="val_lwlrap", mode="max", save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_lwlrap", mode="max", patience=args.patience, restore_best_weights=True
        ),
        keras.callbacks.CSVLogger(out / HISTORY_FILE),
    ]
    fit_start = time.perf_counter()
    # Keras writes its progress to stdout; stdout is for the result line only.
    with contextlib.redirect_stdout(sys.stderr):
        history = model.fit(
            train_seq,
            validation_data=val_seq,
            epochs=args.epochs,
            callbacks=callbacks,
            verbose=args.verbose,
            shuffle=False,  # the sequence shuffles examples; in-order batches keep its look-ahead useful
        )
    fit_seconds = time.perf_counter() - fit_start
    epochs_run = len(history.history.get("loss", []))

    # Score the saved file, not the in-memory model: metrics.json describes model.keras.
    best = keras.saving.load_model(out / MODEL_FILE, compile=False)
    truth, scores = score_sequence(best, val_seq)
    per_class, weight = class_lwlrap(truth, scores)
    val_history = history.history.get("val_lwlrap", [])
    best_epoch = int(np.argmax(val_history)) + 1 if val_history else 0
    plot_curves(
        read_history(out / HISTORY_FILE),
        out / CURVES_FILE,
        title=f"run {out.name}: model {args.model} on {Path(args.features).name}, fold {args.fold}",
    )

    train_seconds = float(sum(timer.seconds))
    seen = train_seq.n_examples * len(timer.seconds)
    metrics = {
        "val_lwlrap": lwlrap(truth, scores),
        "val_top1": top1(truth, scores),
        "val_loss": float(history.history["val_loss"][best_epoch - 1]) if best_epoch else None,
        "val_class_lwlrap": {
            str(c): round(float(v), 6) for c, v in zip(train_seq.classes, per_class, strict=True)
        },
        "val_class_weight": {
            str(c): round(float(v), 6) for c, v in zip(train_seq.classes, weight, strict=True)
        },
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "n_train": int(train_seq.n_examples),
        "n_val": int(val_seq.n_examples),
        "fingerprint": train_seq.fingerprint,
        "model": args.model,
        "params": int(model.count_params()),
        "seconds": round(time.perf_counter() - started, 2),
        "fit_seconds": round(fit_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "samples_per_second": round(seen / train_seconds, 1) if train_seconds > 0 else None,
        "config": {
            "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "features": config.to_dict(),
            "features_path": str(Path(args.features).resolve()),
            "input_shape": list(input_shape),
            "classes": list(train_seq.classes),
        },
        "versions": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "numpy": np.__version__,
        },
    }
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=1) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(quiet=args.quiet)
    try:
        metrics = train(args)
    except (MelShardsError, OSError) as err:
        return report_error("experiments.train", err)
    except KeyboardInterrupt:
        print("experiments.train: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    log.info(f"wrote {MODEL_FILE}, {HISTORY_FILE}, {METRICS_FILE} and {CURVES_FILE} to {args.out}")
    print(
        f"{args.model}: val_lwlrap {metrics['val_lwlrap']:.4f}, val_top1 {metrics['val_top1']:.4f} "
        f"(best epoch {metrics['best_epoch']} of {metrics['epochs_run']}), "
        f"{metrics['seconds']:.0f} s, {metrics['samples_per_second']} samples/s -> {args.out}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
