import dataclasses

import librosa
import numpy as np
import pytest

from audio_fixtures import TINY
from precompute.config_files import preset
from precompute.mel import log_mel, mel_filterbank, minmax


def sine(hz: float, *, sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("hz", [440.0, 1000.0, 3000.0])
def test_pure_tone_lands_in_its_mel_bin(hz):
    config = dataclasses.replace(TINY, normalize="none")
    X = log_mel(sine(hz, sr=config.sample_rate, seconds=1.0), config=config)
    # The filter whose triangle peaks nearest the tone (mel_frequencies gives the peaks).
    peaks = librosa.mel_frequencies(n_mels=config.n_mels + 2, fmin=config.fmin, fmax=config.fmax)[1:-1]
    response = mel_filterbank(config)[:, int(round(hz * config.n_fft / config.sample_rate))]
    assert np.argmax(X.mean(axis=1)) == np.argmax(response)
    assert abs(peaks[np.argmax(X.mean(axis=1))] - hz) < 0.15 * hz


def test_log_mel_equals_direct_librosa_to_float16_precision():
    config = TINY
    y = np.random.default_rng(1).standard_normal(config.sample_rate * 2).astype(np.float32)
    S = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=512, hop_length=256, n_mels=32, fmin=50.0, fmax=8000.0
    )
    db = librosa.power_to_db(S, ref=np.max, top_db=80.0)
    expected = (db - db.min()) / (db.max() - db.min())
    got = log_mel(y, config=config).astype(np.float16).astype(np.float32)
    assert got.shape == expected.shape == (32, 1 + y.size // 256)
    np.testing.assert_allclose(got, expected, atol=np.finfo(np.float16).eps)


def test_seed_preset_reproduces_the_classic_sequence_math():
    config = preset("seed")
    y = sine(2500.0, sr=48000, seconds=config.window_seconds) + 0.01 * np.random.default_rng(
        0
    ).standard_normal(int(48000 * config.window_seconds)).astype(np.float32)
    # The classic per-sample Sequence: librosa defaults, amplitude_to_db on power, min-max.
    mel = librosa.feature.melspectrogram(y=y, sr=48000)
    db = librosa.amplitude_to_db(mel, ref=np.max)
    classic = (db - db.min()) / (db.max() - db.min())
    np.testing.assert_array_equal(log_mel(y, config=config), classic.astype(np.float32))


def test_normalize_none_keeps_decibels_relative_to_the_slice_maximum():
    config = dataclasses.replace(TINY, normalize="none")
    X = log_mel(sine(1000.0, sr=16000, seconds=1.0), config=config)
    assert X.max() == 0.0
    assert X.min() == pytest.approx(-80.0)


def test_minmax_maps_range_to_unit_interval_and_constant_to_zero():
    X = np.array([[2.0, 4.0], [6.0, 10.0]], dtype=np.float32)
    np.testing.assert_array_equal(minmax(X), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(minmax(np.full((2, 3), 7.0, np.float32)), np.zeros((2, 3)))
