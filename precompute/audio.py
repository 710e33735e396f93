"""Decoding recordings: once per recording, checked, mono, at the config's rate.

Policies (documented in docs/troubleshooting.md):

- more than one channel: channels are averaged to mono (what ``librosa.load`` does);
- a sample rate other than the config's: resampled with soxr (high quality); one below
  ``2 * fmax`` holds nothing in the top mel bands however it is resampled, which the run tells
  once (``precompute.sample_rates``);
- a recording id with two files (``a.flac`` and ``a.wav``): ``AudioError`` for its rows
  (``features``), a ``ConfigError`` before anything runs (``windows``); the tool does not
  guess which one is meant;
- a file (or link) that resolves outside the audio directory: ``AudioError``, never read;
- NaN or inf samples, an empty, truncated or non-audio file: ``AudioError``;
- a header that promises more than ``MAX_SECONDS`` (24 hours) of audio: ``AudioError``
  before any sample is read. No recording this pipeline cuts windows from is that long
  (RFCX recordings last 60 s), so such a header is corrupt.
- memory follows the samples actually decoded, never the header's frame count: the file is
  read in blocks of ``BLOCK_FRAMES``, each averaged to mono as it arrives, and a file that
  ends (or stops decoding) before the frame count its header promises is ``AudioError``
  ("truncated"). A corrupt header thus fails its recording, not the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from precompute.errors import AudioError

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")

# The longest recording decoded, in seconds at the file's own rate: 24 hours.
MAX_SECONDS = 24 * 3600

# Frames read per call: 4 MiB per channel in float32 (about 22 s at 48 kHz), so a 60 s recording
# is three reads; memory beyond the samples decoded is at most one block.
BLOCK_FRAMES = 1 << 20


def find_audio(audio_dir: Path, recording_id: str, path: str | None = None) -> Path:
    """Locate a recording inside ``audio_dir``; never returns a path outside it.

    Without ``path``, the recording is ``audio_dir/<recording_id><ext>`` for one extension of
    ``AUDIO_EXTENSIONS``; two such files (``a.flac`` and ``a.wav``) make it ambiguous: AudioError.
    """
    if path is not None:
        root = audio_dir.resolve()
        candidate = (audio_dir / path).resolve()
        if not candidate.is_relative_to(root):
            raise AudioError(f"{path}: resolves outside the audio directory {audio_dir}; refusing it")
        if not candidate.is_file():
            raise AudioError(f"{audio_dir / path}: audio file not found for recording {recording_id}")
        return candidate
    found = _existing_files(audio_dir / f"{recording_id}{ext}" for ext in _EXTENSIONS_BOTH_CASES)
    if not found:
        raise AudioError(
            f"{audio_dir / recording_id}.*: audio file not found for recording {recording_id} "
            f"(looked for {', '.join(AUDIO_EXTENSIONS)})"
        )
    if len(found) > 1:
        raise AudioError(
            f"{audio_dir}: recording {recording_id} is ambiguous: "
            f"{' and '.join(c.name for c in found)} share its id; rename or remove all but one"
        )
    check_inside(audio_dir, found[0])
    return found[0]


# Recorders often write upper-case extensions (``.WAV``); ``features`` finds both spellings.
_EXTENSIONS_BOTH_CASES = tuple(e for ext in AUDIO_EXTENSIONS for e in (ext, ext.upper()))


def _existing_files(candidates) -> list[Path]:
    """The candidates that are files, each once (a case-insensitive file system shows ``a.flac``
    under both spellings: one file, not two)."""
    found, seen = [], set()
    for candidate in candidates:
        try:
            st = candidate.stat()
        except OSError:
            continue
        if candidate.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append(candidate)
    return found


def check_inside(audio_dir: Path, candidate: Path) -> None:
    """Raise AudioError when ``candidate``, a file listed in ``audio_dir``, leads outside it."""
    # Only a link or a name with a separator can lead outside. Resolving costs a system call
    # per path component, which adds up over many recordings: do it only then.
    direct = candidate.parent == audio_dir and not candidate.is_symlink()
    if not direct and not candidate.resolve().is_relative_to(audio_dir.resolve()):
        raise AudioError(f"{candidate}: resolves outside the audio directory; refusing it")


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
    with _open(path) as f:
        rate = f.samplerate
        y = _read(f, path, 0, f.frames)
    if rate != sample_rate:
        import soxr

        y = soxr.resample(y, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(y)


def probe(path: Path) -> tuple[int, int]:
    """(frames, sample rate) that the header of ``path`` promises, checked as ``decode`` checks it."""
    with _open(path) as f:
        return f.frames, f.samplerate


def read_span(path: Path, start: int, stop: int) -> np.ndarray:
    """Frames ``start .. stop - 1`` of ``path`` (at its own rate), mono float32, read after a seek.

    The same samples as ``decode(path)[start:stop]`` at the file's rate, decoding only what the
    span needs; AudioError names the file when the span lies beyond what it holds.
    """
    with _open(path) as f:
        if not 0 <= start <= stop <= f.frames:
            raise AudioError(f"{path}: frames {start}..{stop} lie outside its {f.frames} frames")
        try:
            f.seek(start)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(
                f"{path}: truncated: cannot seek to frame {start} of the {f.frames} frames its header "
                f"promises ({_first_line(err)})"
            ) from None
        return _read(f, path, start, stop - start)


def _open(path: Path) -> sf.SoundFile:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise AudioError(f"{path}: cannot open: {err.strerror}") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not readable audio: {_first_line(err)}") from None
    expected, rate = f.frames, f.samplerate
    if expected > MAX_SECONDS * rate:
        f.close()
        raise AudioError(
            f"{path}: header promises {expected} frames ({expected / rate / 3600:.1f} h at {rate} Hz), "
            f"more than the {MAX_SECONDS / 3600:g} h limit: a corrupt header"
        )
    return f


def _read(f: sf.SoundFile, path: Path, first: int, expected: int) -> np.ndarray:
    """``expected`` frames from the current position (frame ``first``), mono, checked finite."""
    blocks = []
    decoded = 0
    while decoded < expected:
        try:
            block = f.read(min(BLOCK_FRAMES, expected - decoded), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(
                f"{path}: truncated: decoding stopped after {first + decoded} of the {f.frames} frames "
                f"its header promises ({_first_line(err)})"
            ) from None
        if block.shape[0] == 0:
            break
        blocks.append(block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32))
        decoded += block.shape[0]
    if decoded < expected:
        raise AudioError(
            f"{path}: truncated: decoded {first + decoded} of the {f.frames} frames its header promises"
        )
    if decoded == 0 and first == 0:
        raise AudioError(f"{path}: no samples")
    y = np.concatenate(blocks) if len(blocks) > 1 else (blocks[0] if blocks else np.zeros(0, np.float32))
    if not np.isfinite(y).all():
        bad = first + int(np.flatnonzero(~np.isfinite(y))[0])
        raise AudioError(f"{path}: non-finite sample (NaN or inf) at {bad / f.samplerate:.3f} s")
    return y


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
