"""Rendering a sampled scene into audio: coloured noise, insects, rain and calls."""

from __future__ import annotations

import math

import numpy as np
from scipy.fft import next_fast_len

from precompute.demo.scene import TICKS, Call, Insect, Rain, Scene, coloured_psd
from precompute.demo.species import STACKED


def render_scene(scene: Scene, *, sample_rate: int, n_samples: int) -> np.ndarray:
    """Mix the scene into int16 samples, shape (n_samples,)."""
    rng = np.random.default_rng(scene.seed)
    size = next_fast_len(n_samples, real=True)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate).astype(np.float32)
    amplitude = np.sqrt(coloured_psd(freqs, slope=scene.slope))
    spectrum = rng.standard_normal((2, freqs.size), dtype=np.float32)
    x = np.fft.irfft((spectrum[0] + 1j * spectrum[1]) * amplitude, size)[:n_samples]
    x *= scene.level / x.std()

    t = np.arange(n_samples, dtype=np.float32) / np.float32(sample_rate)
    for insect in scene.insects:
        x += _render_insect(insect, rng=rng, t=t, sample_rate=sample_rate, size=size)
    for rain in scene.rains:
        x[rain.start : rain.start + rain.length] += _render_rain(rain, sample_rate=sample_rate)
    for call in scene.calls:
        first = (call.start * sample_rate + TICKS // 2) // TICKS
        last = (call.stop * sample_rate + TICKS // 2) // TICKS
        wave = _render_call(call, n=last - first, sample_rate=sample_rate)
        x[first:last] += wave * np.float32(math.sqrt(call.power))

    peak = float(np.abs(x).max())
    if peak > 0.98:  # loud scenes are scaled down as a whole, never clipped
        x *= 0.98 / peak
    return np.round(x * 32767).astype(np.int16)


def _render_insect(
    insect: Insect, *, rng: np.random.Generator, t: np.ndarray, sample_rate: int, size: int
) -> np.ndarray:
    """A continuous narrow noise band, slowly wobbling and optionally pulsing; ``t`` holds
    the sample times, float32, ``size`` is the FFT length (at least ``t.size``)."""
    first, last = (math.ceil(f * size / sample_rate) for f in (insect.f_min, insect.f_max))
    spectrum = np.zeros(size // 2 + 1, dtype=np.complex64)
    parts = rng.standard_normal((2, last - first), dtype=np.float32)
    spectrum[first:last] = parts[0] + 1j * parts[1]
    band = np.fft.irfft(spectrum, size)[: t.size]
    # in-place float32 arithmetic: this runs over every sample of the recording
    envelope = np.float32(2 * np.pi * insect.wobble_hz) * t
    envelope += np.float32(insect.phase)
    np.sin(envelope, out=envelope)
    envelope *= np.float32(insect.wobble_depth)
    envelope += np.float32(1)
    if insect.pulse_hz:
        pulse = np.float32(np.pi * insect.pulse_hz) * t
        np.sin(pulse, out=pulse)
        pulse *= pulse
        for _ in range(insect.pulse_sharpness):
            envelope *= pulse
    band *= envelope
    band *= insect.level / band.std()
    return band


def _render_rain(rain: Rain, *, sample_rate: int) -> np.ndarray:
    """Broadband hiss plus drop impulses under an attack-plateau-decay envelope."""
    rng = np.random.default_rng(rain.seed)
    n = rain.length
    t = np.arange(n, dtype=np.float32) / np.float32(sample_rate)
    hiss = rng.standard_normal(n, dtype=np.float32)
    drops = rng.integers(0, n, size=int(40 * n / sample_rate))
    np.add.at(hiss, drops, rng.exponential(6.0, size=drops.size).astype(np.float32))
    envelope = np.minimum(1.0, np.minimum(t / rain.attack, (t[-1] - t) / rain.decay))
    envelope *= 1 + 0.3 * np.sin(np.float32(2 * np.pi * rng.uniform(0.1, 0.5)) * t)
    size = next_fast_len(n, real=True)
    spectrum = np.fft.rfft(hiss * envelope.astype(np.float32), size)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    colour = np.where(freqs < 300, 0.0, np.maximum(freqs, 300) ** -0.25 / (1 + (freqs / 14000) ** 6))
    wave = np.fft.irfft(spectrum * colour.astype(np.float32), size)[:n]
    return wave * np.float32(rain.level / wave.std())


def _render_call(call: Call, *, n: int, sample_rate: int) -> np.ndarray:
    """One call as float32 samples of unit mean power, shape (n,)."""
    rng = np.random.default_rng(call.seed)
    t = np.arange(n) / sample_rate
    span = n / sample_rate
    lo, hi = call.f_min, call.f_max
    if call.shape == "whistle":
        freq = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * np.pi * call.rate * t + rng.uniform(0, 6.3))
        wave = np.sin(_phase(freq, sample_rate))
    elif call.shape in ("upsweep", "downsweep"):
        rise = t / span if call.shape == "upsweep" else 1 - t / span
        wave = np.sin(_phase(lo * (hi / lo) ** rise, sample_rate))
    elif call.shape == "trill":
        position = (t * call.rate) % 1 / 0.6  # each note fills 60 % of its period
        note = position < 1
        freq = hi - (hi - lo) * np.minimum(position, 1)
        wave = np.sin(_phase(freq, sample_rate)) * np.where(note, np.sin(np.pi * position), 0)
    elif call.shape in STACKED:
        top = hi / call.harmonics
        base = lo + (top - lo) * np.sin(np.pi * t / span)
        phase = _phase(base, sample_rate)
        wave = sum(k**-0.7 * np.sin(k * phase + rng.uniform(0, 6.3)) for k in range(1, call.harmonics + 1))
        if call.shape == "croak":
            wave = wave * np.sin(np.pi * call.rate * t) ** 4
    elif call.shape == "clicks":
        position = (t * call.rate + rng.uniform(0, 1)) % 1
        width = 0.0015 * call.rate  # 1.5 ms gaussian clicks
        wave = _band_noise(n, lo, hi, rng=rng, sample_rate=sample_rate)
        wave = wave * np.exp(-0.5 * ((position - 0.5) / width) ** 2)
    elif call.shape == "buzz":
        wave = _band_noise(n, lo, hi, rng=rng, sample_rate=sample_rate)
        wave = wave * (0.55 + 0.45 * np.sin(2 * np.pi * call.rate * t))
    elif call.shape == "warble":
        knots = np.linspace(0, span, len(call.contour))
        wave = np.sin(_phase(np.interp(t, knots, call.contour), sample_rate))
    else:  # chip
        wave = np.sin(_phase(hi - (hi - lo) * t / span, sample_rate))
    wave = wave * _fade(n, sample_rate=sample_rate)
    return (wave / np.sqrt(np.mean(wave**2))).astype(np.float32)


def _phase(freq: np.ndarray, sample_rate: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sample_rate


def _fade(n: int, *, sample_rate: int, seconds: float = 0.015) -> np.ndarray:
    """Raised-cosine ramps at both ends, so a call starts and stops without a click."""
    k = max(1, min(round(seconds * sample_rate), n // 2))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
    envelope = np.ones(n)
    envelope[:k] = ramp
    envelope[n - k :] = ramp[::-1]
    return envelope


def _band_noise(n: int, lo: float, hi: float, *, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Gaussian noise holding only the frequencies between ``lo`` and ``hi``, shape (n,)."""
    size = next_fast_len(n, real=True)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    parts = rng.standard_normal((2, freqs.size))
    spectrum = np.where((freqs >= lo) & (freqs < hi), parts[0] + 1j * parts[1], 0)
    return np.fft.irfft(spectrum, size)[:n]
