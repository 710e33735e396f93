"""The audio files a sliding-window run reads: every one under a folder, or those a list names.

A recording's id is its path relative to the audio directory without the extension
(``site2/rec7.flac`` is ``site2/rec7``), so files of one name in two folders stay apart. A
file list (``--files LIST.txt``) names paths relative to the audio directory, one per line.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from melshards.errors import ConfigError
from precompute.audio import AUDIO_EXTENSIONS


def list_audio(audio_dir: Path, *, files: Path | None = None) -> list[tuple[str, Path]]:
    """The audio files under ``audio_dir`` (sub-folders included), or those ``files`` lists.

    Returns ``(recording id, path)`` pairs sorted by the path relative to ``audio_dir``. A
    recording's id is that relative path without its extension, folders joined by ``/``
    (``site2/rec7.flac`` is ``site2/rec7``), so files of one name in two folders stay apart.
    Links to folders are not followed. Raises ConfigError when there are no files, or when
    two share an id (``a.flac`` and ``a.wav``).
    """
    if not audio_dir.is_dir():
        raise ConfigError(f"{audio_dir}: audio directory not found")
    found = _walk_audio(audio_dir) if files is None else read_file_list(files, audio_dir=audio_dir)
    if not found:
        raise ConfigError(f"{files or audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    found.sort(key=lambda relative: relative.as_posix())
    by_id: dict[str, list[PurePosixPath]] = {}
    for relative in found:
        by_id.setdefault(relative.with_suffix("").as_posix(), []).append(relative)
    shared = [(rid, paths) for rid, paths in by_id.items() if len(paths) > 1]
    if shared:
        more = f" ({len(shared) - 1} more id(s) have several files)" if len(shared) > 1 else ""
        rid, paths = shared[0]
        raise ConfigError(
            f"{audio_dir}: recordings {' and '.join(p.as_posix() for p in paths)} share the id "
            f"{rid!r}{more}; rename or remove one"
        )
    return [(rid, audio_dir.joinpath(*paths[0].parts)) for rid, paths in by_id.items()]


def _walk_audio(audio_dir: Path) -> list[PurePosixPath]:
    """Every audio file under ``audio_dir``, relative to it."""

    def refuse(err: OSError) -> None:
        raise ConfigError(f"{err.filename}: cannot list the folder: {err.strerror}")

    found = []
    for folder, _, names in os.walk(audio_dir, onerror=refuse):
        for name in names:
            path = Path(folder, name)
            # Links that lead nowhere are listed too: the run records them instead of skipping them silently.
            if path.suffix.lower() in AUDIO_EXTENSIONS and (path.is_file() or path.is_symlink()):
                found.append(PurePosixPath(*path.relative_to(audio_dir).parts))
    return found


def read_file_list(path: Path, *, audio_dir: Path) -> list[PurePosixPath]:
    """The files a list names: one path per line, relative to ``audio_dir``.

    Blank lines and lines starting with ``#`` are skipped; spaces around a path are dropped.
    ConfigError names the list's line of a path that leaves ``audio_dir``, is not an audio
    file, does not exist, or repeats an earlier line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file list not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; a file list holds one path per line") from None
    listed: dict[PurePosixPath, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        where = f"{path} line {number}"
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or "\x00" in name:
            raise ConfigError(f"{where}: {name!r} leaves the audio directory; list paths relative to it")
        if relative.suffix.lower() not in AUDIO_EXTENSIONS:
            raise ConfigError(f"{where}: {name!r} is not an audio file ({', '.join(AUDIO_EXTENSIONS)})")
        full = audio_dir.joinpath(*relative.parts)
        if not (full.is_file() or full.is_symlink()):
            raise ConfigError(f"{where}: {full}: {'not a file' if full.exists() else 'no such file'}")
        if relative in listed:
            raise ConfigError(f"{where}: {name} is listed twice (first on line {listed[relative]})")
        listed[relative] = number
    return list(listed)
