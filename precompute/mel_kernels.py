"""Compiled loops of the fast log-mel: framing with the window, and power projected on the mel bands.

``precompute.mel.mel_power_frames`` calls them around ``scipy.fft.rfft``; each works on one
block of frames at a time, so its buffers stay in cache. They are compiled once and cached on
disk (``cache=True``), so a fresh worker loads them instead of compiling, and release the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def windowed_frames(y, offset, first_sample, hop, window, out):  # pragma: no cover
    """Frames of a signal times ``window``, zero where the signal has no sample.

    y : np.ndarray [shape=(n,)], float32 -- the signal's samples from sample ``offset`` on
    first_sample : int -- signal sample under ``window[0]`` of the first frame
    out : np.ndarray [shape=(frames, n_fft)], float32 -- frame ``f`` starts ``f * hop`` later
    """
    n_fft = window.shape[0]
    for f in range(out.shape[0]):
        base = first_sample + f * hop - offset
        row = out[f]
        if base >= 0 and base + n_fft <= y.shape[0]:
            for k in range(n_fft):
                row[k] = y[base + k] * window[k]
        else:
            for k in range(n_fft):
                i = base + k
                row[k] = y[i] * window[k] if 0 <= i < y.shape[0] else 0.0


@njit(cache=True, nogil=True, boundscheck=False)
def project_power(spectrum, power, band_start, band_end, weights, out, col):  # pragma: no cover
    """``|spectrum| ** power`` of each frame on the mel bands, into columns ``col..`` of ``out``.

    spectrum : np.ndarray [shape=(frames, bins)], complex64 -- one rFFT per frame
    band_start, band_end : np.ndarray [shape=(n_mels,)], int64 -- the bins band ``m`` uses,
        ``band_start[m] .. band_end[m] - 1``
    weights : np.ndarray [shape=(n_mels, width)], float32 -- band ``m``'s weight of bin
        ``band_start[m] + j`` at ``[m, j]``
    out : np.ndarray [shape=(n_mels, total frames)], float32
    """
    squared = power == 2.0
    half = np.float32(power / 2.0)
    for f in range(spectrum.shape[0]):
        row = spectrum[f]
        for m in range(band_start.shape[0]):
            acc = np.float32(0.0)
            s = band_start[m]
            for j in range(s, band_end[m]):
                z = row[j]
                p = z.real * z.real + z.imag * z.imag
                if not squared:
                    p = p**half
                acc += weights[m, j - s] * p
            out[m, col + f] = acc
