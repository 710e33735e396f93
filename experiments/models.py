"""Keras models for log-mel input ``(n_mels, frames, 1)``, chosen by name.

Every model ends in ``n_classes`` sigmoid units (multi-label: several species can call in
one window) and accepts float16 or float32 input: the input layer is float32, so float16
batches from the loader are cast inside the model, on whatever device runs it.

A clip model scores a whole crop, ``(batch, n_classes)``; a frame model (``sed``,
``sed_gated``, registered with ``frames=True``) scores each step of ``target_step`` frames,
``(batch, steps, n_classes)`` with ``steps = ceil(frames / target_step)``: the loader's frame
targets (``BatchOptions(targets="frames")``). A frame model's clip scores are the maximum over
its steps (``experiments.metrics.clip_scores``): the clip output that LWLRAP, the validation
scores and the submission read.

The models are built from stock Keras layers only, so a saved ``model.keras`` loads with
plain ``keras.saving.load_model`` and no project code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
from keras import layers

from experiments.errors import ExperimentError
from melshards.errors import ConfigError

ModelBuilder = Callable[..., keras.Model]

MODELS: dict[str, ModelBuilder] = {}
# The registered frame models: their builders take ``target_step`` too.
FRAME_MODELS: set[str] = set()


def register_model(name: str, *, frames: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a builder ``f(*, input_shape, n_classes, **options) -> keras.Model`` to MODELS;
    ``frames``: it scores steps, ``f(..., target_step=N)`` (the module docstring)."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ConfigError(f"model name {name!r} is registered twice")
        MODELS[name] = builder
        if frames:
            FRAME_MODELS.add(name)
        return builder

    return add


def available_models() -> tuple[str, ...]:
    return tuple(sorted(MODELS))


def frame_models() -> tuple[str, ...]:
    """The registered frame models' names, sorted."""
    return tuple(sorted(FRAME_MODELS))


def is_frame_model(name: str) -> bool:
    """Whether the registered model ``name`` scores steps rather than whole clips."""
    return name in FRAME_MODELS


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


def time_pools(target_step: int) -> tuple[int, int]:
    """How a frame model pools time by exactly ``target_step``: (the input's average pooling,
    the first block's max pooling). Most of it at the input, where it is cheapest; the first
    block takes a factor 2 when there is one, so that a call's onset inside a step still shows."""
    block = 2 if target_step % 2 == 0 else 1
    return target_step // block, block


def frame_net(
    *,
    input_shape: tuple[int, int, int],
    n_classes: int,
    target_step: int,
    widths: Sequence[int] = (16, 32, 64),
    freq_pools: Sequence[int] | None = None,
    mel_pool: int = 2,
    context_width: int = 64,
    context_kernel: int = 5,
    dropout: float = 0.2,
    clip_gate: bool = False,
    name: str = "frame_net",
) -> keras.Model:
    """A CNN that pools frequency and keeps time at one output per ``target_step`` frames.

    - The input is average-pooled by ``mel_pool`` in frequency only, and each mel bin's mean
      over the crop is subtracted (steady background noise), as in ``conv_net``.
    - Time is padded with zeros (after the background is removed: zeros are the mean) to
      ``steps * target_step`` frames, ``steps = ceil(frames / target_step)``, then pooled by
      exactly ``target_step`` (``time_pools``): step ``j`` sees frames ``j * target_step`` to
      ``(j + 1) * target_step - 1``, the loader's step ``j``.
    - Each block is a 3x3 conv, BatchNorm, ReLU and max pooling by ``(freq_pools[b], t)``.
    - The head keeps frequency: the remaining mel rows and channels become one vector per step,
      a 1-D conv over ``context_kernel`` steps adds the calls' context in time, and a dense
      sigmoid layer scores every step: ``(batch, steps, n_classes)``.
    - ``clip_gate``: the step scores are multiplied by a clip score of their class (``gated``).
    """
    target_step = int(target_step)
    if target_step < 1:
        raise ConfigError(f"target_step must be an integer >= 1, got {target_step}")
    freq_pools = tuple(freq_pools) if freq_pools is not None else (2,) * len(widths)
    if len(freq_pools) != len(widths):
        raise ConfigError(f"freq_pools {freq_pools} needs one entry per block ({len(widths)})")
    momentum = 0.9  # as conv_net: the moving statistics settle within a small data set's steps
    frames = input_shape[1]
    steps = math.ceil(frames / target_step)
    input_pool, block_pool = time_pools(target_step)
    inputs = keras.Input(shape=input_shape, name="log_mel")
    x = inputs
    if mel_pool > 1:
        x = layers.AveragePooling2D((mel_pool, 1), padding="same", name="mel_pool")(x)
    bin_mean = layers.AveragePooling2D((1, frames), name="bin_mean")(x)
    x = layers.Subtract(name="remove_background")([x, bin_mean])
    x = layers.BatchNormalization(momentum=momentum, name="input_bn")(x)
    if steps * target_step > frames:
        x = layers.ZeroPadding2D(((0, 0), (0, steps * target_step - frames)), name="pad_to_steps")(x)
    if input_pool > 1:
        x = layers.AveragePooling2D((1, input_pool), name="input_pool")(x)
    for b, (width, freq_pool) in enumerate(zip(widths, freq_pools, strict=True)):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{b}_conv")(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"block{b}_bn")(x)
        x = layers.ReLU(name=f"block{b}_relu")(x)
        pool = (freq_pool, block_pool if b == 0 else 1)
        if pool != (1, 1):
            x = layers.MaxPooling2D(pool, padding="same", name=f"block{b}_pool")(x)
    n_freq, n_steps, channels = x.shape[1], x.shape[2], x.shape[3]
    x = layers.Permute((2, 1, 3), name="time_first")(x)
    x = layers.Reshape((n_steps, n_freq * channels), name="per_step")(x)
    features = x
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Conv1D(context_width, context_kernel, padding="same", activation="relu", name="context")(x)
    if not clip_gate:
        outputs = layers.Dense(n_classes, activation="sigmoid", dtype="float32", name="frame_scores")(x)
        return keras.Model(inputs, outputs, name=name)
    step_scores = layers.Dense(n_classes, activation="sigmoid", dtype="float32", name="step_scores")(x)
    return keras.Model(inputs, gated(features, step_scores, dropout=dropout), name=name)


def gated(
    features: keras.KerasTensor, step_scores: keras.KerasTensor, *, dropout: float
) -> keras.KerasTensor:
    """Frame scores as a clip score times a step score: ``(batch, steps, n_classes)``.

    ``features`` ``(batch, steps, F)`` are pooled over the crop (maximum and mean, as
    ``conv_net``'s head) into one sigmoid score per class, the chance that the class calls in
    the crop; ``step_scores`` say where. Their product is what the model outputs, so a frame
    score is high only where the crop as a whole says the class is there, and the crop's
    maximum over steps (its clip score) is the clip score times the best step's. A single
    high step of an absent class, which the frame loss spreads thin, has to get past the clip
    score, which a whole crop's evidence decides.
    """
    n_classes = step_scores.shape[-1]
    pooled = layers.Concatenate(name="crop_pool")(
        [
            layers.GlobalMaxPooling1D(name="crop_max")(features),
            layers.GlobalAveragePooling1D(name="crop_mean")(features),
        ]
    )
    pooled = layers.Dropout(dropout, name="crop_dropout")(pooled)
    clip = layers.Dense(n_classes, activation="sigmoid", dtype="float32", name="clip_gate")(pooled)
    clip = layers.Reshape((1, n_classes), name="gate_per_step")(clip)
    return layers.Multiply(dtype="float32", name="frame_scores")([step_scores, clip])


@register_model("sed", frames=True)
def sed(
    *, input_shape: tuple[int, int, int], n_classes: int, target_step: int = 8, dropout: float = 0.2
) -> keras.Model:
    """Sound events: three blocks (16-32-64) on 64 mel rows, one score per ``target_step``
    frames (85 ms at 8 and the default config) and class.

    189 k parameters for 24 classes; per 128 x 938 crop at ``target_step`` 8, about 75 M
    multiply-adds (the first block at 235 time steps, the others at the 118 output steps):
    an epoch costs about what ``baseline``'s does.
    """
    return frame_net(
        input_shape=input_shape,
        n_classes=n_classes,
        target_step=target_step,
        widths=(16, 32, 64),
        freq_pools=(2, 2, 2),
        mel_pool=2,
        dropout=dropout,
        name="sed",
    )


@register_model("sed_gated", frames=True)
def sed_gated(
    *, input_shape: tuple[int, int, int], n_classes: int, target_step: int = 8, dropout: float = 0.2
) -> keras.Model:
    """``sed`` with a clip gate (``gated``): each step's score is a clip score of the crop, from
    the per-step features' maximum and mean, times a score of the step. 214 k parameters for 24
    classes: the gate's 25 k, and well under 1 % more multiply-adds than ``sed``.
    """
    return frame_net(
        input_shape=input_shape,
        n_classes=n_classes,
        target_step=target_step,
        widths=(16, 32, 64),
        freq_pools=(2, 2, 2),
        mel_pool=2,
        dropout=dropout,
        clip_gate=True,
        name="sed_gated",
    )
