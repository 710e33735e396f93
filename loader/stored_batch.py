"""The device path's host side: a batch as the stored values of its crops and its draws.

``ShardBatches.batch`` finishes every batch on the host: it decodes each crop to float32 (or
float16), applies the gain, mixup and SpecAugment masks and mixes the labels, and the result
travels to the accelerator as floats. The device path splits that work in two:

- the host (``ShardBatches.stored_batch``) reads only the stored values of each crop, as they
  are stored (uint8 codes with their example's offset and scale, or float16 or float32
  values), draws the batch's augmentation exactly as the CPU path does
  (``Augment.sample_params``, seeded by ``(seed, epoch, rank, batch)``) and computes the
  unmixed labels: a ``StoredBatch``;
- the framework finishes it with its own operations, on the device the arrays sit on
  (``loader.device_torch``, ``loader.device_keras``), in the CPU path's order and with its
  semantics: decode (``offset + codes * scale`` in float32, or the stored floats as float32),
  gain then clip, cast to the output dtype, mixup (``lam * x + (1 - lam) * x[partner]`` in
  float32, partners taken before mixing), the frequency and time masks set to their fill
  value, then the labels mixed (``Augment.mix_labels``).

A ``DeviceRecipe`` holds what is the same for every batch of a loader (output dtype, fill
values, clip, mixup labels, whether ``known`` is returned); ``ShardBatches.device_recipe``
gives it.

Exactness: every step is the CPU path's float32 operation in the same order, so on the CPU
device, operation by operation (PyTorch eager, Keras ops outside a compiled function), the
batch is the CPU path's bit for bit. A compiler (XLA, ``torch.compile``, GPU kernels) may fuse
a multiply and an add into one FMA, which rounds once instead of twice; features and labels
of ``"weighted"`` mixup may then differ in their last bits. ``feature_tolerance`` is how far:
``FEATURE_TOLERANCE`` float32 units in the last place of the batch's largest magnitude (one
per rounding that can be skipped: decode, gain, the two products of mixup) for float32
output, and one float16 unit in the last place of the value for float16 output (where such a
difference can move the final rounding). float16 and float32 stored values decode exactly
everywhere; ``"max"`` labels and the known-label mask involve no rounding and stay exact.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from loader.buffers import BufferPool

if TYPE_CHECKING:
    from loader.augment import AugmentParams
    from loader.reader import MelReader

# float32 units in the last place (of a batch's largest magnitude) that a fused multiply-add
# may move a feature by: one for the decode, one for the gain, two for the mixup.
FEATURE_TOLERANCE = 4


def feature_tolerance(x: np.ndarray) -> np.ndarray:
    """How far a device-built ``x`` may lie from the CPU path's ``x`` (see the module docstring).

    x : the CPU path's features, float32 or float16
    Returns a bound for ``|device - cpu|``, a scalar (float32) or one per value (float16).
    """
    x = np.asarray(x)
    if x.dtype == np.float16:
        return np.spacing(np.abs(x)).astype(np.float32)
    largest = np.float32(np.abs(x).max()) if x.size else np.float32(0)
    return FEATURE_TOLERANCE * np.spacing(largest)


# The arrays a device builds ``x`` from, in order; a batch leaves out those that are None.
INPUT_FIELDS = ("stored", "offset", "scale", "gain", "freq", "time", "partner", "weight")


@dataclasses.dataclass
class StoredBatch:
    """One batch of ``B`` examples as the device path's host side hands it over.

    stored : np.ndarray [shape=(B, n_mels, crop)], uint8 codes, float16 or float32 -- the
        crops' values as stored
    offset, scale : np.ndarray [shape=(B,)], float32 -- each example's code offset and step
        (uint8 codes), or None
    gain : np.ndarray [shape=(B,)], float32, or None when gain is off
    freq, time : np.ndarray [shape=(B, k, 2)], int32 -- (first, width) of each mask band
    partner : np.ndarray [shape=(B,)], int32 -- row mixed into each example, -1 for none
    weight : np.ndarray [shape=(B,)], float32 -- share ``lam`` each mixed example keeps
    y : np.ndarray [shape=(B, n_classes) or (B, steps, n_classes)], float32 -- labels before mixup
    known : np.ndarray, ``y``'s shape, float32 -- known-label mask before mixup, or None when
        the loader does not return it
    """

    stored: np.ndarray
    offset: np.ndarray | None
    scale: np.ndarray | None
    gain: np.ndarray | None
    freq: np.ndarray
    time: np.ndarray
    partner: np.ndarray
    weight: np.ndarray
    y: np.ndarray
    known: np.ndarray | None

    @classmethod
    def of(
        cls,
        stored: np.ndarray,
        quant: tuple[np.ndarray, np.ndarray] | None,
        params: AugmentParams,
        y: np.ndarray,
        known: np.ndarray | None,
    ) -> StoredBatch:
        offset, scale = (None, None) if quant is None else quant
        return cls(
            stored=stored,
            offset=offset,
            scale=scale,
            gain=params.gain,
            freq=params.freq.astype(np.int32),
            time=params.time.astype(np.int32),
            partner=params.partner.astype(np.int32),
            weight=params.weight.astype(np.float32),
            y=y,
            known=known,
        )

    def inputs(self) -> dict[str, np.ndarray]:
        """The arrays ``x`` is built from, by name (``INPUT_FIELDS``, None fields left out)."""
        return {name: getattr(self, name) for name in INPUT_FIELDS if getattr(self, name) is not None}

    def arrays(self) -> dict[str, np.ndarray]:
        """``inputs()`` with ``y`` (and ``known``): everything a device needs, by name."""
        labels = {"y": self.y} if self.known is None else {"y": self.y, "known": self.known}
        return self.inputs() | labels

    def fit_tuple(self) -> tuple:
        """``(inputs, y)`` or ``(inputs, y, known)``: what ``model.fit`` takes with a
        ``loader.device_keras.DeviceBatchModel``."""
        inputs = self.inputs()
        return (inputs, self.y) if self.known is None else (inputs, self.y, self.known)

    @property
    def nbytes(self) -> int:
        """Bytes of every array together: what travels to the device."""
        return sum(a.nbytes for a in self.arrays().values())


@dataclasses.dataclass(frozen=True)
class DeviceRecipe:
    """What finishing a loader's stored batches needs besides the batches themselves.

    dtype : ``"float32"`` or ``"float16"``, the dtype of ``x``
    fill : value of masked cells per mel bin, exact in ``dtype``
    clip : (low, high) applied after the gain, or None
    mixup : whether examples may be mixed (``Augment.mixup_p > 0``)
    mixup_labels : ``"max"`` or ``"weighted"`` (``Augment.mixup_labels``)
    return_mask : whether a batch ends with ``known``
    """

    dtype: str
    fill: tuple[float, ...]
    clip: tuple[float, float] | None
    mixup: bool
    mixup_labels: str
    return_mask: bool

    @classmethod
    def of(cls, batches) -> DeviceRecipe:
        """The recipe of a ``ShardBatches`` (or an adapter around one)."""
        augment = batches.augment
        # The fill in the output dtype, as the CPU path's masks cast it: no double rounding later.
        fill = np.asarray(batches.fill, dtype=batches.dtype)
        clip = None if batches.clip is None else (float(batches.clip[0]), float(batches.clip[1]))
        return cls(
            dtype=np.dtype(batches.dtype).name,
            fill=tuple(float(v) for v in fill),
            clip=clip,
            mixup=augment.mixup_p > 0,
            mixup_labels=augment.mixup_labels,
            return_mask=bool(batches.return_mask),
        )


def read_stored(reader: MelReader, ids: np.ndarray, crop_start: np.ndarray, out: np.ndarray) -> None:
    """Copy the stored values of crops of examples ``ids`` into ``out``, undecoded.

    out : np.ndarray [shape=(B, n_mels, crop)], the feature set's stored dtype (uint8 codes,
        float16 or float32), C-contiguous
    Reads as ``MelReader.read`` does (memory maps, compressed chunks, h5py, the in-RAM cache,
    every chunk's checksum), with a copying target instead of a decoding one.
    """
    config = reader.features.config
    if out.dtype != np.dtype(config.dtype) or not out.flags.c_contiguous:
        raise ValueError(f"read_stored: out must be C-contiguous {config.dtype}, got {out.dtype}")
    reader.read(ids, crop_start, out, stored=True)


class StoredReads:
    """Stored crops of a loader's batches, read into recycled, aligned arrays.

    shape : (batch_size, n_mels, crop_frames) of a full batch
    The arrays come from a ``BufferPool`` of this process (a forked or unpickled copy makes
    its own), reused once nothing refers to them, as the CPU path's batch arrays are.
    """

    def __init__(self, reader: MelReader, shape: tuple[int, int, int]) -> None:
        self.reader = reader
        self.shape = tuple(shape)
        self.dtype = np.dtype(reader.features.config.dtype)
        self._pool: BufferPool | None = None
        self._pid: int | None = None

    def _buffers(self) -> BufferPool:
        if self._pid != os.getpid():  # never a parent's pool: its lock may be held for good
            self._pool, self._pid = BufferPool(self.shape, self.dtype), os.getpid()
        return self._pool

    def read(
        self, ids: np.ndarray, crop_start: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """The stored crops of ``ids`` and, for uint8 codes, their examples' (offset, scale)."""
        out = self._buffers().take(ids.shape[0])
        read_stored(self.reader, ids, crop_start, out)
        features = self.reader.features
        if features.mel_offset is None:
            return out, None
        return out, (features.mel_offset[ids], features.mel_scale[ids])

    def __getstate__(self) -> dict:
        return dict(self.__dict__) | {"_pool": None, "_pid": None}
