"""Keras models for log-mel input ``(n_mels, frames, 1)``, chosen by name.

Every model ends in ``n_classes`` sigmoid units (multi-label: several species can call in
one window) and accepts float16 or float32 input: the input layer is float32, so float16
batches from the loader are cast inside the model, on whatever device runs it.

The models are built from stock Keras layers only, so a saved ``model.keras`` loads with
plain ``keras.saving.load_model`` and no project code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
from keras import layers

from experiments.errors import ExperimentError
from melshards.errors import ConfigError

ModelBuilder = Callable[..., keras.Model]

MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a builder ``f(*, input_shape, n_classes, **options) -> keras.Model`` to MODELS."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ConfigError(f"model name {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return add


def available_models() -> tuple[str, ...]:
    return tuple(sorted(MODELS))


def load_model_file(path: str | os.PathLike, *, what: str = "") -> keras.Model:
    """The model saved at ``path`` (a ``.keras`` file), uncompiled.

    ExperimentError naming ``path`` (after it, ``what``: ``"init_from: "``) when Keras cannot
    read it: not a Keras archive, a truncated one, another file altogether.
    """
    try:
        return keras.saving.load_model(Path(path), compile=False)
    except Exception:  # Keras raises many types (ValueError, BadZipFile, OSError, KeyError)
        raise ExperimentError(
            f"{path}: {what}not a readable Keras model (a .keras file saved by experiments.train)"
        ) from None


def build_model(name: str, *, input_shape: Sequence[int], n_classes: int, **options: object) -> keras.Model:
    """Build the registered model ``name``.

    Parameters
    ----------
    name : str
        A key of ``MODELS`` (see ``available_models()``).
    input_shape : (n_mels, frames, 1)
    n_classes : int
        Number of sigmoid outputs.
    **options
        Passed to the builder (e.g. ``dropout``).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 1 or min(shape) < 1:
        raise ConfigError(f"model input shape must be (n_mels, frames, 1), got {tuple(input_shape)}")
    if int(n_classes) < 1:
        raise ConfigError(f"n_classes must be >= 1, got {n_classes}")
    return MODELS[name](input_shape=shape, n_classes=int(n_classes), **options)


def conv_net(
    *,
    input_shape: tuple[int, int, int],
    n_classes: int,
    widths: Sequence[int],
    freq_pools: Sequence[int] | None = None,
    convs_per_block: int = 1,
    mel_pool: int = 2,
    time_pool: int = 4,
    background: bool = True,
    dropout: float = 0.3,
    name: str = "conv_net",
) -> keras.Model:
    """A plain CNN: input pooling, background removal, conv blocks, max + mean over time.

    - The input is average-pooled by ``(mel_pool, time_pool)`` first: 938 frames of 10.7 ms
      are far finer than any call needs, and this cuts the cost of every later layer by
      ``mel_pool * time_pool``.
    - ``background``: each mel bin's mean over the window is subtracted, which removes
      stationary noise (insect bands, coloured background) and keeps what changes in time.
    - Each block is ``convs_per_block`` x (3x3 conv, BatchNorm, ReLU), then max pooling by
      ``(freq_pools[b], 2)``.
    - The head keeps frequency: the remaining mel rows and channels become one feature
      vector per time step (species here differ by band as much as by shape), then max +
      mean over time: the max finds a short call anywhere in the window, the mean keeps a
      gradient for every frame.
    """
    freq_pools = tuple(freq_pools) if freq_pools is not None else (2,) * len(widths)
    if len(freq_pools) != len(widths):
        raise ConfigError(f"freq_pools {freq_pools} needs one entry per block ({len(widths)})")
    # BatchNorm's default momentum (0.99) leaves the moving statistics far from the batch
    # statistics after the few hundred steps a small data set gives; 0.9 settles in ~30.
    momentum = 0.9
    inputs = keras.Input(shape=input_shape, name="log_mel")
    x = inputs
    if mel_pool > 1 or time_pool > 1:
        x = layers.AveragePooling2D((mel_pool, time_pool), padding="same", name="input_pool")(x)
    if background:
        bin_mean = layers.AveragePooling2D((1, x.shape[2]), name="bin_mean")(x)
        x = layers.Subtract(name="remove_background")([x, bin_mean])
    x = layers.BatchNormalization(momentum=momentum, name="input_bn")(x)
    for b, (width, freq_pool) in enumerate(zip(widths, freq_pools, strict=True)):
        for c in range(convs_per_block):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{b}_conv{c}")(x)
            x = layers.BatchNormalization(momentum=momentum, name=f"block{b}_bn{c}")(x)
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D((freq_pool, 2), padding="same", name=f"block{b}_pool")(x)
    n_freq, n_time, channels = x.shape[1], x.shape[2], x.shape[3]
    x = layers.Permute((2, 1, 3), name="time_first")(x)
    x = layers.Reshape((n_time, n_freq * channels), name="per_time_step")(x)
    x = layers.Concatenate(name="time_pool")(
        [layers.GlobalMaxPooling1D(name="time_max")(x), layers.GlobalAveragePooling1D(name="time_mean")(x)]
    )
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="sigmoid", dtype="float32", name="scores")(x)
    return keras.Model(inputs, outputs, name=name)


@register_model("baseline")
def baseline(*, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.3) -> keras.Model:
    """Four conv blocks (16-32-64-128) on the input pooled by 2 (mel) x 4 (time).

    About 150 k parameters and ~55 M multiply-adds per 128 x 938 window: trains in minutes
    on a laptop CPU. The last block keeps its 8 frequency rows for the head.
    """
    return conv_net(
        input_shape=input_shape,
        n_classes=n_classes,
        widths=(16, 32, 64, 128),
        freq_pools=(2, 2, 2, 1),
        mel_pool=2,
        time_pool=4,
        dropout=dropout,
        name="baseline",
    )


@register_model("tiny")
def tiny(*, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.2) -> keras.Model:
    """Three narrow blocks (8-16-32) on an input pooled by 4 x 8: seconds per epoch."""
    return conv_net(
        input_shape=input_shape,
        n_classes=n_classes,
        widths=(8, 16, 32),
        freq_pools=(2, 2, 1),
        mel_pool=4,
        time_pool=8,
        dropout=dropout,
        name="tiny",
    )


@register_model("wide")
def wide(*, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.4) -> keras.Model:
    """Two convs per block (32-64-128-256) on the input pooled by 2 in time: for an accelerator."""
    return conv_net(
        input_shape=input_shape,
        n_classes=n_classes,
        widths=(32, 64, 128, 256),
        freq_pools=(2, 2, 2, 2),
        convs_per_block=2,
        mel_pool=1,
        time_pool=2,
        dropout=dropout,
        name="wide",
    )
