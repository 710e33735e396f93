"""Log-mel features of one window: a fast float32 path and librosa's reference arithmetic.

``config.stft`` picks the path:

- ``"fast"`` (every preset but ``seed``): blocks of frames (``center=True``: zero beyond the
  signal, as librosa) are multiplied by a periodic Hann window and transformed by
  ``scipy.fft.rfft`` in float32; a compiled loop (``precompute.mel_kernels``) squares only the
  bins each mel band uses and sums them with the band's weights (each bin feeds at most two
  bands). The filter bank is librosa's, built here without importing it. dB and min-max follow
  librosa's formulas. It equals librosa's output within one float16 step after min-max; in dB,
  within 1e-4 dB for values within 40 dB of their frame's peak, and about 1e-3 dB 60-80 dB
  below it, where float32 FFT rounding shows (``tests/test_fast_mel.py``).
- ``"librosa"``: ``librosa.feature.melspectrogram`` then ``power_to_db`` or
  ``amplitude_to_db``, exactly; the ``seed`` preset keeps it, so its stored numbers stay
  librosa's own.
"""

from __future__ import annotations

import functools

import numpy as np

from melshards.config import FeatureConfig

# The revision of this module's arithmetic, part of every shard's fingerprint: a change that
# moves stored numbers takes the next one, so that feature sets rebuild. 2: with share_frames,
# each window's edge frames are its own (``own_edges``).
ARITHMETIC = "2"

# librosa's floors: power_to_db clips at amin 1e-10; amplitude_to_db at 1e-5 (squared).
POWER_AMIN = 1e-10
AMPLITUDE_AMIN = 1e-5


def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """The mel filter bank of ``config``, np.ndarray [shape=(n_mels, 1 + n_fft // 2)], float32.

    Slaney's mel scale and area normalization, the filters ``librosa.filters.mel`` builds with
    its defaults (a test checks they are equal), computed here so that the fast path needs no
    librosa import in a fresh worker.
    """
    return _filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax).copy()


# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (6.4x per 27 mels).
_HZ_PER_MEL = 200.0 / 3
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    above = hz >= _BREAK_HZ
    mel = hz / _HZ_PER_MEL
    mel[above] = _BREAK_MEL + np.log(hz[above] / _BREAK_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    above = mel >= _BREAK_MEL
    hz = _HZ_PER_MEL * mel
    hz[above] = _BREAK_HZ * np.exp(_LOG_STEP * (mel[above] - _BREAK_MEL))
    return hz


@functools.lru_cache(maxsize=8)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array([fmin]))[0], hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    basis = np.zeros((n_mels, bins.size), dtype=np.float32)
    for m in range(n_mels):
        rising = -ramps[m] / widths[m]
        falling = ramps[m + 2] / widths[m + 1]
        basis[m] = np.maximum(0, np.minimum(rising, falling))
    basis *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, np.newaxis]
    basis.flags.writeable = False
    return basis


@functools.lru_cache(maxsize=8)
def _bands(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
    """The mel basis as bands: (first bin, end bin, weights) per band, each bin feeding at most two.

    Returns (band_start (n_mels,) int64, band_end (n_mels,) int64, weights (n_mels, width) float32).
    """
    basis = _filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    band_start = np.zeros(n_mels, dtype=np.int64)
    band_end = np.zeros(n_mels, dtype=np.int64)
    for m, row in enumerate(basis):
        used = np.flatnonzero(row)
        if used.size:
            band_start[m], band_end[m] = used[0], used[-1] + 1
    weights = np.zeros((n_mels, max(int((band_end - band_start).max()), 1)), dtype=np.float32)
    for m in range(n_mels):
        weights[m, : band_end[m] - band_start[m]] = basis[m, band_start[m] : band_end[m]]
    return band_start, band_end, weights


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n, fftbins=True)``), float32."""
    k = np.arange(n_fft, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * k / n_fft)).astype(np.float32)
    window.flags.writeable = False
    return window


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
    if config.stft == "librosa":
        return finish(_db_librosa(_mel_power_librosa(y, config), config), config)
    return log_mel_of_power(mel_power(y, config=config), config=config)


def log_mel_of_power(S: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """A window's stored values from its mel power (fast path): dB, then min-max if configured."""
    return finish(_db(S, config), config)


def finish(X: np.ndarray, config: FeatureConfig) -> np.ndarray:
    return minmax(X) if config.normalize == "minmax" else X


def mel_power(y: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Mel spectrogram (``|STFT|**power`` on the mel basis) of a window by the fast path, float32.

    Frames are centred (``center=True``): frame ``k`` covers the window's samples around
    ``k * hop_length``, zero-padded beyond its ends, as in ``librosa.stft``.

    Returns np.ndarray [shape=(n_mels, 1 + n // hop_length)].
    """
    return mel_power_frames(y, 0, 1 + y.size // config.hop_length, config=config)


# Frames transformed together: their buffers stay in cache, and no array of all the frames'
# spectra is ever allocated.
FRAME_BLOCK = 64


def mel_power_frames(
    y: np.ndarray, first: int, count: int, *, config: FeatureConfig, offset: int = 0
) -> np.ndarray:
    """Mel power of frames ``first .. first + count - 1`` of a signal, by the fast path, float32.

    ``y`` holds the signal's samples from sample ``offset`` on; frame ``k`` is centred on sample
    ``k * hop_length`` and sees zeros wherever the signal has no sample (before 0, after its
    end). A window's frames are ``mel_power(window)``; a recording's overlapping windows can
    share the frames of one call (``FeatureConfig.share_frames``).

    Returns np.ndarray [shape=(n_mels, count)].
    """
    from scipy import fft

    from precompute.mel_kernels import project_power, windowed_frames

    y = np.ascontiguousarray(y, dtype=np.float32)
    band_start, band_end, weights = _bands(
        config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax
    )
    window = _hann(config.n_fft)
    out = np.empty((config.n_mels, count), dtype=np.float32)
    block = np.empty((min(FRAME_BLOCK, count), config.n_fft), dtype=np.float32)
    for start in range(0, count, FRAME_BLOCK):
        n = min(FRAME_BLOCK, count - start)
        # Frame k's window begins n_fft // 2 samples before its centre, k * hop_length.
        first_sample = (first + start) * config.hop_length - config.n_fft // 2
        windowed_frames(y, offset, first_sample, config.hop_length, window, block[:n])
        spectrum = fft.rfft(block[:n], axis=1, workers=1, overwrite_x=True)
        project_power(spectrum, float(config.power), band_start, band_end, weights, out, start)
    return out


@functools.lru_cache(maxsize=8)
def edge_frames(config: FeatureConfig) -> tuple[int, int]:
    """(leading, trailing) frames of a window whose STFT reaches beyond the window's own samples.

    Frame ``k`` of a window of ``n`` samples reads samples ``k * hop - n_fft // 2`` up to
    ``n_fft`` later (``center=True``); those before 0 or from ``n`` on are the window's zero
    padding when the window is computed alone, but its neighbours' audio in a shared STFT.
    """
    n, hop, n_fft = int(round(config.window_seconds * config.sample_rate)), config.hop_length, config.n_fft
    half = n_fft // 2
    frames = np.arange(config.n_frames)
    leading = int(np.count_nonzero(frames * hop - half < 0))
    trailing = int(np.count_nonzero(frames * hop - half + n_fft > n))
    return leading, trailing


def own_edges(
    power: np.ndarray, y: np.ndarray, offset: int, first: int, *, config: FeatureConfig
) -> np.ndarray:
    """A window's mel power from a shared STFT, its edge frames recomputed from its own samples.

    ``power`` holds the window's ``n_frames`` frames as the shared STFT gave them; ``y`` the
    signal from sample ``offset`` on; the window starts at frame ``first``. The frames whose
    reach passes the window's ends (``edge_frames``) are computed again seeing only the
    window's samples and zeros beyond them, so that every value equals the window computed
    alone; the interior frames, the same either way, are shared.
    """
    hop, n_frames = config.hop_length, config.n_frames
    lo = first * hop
    hi = lo + int(round(config.window_seconds * config.sample_rate))
    a, b = max(lo, offset), max(min(hi, offset + y.size), max(lo, offset))
    own = y[a - offset : b - offset]
    leading, trailing = edge_frames(config)
    if leading + trailing >= n_frames:
        return mel_power_frames(own, first, n_frames, config=config, offset=a)
    power = power.copy()
    if leading:
        power[:, :leading] = mel_power_frames(own, first, leading, config=config, offset=a)
    if trailing:
        end = n_frames - trailing
        power[:, end:] = mel_power_frames(own, first + end, trailing, config=config, offset=a)
    return power


def _db(S: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """librosa's ``power_to_db`` / ``amplitude_to_db`` formulas, in float32."""
    if config.db == "amplitude":  # amplitude_to_db of the (power) spectrogram: square it first
        S, amin = np.square(np.abs(S)), AMPLITUDE_AMIN**2
        ref = None if config.db_ref is None else config.db_ref**2
    else:
        amin, ref = POWER_AMIN, config.db_ref
    ref_value = float(S.max()) if ref is None else ref
    X = 10.0 * np.log10(np.maximum(np.float32(amin), S))
    X -= np.float32(10.0 * np.log10(max(amin, ref_value)))
    if config.top_db is not None:
        X = np.maximum(X, X.max() - np.float32(config.top_db))
    return X.astype(np.float32, copy=False)


def _mel_power_librosa(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    import librosa

    return librosa.feature.melspectrogram(
        y=y,
        sr=config.sample_rate,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        power=config.power,
    )


def _db_librosa(S: np.ndarray, config: FeatureConfig) -> np.ndarray:
    import librosa

    ref = np.max if config.db_ref is None else config.db_ref
    to_db = librosa.power_to_db if config.db == "power" else librosa.amplitude_to_db
    return to_db(S, ref=ref, top_db=config.top_db).astype(np.float32)


def minmax(X: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the slice's own range; a constant slice becomes all zeros."""
    lo, hi = float(X.min()), float(X.max())
    if hi - lo <= 0:
        return np.zeros_like(X)
    return (X - lo) / (hi - lo)
