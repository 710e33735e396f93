"""The device path on Keras 3: a stored batch finished with ``keras.ops``, on any backend.

``build_batch(inputs, y, known, recipe)`` and its halves ``build_features`` and ``mix_labels``
do what ``loader.device_torch`` does, with ``keras.ops`` (TensorFlow, JAX or PyTorch), on the
tensors of a ``loader.stored_batch.StoredBatch``: decode, gain and clip, cast, mixup, masks,
then the labels mixed, in the CPU path's order and with its semantics.

For ``model.fit``, ``DeviceBatchModel(model, recipe)`` wraps any Keras model taking ``x``
(B, n_mels, crop, 1). It takes the stored batches that ``ShardSequence(..., on_device=True)``
yields (``(inputs, y[, known])``, ``inputs`` a dict of arrays): Keras moves them to the device
as they are, and inside the compiled training step the wrapper builds ``x`` from ``inputs``
(``call``) and mixes ``y`` and ``known`` (the sample weight) before the loss and the metrics
(``compute_loss``, ``compute_metrics``), so decoding and augmentation run as device operations
of the step on every backend::

    train = ShardSequence("features/demo", split="train", return_mask=True, on_device=True)
    model = build_model(...)                       # takes (n_mels, frames, 1) as before
    trainer = DeviceBatchModel(model, train.device_recipe)
    trainer.compile(optimizer="adam", loss=MaskedBinaryCrossentropy(), metrics=[...])
    trainer.fit(train, epochs=10, shuffle=False)
    model.save("model.keras")                      # the wrapped model: it takes x

``trainer.predict(inputs)`` gives the wrapped model's outputs for stored inputs. The wrapper
adds no weights; save, load and predict on finished ``x`` with the wrapped model itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from loader.stored_batch import DeviceRecipe
from melshards.errors import ConfigError


def build_batch(inputs: Mapping[str, Any], y: Any, known: Any, recipe: DeviceRecipe) -> tuple:
    """``(x, y)`` or ``(x, y, known)`` of one stored batch: ``inputs`` is ``StoredBatch.inputs()``."""
    x = build_features(inputs, recipe)
    y, known = mix_labels(y, known, inputs, recipe)
    return (x, y, known) if recipe.return_mask else (x, y)


def build_features(inputs: Mapping[str, Any], recipe: DeviceRecipe) -> Any:
    """``x`` (B, n_mels, crop, 1) in ``recipe.dtype``: decoded, gain, mixup, masks."""
    if not isinstance(inputs, Mapping) or "stored" not in inputs:
        raise ConfigError(
            "device batch: expected the inputs of a stored batch (ShardSequence(..., on_device=True)), "
            f"got {type(inputs).__name__}"
        )
    x = ops.cast(inputs["stored"], "float32")
    if "offset" in inputs:  # uint8 codes: offset + codes * scale, as the CPU path's kernel
        x = ops.add(_rows(inputs["offset"], 3), ops.multiply(x, _rows(inputs["scale"], 3)))
    if "gain" in inputs:
        x = ops.multiply(x, _rows(inputs["gain"], 3))
        if recipe.clip is not None:
            x = ops.clip(x, recipe.clip[0], recipe.clip[1])
    x = ops.cast(x, recipe.dtype)
    if recipe.mixup:
        x = _mixup(x, inputs["partner"], inputs["weight"], recipe.dtype)
    x = _masks(x, inputs["freq"], inputs["time"], recipe)
    return ops.expand_dims(x, -1)


def _rows(values: Any, ndim: int) -> Any:
    """A (B,) array shaped to broadcast over arrays of ``ndim`` dimensions."""
    return ops.reshape(ops.cast(values, "float32"), (-1,) + (1,) * (ndim - 1))


def _mixup(x: Any, partner: Any, weight: Any, dtype: str) -> Any:
    """Rows with a partner become ``lam * x + (1 - lam) * x[partner]`` (float32, then cast)."""
    other = ops.take(x, ops.maximum(partner, 0), axis=0)  # partners as they were before mixing
    lam = _rows(weight, 3)
    mixed = ops.add(
        ops.multiply(lam, ops.cast(x, "float32")),
        ops.multiply(ops.subtract(1.0, lam), ops.cast(other, "float32")),
    )
    chosen = ops.reshape(ops.greater_equal(partner, 0), (-1, 1, 1))
    return ops.where(chosen, ops.cast(mixed, dtype), x)


def _masks(x: Any, freq: Any, time: Any, recipe: DeviceRecipe) -> Any:
    """Cells of every frequency and time band set to their mel bin's fill value."""
    if freq.shape[1] == 0 and time.shape[1] == 0:
        return x
    n_mels, frames = x.shape[1], x.shape[2]
    cells = ops.logical_or(ops.expand_dims(_bands(freq, n_mels), 2), ops.expand_dims(_bands(time, frames), 1))
    fill = ops.convert_to_tensor(np.asarray(recipe.fill, dtype=recipe.dtype).reshape(1, -1, 1))
    return ops.where(cells, fill, x)


def _bands(bands: Any, size: int) -> Any:
    """(B, size) bool: positions inside any ``(first, width)`` band of each example."""
    bands = ops.cast(bands, "int32")
    position = ops.reshape(ops.arange(size, dtype="int32"), (1, 1, size))
    first, width = bands[:, :, 0:1], bands[:, :, 1:2]
    inside = ops.logical_and(ops.greater_equal(position, first), ops.less(position, ops.add(first, width)))
    return ops.any(inside, axis=1)


def mix_labels(y: Any, known: Any, inputs: Mapping[str, Any], recipe: DeviceRecipe) -> tuple[Any, Any]:
    """``y`` and ``known`` (or None) of the mixed examples (``Augment.mix_labels``)."""
    if not recipe.mixup:
        return y, known
    partner = inputs["partner"]
    ndim = len(y.shape)
    rows = ops.maximum(partner, 0)
    chosen = ops.reshape(ops.greater_equal(partner, 0), (-1,) + (1,) * (ndim - 1))
    y_other = ops.take(y, rows, axis=0)
    k_other = None if known is None else ops.take(known, rows, axis=0)
    if recipe.mixup_labels == "max":
        y_new = ops.maximum(y, y_other)
        k_new = None if known is None else ops.maximum(y_new, ops.multiply(known, k_other))
    else:
        lam = _rows(inputs["weight"], ndim)
        y_new = ops.add(ops.multiply(lam, y), ops.multiply(ops.subtract(1.0, lam), y_other))
        k_new = None if known is None else ops.multiply(known, k_other)
    y = ops.where(chosen, y_new, y)
    return y, None if known is None else ops.where(chosen, k_new, known)


class DeviceBatchModel(keras.Model):
    """``model`` trained from stored batches built on the device (see the module docstring).

    model : a Keras model taking ``x`` (B, n_mels, crop, 1)
    recipe : ``ShardSequence.device_recipe`` of the sequence it is fitted on
    """

    def __init__(self, model: keras.Model, recipe: DeviceRecipe, **kwargs: Any) -> None:
        # autocast off: the stored arrays keep their dtypes (offsets and weights stay float32
        # under a mixed precision policy); the wrapped model casts x as it always does.
        super().__init__(autocast=False, **kwargs)
        if not isinstance(recipe, DeviceRecipe):
            raise ConfigError(
                f"DeviceBatchModel: recipe must be a sequence's device_recipe, got {type(recipe).__name__}"
            )
        self.model = model
        self.recipe = recipe

    def call(self, inputs: Mapping[str, Any], training: bool | None = None) -> Any:
        return self.model(build_features(inputs, self.recipe), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y, sample_weight = mix_labels(y, sample_weight, x, self.recipe)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y, sample_weight = mix_labels(y, sample_weight, x, self.recipe)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)
