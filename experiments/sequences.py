"""What a training run reads: its training and validation sequences, built from loader options.

``run_sequences(options)`` gives the sequences of a ``TrainOptions``; ``make_sequences`` the same
from ``train()``'s flat keywords (a notebook, a test). Both go through ``loader_options``: the
run's split, batch size, workers and in-memory cache (``TrainOptions.split``/``batch``/``build``,
what ``--fold``, ``--batch-size``, ``--workers`` set) with what a run always asks of the loader:
float16 batches (half the bytes; the model casts to float32 inside), the known-label mask for the
loss, and the crop. ``score_sequence`` scores a model on one of them, batch by batch.

``require_windows_set`` refuses a labelled set where a windows set is meant (``--windows`` of
``train`` and ``pseudo``, ``predict --features``): the index says which kind a set is.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import keras
import numpy as np

from experiments.errors import ExperimentError
from experiments.metrics import clip_scores
from experiments.train_options import TrainOptions, train_augmentation
from loader import ShardSequence
from loader.augment import Augment
from loader.feature_set import FeatureSet
from loader.options import BatchOptions, BuildOptions, LoaderOptions, SplitOptions
from loader.sequence import PairedSequence
from melshards.config import frames_for
from melshards.errors import ConfigError
from melshards.index import read_index
from melshards.names import SET_WINDOWS


def loader_options(
    features: str | os.PathLike,
    *,
    split: SplitOptions,
    batch: BatchOptions,
    build: BuildOptions,
    augment: Augment,
    crop_seconds: float | None = None,
    soft_labels: str | os.PathLike | None = None,
) -> tuple[LoaderOptions, LoaderOptions]:
    """The loader options of the training sequence (shuffled, ``augment``-ed, ``soft_labels``
    filling its unknown labels, ``build``'s workers) and of the validation sequence (in order,
    not augmented, against the annotations alone, one worker).

    ``batch`` gives the batch size and the seed; ``crop_seconds`` (None: the feature set's
    duration) becomes the crop in frames of ``features``.
    """
    crop_frames = None
    if crop_seconds is not None:
        config = read_index(features).config
        crop_frames = frames_for(crop_seconds, sample_rate=config.sample_rate, hop_length=config.hop_length)
    batch = replace(batch, dtype="float16", return_mask=True, crop_frames=crop_frames, soft_labels=None)
    train = LoaderOptions(
        split=replace(split, split="train"),
        batch=replace(batch, shuffle=True, soft_labels=soft_labels),
        augment=augment,
        build=build,
    )
    val = LoaderOptions(
        split=replace(split, split="val"),
        batch=replace(batch, shuffle=False),
        augment=False,
        build=BuildOptions(in_memory=build.in_memory),
    )
    return train, val


def window_options(train: LoaderOptions, *, labels: Any, recordings: set[str]) -> LoaderOptions:
    """The windows of the training fold's ``recordings`` (the validation fold stays unseen), in
    batches of the training batch size, with their soft ``labels``: each training batch is
    followed by one of them (``PairedSequence``).

    (Measured on the sparse demo: as many windows as labelled examples per epoch raised test
    LWLRAP by 0.033 over round 0; every window each epoch, 4.4x more, lowered it by 0.089.)
    """
    return LoaderOptions(
        split=replace(train.split, split="all", recordings=frozenset(recordings)),
        batch=replace(train.batch, shuffle=True, soft_labels=labels),
        augment=train.augment,
        build=BuildOptions(in_memory=train.build.in_memory),
    )


def build_sequences(
    features: str | os.PathLike,
    train: LoaderOptions,
    val: LoaderOptions,
    *,
    windows: str | os.PathLike | None = None,
    window_labels: Any = None,
) -> tuple[Any, Any]:
    """The training sequence (paired with ``windows`` when given) and the validation sequence.

    ConfigError when the batch size is larger than the training split; ExperimentError when
    ``windows`` is not a windows set, or covers none of the training split's recordings.
    """
    train_seq = ShardSequence(features, options=train)
    batch_size = train.batch.batch_size
    if batch_size > train_seq.n_examples:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {train_seq.n_examples} examples of the train split"
        )
    val_seq = ShardSequence(features, options=val)
    if windows is not None:
        window_set = require_windows_set(windows, option="windows")
        recordings = set(np.unique(train_seq.recording_id).tolist())
        if not recordings & set(np.unique(window_set.recording_id).tolist()):
            raise ExperimentError(
                f"{windows}: windows: the windows cover none of the {len(recordings)} recordings of "
                f"the train split of {features} (fold {train.split.fold} of {train.split.n_folds})"
            )
        second = ShardSequence(
            window_set, options=window_options(train, labels=window_labels, recordings=recordings)
        )
        train_seq = PairedSequence(train_seq, second)
    return train_seq, val_seq


def require_windows_set(path: str | os.PathLike | FeatureSet, *, option: str) -> FeatureSet:
    """The windows feature set at ``path`` (``precompute windows``), opened; ExperimentError
    naming ``path`` and ``option`` when its index says it holds another kind (a labelled set)."""
    feature_set = path if isinstance(path, FeatureSet) else FeatureSet(path)
    if feature_set.kind != SET_WINDOWS:
        raise ExperimentError(
            f"{path}: {option}: holds a {feature_set.kind} feature set, not a windows one "
            "(sliding windows over whole recordings: precompute windows makes them)"
        )
    return feature_set


def run_sequences(options: TrainOptions) -> tuple[Any, Any]:
    """The training and validation sequences of a run (see ``loader_options``)."""
    data = options.data
    train, val = loader_options(
        data.features,
        split=options.split,
        batch=replace(options.batch, seed=options.optim.seed),
        build=options.build,
        augment=data.augmentation,
        crop_seconds=data.crop_seconds,
        soft_labels=data.soft_labels,
    )
    return build_sequences(data.features, train, val, windows=data.windows, window_labels=data.window_labels)


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
    window_labels: Any = None,
) -> tuple[Any, Any]:
    """``run_sequences`` from ``train()``'s flat keywords: the training sequence (shuffled,
    augmented) and the validation sequence of ``features``.

    ``soft_labels`` fill the unknown labels of the training split only: validation scores
    stay against the annotations. ``window_labels`` may be an array as well as a ``.npy``.
    """
    train, val = loader_options(
        features,
        split=SplitOptions(fold=fold, n_folds=n_folds),
        batch=BatchOptions(batch_size=batch_size, seed=seed),
        build=BuildOptions(workers=workers, in_memory=in_memory),
        augment=train_augmentation(augment, mixup),
        crop_seconds=crop_seconds,
        soft_labels=soft_labels,
    )
    return build_sequences(features, train, val, windows=windows, window_labels=window_labels)


def step_rows(model: keras.Model, seq: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame model's scores, 0/1 frame targets and known mask over a frame-target sequence
    that returns its mask (a run's validation sequence), one row per step of each crop, in
    order: what a frame model's events are thresholded on.

    Returns (scores, truth, known), np.ndarray [shape=(n * steps, n_classes)], float32 each.
    """
    n_classes = model.output_shape[-1]
    rows: list[list[np.ndarray]] = [[], [], []]
    for i in range(len(seq)):
        x, y, known = seq[i][:3]
        got = keras.ops.convert_to_numpy(model(x, training=False))
        for kept, values in zip(rows, (got, np.asarray(y) > 0.5, known), strict=True):
            kept.append(np.asarray(values, dtype=np.float32).reshape(-1, n_classes))
    if not rows[0]:
        return tuple(np.zeros((0, n_classes), np.float32) for _ in rows)
    return tuple(np.concatenate(kept) for kept in rows)


def score_sequence(model: keras.Model, seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Clip scores and 0/1 clip truth for every batch of ``seq``, in order: a frame model's
    scores and frame targets pooled over steps (``experiments.metrics.clip_scores``).

    Returns (truth, scores), both np.ndarray [shape=(n, n_classes)], float32.
    """
    truths, scores = [], []
    for i in range(len(seq)):
        batch = seq[i]
        x, y = batch[0], batch[1]
        scores.append(clip_scores(keras.ops.convert_to_numpy(model(x, training=False))))
        truths.append(clip_scores(y))
    n_classes = model.output_shape[-1]
    if not scores:
        return np.zeros((0, n_classes), np.float32), np.zeros((0, n_classes), np.float32)
    return (np.concatenate(truths) > 0.5).astype(np.float32), np.concatenate(scores)
