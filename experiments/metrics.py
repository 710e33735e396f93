"""LWLRAP (label-weighted label-ranking average precision) and top-1 accuracy.

LWLRAP is the RFCX and Freesound competition metric. For every sample and every positive
class ``j`` of that sample, rank all classes of the sample by score and take the precision
at ``j``: the fraction of classes scored at least as high as ``j`` that are positive. LWLRAP
is the mean of these precisions over all (sample, positive class) pairs, which equals the
mean of per-class LRAP weighted by each class's share of positive labels.

Ties count against the model: a class scored equal to ``j`` is ranked above it (the
convention of scikit-learn's ``label_ranking_average_precision_score``), so constant
scores never look good. Samples without a positive label do not contribute.

The numpy functions score a whole set at once; the Keras metrics accumulate the same sums
batch by batch over an epoch and give the same value.

A frame model scores every step, ``(n, steps, n_classes)``; its clip scores are the maximum
over steps (``clip_scores``), and frame targets give clip truth the same way (a class is
present in a crop when it is present in one of its steps: the loader's clip labels). The Keras
metrics pool both before ranking, so LWLRAP of a frame model stays comparable with a clip
model's.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from melshards.errors import ConfigError

_CHUNK = 4096  # rows per block: the pairwise comparison costs rows * classes**2 bytes


def clip_scores(scores: np.ndarray) -> np.ndarray:
    """Clip scores of frame scores: the maximum over steps, ``(n, steps, n_classes)`` ->
    ``(n, n_classes)``; clip scores ``(n, n_classes)`` are returned as they are."""
    scores = np.asarray(scores)
    return scores.max(axis=1) if scores.ndim == 3 else scores


def _clip(values: Any) -> Any:
    """``clip_scores`` of a tensor: the maximum over the steps of a (B, steps, n_classes) one."""
    return ops.max(values, axis=1) if len(values.shape) == 3 else values


def _check(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != scores.shape:
        raise ConfigError(
            f"truth and scores must be 2-D arrays of one shape (samples, classes), got "
            f"{truth.shape} and {scores.shape}"
        )
    if not np.isin(truth, (0, 1)).all():
        raise ConfigError("truth must hold only 0 and 1")
    if not np.isfinite(scores).all():
        raise ConfigError("scores must be finite")
    return truth.astype(bool), scores


def positive_precisions(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Precision at the rank of every label, ranked within its sample.

    truth : np.ndarray [shape=(n, n_classes)], 0/1
    scores : np.ndarray [shape=(n, n_classes)], float

    Returns np.ndarray [shape=(n, n_classes)], float64: for each positive label, the number
    of positive labels scored >= it divided by the number of labels scored >= it; 0 where
    the label is negative.
    """
    truth, scores = _check(truth, scores)
    out = np.zeros(scores.shape, dtype=np.float64)
    for lo in range(0, len(scores), _CHUNK):
        s, t = scores[lo : lo + _CHUNK], truth[lo : lo + _CHUNK]
        at_least = s[:, None, :] >= s[:, :, None]  # [i, j, k]: class k scored >= class j
        rank = at_least.sum(axis=2)
        hits = (at_least & t[:, None, :]).sum(axis=2)
        out[lo : lo + _CHUNK] = np.where(t, hits / rank, 0.0)
    return out


def class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class LRAP and each class's weight (its share of all positive labels).

    Returns two np.ndarray [shape=(n_classes,)], float64; ``sum(per_class * weight)`` is
    LWLRAP. A class without positives has LRAP 0 and weight 0.
    """
    precision = positive_precisions(truth, scores)
    positives = np.asarray(truth, dtype=np.float64).sum(axis=0)
    per_class = np.divide(precision.sum(axis=0), positives, out=np.zeros_like(positives), where=positives > 0)
    weight = positives / max(positives.sum(), 1.0)
    return per_class, weight


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """LWLRAP of ``scores`` against 0/1 ``truth``, both ``(samples, classes)``.

    Returns 0.0 when ``truth`` has no positive label at all.
    """
    precision = positive_precisions(truth, scores)
    n_positive = np.asarray(truth, dtype=np.float64).sum()
    return float(precision.sum() / n_positive) if n_positive else 0.0


def top1(truth: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of samples (with at least one positive) whose best-scored class is positive."""
    truth, scores = _check(truth, scores)
    has_positive = truth.any(axis=1)
    if not has_positive.any():
        return 0.0
    best = np.argmax(scores, axis=1)
    hit = truth[np.arange(len(truth)), best]
    return float(hit[has_positive].mean())


@keras.saving.register_keras_serializable(package="experiments")
class Lwlrap(keras.metrics.Metric):
    """LWLRAP over everything seen since the last reset (an epoch in ``fit``).

    LWLRAP ranks classes within each sample, so it is a sum over samples: the metric keeps
    the sum of precisions and the count of positive labels, and the result equals
    ``lwlrap()`` on all the batches concatenated. ``sample_weight`` (the loader's
    known-mask) is ignored: ``y_true`` already says which species are present. Frame scores
    and frame targets are pooled to clips first (``clip_scores``).
    """

    def __init__(self, name: str = "lwlrap", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.precision_sum = self.add_variable(shape=(), initializer="zeros", name="precision_sum")
        self.n_positive = self.add_variable(shape=(), initializer="zeros", name="n_positive")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        truth = ops.cast(ops.greater(ops.cast(_clip(y_true), "float32"), 0.5), "float32")
        scores = ops.cast(_clip(y_pred), "float32")
        # [b, j, k] = 1 where class k is scored >= class j in sample b
        at_least = ops.cast(
            ops.greater_equal(ops.expand_dims(scores, 1), ops.expand_dims(scores, 2)), "float32"
        )
        rank = ops.sum(at_least, axis=2)
        hits = ops.sum(at_least * ops.expand_dims(truth, 1), axis=2)
        precision = truth * hits / rank
        self.precision_sum.assign_add(ops.cast(ops.sum(precision), self.dtype))
        self.n_positive.assign_add(ops.cast(ops.sum(truth), self.dtype))

    def result(self) -> Any:
        return ops.divide_no_nan(self.precision_sum, self.n_positive)

    def reset_state(self) -> None:
        self.precision_sum.assign(0.0)
        self.n_positive.assign(0.0)


@keras.saving.register_keras_serializable(package="experiments")
class Top1(keras.metrics.Metric):
    """Share of samples with a positive label whose best-scored class is positive.

    Equals ``top1()`` on the concatenated batches; ``sample_weight`` is ignored; frame scores
    and targets are pooled to clips first, as in ``Lwlrap``.
    """

    def __init__(self, name: str = "top1", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        truth = ops.cast(ops.greater(ops.cast(_clip(y_true), "float32"), 0.5), "float32")
        best = ops.argmax(_clip(y_pred), axis=1)
        hit = ops.sum(truth * ops.one_hot(best, ops.shape(truth)[1]), axis=1)
        has_positive = ops.cast(ops.greater(ops.sum(truth, axis=1), 0.0), "float32")
        self.hits.assign_add(ops.cast(ops.sum(hit * has_positive), self.dtype))
        self.count.assign_add(ops.cast(ops.sum(has_positive), self.dtype))

    def result(self) -> Any:
        return ops.divide_no_nan(self.hits, self.count)

    def reset_state(self) -> None:
        self.hits.assign(0.0)
        self.count.assign(0.0)
