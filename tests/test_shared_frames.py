"""Shared STFT frames (``share_frames``, the default) store exactly what each window alone gives.

A recording's overlapping windows share one STFT over the span they cover; each window's edge
frames, whose reach passes the window's ends, are computed again from the window's own samples
(``precompute.mel.own_edges``). The stored values must equal the window cut and computed alone
with librosa's arithmetic: the stored ``start``, ``duration + 2 * context`` seconds, zeros beyond
the recording.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.exactness import TOLERANCE, stored_vs_reference
from melshards.config import FeatureConfig
from precompute import demo
from precompute.mel import edge_frames, mel_power, mel_power_frames, own_edges


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    demo.synthesize(out, seed=5, jobs=1, recordings=8, test_recordings=3, seconds=30.0, progress=False)
    return out


def precompute(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "precompute", *args, "--quiet"], check=True)


def test_every_stored_example_of_the_demo_equals_its_window_alone(demo_data, tmp_path):
    out = tmp_path / "features"
    precompute(
        "features",
        "--audio-dir",
        str(demo_data / "train"),
        "--tp",
        str(demo_data / "train_tp.csv"),
        "--fp",
        str(demo_data / "train_fp.csv"),
        "--out",
        str(out),
    )
    found = stored_vs_reference(out, demo_data / "train")
    assert found["examples"] > 40
    # float16 storage alone is up to 2.4e-4 from the float32 reference; shared edges were 0.1-0.6
    assert found["max_difference"] <= TOLERANCE, found
    assert found["over_tolerance"] == 0


def test_every_sliding_window_of_the_demo_equals_its_window_alone(demo_data, tmp_path):
    out = tmp_path / "windows"
    precompute("windows", "--audio-dir", str(demo_data / "test"), "--out", str(out), "--step", "5")
    found = stored_vs_reference(out, demo_data / "test")
    assert found["examples"] >= 3 * 4  # 30 s recordings, 11 s windows every 5 s
    assert found["max_difference"] <= TOLERANCE, found


def test_edge_frames_are_those_whose_reach_passes_the_window():
    # n_fft 2048, hop 512, 11 s at 48 kHz: frames 0, 1 reach before the start, 1030, 1031 past the end
    assert edge_frames(FeatureConfig()) == (2, 2)
    # 1050 samples, hop 100, n_fft 300: frames 0 and 1 start before sample 0 (-150, -50); of the
    # 11 frames only the last, centred on 1000, reaches past sample 1049
    odd = FeatureConfig(
        sample_rate=1000, n_fft=300, hop_length=100, n_mels=8, fmax=400.0, duration=0.85, context=0.1
    )
    assert odd.n_frames == 11
    assert edge_frames(odd) == (2, 1)


def test_own_edges_turn_a_shared_stft_into_the_window_alone():
    config = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, fmax=4000.0, duration=1.0)
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(8000 * 4).astype(np.float32)
    n = int(round(config.window_seconds * config.sample_rate))
    first = 40  # the window starts at frame 40 of the signal's STFT
    shared = mel_power_frames(signal, first, config.n_frames, config=config)
    alone = mel_power(signal[first * 64 : first * 64 + n], config=config)
    leading, trailing = edge_frames(config)
    # shared and alone differ in the edge frames only: the neighbours' audio is loud
    differs = np.flatnonzero(~np.isclose(shared, alone, rtol=1e-5, atol=0).all(axis=0))
    assert differs.tolist() == [*range(leading), *range(config.n_frames - trailing, config.n_frames)]
    fixed = own_edges(shared, signal, 0, first, config=config)
    np.testing.assert_allclose(fixed, alone, rtol=1e-5, atol=1e-6)
    # the shared array is left as it was
    assert not np.allclose(shared[:, 0], alone[:, 0], rtol=1e-5)


def test_own_edges_see_zeros_beyond_the_recording():
    config = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, fmax=4000.0, duration=1.0)
    signal = np.random.default_rng(1).standard_normal(8000).astype(np.float32)  # 1 s, shorter than 1.5 s
    first = -3  # the window starts 3 hops before the recording and ends after it
    n = int(round(config.window_seconds * config.sample_rate))
    window = np.zeros(n, dtype=np.float32)
    window[3 * 64 : 3 * 64 + signal.size] = signal
    shared = mel_power_frames(signal, first, config.n_frames, config=config)
    fixed = own_edges(shared, signal, 0, first, config=config)
    np.testing.assert_allclose(fixed, mel_power(window, config=config), rtol=1e-5, atol=1e-6)


def test_a_window_shorter_than_its_frames_reach_is_computed_alone():
    config = FeatureConfig(
        sample_rate=8000, n_fft=1024, hop_length=256, n_mels=8, fmax=4000.0, duration=0.1, context=0.0
    )
    signal = np.random.default_rng(2).standard_normal(8000).astype(np.float32)
    assert sum(edge_frames(config)) >= config.n_frames
    first = 10
    shared = mel_power_frames(signal, first, config.n_frames, config=config)
    n = int(round(config.window_seconds * config.sample_rate))
    alone = mel_power(signal[first * 256 : first * 256 + n], config=config)
    np.testing.assert_allclose(
        own_edges(shared, signal, 0, first, config=config), alone, rtol=1e-5, atol=1e-6
    )
