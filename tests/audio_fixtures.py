"""Tiny synthetic recordings and manifests for precompute tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from melshards.config import FeatureConfig

HEADER = "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"

# Small enough that a whole run takes a fraction of a second per slice.
TINY = FeatureConfig(
    preset="test",
    sample_rate=16000,
    n_fft=512,
    hop_length=256,
    n_mels=32,
    fmin=50.0,
    fmax=8000.0,
    duration=2.0,
    context=0.25,
    min_overlap=0.2,
    n_classes=4,
    shard_size=3,
)

# TINY as command-line flags (n_classes and min_overlap left to each test), one job.
TINY_FLAGS = [
    "--set=sample_rate=16000",
    "--set=n_fft=512",
    "--set=hop_length=256",
    "--set=n_mels=32",
    "--set=fmax=8000",
    "--set=duration=2",
    "--set=context=0.25",
    "--set=shard_size=3",
    "--jobs=1",
]


def tone_recording(
    seconds: float, *, sr: int, tones: list[tuple[float, float, float]], seed: int = 0
) -> np.ndarray:
    """Quiet noise plus sine tones ``(t_min, t_max, hz)``. Returns float32 samples."""
    rng = np.random.default_rng(seed)
    y = 0.005 * rng.standard_normal(int(seconds * sr))
    t = np.arange(y.size) / sr
    for t_min, t_max, hz in tones:
        inside = (t >= t_min) & (t < t_max)
        y[inside] += 0.3 * np.sin(2 * np.pi * hz * t[inside])
    return y.astype(np.float32)


def write_dataset(root: Path, *, sr: int = 16000, seconds: float = 8.0) -> dict[str, Path]:
    """Four recordings with tones per species (species k at 500 * (k + 1) Hz) and both manifests.

    TP rows: 7, FP rows: 2 (one FP overlaps a TP of another species).
    """
    audio = root / "audio"
    audio.mkdir(parents=True)
    events = {
        "rec0": [(0, 1.0, 2.0, 1), (1, 5.0, 6.5, 1), (2, 1.2, 1.8, 0)],
        "rec1": [(1, 0.2, 1.0, 1), (3, 6.8, 7.9, 1)],
        "rec2": [(2, 3.0, 4.0, 1), (0, 3.5, 4.5, 1)],
        "rec3": [(3, 2.0, 3.0, 1), (1, 6.0, 7.0, 0)],
    }
    tp_lines, fp_lines = [HEADER], [HEADER]
    for k, (rid, rows) in enumerate(events.items()):
        tones = [(t0, t1, 500.0 * (sp + 1)) for sp, t0, t1, _ in rows]
        sf.write(
            audio / f"{rid}.flac", tone_recording(seconds, sr=sr, tones=tones, seed=k), sr, subtype="PCM_16"
        )
        for sp, t0, t1, is_tp in rows:
            line = f"{rid},{sp},1,{t0},{500.0 * (sp + 1) - 50},{t1},{500.0 * (sp + 1) + 50}\n"
            (tp_lines if is_tp else fp_lines).append(line)
    (root / "train_tp.csv").write_text("".join(tp_lines))
    (root / "train_fp.csv").write_text("".join(fp_lines))
    return {"audio": audio, "tp": root / "train_tp.csv", "fp": root / "train_fp.csv"}


def run_tiny(paths: dict[str, Path], out: Path, **options):
    """``run_features`` on a ``write_dataset`` tree with the TINY config, one job, no progress bar."""
    from precompute.run import run_features

    options = {"config": TINY, "jobs": 1, "progress": False, **options}
    return run_features(audio_dir=paths["audio"], tp=paths["tp"], fp=paths["fp"], out=out, **options)


def read_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every dataset of every shard the index lists, concatenated in index order."""
    import h5py

    from melshards.index import read_index

    out: dict[str, list[np.ndarray]] = {}
    for entry in read_index(root).shards:
        with h5py.File(root / entry.file, "r", locking=False) as h5:
            h5.visititems(
                lambda name, obj: (
                    out.setdefault(name, []).append(obj[:]) if isinstance(obj, h5py.Dataset) else None
                )
            )
    return {name: np.concatenate(parts) for name, parts in out.items()}
