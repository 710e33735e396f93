"""How a row names its recording: an id (``rec7``, read from ``<id>.<ext>``) or a file.

A recording id must name a file inside the audio directory (no separator, no ``..``); a
file reference (``site2/a.wav``) is a path relative to it, and the recording's id is that path
without its extension. Either way, nothing a manifest says can make a run read outside the
audio directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

# Audio file name endings that mark a recording reference as a file name (``a.wav``).
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")


def check_recording_id(recording_id: str) -> str | None:
    """Why ``recording_id`` cannot name a file inside the audio directory, or None."""
    if not recording_id:
        return "recording_id is empty"
    if "/" in recording_id or "\\" in recording_id or ".." in recording_id or "\x00" in recording_id:
        return f"recording_id {recording_id!r} contains a path separator or '..'; refusing it"
    return None


def file_reference(text: str) -> tuple[str, str | None]:
    """(recording id, path) of a recording named by its file: ``site2/a.wav`` -> ``site2/a``.

    A name without an audio extension and without a folder is a plain recording id
    (``<id>.<ext>`` in the audio directory); backslashes count as folder separators.
    """
    name = text.strip().replace("\\", "/")
    pure = PurePosixPath(name)
    has_suffix = pure.suffix.lower() in AUDIO_SUFFIXES
    if not has_suffix and "/" not in name:
        return name, None
    return (str(pure.with_suffix("")) if has_suffix else name), name


def row_recording(fields: Mapping[str, str], *, file_names: bool) -> tuple[str, str | None]:
    """The row's recording id and path (None: found as ``<id>.<ext>``), checked."""
    recording_id = (fields.get("recording_id") or "").strip()
    path = (fields.get("path") or "").strip() or None
    if file_names and path is None and recording_id:
        recording_id, path = file_reference(recording_id)
        if "\x00" in recording_id or ".." in PurePosixPath(recording_id).parts:
            raise ValueError(f"recording {recording_id!r} leaves the audio directory; refusing it")
    else:
        problem = check_recording_id(recording_id)
        if problem:
            raise ValueError(problem)
    if path is not None and "\x00" in path:
        raise ValueError(f"path {path!r} contains a NUL character")
    if path is not None and (Path(path).is_absolute() or ".." in Path(path).parts):
        raise ValueError(f"path {path!r} leaves the audio directory; refusing it")
    return recording_id, path
