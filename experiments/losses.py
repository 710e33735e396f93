"""Binary cross-entropy that knows which labels are known.

In RFCX-style data a window's label vector has three kinds of entries: a TP of the species
overlaps it (positive), only an FP overlaps it (a confirmed negative), or nothing was
annotated (unknown: the species may still be calling). The loader yields
``(x, y, mask)`` with ``return_mask=True``: ``y`` is 1 where a TP is present and 0
elsewhere, ``mask`` is 1 where the label is known (TP or FP) and 0 where it is unknown.
Keras passes the third element of a batch to the loss as ``sample_weight``;
``MaskedBinaryCrossentropy`` reads it as that mask, per class, and turns it into weights:

- ``unknown="negative"``: unknowns count as negatives with weight ``unknown_weight``;
- ``unknown="ignore"``: unknowns get weight 0 (no gradient at all).

The loss is the weighted mean ``sum(w * bce) / sum(w)`` over the batch and classes.

Frame targets (``targets="frames"``) work alike: ``y``, the mask and the model's scores are
``(B, steps, n_classes)``, each (step, class) a label of its own, and the mean runs over the
batch, the steps and the classes. A step the loader leaves unknown (no annotation says what
sounds there, padding beyond a recording, the edge of a call that does not count in the step)
is a weighted negative or ignored like any unknown label. A frame model trained on clip targets
(``y`` of ``(B, n_classes)``, scores of ``(B, steps, n_classes)``) is scored by its clip scores,
the maximum over steps (``experiments.metrics.clip_scores``): weak labels.

``clip_weight`` adds, for frame targets, a clip term to the frame term: the BCE of each crop's
maximum score over steps against its maximum target over steps (the clip label), weighted by
``clip_weight``. A clip is a known positive when a step is positive, a negative with the
smallest weight of its steps otherwise. The frame term spreads a crop's loss over its steps, so
one high step for an absent class costs little there; the clip term charges that step in full,
as the recording's score (the maximum over its windows and steps) will.

With few FP rows (as in RFCX) most known labels are positives, so ``"ignore"`` leaves the
model almost no negatives and it learns to score everything high; ``"negative"`` with a
weight below 1 sits between the two.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from experiments.train_options import UNKNOWN_MODES
from melshards.errors import ConfigError


def label_weights(mask: Any, *, unknown: str, unknown_weight: float) -> Any:
    """Per-label weights from a known-mask.

    mask : tensor [shape=(B, n_classes) or (B, steps, n_classes)], float, 1 = known (TP or
        FP), 0 = unknown

    Returns a tensor of the same shape: 1 where known, ``unknown_weight`` (``"negative"``)
    or 0 (``"ignore"``) where unknown.
    """
    fill = unknown_weight if unknown == "negative" else 0.0
    return mask + (1.0 - mask) * fill


@keras.saving.register_keras_serializable(package="experiments")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Per-class binary cross-entropy weighted by the loader's known-mask.

    Parameters
    ----------
    unknown : {"negative", "ignore"}
        How labels with mask 0 count: as negatives weighted by ``unknown_weight``, or not at all.
    unknown_weight : float >= 0
        Weight of an unknown label under ``unknown="negative"`` (1.0 = plain BCE).
    from_logits : bool
        Whether ``y_pred`` holds logits rather than probabilities.
    clip_weight : float >= 0
        Weight of the clip term added for frame targets (see the module docstring); 0: none.

    Call it as ``loss(y_true, y_pred, sample_weight=mask)`` with ``mask`` of the shape of
    ``y_true``, ``(B, n_classes)`` or ``(B, steps, n_classes)`` (what ``model.fit`` does with
    ``(x, y, mask)`` batches). Without a mask every label counts as known, which is plain
    binary cross-entropy.
    """

    def __init__(
        self,
        unknown: str = "negative",
        unknown_weight: float = 1.0,
        from_logits: bool = False,
        clip_weight: float = 0.0,
        name: str = "masked_bce",
        reduction: str = "mean_with_sample_weight",
        dtype: str | None = None,
    ) -> None:
        if unknown not in UNKNOWN_MODES:
            raise ConfigError(f"unknown must be one of {', '.join(UNKNOWN_MODES)}, got {unknown!r}")
        if not unknown_weight >= 0:
            raise ConfigError(f"unknown_weight must be >= 0, got {unknown_weight!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.unknown = unknown
        self.unknown_weight = float(unknown_weight)
        self.from_logits = bool(from_logits)
        if not clip_weight >= 0:
            raise ConfigError(f"clip_weight must be >= 0, got {clip_weight!r}")
        self.clip_weight = float(clip_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        if len(y_pred.shape) == len(y_true.shape) + 1:  # frame scores, clip targets
            y_pred = ops.max(y_pred, axis=1)
        # Elementwise (B, n_classes) or (B, steps, n_classes): the reduction then weights each
        # label on its own.
        return ops.binary_crossentropy(y_true, y_pred, from_logits=self.from_logits)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if sample_weight is not None:
            mask = ops.cast(sample_weight, self.dtype)
            sample_weight = label_weights(mask, unknown=self.unknown, unknown_weight=self.unknown_weight)
        loss = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        if self.clip_weight and len(y_true.shape) == 3 and len(y_pred.shape) == 3:
            loss = loss + self.clip_weight * self.clip_term(y_true, y_pred, sample_weight)
        return loss

    def clip_term(self, y_true: Any, y_pred: Any, weights: Any = None) -> Any:
        """The weighted mean BCE of the crops' maximum scores over steps against their
        maximum targets; ``weights`` are the frame labels' (``label_weights``), None: all 1."""
        y_pred = ops.cast(y_pred, self.dtype)
        clip_true = ops.max(ops.cast(y_true, self.dtype), axis=1)
        bce = ops.binary_crossentropy(clip_true, ops.max(y_pred, axis=1), from_logits=self.from_logits)
        if weights is None:
            return ops.mean(bce)
        known = ops.maximum(
            ops.cast(clip_true > 0, self.dtype), ops.min(ops.cast(weights, self.dtype), axis=1)
        )
        return ops.sum(known * bce) / ops.maximum(ops.sum(known), keras.backend.epsilon())

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            unknown=self.unknown,
            unknown_weight=self.unknown_weight,
            from_logits=self.from_logits,
            clip_weight=self.clip_weight,
        )
        return config
