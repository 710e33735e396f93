"""Feature configurations: named presets and TOML files.

``FeatureConfig`` itself lives in ``loader.format`` because it describes the stored arrays
and the loader must read it without librosa; this module only builds one.

Presets
-------
``default``
    Our recommendation for RFCX-like data: 10 s windows the model sees plus 0.5 s of stored
    context on each side (so the loader can shift in time by cropping instead of
    re-decoding), 128 mel bands over 50 Hz - 16 kHz (the calls of the 24 RFCX species lie
    between ~90 Hz and ~14 kHz; bands above 16 kHz carry only noise at 48 kHz sampling),
    ``power_to_db`` (the correct decibel scale for a power spectrogram) clipped 80 dB below
    the slice maximum, then per-slice min-max to [0, 1], stored as float16 (values in [0, 1]
    keep ~3 significant digits, half the bytes of float32).
``seed``
    Reproduces the classic per-sample Keras ``Sequence`` exactly: librosa's default
    mel spectrogram (power 2, n_fft 2048, hop 512, 128 mels, 0 Hz - sr/2), passed to
    ``amplitude_to_db(ref=np.max)`` (which treats power as amplitude), per-slice min-max,
    no stored context.
``fast``
    A lighter variant for quick experiments: 64 mels, hop 1024.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from loader.errors import ConfigError
from loader.format import FeatureConfig

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed": {
        "fmin": 0.0,
        "fmax": 24000.0,
        "db": "amplitude",
        "context": 0.0,
    },
    "fast": {"n_mels": 64, "hop_length": 1024, "fmin": 50.0, "fmax": 16000.0},
}


def preset(name: str, **overrides: Any) -> FeatureConfig:
    """The preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return FeatureConfig.from_dict({**PRESETS[name], "preset": name, **overrides}, source=f"preset {name}")


def load_config(path: str | Path | None = None, **overrides: Any) -> FeatureConfig:
    """Read a TOML feature config.

    The file may name a ``preset`` and override any parameter, at top level or under a
    ``[features]`` table::

        preset = "default"
        n_mels = 96
        context = 1.0

    ``overrides`` (e.g. from the command line) win over the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from None
        data = dict(data.get("features", data))
    data.update({k: v for k, v in overrides.items() if v is not None})
    name = data.pop("preset", "default")
    if name not in PRESETS:
        raise ConfigError(f"{path or 'config'}: unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    merged = {**PRESETS[name], "preset": name, **data}
    if merged.get("top_db") == "none":
        merged["top_db"] = None
    return FeatureConfig.from_dict(merged, source=str(path or "config"))
