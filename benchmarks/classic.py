"""The classic per-sample way to make a training example, the reference the loader is measured against.

Kept apart from the benchmarks that import Keras, so a PyTorch benchmark's worker processes
load librosa and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def classic_example(demo: Path, row: dict) -> np.ndarray:
    """One training example the classic way: decode the whole recording, cut, mel, dB, min-max.

    Returns np.ndarray [shape=(128, frames, 1)], float32.
    """
    import librosa

    y, sr = librosa.load(demo / "train" / f"{row['recording_id']}.flac", sr=48000)
    centre = 0.5 * (float(row["t_min"]) + float(row["t_max"]))
    start = int(max(0, min(centre - 5.0, len(y) / sr - 10.0)) * sr)
    mel = librosa.feature.melspectrogram(y=y[start : start + 10 * sr], sr=sr)
    db = librosa.amplitude_to_db(mel, ref=np.max)
    return ((db - db.min()) / (db.max() - db.min()))[..., None].astype(np.float32)
