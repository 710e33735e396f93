"""Decoding recordings: one read per recording, checked, mono, at the config's rate.

Policies (documented in docs/troubleshooting.md):

- more than one channel: channels are averaged to mono (what ``librosa.load`` does);
- a sample rate other than the config's: resampled with soxr (high quality);
- NaN or inf samples, an empty, truncated or non-audio file: ``AudioError``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from melshards.errors import AudioError

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")


def find_audio(audio_dir: Path, recording_id: str, path: str | None = None) -> Path:
    """Locate a recording inside ``audio_dir``; never returns a path outside it."""
    if path is not None:
        root = audio_dir.resolve()
        candidate = (audio_dir / path).resolve()
        if not candidate.is_relative_to(root):
            raise AudioError(f"{path}: resolves outside the audio directory {audio_dir}; refusing it")
        if not candidate.is_file():
            raise AudioError(f"{audio_dir / path}: audio file not found for recording {recording_id}")
        return candidate
    for ext in AUDIO_EXTENSIONS:
        candidate = audio_dir / f"{recording_id}{ext}"
        if candidate.is_file():
            # Only a link or a name with a separator can lead outside. Resolving costs a system
            # call per path component, which adds up over many recordings: do it only then.
            direct = candidate.parent == audio_dir and not candidate.is_symlink()
            if not direct and not candidate.resolve().is_relative_to(audio_dir.resolve()):
                raise AudioError(f"{candidate}: resolves outside the audio directory; refusing it")
            return candidate
    raise AudioError(
        f"{audio_dir / recording_id}.*: audio file not found for recording {recording_id} "
        f"(looked for {', '.join(AUDIO_EXTENSIONS)})"
    )


def file_identity(path: Path | None) -> list:
    """What identifies a file's content cheaply for fingerprints: size and mtime."""
    if path is None:
        return ["missing"]
    try:
        st = os.stat(path)
    except OSError:
        return ["missing"]
    return [st.st_size, st.st_mtime_ns]


def decode(path: Path, *, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    Returns np.ndarray [shape=(n,)], float32. Raises AudioError naming the file.
    """
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(f"{path}: cannot open: {err.strerror}") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            expected = f.frames
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not readable audio: {str(err).splitlines()[0]}") from None
    if data.shape[0] < expected:
        raise AudioError(f"{path}: truncated: decoded {data.shape[0]} of {expected} frames")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples")
    y = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(y).all():
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise AudioError(f"{path}: non-finite sample (NaN or inf) at {bad / rate:.3f} s")
    if rate != sample_rate:
        import soxr

        y = soxr.resample(y, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(y)
