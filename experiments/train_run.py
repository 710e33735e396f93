"""One training run, from its options to ``metrics.json``: ``run_training(options)``.

The steps, each a function here: read the sequences (``experiments.sequences``), build the model
(``make_model``: registered model, ``init_from`` weights, AdamW with warm-up and cosine decay,
the masked loss, LWLRAP and top-1), start the run directory or restore its last checkpoint
(``experiments.checkpoints``), ``fit_run`` (Keras ``fit`` with the run's callbacks,
``experiments.callbacks``), then ``finish_run``: score the best epoch's saved model on the whole
validation split, draw the curves, fit the per-class thresholds on those scores
(``thresholds.json``, ``experiments.thresholds_run.keep_thresholds``), write ``metrics.json``
(``run_metrics``) and remove the checkpoint.

``experiments.train`` is the front: ``train()``'s keywords and the command line both end here.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from commandline.console import log, plural
from experiments.callbacks import MONITOR, BatchLog, BestModel, FitLedger, HistoryLog, TrainTimer
from experiments.checkpoints import (
    BATCH_LOG_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    LoaderCheckpoint,
    check_resumable,
    remove_checkpoints,
    restore_run,
    start_run,
)
from experiments.errors import ExperimentError
from experiments.losses import MaskedBinaryCrossentropy
from experiments.metrics import Lwlrap, Top1, class_lwlrap, lwlrap, top1
from experiments.models import MODELS, build_model, frame_models, is_frame_model, load_model_file
from experiments.plots import plot_curves, read_history
from experiments.run_files import save_through_temp, write_run_file
from experiments.sequences import run_sequences, score_sequence, step_rows
from experiments.thresholds_run import keep_thresholds
from experiments.train_options import LossOptions, OptimOptions, TrainOptions
from melshards.errors import ConfigError
from melshards.remote import is_url


def run_training(options: TrainOptions, *, resume: bool = False) -> dict[str, Any]:
    """Run one experiment: fit, save the best epoch, score it; returns what ``metrics.json``
    holds. ``resume``: go on with the unfinished run in ``options.keep.out`` from its last
    checkpoint (``experiments.train.train`` documents both)."""
    out = Path(options.keep.out)
    if resume:
        check_resumable(out, options.to_kwargs())
    started = time.perf_counter()
    keras.utils.set_random_seed(options.optim.seed)
    train_seq, val_seq = run_sequences(options)
    net = make_model(options, train_seq, val_seq)
    checkpoint = LoaderCheckpoint(train_seq, out, every=options.keep.checkpoint_every)
    fit_state = restore_run(out, checkpoint, net) if resume else start_run(out, options.to_kwargs())
    ledger = fit_run(
        net, train_seq, val_seq, options=options, checkpoint=checkpoint, started=started, fit_state=fit_state
    )
    return finish_run(options, ledger=ledger, train_seq=train_seq, val_seq=val_seq, net=net)


def input_shape(train_seq: Any) -> tuple[int, int, int]:
    """What the model takes: (n_mels, crop frames, 1)."""
    return (train_seq.config.n_mels, train_seq.crop_frames, 1)


def model_options(options: TrainOptions) -> dict[str, Any]:
    """What the model's builder gets besides its input and classes: a frame model's
    ``target_step`` (the loader's); ConfigError for frame targets and a clip model."""
    name, batch = options.model.model, options.batch
    if is_frame_model(name):
        return {"target_step": batch.target_step}
    if batch.targets == "frames" and name in MODELS:
        raise ConfigError(
            f"model {name!r} scores whole clips; targets 'frames' need a frame model: "
            f"{', '.join(frame_models())}"
        )
    return {}


def make_model(options: TrainOptions, train_seq: Any, val_seq: Any) -> keras.Model:
    """The run's model: built, given the ``init_from`` weights, compiled; logged unless quiet."""
    data, name = options.data, options.model.model
    net = build_model(
        name, input_shape=input_shape(train_seq), n_classes=len(train_seq.classes), **model_options(options)
    )
    if options.model.init_from is not None:
        start_from(net, Path(options.model.init_from))
    compile_model(net, steps_per_epoch=len(train_seq), optim=options.optim, loss=options.loss)
    if not options.keep.quiet:
        batch = options.batch
        frames = f", frame targets every {batch.target_step} frames" if batch.targets == "frames" else ""
        log.info(
            f"{data.features}: {plural(train_seq.n_examples, 'train example')} "
            f"({plural(len(train_seq), 'batch')}), "
            f"{val_seq.n_examples} validation (fold {options.split.fold} of {options.split.n_folds}); "
            f"model {name}, {net.count_params():,} parameters, input {input_shape(train_seq)}{frames}"
        )
    return net


def start_from(net: keras.Model, path: Path) -> None:
    """Give ``net`` the weights of the model saved at ``path``; ExperimentError when they do not fit."""
    if not path.is_file():
        raise ExperimentError(f"{path}: init_from: no such model file")
    saved = load_model_file(path, what="init_from: ")
    ours, theirs = [w.shape for w in net.weights], [w.shape for w in saved.weights]
    if ours != theirs:
        raise ExperimentError(
            f"{path}: init_from: its {len(theirs)} weight arrays do not fit this model's {len(ours)} "
            f"(another model, input shape or class count)"
        )
    net.set_weights(saved.get_weights())


def compile_model(
    model: keras.Model, *, steps_per_epoch: int, optim: OptimOptions, loss: LossOptions
) -> None:
    """AdamW with a linear warm-up to ``optim.lr`` then cosine decay, the masked loss, LWLRAP and top-1."""
    lr = optim.lr
    total = max(optim.epochs * steps_per_epoch, 1)
    warmup = min(int(round(optim.warmup_epochs * steps_per_epoch)), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1 if warmup else lr,
        decay_steps=total - warmup,
        alpha=0.02,
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=optim.weight_decay),
        loss=MaskedBinaryCrossentropy(
            unknown=loss.unknown, unknown_weight=loss.unknown_weight, clip_weight=loss.clip_weight
        ),
        metrics=[Lwlrap(), Top1()],
    )


def fit_callbacks(
    train_seq: Any, *, options: TrainOptions, checkpoint: LoaderCheckpoint, started: float, fit_state
) -> tuple[FitLedger, list, Any]:
    """The run's callbacks, its ledger among them, and the sequence ``fit`` gets (the training
    sequence, or the batch log's view of it)."""
    out = Path(options.keep.out)
    timer = TrainTimer()
    best_model = BestModel(out / MODEL_FILE, monitor=MONITOR)
    # The run's model is model.keras (the best epoch's), never the one in memory: no weights to restore.
    early = keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=options.optim.patience)
    ledger = FitLedger(best_model=best_model, early=early, timer=timer, started=started, fit_state=fit_state)
    checkpoint.extra = ledger.state
    # In this order: the ledger restores the callbacks before it, and has the epoch's logs
    # before the checkpoint that records them.
    callbacks = [timer, best_model, early, HistoryLog(out / HISTORY_FILE), ledger]
    fed = train_seq
    if options.keep.batch_log:
        logger = BatchLog(train_seq, out / BATCH_LOG_FILE)
        fed = logger.sequence
        callbacks.append(logger)
    callbacks.append(checkpoint)
    return ledger, callbacks, fed


def fit_run(
    net: keras.Model,
    train_seq: Any,
    val_seq: Any,
    *,
    options: TrainOptions,
    checkpoint: LoaderCheckpoint,
    started: float,
    fit_state: dict | None = None,
) -> FitLedger:
    """``net.fit`` with the run's callbacks: best-epoch model and early stopping on
    ``val_lwlrap``, the history CSV, the training timer, the ledger of the epochs and the
    checkpoints (``checkpoint``). ``fit_state``: a restored checkpoint's ledger, to go on from.

    A sequence loaded in the middle of an epoch gets two ``fit`` calls, that epoch's remaining
    batches then the epochs after it (``loader.sequence``). Returns the ledger (``.history``:
    every epoch's logs, earlier processes' included; ``.timer``: the training seconds).
    """
    ledger, callbacks, fed = fit_callbacks(
        train_seq, options=options, checkpoint=checkpoint, started=started, fit_state=fit_state
    )
    epochs = options.optim.epochs
    ledger.fit_started = time.perf_counter()
    first = ledger.epochs_done
    calls = [(first, first + 1), (first + 1, epochs)] if train_seq.start_batch else [(first, epochs)]
    try:
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
                    verbose=options.keep.verbose,
                    shuffle=False,  # the sequence shuffles examples; in-order batches keep its look-ahead useful
                )
    finally:
        for callback in callbacks:  # the logs' open files, when fit stopped on an error
            if isinstance(callback, HistoryLog | BatchLog):
                callback.close()
    return ledger


def finish_run(options: TrainOptions, *, ledger: FitLedger, train_seq, val_seq, net) -> dict[str, Any]:
    """Score the best epoch's model, draw the curves, write ``metrics.json`` (last: the run is
    finished), then remove the checkpoint; returns the metrics."""
    out = Path(options.keep.out)
    fit_seconds = ledger.fit_seconds()
    best, best_epoch = load_best(out, ledger)
    truth, scores = score_sequence(best, val_seq)
    history = read_history(out / HISTORY_FILE)
    title = (
        f"run {out.name}: model {options.model.model} on {Path(options.data.features).name}, "
        f"fold {options.split.fold}"
    )
    save_through_temp(out / CURVES_FILE, lambda tmp: plot_curves(history, tmp, title=title))
    metrics = run_metrics(
        truth, scores, ledger=ledger, train_seq=train_seq, val_seq=val_seq, best_epoch=best_epoch
    )
    keep_thresholds(
        out,
        truth=truth,
        scores=scores,
        val_seq=val_seq,
        steps=step_rows(best, val_seq) if options.batch.targets == "frames" else None,
        unknown=options.loss.unknown,
        class_names=class_names(train_seq),
        rule=options.keep.threshold_rule,
        quiet=options.keep.quiet,
    )
    metrics.update(
        model=options.model.model,
        params=int(net.count_params()),
        seconds=round(time.perf_counter() - ledger.started, 2),
        fit_seconds=round(fit_seconds, 2),
        **run_timings(ledger, train_seq),
        config=run_config(options, train_seq),
        versions=run_versions(),
    )
    write_run_file(out / METRICS_FILE, json.dumps(metrics, indent=1) + "\n")
    remove_checkpoints(out)
    return metrics


def load_best(out: Path, ledger: FitLedger) -> tuple[keras.Model, int]:
    """The saved model (not the in-memory one: metrics.json describes model.keras) and its
    epoch (1-based; 0 without validation history)."""
    best = keras.saving.load_model(out / MODEL_FILE, compile=False)  # written by this run (BestModel)
    val_history = ledger.history.get("val_lwlrap", [])
    return best, int(np.argmax(val_history)) + 1 if val_history else 0


def run_metrics(
    truth: np.ndarray, scores: np.ndarray, *, ledger: FitLedger, train_seq, val_seq, best_epoch: int
) -> dict[str, Any]:
    """The validation scores of the best epoch, per class too, and the run's counts: the first
    keys of ``metrics.json``."""
    per_class, weight = class_lwlrap(truth, scores)
    names = class_names(train_seq)
    history = ledger.history
    return {
        "val_lwlrap": lwlrap(truth, scores),
        "val_top1": top1(truth, scores),
        "val_loss": float(history["val_loss"][best_epoch - 1]) if best_epoch else None,
        "val_class_lwlrap": {c: round(float(v), 6) for c, v in zip(names, per_class, strict=True)},
        "val_class_weight": {c: round(float(v), 6) for c, v in zip(names, weight, strict=True)},
        "best_epoch": best_epoch,
        "epochs_run": len(history.get("loss", [])),
        "n_train": int(train_seq.n_examples),
        "n_val": int(val_seq.n_examples),
        "fingerprint": train_seq.fingerprint,
    }


def run_timings(ledger: FitLedger, train_seq) -> dict[str, Any]:
    """Seconds spent training (validation excluded) and the training samples per second."""
    seconds = ledger.timer.seconds
    train_seconds = float(sum(seconds))
    seen = train_seq.n_examples * len(seconds)
    return {
        "train_seconds": round(train_seconds, 2),
        "samples_per_second": round(seen / train_seconds, 1) if train_seconds > 0 else None,
    }


def run_config(options: TrainOptions, train_seq) -> dict[str, Any]:
    """``metrics.json``'s ``config``: the options, the feature config, the model's input and the
    class names in output order with their scheme (what ``experiments.predict`` reads)."""
    features = options.data.features
    return {
        "train": options.to_kwargs(),
        "features": train_seq.config.to_dict(),
        "features_path": train_seq.features.location if is_url(features) else str(Path(features).resolve()),
        "input_shape": list(input_shape(train_seq)),
        "classes": list(train_seq.classes),
        "class_names": list(class_names(train_seq)),
        "class_scheme": class_scheme(train_seq),
    }


def run_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
    }


def class_names(seq: Any) -> tuple[str, ...]:
    """The name of each class (model output) of a sequence's feature set, from its index."""
    return tuple(seq.features.index.class_names)


def class_scheme(seq: Any) -> str:
    """``species`` or ``species_songtype``: how the feature set's classes were made (its index's source)."""
    scheme = (seq.features.index.source or {}).get("class_scheme", "species")
    return scheme if scheme in ("species", "species_songtype") else "species"
