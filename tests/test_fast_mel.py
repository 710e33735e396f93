"""The fast log-mel path against librosa, frames shared by overlapping windows, spans decoded alone."""

import dataclasses

import librosa
import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import TINY, read_arrays, run_tiny, tone_recording
from melshards.config import FeatureConfig
from precompute import job
from precompute.audio import decode, read_span
from precompute.job import Samples, frame_runs, window_mels
from precompute.mel import log_mel, mel_filterbank, mel_power, mel_power_frames


def field_recording(seconds: float, *, sr: int, seed: int) -> np.ndarray:
    """Pink-ish noise, chirping calls, a click and a quiet stretch: what a forest recorder hears."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    white = rng.standard_normal(n)
    pink = np.cumsum(white) * 1e-3
    pink -= np.convolve(pink, np.ones(501) / 501, mode="same")  # no drift
    t = np.arange(n) / sr
    y = 0.05 * pink + 0.002 * white
    for _ in range(6):
        t0 = rng.uniform(0, seconds - 1)
        inside = (t >= t0) & (t < t0 + 0.6)
        f0 = rng.uniform(600, min(9000, sr / 2 - 2000))
        sweep = f0 + 1500 * (t[inside] - t0)
        y[inside] += rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * np.cumsum(sweep) / sr)
    y[int(0.3 * n) : int(0.3 * n) + 40] += 0.8  # a click
    y[int(0.6 * n) : int(0.65 * n)] *= 1e-4  # near silence
    return y.astype(np.float32)


# One float16 step of the stored values in [0.5, 1), the coarsest in [0, 1].
FLOAT16_STEP = 2.0**-11


def stored_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference between two min-max outputs once stored as float16."""
    return float(
        np.abs(a.astype(np.float16).astype(np.float32) - b.astype(np.float16).astype(np.float32)).max()
    )


RATES = {16000: 8000.0, 32000: 16000.0, 44100: 16000.0, 48000: 16000.0}


def reference(config: FeatureConfig) -> FeatureConfig:
    return dataclasses.replace(config, stft="librosa", share_frames=False)


@pytest.mark.parametrize("sample_rate", list(RATES))
@pytest.mark.parametrize("db", ["power", "amplitude"])
def test_fast_log_mel_matches_librosa(sample_rate, db):
    fast = FeatureConfig(sample_rate=sample_rate, fmax=RATES[sample_rate], db=db, duration=3.0)
    in_db = dataclasses.replace(fast, normalize="none")
    for seed in range(3):
        y = field_recording(fast.window_seconds, sr=sample_rate, seed=seed)
        a, b = log_mel(y, config=fast), log_mel(y, config=reference(fast))
        assert a.shape == b.shape == (128, fast.n_frames)
        assert stored_difference(a, b) <= FLOAT16_STEP
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999999
        # In dB, float32 FFT rounding shows in bins far below a frame's peak: this recording
        # has a click 80 dB above a near-silent stretch, harsher than the demo (2.3e-5 dB there).
        diff = np.abs(log_mel(y, config=in_db) - log_mel(y, config=reference(in_db)))
        assert diff.max() < 2e-3


@pytest.mark.parametrize("sample_rate", [32000, 44100, 48000])
def test_fast_log_mel_in_db_matches_librosa(sample_rate):
    config = FeatureConfig(sample_rate=sample_rate, normalize="none", duration=4.0)
    tones = [(0.5, 1.5, 900.0), (1.0, 3.0, 4200.0), (3.2, 4.4, 11000.0)]
    for seed in range(2):
        y = tone_recording(config.window_seconds, sr=sample_rate, tones=tones, seed=seed)
        fast, exact = log_mel(y, config=config), log_mel(y, config=reference(config))
        diff = np.abs(fast - exact)
        # Within 40 dB of each frame's peak the fast path is within 1e-4 dB; further down float32
        # FFT rounding shows, up to about 1e-3 dB 60-80 dB below the peak (1.0e-3 here).
        near_peak = exact >= exact.max(axis=0, keepdims=True) - 40.0
        assert diff[near_peak].max() < 1e-4
        assert diff.max() < 2e-3


def test_fast_path_other_powers_and_references_match_librosa():
    for changes in ({"power": 1.0}, {"db_ref": 1.0, "top_db": None}, {"n_fft": 4096, "n_mels": 256}):
        fast = FeatureConfig(duration=2.0, **changes)
        y = field_recording(fast.window_seconds, sr=48000, seed=7)
        assert stored_difference(log_mel(y, config=fast), log_mel(y, config=reference(fast))) <= FLOAT16_STEP


def test_the_filter_bank_is_librosas():
    for sr, fmin, fmax, n_mels, n_fft in [(48000, 50.0, 16000.0, 128, 2048), (22050, 0.0, 11025.0, 40, 1024)]:
        config = FeatureConfig(sample_rate=sr, fmin=fmin, fmax=fmax, n_mels=n_mels, n_fft=n_fft)
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        np.testing.assert_array_equal(mel_filterbank(config), expected)


def test_a_run_of_frames_equals_each_window_inside_it():
    config = TINY
    y = field_recording(8.0, sr=16000, seed=2)
    n = config.n_frames
    run = mel_power_frames(y, 10, 200, config=config)
    for first in (10, 30, 210 - n):
        alone = mel_power_frames(y, first, n, config=config)
        np.testing.assert_array_equal(run[:, first - 10 : first - 10 + n], alone)
    # From a span of the signal with its offset: the same frames.
    lo = 40 * config.hop_length - config.n_fft // 2
    span = y[lo : lo + (n - 1) * config.hop_length + config.n_fft]
    np.testing.assert_array_equal(
        mel_power_frames(span, 40, n, config=config, offset=lo), run[:, 30 : 30 + n]
    )
    # A window alone, zero-padded at its ends, has the same frames inside.
    window = y[40 * config.hop_length : 40 * config.hop_length + int(config.window_seconds * 16000)]
    inner = slice(config.n_fft // (2 * config.hop_length), n - config.n_fft // (2 * config.hop_length))
    np.testing.assert_allclose(
        mel_power(window, config=config)[:, inner], run[:, 30 : 30 + n][:, inner], rtol=1e-5
    )


def test_frame_runs_merge_overlapping_windows():
    assert frame_runs([50, 0, 10, 200, 10], 20) == [(0, 30), (50, 20), (200, 20)]
    assert frame_runs([0, 20], 20) == [(0, 40)]  # touching windows share one run
    assert frame_runs([], 20) == []


def test_read_span_is_the_decoded_samples(tmp_path):
    y = tone_recording(5.0, sr=16000, tones=[(1.0, 2.0, 1200.0)])
    sf.write(tmp_path / "r.flac", y, 16000, subtype="PCM_16")
    whole = decode(tmp_path / "r.flac", sample_rate=16000)
    for lo, hi in [(0, 10), (12345, 54321), (80000 - 7, 80000)]:
        np.testing.assert_array_equal(read_span(tmp_path / "r.flac", lo, hi), whole[lo:hi])


def test_windows_from_spans_equal_windows_from_the_whole_recording(tmp_path, monkeypatch):
    path = tmp_path / "r.flac"
    sf.write(path, field_recording(8.0, sr=16000, seed=4), 16000, subtype="PCM_16")
    starts = [0.0, 0.37, 1.1, 4.0, 5.5]
    spans = Samples.open(str(path), config=TINY)
    assert spans.y is None  # read span by span
    whole = Samples(str(path), spans.n, decode(path, sample_rate=16000))
    got, expected = window_mels(spans, starts, config=TINY), window_mels(whole, starts, config=TINY)
    for (a, start_a), (b, start_b) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
        assert start_a == start_b
    assert [s for _, s in got] == [0.0, 23 * 256 / 16000, 69 * 256 / 16000, 4.0, 343 * 256 / 16000]
    # Each window's values (as stored): the window's own samples (zeros beyond the recording)
    # by the fast path, then dB and min-max; the edge frames too, though the STFT is shared.
    y = whole.y
    n = int(round(TINY.window_seconds * 16000))
    for mel, start in got:
        first = int(round(start * 16000))
        window = np.zeros(n, dtype=np.float32)
        window[: min(n, y.size - first)] = y[first : first + n]
        expected = log_mel(window, config=TINY).astype(np.float32)
        np.testing.assert_allclose(mel.astype(np.float32), expected, rtol=0, atol=1e-3)


def test_a_run_decoded_in_spans_equals_one_decoded_whole(tone_dataset, tmp_path, monkeypatch):
    spans = run_tiny(tone_dataset, tmp_path / "spans")

    def whole(path, *, config):
        y = decode(job.Path(path), sample_rate=config.sample_rate)
        return Samples(path, y.size, y)

    monkeypatch.setattr(Samples, "open", staticmethod(whole))
    decoded = run_tiny(tone_dataset, tmp_path / "whole")
    assert spans.examples == decoded.examples == 9
    a, b = read_arrays(tmp_path / "spans"), read_arrays(tmp_path / "whole")
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_share_frames_needs_the_fast_path():
    with pytest.raises(ValueError, match="share_frames needs stft = fast"):
        FeatureConfig(stft="librosa")
    assert FeatureConfig(stft="librosa", share_frames=False).stft == "librosa"
