"""Class folders: one folder of clips per class in the audio directory, named by its class.

A folder's name is its class name, as written: folders ``3``, ``03`` and ``s3`` are three
classes (``3``, ``03``, ``s3``), never the ids of an RFCX manifest. Every audio file under a
class folder, its sub-folders included, is a clip of that class. The run says which classes
came from which folder (``classes from folder names under DIR: a, b, c (N files)``), and warns
when the class folders hold audio only in sub-folders: the classes are then likely one level
down, and ``--audio-dir`` one level too high.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from commandline.console import log
from melshards.names import EVENT_TP
from precompute.audio import AUDIO_EXTENSIONS
from precompute.errors import ManifestError
from precompute.inputs.classes import ClassCoder
from precompute.inputs.layout import Layout
from precompute.inputs.manifest import parse_row
from precompute.inputs.row_table import Row, RowFailure


@dataclass(frozen=True)
class ClassFolder:
    """One class folder: its class name, the folder, and its audio files (name order).

    own : how many of ``files`` lie in the folder itself, not in a sub-folder
    """

    name: str
    folder: Path
    files: tuple[Path, ...]
    own: int


def list_class_folders(audio_dir: Path) -> list[ClassFolder]:
    """The class folders of ``audio_dir`` that hold audio, in name order, and their files.

    Raises ManifestError when there is no folder, when no folder holds audio, or when two
    folders name one class (names equal but for spaces at an end or their Unicode form).
    Logs the classes and the folder they came from; warns of folders without audio, and when
    every class folder holds its audio only in sub-folders.
    """
    if not audio_dir.is_dir():
        raise ManifestError(f"{audio_dir}: audio directory not found")
    folders = sorted(p for p in audio_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ManifestError(f"{audio_dir}: no class folders (one folder of clips per class)")
    named: dict[str, Path] = {}
    for folder in folders:
        key = unicodedata.normalize("NFC", folder.name.strip())
        if key in named:
            raise ManifestError(
                f"{audio_dir}: class folders {named[key].name!r} and {folder.name!r} both name class "
                f"{key!r}; rename one of them or merge them"
            )
        named[key] = folder
    found = [_class_folder(folder) for folder in folders]
    empty = [c.folder.name for c in found if not c.files]
    found = [c for c in found if c.files]
    if not found:
        raise ManifestError(
            f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in the class folders "
            f"{_listing(empty)}"
        )
    n_files = sum(len(c.files) for c in found)
    log.info(
        f"classes from folder names under {audio_dir}: {_listing([c.name for c in found])} ({n_files} files)"
    )
    if empty:
        log.warning(f"{audio_dir}: class folder(s) {_listing(empty)} hold no audio files and give no class")
    if not any(c.own for c in found):
        inner = sorted({"/".join(f.relative_to(audio_dir).parts[:2]) for c in found for f in c.files})
        log.warning(
            f"{audio_dir}: the class folders hold no audio of their own, only in sub-folders "
            f"({_listing(inner)}); if the classes are those sub-folders, give the folder above "
            f"them as --audio-dir (such as {found[0].folder})"
        )
    return found


def _class_folder(folder: Path) -> ClassFolder:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    own = sum(1 for p in files if p.parent == folder)
    return ClassFolder(folder.name.strip(), folder, tuple(files), own)


def _listing(names: list[str], *, most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def folder_rows(
    audio_dir: Path,
    *,
    lengths: Callable[[str, str | None], float],
    nyquist: float,
    classes: ClassCoder,
    on_error: str,
    failures: list[RowFailure],
) -> Iterator[Row]:
    """A clip row per audio file of each class folder of ``audio_dir`` (``list_class_folders``),
    labelled with the folder's name as written; folders and files in name order.

    lengths : ``f(recording_id, path)``, a clip's length in seconds
    """
    layout = Layout(
        name="class folder", file_names=True, clip_seconds=lengths, nyquist=nyquist, label_names=True
    )
    for found in list_class_folders(audio_dir):
        for path in found.files:
            relative = path.relative_to(audio_dir).as_posix()
            fields = {**layout.defaults(), "recording_id": relative, "species_id": found.name}
            try:
                yield parse_row(
                    fields, kind=EVENT_TP, source=relative, line=0, classes=classes, layout=layout
                )
            except ValueError as err:
                if on_error == "fail":
                    raise ManifestError(f"{relative}: {err}") from None
                failures.append(RowFailure(relative, 0, relative, str(err)))
