"""Cheap augmentations applied to a batch in place: time shift, gain, mixup, SpecAugment masks.

Sampling is separate from applying: ``Augment.sample_params(rng, ...)`` draws everything a
batch needs from one generator (derived from (seed, epoch, batch) by the sequence), and
``Augment.apply(x, params, ...)`` changes the output buffer in place, vectorized over the
batch. Order: crop (the shift picks which stored frames are read), gain, mixup, masks.

Semantics worth knowing:

- **shift**: the crop start is drawn uniformly from every start the stored context allows
  (at most ``max_shift_frames`` away from the centre when set); without shift the crop is
  centred. Labels follow the frames actually read. An example whose window reaches beyond its
  recording (``valid`` frames narrower than the stored ones) draws among the starts whose crop
  lies inside its valid frames, or, when those are fewer than the crop, among the crops that
  cover all of them; a draw that already qualifies is kept, so examples without padding get
  the crops they always had.
- **gain**: each example is multiplied by a factor drawn uniformly from ``gain``; values are
  clipped to [0, 1] when the feature config's ``normalize`` is ``"minmax"``.
- **mixup**: with probability ``mixup_p`` an example is mixed with another example of the same
  batch (taken before mixing): ``lam * x + (1 - lam) * x_other`` with ``lam`` drawn from
  Beta(alpha, alpha) and folded to ``max(lam, 1 - lam)`` so the example keeps the larger
  share. Labels: ``"max"`` (default) marks every species of either example as present (both
  calls are audible in the mix); ``"weighted"`` mixes the label vectors with the same
  weights. Known-label mask: with ``"max"`` a class is known when it is positive in either
  example or known in both; with ``"weighted"`` only when known in both. Frame targets
  (``targets="frames"``) combine the same way, step by step.
- **masks** (SpecAugment): ``freq_masks`` bands of 0..``freq_mask_max`` mel bins and
  ``time_masks`` bands of 0..``time_mask_max`` frames, placed uniformly; masked cells are set
  to the feature set's per-mel-bin mean (``mask_value="mean"``, from the index statistics,
  so a mask looks like an average spectrum rather than silence) or to 0 (``"zero"``).
  Masks come last, so a mask covers exactly its width with exactly the fill value. Labels and
  frame targets stay as they are under a mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from loader import read_kernels
from melshards.checks import check_int
from melshards.errors import ConfigError

MASK_VALUES = ("mean", "zero")
MIXUP_LABELS = ("max", "weighted")


@dataclasses.dataclass
class AugmentParams:
    """Every random choice for one batch of ``B`` examples.

    crop_start : np.ndarray [shape=(B,)], int64 -- first stored frame of each crop
    gain : np.ndarray [shape=(B,)], float32, or None when gain is off
    freq : np.ndarray [shape=(B, k, 2)], int64 -- (first bin, width) of each frequency mask
    time : np.ndarray [shape=(B, k, 2)], int64 -- (first frame, width) of each time mask
    partner : np.ndarray [shape=(B,)], int64 -- batch row mixed into each example, -1 for none
    weight : np.ndarray [shape=(B,)], float32 -- share ``lam`` an example keeps when mixed
    """

    crop_start: np.ndarray
    gain: np.ndarray | None
    freq: np.ndarray
    time: np.ndarray
    partner: np.ndarray
    weight: np.ndarray

    def rows(self, lo: int, hi: int) -> AugmentParams:
        """The draws of rows ``lo:hi``, without mixup (it pairs rows across the whole batch)."""
        n = hi - lo
        return AugmentParams(
            crop_start=self.crop_start[lo:hi],
            gain=None if self.gain is None else self.gain[lo:hi],
            freq=self.freq[lo:hi],
            time=self.time[lo:hi],
            partner=np.full(n, -1, dtype=np.int64),
            weight=np.ones(n, dtype=np.float32),
        )


@dataclasses.dataclass(frozen=True)
class Augment:
    """Augmentation settings; ``Augment()`` is the default for training, ``Augment.off()`` none."""

    shift: bool = True
    max_shift_frames: int | None = None
    freq_masks: int = 2
    freq_mask_max: int = 12
    time_masks: int = 2
    time_mask_max: int = 40
    mask_value: str = "mean"
    gain: tuple[float, float] = (0.8, 1.2)
    mixup_p: float = 0.0
    mixup_alpha: float = 0.4
    mixup_labels: str = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.shift, bool | np.bool_):
            raise ConfigError(f"augment shift must be true or false, got {self.shift!r}")
        if self.max_shift_frames is not None:
            check_int("max_shift_frames", self.max_shift_frames, low=0, where="augment ")
        for name in ("freq_masks", "freq_mask_max", "time_masks", "time_mask_max"):
            check_int(name, getattr(self, name), low=0, where="augment ")
        if self.mask_value not in MASK_VALUES:
            raise ConfigError(f"augment mask_value must be one of {MASK_VALUES}, got {self.mask_value!r}")
        try:
            low, high = (float(v) for v in self.gain)
        except (TypeError, ValueError):
            raise ConfigError(f"augment gain must be a pair (low, high), got {self.gain!r}") from None
        if not 0 < low <= high or not np.isfinite(high):
            raise ConfigError(f"augment gain needs 0 < low <= high, got {self.gain!r}")
        object.__setattr__(self, "gain", (low, high))
        if not 0 <= self.mixup_p <= 1:
            raise ConfigError(f"augment mixup_p must be in [0, 1], got {self.mixup_p!r}")
        if not self.mixup_alpha > 0:
            raise ConfigError(f"augment mixup_alpha must be positive, got {self.mixup_alpha!r}")
        if self.mixup_labels not in MIXUP_LABELS:
            raise ConfigError(
                f"augment mixup_labels must be one of {MIXUP_LABELS}, got {self.mixup_labels!r}"
            )

    @classmethod
    def off(cls) -> Augment:
        """No augmentation: centred crop, nothing else."""
        return cls(shift=False, freq_masks=0, time_masks=0, gain=(1.0, 1.0), mixup_p=0.0)

    @classmethod
    def coerce(cls, value: Augment | bool | Mapping[str, Any] | None) -> Augment:
        """``True`` -> defaults, ``False``/``None`` -> off, a mapping -> ``from_dict``."""
        if isinstance(value, Augment):
            return value
        if value is True:
            return cls()
        if value is False or value is None:
            return cls.off()
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ConfigError(f"augment must be true, false, an Augment or a mapping, got {value!r}")

    @property
    def uses_gain(self) -> bool:
        return self.gain != (1.0, 1.0)

    @property
    def enabled(self) -> bool:
        return (
            self.shift
            or self.uses_gain
            or self.mixup_p > 0
            or (self.freq_masks > 0 and self.freq_mask_max > 0)
            or (self.time_masks > 0 and self.time_mask_max > 0)
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gain"] = list(self.gain)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Augment:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"augment: unknown parameter(s) {', '.join(unknown)}")
        values = dict(data)
        if "gain" in values and isinstance(values["gain"], list):
            values["gain"] = tuple(values["gain"])
        return cls(**values)

    # -- sampling ----------------------------------------------------------------------------

    def sample_params(
        self,
        rng: np.random.Generator,
        batch_size: int,
        *,
        n_mels: int,
        n_frames: int,
        crop_frames: int,
        valid: np.ndarray | None = None,
    ) -> AugmentParams:
        """Draw every random choice for a batch from ``rng``, in a fixed order.

        ``rng`` may be None when nothing is enabled (``Augment.off()``): nothing is drawn.
        ``valid`` [shape=(B, 2)], int: the ``[first, stop)`` stored frames of each example that
        hold audio (``FeatureSet.valid``); None: every frame does.
        """
        b = batch_size
        center = (n_frames - crop_frames) // 2
        shifts = self.shift and n_frames > crop_frames
        if shifts:
            low, high = self._shift_range(n_frames, crop_frames)
            crop_start = rng.integers(low, high, size=b, endpoint=True, dtype=np.int64)
        else:
            crop_start = np.full(b, center, dtype=np.int64)

        gain = None
        if self.uses_gain:
            gain = rng.uniform(self.gain[0], self.gain[1], size=b).astype(np.float32)

        freq = _sample_bands(rng, b, self.freq_masks, self.freq_mask_max, n_mels)
        time = _sample_bands(rng, b, self.time_masks, self.time_mask_max, crop_frames)

        partner = np.full(b, -1, dtype=np.int64)
        weight = np.ones(b, dtype=np.float32)
        if self.mixup_p > 0 and b > 1:
            chosen = rng.random(b) < self.mixup_p
            other = rng.integers(0, b - 1, size=b, dtype=np.int64)
            other += other >= np.arange(b)  # any row but the example itself
            lam = rng.beta(self.mixup_alpha, self.mixup_alpha, size=b)
            partner[chosen] = other[chosen]
            weight[chosen] = np.maximum(lam, 1 - lam)[chosen].astype(np.float32)
        if shifts and valid is not None:
            # Drawn last, so every draw above is the same with or without padded examples.
            crop_start = self._onto_audio(rng, crop_start, np.asarray(valid), n_frames, crop_frames)
        return AugmentParams(crop_start, gain, freq, time, partner, weight)

    def _shift_range(self, n_frames: int, crop_frames: int) -> tuple[int, int]:
        """Lowest and highest crop start a shift may draw (``max_shift_frames`` around the centre)."""
        center = (n_frames - crop_frames) // 2
        low, high = 0, n_frames - crop_frames
        if self.max_shift_frames is not None:
            low = max(low, center - self.max_shift_frames)
            high = min(high, center + self.max_shift_frames)
        return low, high

    def _onto_audio(
        self,
        rng: np.random.Generator,
        crop_start: np.ndarray,
        valid: np.ndarray,
        n_frames: int,
        crop_frames: int,
    ) -> np.ndarray:
        """Crop starts moved onto each example's valid frames (see the module docstring).

        A start already allowed is kept; the others are drawn uniformly among the allowed ones
        with one extra ``rng.random`` call, made only when some start needs it. Keeping a
        uniform draw that lands in the allowed range and redrawing the rest is still uniform.
        """
        first, stop = valid[:, 0].astype(np.int64), valid[:, 1].astype(np.int64)
        fits = stop - first >= crop_frames
        # Crops inside the valid frames, or covering all of them when they are fewer.
        lo = np.where(fits, first, np.maximum(stop - crop_frames, 0))
        hi = np.where(fits, stop - crop_frames, np.minimum(first, n_frames - crop_frames))
        low, high = self._shift_range(n_frames, crop_frames)
        bounded_lo, bounded_hi = np.maximum(lo, low), np.minimum(hi, high)
        # Where max_shift_frames leaves no allowed start: the allowed start nearest the centre.
        nearest = np.clip((n_frames - crop_frames) // 2, lo, hi)
        empty = bounded_lo > bounded_hi
        lo, hi = np.where(empty, nearest, bounded_lo), np.where(empty, nearest, bounded_hi)
        redraw = (crop_start < lo) | (crop_start > hi)
        if not redraw.any():
            return crop_start
        u = rng.random(crop_start.shape[0])
        drawn = lo + np.minimum(np.floor(u * (hi - lo + 1)).astype(np.int64), hi - lo)
        return np.where(redraw, drawn, crop_start)

    # -- applying ----------------------------------------------------------------------------

    def apply(
        self,
        x: np.ndarray,
        params: AugmentParams,
        *,
        fill: np.ndarray | None = None,
        clip: tuple[float, float] | None = None,
        gain: bool = True,
    ) -> None:
        """Apply gain, mixup and masks to ``x`` in place.

        x : np.ndarray [shape=(B, n_mels, frames, 1)], float32 or float16 -- the cropped batch
        fill : np.ndarray [shape=(n_mels,)] -- value of masked cells per mel bin (default 0)
        clip : (low, high) applied after the gain, or None
        gain : False when the reader already applied ``params.gain`` while gathering
        """
        if gain and params.gain is not None:
            _scale(x, params.gain, clip)
        self.apply_mixup(x, params)
        self.apply_masks(x, params, fill=fill)

    def mixes(self, params: AugmentParams) -> bool:
        """Whether any example of the batch is mixed with another."""
        return self.mixup_p > 0 and bool((params.partner >= 0).any())

    def apply_mixup(self, x: np.ndarray, params: AugmentParams) -> None:
        """Mix the chosen examples with their partners (taken before mixing), in place."""
        if not self.mixes(params):
            return
        mixed = np.flatnonzero(params.partner >= 0)
        others = x[params.partner[mixed]]  # a copy: partners are taken before any row is mixed
        for row, other in zip(mixed, others, strict=True):
            lam = params.weight[row]
            if x.dtype == np.float32:
                target = x[row]
                target *= lam
                target += (1 - lam) * other
            else:
                x[row] = lam * x[row].astype(np.float32) + (1 - lam) * other.astype(np.float32)

    def apply_masks(self, x: np.ndarray, params: AugmentParams, *, fill: np.ndarray | None = None) -> None:
        """Set the frequency and time bands of ``params`` to ``fill`` (per mel bin, default 0)."""
        if not (params.freq.shape[1] or params.time.shape[1]) or x.shape[0] == 0:
            return
        n_mels = x.shape[1]
        values = np.zeros(n_mels, dtype=x.dtype) if fill is None else np.asarray(fill, dtype=x.dtype)
        # The compiled loop copies bit patterns; it needs the batch's rows as one C-contiguous
        # block, which every batch the loader builds is.
        if not x.flags.c_contiguous:
            raise ValueError("apply_masks: x must be C-contiguous")
        bits = np.dtype(f"u{x.dtype.itemsize}")
        cells = x.reshape(x.shape[:3]).view(bits)
        read_kernels.mask_bands(cells, params.freq, params.time, values.view(bits))

    def mix_labels(
        self, y: np.ndarray, known: np.ndarray, params: AugmentParams
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and known-label mask of the mixed examples (see the module docstring), per
        class of (B, n_classes) clip labels or per step and class of (B, steps, n_classes)
        frame targets."""
        if self.mixup_p == 0:
            return y, known
        mixed = np.flatnonzero(params.partner >= 0)
        if not mixed.size:
            return y, known
        y, known = y.copy(), known.copy()
        partner = params.partner[mixed]
        y0, y1 = y[mixed], y[partner]
        k0, k1 = known[mixed], known[partner]
        if self.mixup_labels == "max":
            y_new = np.maximum(y0, y1)
            known_new = np.maximum(y_new, k0 * k1)
        else:
            lam = params.weight[mixed].reshape(-1, *(1,) * (y.ndim - 1))  # clip or frame targets
            y_new = (lam * y0 + (1 - lam) * y1).astype(y.dtype)
            known_new = k0 * k1
        y[mixed] = y_new
        known[mixed] = known_new
        return y, known


def _sample_bands(rng: np.random.Generator, b: int, count: int, max_width: int, size: int) -> np.ndarray:
    """(first, width) of ``count`` bands per example, widths uniform in ``[0, max_width]``."""
    width_cap = min(max_width, size)
    if count == 0 or width_cap == 0:
        return np.zeros((b, 0, 2), dtype=np.int64)
    width = rng.integers(0, width_cap, size=(b, count), endpoint=True, dtype=np.int64)
    first = np.floor(rng.random((b, count)) * (size - width + 1)).astype(np.int64)
    return np.stack([first, width], axis=-1)


def _scale(x: np.ndarray, gain: np.ndarray, clip: tuple[float, float] | None) -> None:
    g = gain.reshape(-1, 1, 1, 1)
    if x.dtype == np.float32:
        np.multiply(x, g, out=x)
        if clip is not None:
            np.clip(x, clip[0], clip[1], out=x)
        return
    scaled = x.astype(np.float32) * g
    if clip is not None:
        np.clip(scaled, clip[0], clip[1], out=scaled)
    x[...] = scaled.astype(x.dtype)
