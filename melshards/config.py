"""``FeatureConfig``: every parameter that shapes the stored arrays, and the window geometry.

This dataclass is the one source of the feature parameters: each field carries its default,
its unit and its meaning. The ``default`` preset, ``PARAMETERS`` (what ``inspect`` prints and
``docs/presets.md`` tabulates) and the names a preset file or ``--set`` may use are all derived
from it. The config is serialized into ``index.json`` and every shard's attributes, so data
describes itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from melshards.checks import check_int, check_number
from melshards.errors import ConfigError
from melshards.files import fingerprint_of
from melshards.names import COMPRESSIONS, MEL_DTYPES, QUANTIZED_DTYPE

NORMALIZE_MODES = ("minmax", "none")
DB_MODES = ("power", "amplitude")
STFT_PATHS = ("fast", "librosa")


# Every numeric parameter: integer or real, and its closed range (None: no bound). Values are
# checked on construction, so a NaN, an infinity or an absurd size never reaches a run.
LIMITS: dict[str, tuple[type, float | None, float | None]] = {
    "sample_rate": (int, 1000, 768_000),
    "n_fft": (int, 16, 1 << 16),
    "hop_length": (int, 1, 1 << 16),
    "n_mels": (int, 1, 1024),
    "fmin": (float, 0.0, None),
    "fmax": (float, 0.0, None),
    "power": (float, 0.25, 4.0),
    "db_ref": (float, 1e-30, 1e30),
    "top_db": (float, 1e-3, 1000.0),
    "duration": (float, 0.01, 3600.0),
    "context": (float, 0.0, 600.0),
    "min_overlap": (float, 0.0, 3600.0),
    "n_classes": (int, 1, 32767),  # species ids are stored as int16
    "shard_size": (int, 1, 1_000_000),
    "quant_bits": (int, 1, 8),
}
# Parameters that may be absent (None): db_ref (each slice's maximum) and top_db (no floor).
OPTIONAL = ("db_ref", "top_db")


# One example's values (n_mels x n_frames): 2**26 is 128 MB of float16, far beyond any use.
MAX_EXAMPLE_VALUES = 1 << 26


def _param(default: Any, unit: str, meaning: str) -> Any:
    return dataclasses.field(default=default, metadata={"unit": unit, "meaning": meaning})


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Every parameter that shapes the stored arrays (defaults: the ``default`` preset).

    ``duration`` is what the model sees; ``context`` seconds are stored on each side so the
    loader can shift in time by cropping. ``db`` picks ``power_to_db`` (``"power"``) or the
    classic recipe's ``amplitude_to_db`` applied to a power spectrogram (``"amplitude"``);
    ``db_ref`` is the 0 dB reference (absent: each slice's maximum).
    """

    preset: str = _param("default", "name", "preset these values started from (shapes nothing itself)")
    sample_rate: int = _param(48000, "Hz", "audio is resampled to this rate before the STFT")
    n_fft: int = _param(2048, "samples", "STFT window and FFT length")
    hop_length: int = _param(512, "samples", "step between STFT frames")
    n_mels: int = _param(128, "bands", "mel filters spread over fmin..fmax")
    fmin: float = _param(50.0, "Hz", "lower edge of the lowest mel filter")
    fmax: float = _param(16000.0, "Hz", "upper edge of the highest mel filter (<= sample_rate / 2)")
    power: float = _param(2.0, "exponent", "magnitude exponent: 2 power spectrogram, 1 amplitude")
    stft: str = _param(
        "fast", "path", "fast: float32 scipy.fft, sparse mel basis; librosa: its exact arithmetic"
    )
    share_frames: bool = _param(
        True, "switch", "windows start on the hop grid; overlapping ones share STFT frames (stft fast)"
    )
    db: str = _param("power", "mode", "power: power_to_db; amplitude: the classic amplitude_to_db")
    db_ref: float | None = _param(None, "linear", "0 dB reference; none: each slice's maximum")
    top_db: float | None = _param(80.0, "dB", "floor below the peak; none: no floor")
    duration: float = _param(10.0, "s", "window the model sees")
    context: float = _param(0.5, "s", "extra audio stored on each side (time-shift room)")
    normalize: str = _param("minmax", "mode", "minmax: each slice scaled to [0, 1]; none: keep dB")
    min_overlap: float = _param(0.5, "s", "an event counts when it overlaps this much or lies inside")
    n_classes: int = _param(24, "classes", "species ids are 0..n_classes-1")
    dtype: str = _param(
        "float16",
        "dtype",
        "stored dtype of mel: float16, float32, or uint8 (codes, per-example offset+scale)",
    )
    quant_bits: int = _param(8, "bits", "uint8 only: codes 0..2**bits-1 span each example's min..max")
    compression: str | None = _param(
        None, "filter", "HDF5 filter on mel: none, zstd or bitshuffle-lz4 (hdf5plugin), gzip or lzf (slow)"
    )
    shard_size: int = _param(32, "examples", "examples per shard file (one parallel job each)")

    def __post_init__(self) -> None:
        self._check_numbers()
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(
                f"config needs 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} "
                f"fmax={self.fmax} sample_rate={self.sample_rate}; {_band_hint(self)}"
            )
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"config normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if self.stft not in STFT_PATHS:
            raise ConfigError(f"config stft must be one of {STFT_PATHS}, got {self.stft!r}")
        if not isinstance(self.share_frames, bool):
            raise ConfigError(f"config share_frames must be true or false, got {self.share_frames!r}")
        if self.share_frames and self.stft != "fast":
            raise ConfigError(
                "config share_frames needs stft = fast (set share_frames = false for stft = librosa)"
            )
        if self.db not in DB_MODES:
            raise ConfigError(f"config db must be one of {DB_MODES}, got {self.db!r}")
        if self.dtype not in MEL_DTYPES:
            raise ConfigError(f"config dtype must be one of {MEL_DTYPES}, got {self.dtype!r}")
        if self.quant_bits != 8 and self.dtype != QUANTIZED_DTYPE:
            raise ConfigError(
                f"config quant_bits applies to dtype {QUANTIZED_DTYPE} only, got quant_bits={self.quant_bits} "
                f"with dtype {self.dtype}"
            )
        if self.compression not in COMPRESSIONS:
            names = ", ".join("none" if c is None else c for c in COMPRESSIONS)
            raise ConfigError(f"config compression must be one of {names}, got {self.compression!r}")
        values = self.n_mels * self.n_frames
        if values > MAX_EXAMPLE_VALUES:
            raise ConfigError(
                f"config gives examples of {self.n_mels} x {self.n_frames} values, more than "
                f"{MAX_EXAMPLE_VALUES}; shorten duration/context or raise hop_length"
            )

    def _check_numbers(self) -> None:
        """ConfigError unless each ``LIMITS`` parameter is a finite number of its kind in its range
        (None passes where ``OPTIONAL`` allows it)."""
        for name, (kind, low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            if kind is int:
                check_int(name, value, where="config ")
            check_number(name, value, low=low, high=high, where="config ")
            if isinstance(value, np.generic):
                # numpy scalars pass the checks; keep Python numbers, which JSON and the
                # fingerprint take as they are
                object.__setattr__(self, name, value.item())

    # Geometry derived from the parameters; the loader relies on these, never recomputes.
    @property
    def window_seconds(self) -> float:
        """Stored window length: ``duration`` plus ``context`` on both sides."""
        return self.duration + 2 * self.context

    @property
    def n_frames(self) -> int:
        """Frames stored per example."""
        return frames_for(self.window_seconds, sample_rate=self.sample_rate, hop_length=self.hop_length)

    @property
    def crop_frames(self) -> int:
        """Frames the model sees (``duration`` seconds)."""
        return frames_for(self.duration, sample_rate=self.sample_rate, hop_length=self.hop_length)

    @property
    def seconds_per_frame(self) -> float:
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> FeatureConfig:
        unknown = sorted(set(data) - set(parameter_names()))
        if unknown:
            raise ConfigError(f"{source}: unknown feature parameter(s) {', '.join(unknown)}")
        return cls(**dict(data))

    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


def _band_hint(config: FeatureConfig) -> str:
    """What to set so that fmin < fmax <= sample_rate / 2 holds."""
    nyquist = config.sample_rate / 2
    if config.fmax > nyquist:
        return f"set fmax <= {nyquist:g} (for instance --set fmax={nyquist:g}), or raise sample_rate"
    return f"set fmin below fmax (for instance --set fmin={min(50.0, config.fmax / 2):g})"


def parameter_names() -> tuple[str, ...]:
    """Every ``FeatureConfig`` parameter, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(FeatureConfig))


# name -> (unit, meaning), in declaration order: derived from the fields above.
PARAMETERS: dict[str, tuple[str, str]] = {
    f.name: (f.metadata["unit"], f.metadata["meaning"]) for f in dataclasses.fields(FeatureConfig)
}


def frames_for(seconds: float, *, sample_rate: int, hop_length: int) -> int:
    """Number of STFT frames (``center=True``) for a clip of ``seconds``."""
    return 1 + int(round(seconds * sample_rate)) // hop_length


def center_offset(config: FeatureConfig, crop_frames: int | None = None) -> int:
    """First stored frame of the centred crop of ``crop_frames`` (default ``config.crop_frames``)."""
    crop = config.crop_frames if crop_frames is None else int(crop_frames)
    return (config.n_frames - crop) // 2


def crop_span(config: FeatureConfig, start: Any, offset: Any, crop_frames: int) -> tuple[Any, Any]:
    """Seconds ``(t0, t1)`` covered by a crop of ``crop_frames`` starting at stored frame ``offset``.

    ``start`` is the stored window's start (seconds); frame ``k`` sits at ``start + k * hop / sr``,
    so the crop spans from its first to its last frame. Arguments broadcast (numpy arrays in,
    arrays out); the same rule serves precompute labels and the loader's labels after a crop.
    """
    spf = config.seconds_per_frame
    t0 = np.asarray(start, dtype=np.float64) + np.asarray(offset, dtype=np.float64) * spf
    t1 = t0 + (int(crop_frames) - 1) * spf
    if t0.ndim == 0:
        return float(t0), float(t1)
    return t0, t1
