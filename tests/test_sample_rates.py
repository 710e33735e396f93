"""``precompute.sample_rates``: recordings made below twice fmax, told once per run."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import TINY, read_arrays, run_tiny, tone_recording, write_dataset
from melshards.config import FeatureConfig
from precompute.sample_rates import band_limit_warning, empty_bands

# Resampled to 32 kHz, with mel bands up to 16 kHz: a 22.05 kHz recording fills them to 11.025 kHz.
WIDE = dataclasses.replace(TINY, sample_rate=32000, n_fft=1024, hop_length=512, fmax=16000.0)

WARNING = (
    "3 of the 4 recordings this run decodes have a sample rate below 2 x fmax = 32000 Hz "
    "(3 at 22050 Hz): they hold nothing above half their own rate, however they are resampled, "
    "so the top 2 of 32 mel bands (above 11025 Hz) stay empty in those at 22050 Hz; "
    "fmax = 11025 (half the lowest rate) fits every recording: --set fmax=11025"
)


@pytest.fixture
def recorded_at_22k(tmp_path):
    """write_dataset's four recordings at 22.05 kHz, but rec3 at 44.1 kHz."""
    paths = write_dataset(tmp_path, sr=22050)
    y = tone_recording(8.0, sr=44100, tones=[(2.0, 3.0, 2000.0), (6.0, 7.0, 1000.0)], seed=3)
    sf.write(paths["audio"] / "rec3.flac", y, 44100, subtype="PCM_16")
    return paths


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_recordings_below_twice_fmax_are_counted_in_one_warning(recorded_at_22k, tmp_path, caplog):
    caplog.set_level("INFO", logger="melshards")
    summary = run_tiny(recorded_at_22k, tmp_path / "out", config=WIDE, jobs=2)
    assert summary.shards_built == 3
    assert warnings_of(caplog) == [WARNING]
    # What the warning says holds: in the 22.05 kHz recordings the top two bands are at the
    # floor (0 after min-max), but for the first and last frame of a window, where the cut is a
    # click; the bands below 10 kHz hold the recordings' noise.
    arrays = read_arrays(tmp_path / "out")
    at_22k = arrays["mel"][arrays["recording_id"].astype(str) != "rec3"].astype(np.float32)
    assert np.median(at_22k[:, -2:], axis=(0, 2)).tolist() == [0.0, 0.0]
    assert at_22k[:, -2:, 1:-1].max() < 0.01
    assert (np.median(at_22k[:, 20:27], axis=(0, 2)) > 0.2).all()
    # A second run decodes nothing, and says nothing more.
    caplog.clear()
    assert run_tiny(recorded_at_22k, tmp_path / "out", config=WIDE).shards_built == 0
    assert warnings_of(caplog) == []


def test_an_fmax_that_fits_every_recording_warns_nothing(recorded_at_22k, tmp_path, caplog):
    caplog.set_level("INFO", logger="melshards")
    run_tiny(recorded_at_22k, tmp_path / "out", config=dataclasses.replace(WIDE, fmax=11025.0))
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    ("rates", "fmin", "expected"),
    [
        ([48000, 32000], 50.0, None),
        (
            [48000, 22050, 16000, 22050],
            50.0,
            "3 of the 4 recordings this run decodes have a sample rate below 2 x fmax = 32000 Hz "
            "(2 at 22050 Hz, 1 at 16000 Hz): they hold nothing above half their own rate, however "
            "they are resampled, so the top 22 of 128 mel bands (above 8000 Hz) stay empty in those "
            "at 16000 Hz; fmax = 8000 (half the lowest rate) fits every recording: --set fmax=8000",
        ),
        (
            [8000],
            5000.0,
            "1 of the 1 recordings this run decodes have a sample rate below 2 x fmax = 32000 Hz "
            "(1 at 8000 Hz): they hold nothing above half their own rate, however they are "
            "resampled, so the top 128 of 128 mel bands (above 4000 Hz) stay empty in those at "
            "8000 Hz; fmax = 4000 (half the lowest rate), with fmin below it, fits every recording",
        ),
    ],
)
def test_the_warning_names_the_rates_the_empty_bands_and_the_fmax_that_fits(rates, fmin, expected):
    assert band_limit_warning(rates, config=FeatureConfig(fmin=fmin)) == expected


def test_empty_bands_counts_the_bands_starting_at_or_above_a_frequency():
    config = FeatureConfig()  # 128 bands, 50 Hz .. 16 kHz
    assert [empty_bands(hz, config=config) for hz in (16000.0, 11025.0, 8000.0, 50.0)] == [0, 11, 22, 128]
