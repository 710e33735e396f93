"""Log-mel features of one window."""

from __future__ import annotations

import librosa
import numpy as np

from melshards.config import FeatureConfig


def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """The mel filter bank of ``config``, np.ndarray [shape=(n_mels, 1 + n_fft // 2)], float32."""
    return librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax
    ).astype(np.float32)


def log_mel(y: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Normalized log-mel spectrogram of a window.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], float32
        The window's samples at ``config.sample_rate``.
    config : FeatureConfig

    Returns
    -------
    np.ndarray [shape=(n_mels, 1 + n // hop_length)], float32
        Decibels (``normalize="none"``) or per-slice min-max scaled to [0, 1].
    """
    S = librosa.feature.melspectrogram(
        y=y,
        sr=config.sample_rate,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        power=config.power,
    )
    ref = np.max if config.db_ref is None else config.db_ref
    to_db = librosa.power_to_db if config.db == "power" else librosa.amplitude_to_db
    X = to_db(S, ref=ref, top_db=config.top_db).astype(np.float32)
    if config.normalize == "minmax":
        X = minmax(X)
    return X


def minmax(X: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the slice's own range; a constant slice becomes all zeros."""
    lo, hi = float(X.min()), float(X.max())
    if hi - lo <= 0:
        return np.zeros_like(X)
    return (X - lo) / (hi - lo)
