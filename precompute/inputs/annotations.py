"""Annotation formats: every way labelled audio comes in, read into the same manifest rows.

Five formats, each a ``Layout`` (``precompute.inputs.layout``) over one row parser, so every row
of every format is validated, coded to a class and reported the same way:

``rfcx``
    RFCX manifests (``train_tp.csv``, ``train_fp.csv``): ``recording_id,species_id,
    songtype_id,t_min,f_min,t_max,f_max`` and an optional ``path``.
``events``
    Any event CSV, its columns mapped onto those fields (``Annotations.columns``, the
    ``--columns recording_id=file,species_id=label,t_min=start,t_max=end`` option).
    Recordings may be named by their file (``a.wav``, ``site2/a.wav``).
``raven``
    Raven selection tables (tab-separated, one per recording, as Raven Pro and
    opensoundscape write them). The recording is the table's name without
    ``.Table.1.selections.txt`` (or ``.selections.txt``, ``.txt``), or the ``Begin File``
    column; with ``File Offset (s)`` the times are taken relative to that file. The label
    column is ``label_column`` or the first of ``RAVEN_LABELS`` present. A selection listed
    once per view (``Waveform 1``, ``Spectrogram 1``) is read once; its number alone does not
    identify it (``Layout.selection``). A table whose ``Review`` column (``review_column``)
    holds a verdict is refused: read as selections, its rejected ones would become calls.
``reviews``
    Raven tables a reviewer has filled a verdict column of (``Review``), read as ``raven``
    with each selection taken by its verdict: a call, a confirmed negative, a call of another
    class and a confirmed negative of its own, or not reviewed (skipped and counted); see
    ``precompute.inputs.reviews``. Labels are class names as written: ``s7`` is class ``s7``.
``clips``
    Clip-level labels: a CSV of a file column (``FILE_COLUMNS``) and a label column
    (``LABEL_COLUMNS``) holding one label or several separated by ``separator``; or
    (``class_folders``) one folder per class in the audio directory, its name the class name
    as written (``precompute.inputs.class_folders``). A clip's label is an event over the
    whole clip, its length read from the audio file's header at plan time.

Fields without a column take defaults: ``songtype_id`` 0, ``f_min`` 0 Hz, ``f_max`` the
Nyquist frequency of the feature config (``sample_rate / 2``): the whole band the features
see. Columns a format does not use are ignored, never an error: the run prints them once
and records them in the index (``source``), which ``precompute inspect`` shows.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from commandline.console import log
from melshards.config import FeatureConfig
from melshards.errors import ConfigError
from melshards.names import EVENT_FP, EVENT_TP
from precompute.audio import find_audio
from precompute.errors import AudioError, ManifestError
from precompute.inputs.class_folders import folder_rows
from precompute.inputs.classes import ClassCoder, ClassSpec, parse_class_option
from precompute.inputs.layout import FIELDS, RFCX, Layout
from precompute.inputs.manifest import iter_manifest
from precompute.inputs.reviews import REVIEW_COLUMN, unreviewed_line
from precompute.inputs.row_table import Row, RowFailure

FORMATS = ("rfcx", "events", "raven", "reviews", "clips", "class_folders")

# Raven's columns (as Raven Pro writes them), field -> column.
RAVEN_COLUMNS = {
    "recording_id": ("Begin File",),
    "t_min": ("Begin Time (s)",),
    "t_max": ("End Time (s)",),
    "f_min": ("Low Freq (Hz)",),
    "f_max": ("High Freq (Hz)",),
    "songtype_id": ("songtype_id", "Songtype"),
}
# Label columns looked for, in this order, when none is named.
RAVEN_LABELS = ("Annotation", "Species", "species", "label", "Label", "Class", "class", "annotation")
FILE_COLUMNS = ("file", "filename", "fname", "file_name", "slice_file_name", "path", "recording_id", "File")
LABEL_COLUMNS = ("labels", "label", "category", "class", "species", "species_id", "tags", "Label", "Labels")
# Endings of a Raven table's name after the recording's name.
RAVEN_SUFFIX = re.compile(r"(\.Table\.\d+)?(\.selections)?\.txt$", re.IGNORECASE)


@dataclass(frozen=True)
class Annotations:
    """One annotation input of a labelled run.

    format : one of ``FORMATS``
    path : the CSV file, the Raven table or folder of tables, or (``class_folders``) the
        audio directory
    kind : ``EVENT_TP``, or ``EVENT_FP`` for confirmed false positives (CSV formats)
    columns : field -> column of the file (``events``, ``clips``)
    label_column : the column holding the labels (``raven``, ``reviews``, ``clips``)
    separator : between several labels of one clip (``clips``)
    review_column : the column of the reviewer's verdicts (``reviews``; a filled one refuses
        a ``raven`` table)
    """

    format: str
    path: Path
    kind: int = EVENT_TP
    columns: Mapping[str, str] = field(default_factory=dict)
    label_column: str | None = None
    separator: str = ";"
    review_column: str = REVIEW_COLUMN

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"annotation format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.kind not in (EVENT_TP, EVENT_FP):
            raise ConfigError(f"annotation kind must be EVENT_TP or EVENT_FP, got {self.kind!r}")
        if self.kind == EVENT_FP and self.format not in ("rfcx", "events"):
            raise ConfigError(f"{self.path}: false positives come as an RFCX or event CSV, not {self.format}")
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "columns", check_columns(self.columns, source="columns"))
        if not self.separator:
            raise ConfigError("the label separator must not be empty")
        if not (isinstance(self.review_column, str) and self.review_column.strip()):
            raise ConfigError(f"the review column must be a column name, got {self.review_column!r}")

    def describe(self) -> dict[str, Any]:
        """What the index's ``source`` records of this input."""
        data: dict[str, Any] = {"format": self.format, "path": str(self.path)}
        data["kind"] = "tp" if self.kind == EVENT_TP else "fp"
        if self.columns:
            data["columns"] = dict(self.columns)
        if self.label_column:
            data["label_column"] = self.label_column
        if self.format == "reviews" or self.review_column != REVIEW_COLUMN:
            data["review_column"] = self.review_column
        return data


def check_columns(columns: Mapping[str, str], *, source: str) -> dict[str, str]:
    """A column mapping checked: known fields, each mapped to a non-empty column name."""
    if not isinstance(columns, Mapping):
        raise ConfigError(f"{source}: expected a mapping of field = column, got {columns!r}")
    checked = {}
    for name, column in columns.items():
        if name not in FIELDS:
            raise ConfigError(f"{source}: unknown field {name!r}; fields: {', '.join(FIELDS)}")
        if not isinstance(column, str) or not column.strip():
            raise ConfigError(f"{source}: field {name} needs a column name, got {column!r}")
        checked[name] = column.strip()
    return checked


def parse_columns(text: str, *, source: str = "--columns") -> dict[str, str]:
    """``"recording_id=file,t_min=start"`` -> ``{"recording_id": "file", "t_min": "start"}``."""
    columns: dict[str, str] = {}
    for item in text.split(","):
        name, sep, column = item.partition("=")
        if not sep:
            raise ConfigError(f"{source} {text!r}: expected field=column pairs, e.g. t_min=start")
        if name.strip() in columns:
            raise ConfigError(f"{source} {text!r}: field {name.strip()} is mapped twice")
        columns[name.strip()] = column
    return check_columns(columns, source=f"{source} {text!r}")


# -- options of the config file's [annotations] table --------------------------------------------

OPTION_KEYS = ("columns", "label_column", "label_separator", "review_column", "classes")


def read_annotation_options(path: str | Path | None) -> dict[str, Any]:
    """The ``[annotations]`` table of a config TOML file (empty without one), checked.

    Keys: ``columns`` (a table field = column, or ``"field=column,..."``), ``label_column``,
    ``label_separator``, ``review_column``, ``classes`` (``"species_songtype"`` or a list of
    class names).
    """
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("annotations", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}  # the feature config reader reports the file's problem
    source = f"{path} [annotations]"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table")
    unknown = sorted(set(data) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(OPTION_KEYS)}"
        )
    options = dict(data)
    if isinstance(options.get("columns"), str):
        options["columns"] = parse_columns(options["columns"], source=f"{source} columns")
    elif "columns" in options:
        options["columns"] = check_columns(options["columns"], source=f"{source} columns")
    for key in ("label_column", "label_separator", "review_column"):
        if key in options and not (isinstance(options[key], str) and options[key]):
            raise ConfigError(f"{source}: {key} must be a non-empty string, got {options[key]!r}")
    if "classes" in options:
        options["classes"] = _class_spec(options["classes"], source=f"{source} classes")
    return options


def _class_spec(value: Any, *, source: str) -> ClassSpec:
    if isinstance(value, str):
        return parse_class_option(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        try:
            return ClassSpec(names=tuple(v.strip() for v in value))
        except ConfigError as err:
            raise ConfigError(f"{source}: {str(err).removeprefix('classes: ')}") from None
    raise ConfigError(f'{source}: expected "species_songtype" or a list of class names, got {value!r}')


# -- reading -------------------------------------------------------------------------------------


def iter_annotations(
    inputs: Sequence[Annotations],
    *,
    audio_dir: Path,
    config: FeatureConfig,
    classes: ClassCoder,
    on_error: str,
    failures: list[RowFailure],
    ignored: dict[str, list[str]],
    unreviewed: dict[str, int] | None = None,
) -> Iterator[Row]:
    """Validated rows of every input, in order, as one stream (see ``iter_manifest``).

    unreviewed : receives ``{table: selections without a verdict}`` of ``reviews`` inputs;
        each such input's count is logged once it is read ("N selections not reviewed, skipped")
    """
    nyquist = config.sample_rate / 2
    common = {"classes": classes, "on_error": on_error, "failures": failures, "ignored": ignored}
    for item in inputs:
        if item.format in ("rfcx", "events"):
            layout = events_layout(item.columns, nyquist=nyquist) if item.columns else Layout(nyquist=nyquist)
            yield from iter_manifest(item.path, kind=item.kind, layout=layout, **common)
        elif item.format in ("raven", "reviews"):
            yield from raven_rows(item, nyquist=nyquist, unreviewed=unreviewed, common=common)
        elif item.format == "clips":
            layout = clips_layout(item, nyquist=nyquist, lengths=clip_lengths(audio_dir))
            yield from iter_manifest(item.path, kind=EVENT_TP, layout=layout, **common)
        else:
            yield from folder_rows(
                item.path,
                lengths=clip_lengths(item.path),
                nyquist=nyquist,
                classes=classes,
                on_error=on_error,
                failures=failures,
            )


def events_layout(columns: Mapping[str, str], *, nyquist: float) -> Layout:
    """An event CSV whose columns ``columns`` maps (field -> column); other fields keep RFCX names."""
    mapped = {**RFCX.columns, **{name: (column,) for name, column in columns.items()}}
    return Layout(
        name="event CSV", columns=mapped, mapped=frozenset(columns), file_names=True, nyquist=nyquist
    )


def raven_rows(
    item: Annotations, *, nyquist: float, unreviewed: dict[str, int] | None, common: dict
) -> Iterator[Row]:
    """The rows of a ``raven`` or ``reviews`` input, table by table; logs the unreviewed count."""
    counts: dict[str, int] = {}
    for table, source in raven_tables(item.path):
        layout = raven_layout(
            table,
            label_column=item.label_column,
            nyquist=nyquist,
            review=item.review_column,
            reviewed=item.format == "reviews",
        )
        yield from iter_manifest(
            table, kind=EVENT_TP, layout=layout, source=source, unreviewed=counts, **common
        )
    if unreviewed is not None:
        unreviewed.update(counts)
    line = unreviewed_line(item.path, counts)
    if line:
        log.info(line)


def raven_tables(path: Path) -> list[tuple[Path, str]]:
    """The Raven tables of ``path`` (a table, or a folder searched with its sub-folders):
    (file, name in messages), sorted by name."""
    if path.is_file():
        return [(path, path.name)]
    if not path.is_dir():
        raise ManifestError(f"{path}: no Raven selection table or folder of tables there")
    tables = sorted(
        (p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()
    )
    if not tables:
        raise ManifestError(f"{path}: no Raven selection tables (*.txt) in this folder")
    return [(p, p.relative_to(path).as_posix()) for p in tables]


def raven_recording(table: Path) -> str:
    """The recording a Raven table describes: its name without the selection-table ending."""
    return RAVEN_SUFFIX.sub("", table.name)


def raven_layout(
    table: Path,
    *,
    label_column: str | None,
    nyquist: float,
    review: str = REVIEW_COLUMN,
    reviewed: bool = False,
) -> Layout:
    """A Raven table's layout; ``reviewed``: a reviewed table's, its labels class names as written."""
    labels = (label_column,) if label_column else RAVEN_LABELS
    return Layout(
        name="Raven table",
        columns={**RAVEN_COLUMNS, "species_id": labels},
        mapped=frozenset({"species_id"}) if label_column else frozenset(),
        delimiter="\t",
        file_names=True,
        recording=raven_recording(table),
        selection="Selection",
        view="View",
        offset="File Offset (s)",
        nyquist=nyquist,
        label_names=reviewed,
        review=review,
        reviewed=reviewed,
    )


def clips_layout(item: Annotations, *, nyquist: float, lengths) -> Layout:
    """A clip list: a file column and a label column (named, mapped, or found by their usual names)."""
    label = item.label_column or item.columns.get("species_id")
    columns = {
        "recording_id": (item.columns["recording_id"],) if "recording_id" in item.columns else FILE_COLUMNS,
        "species_id": (label,) if label else LABEL_COLUMNS,
    }
    mapped = {"recording_id"} if "recording_id" in item.columns else set()
    return Layout(
        name="clip list",
        columns=columns,
        mapped=frozenset(mapped | ({"species_id"} if label else set())),
        file_names=True,
        separator=item.separator,
        clip_seconds=lengths,
        nyquist=nyquist,
    )


def clip_lengths(audio_dir: Path):
    """``f(recording_id, path)``: a clip's length in seconds from its audio header (cached).

    Raises ValueError (the row's failure) when the file is missing or unreadable. A clip
    shorter than the stored window is kept: the shard job pads its one window.
    """

    @functools.lru_cache(maxsize=4096)
    def length(recording_id: str, path: str | None) -> float:
        try:
            found = find_audio(audio_dir, recording_id, path)
            info = sf.info(str(found))
        except AudioError as err:
            raise ValueError(str(err)) from None
        except (sf.LibsndfileError, RuntimeError) as err:
            raise ValueError(f"{path or recording_id}: not readable audio ({err})") from None
        if not info.frames or not info.samplerate:
            raise ValueError(f"{path or recording_id}: no samples")
        return info.frames / info.samplerate

    return length
