"""Reading and validating annotation tables: RFCX manifests, event CSVs, Raven selection tables.

Every row is checked before any audio is read. A row-level problem is reported with its
file and line (``train_tp.csv line 17: t_min 12.5 >= t_max 3.0``); under the ``skip`` policy
the row is recorded as a failure and the others go on, under ``fail`` the first one raises.
A file-level problem always raises ``ManifestError`` naming the file (and line): a missing
file, missing columns, bytes that are not UTF-8 text, a NUL byte, a field longer than the csv
module's limit (``csv.field_size_limit()``, 131072 characters). The last three mean the file
is not a text manifest (a binary, gzip or UTF-16 file), so no row of it can be trusted.

A ``Layout`` says which column holds each field of a row (``FIELDS``): RFCX's own names by
default, a user's mapping (``--columns recording_id=file,species_id=label``), Raven's
(``Begin Time (s)``, ...). Only ``recording_id``, ``species_id`` (the label), ``t_min`` and
``t_max`` need a column; without one, ``songtype_id`` is 0, ``f_min`` 0 Hz and ``f_max`` the
Nyquist frequency of the feature config (the layout's ``nyquist``). Columns the layout does
not use are ignored: they are listed in ``ignored`` (the run prints them once and records
them in the index) and never stop a run.

Numbers are plain ASCII decimals: times and frequencies decimal or exponent floats (``12.5``,
``1e3``). Python's ``int`` and ``float`` also accept underscores (``1_0`` is 10) and non-ASCII
digits; a manifest field with either is not a number. Labels become class indexes through a
``precompute.classes.ClassCoder``: integer ids (``3``, class ``s3``) or names (``"wren"``).

Manifests are read as a stream (``iter_manifest``) into a ``RowTable``: one numpy record per
row, about 60 bytes, instead of a Python object per row, so planning a manifest of millions
of rows takes memory in proportion with a small constant (see ``benchmarks/plan_bench.py``).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from melshards.names import EVENT_FP, EVENT_TP
from precompute.classes import ClassCoder, ClassSpec
from precompute.errors import ManifestError

COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
OPTIONAL_COLUMNS = ("path",)
FIELDS = (*COLUMNS, "path")
# The fields every layout must find a column for; the others have defaults.
REQUIRED = ("recording_id", "species_id", "t_min", "t_max")
# Audio file name endings that mark a recording reference as a file name (``a.wav``).
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass(frozen=True, slots=True)
class Row:
    """One validated manifest row; ``kind`` is ``EVENT_TP`` or ``EVENT_FP``.

    ``species_id`` is the class index of the row's label (``precompute.classes``); ``line``
    is 0 for a row without a line (a clip found in a class folder).
    """

    recording_id: str
    species_id: int
    songtype_id: int
    t_min: float
    f_min: float
    t_max: float
    f_max: float
    kind: int
    source: str
    line: int
    path: str | None = None

    def key(self) -> tuple:
        """Identity of the row's content, for duplicate detection and fingerprints."""
        return (
            self.recording_id,
            self.species_id,
            self.songtype_id,
            self.t_min,
            self.f_min,
            self.t_max,
            self.f_max,
            self.kind,
        )

    @property
    def where(self) -> str:
        return where(self.source, self.line)


def where(source: str, line: int) -> str:
    """``train_tp.csv line 17``, or the source alone for a row without a line."""
    return f"{source} line {line}" if line > 0 else source


@dataclass(frozen=True, slots=True)
class RowFailure:
    """A manifest row that was rejected; becomes a ``failures.jsonl`` line."""

    source: str
    line: int
    recording_id: str
    message: str

    def to_record(self) -> dict:
        return {
            "id": self.recording_id,
            "path": self.source,
            "line": self.line,
            "error": "ManifestError",
            "message": f"{where(self.source, self.line)}: {self.message}",
        }


@dataclass(frozen=True)
class Layout:
    """Where a table keeps each field of a row, and how its rows are read.

    name : what the table is, for messages (``RFCX manifest``, ``Raven table``)
    columns : field -> the column names that may hold it, the first one present wins
    mapped : the fields whose column the user named (a missing one is reported as such)
    delimiter : ``,`` for CSV, a tab for Raven tables
    file_names : recording references are audio file names relative to the audio
        directory (``site2/a.wav`` is recording ``site2/a``, read from that file)
    recording : the recording of every row without a recording column (a Raven table's)
    once_per : a column whose repeated values are read once: Raven lists a selection once
        per view (waveform, spectrogram), with the same number
    offset : a column of start offsets in the recording (Raven's ``File Offset (s)``): the
        event then starts there and lasts ``t_max - t_min``
    separator : several labels in one field (clip lists): one row per label
    clip_seconds : clip lists: ``f(recording_id, path)`` gives the clip's length; each label
        is then an event from 0 to that length
    nyquist : the default ``f_max`` (Hz); None makes an ``f_max`` column required
    """

    name: str = "RFCX manifest"
    columns: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {f: (f,) for f in FIELDS}
    )
    mapped: frozenset[str] = frozenset()
    delimiter: str = ","
    file_names: bool = False
    recording: str | None = None
    once_per: str | None = None
    offset: str | None = None
    separator: str | None = None
    clip_seconds: Callable[[str, str | None], float] | None = None
    nyquist: float | None = None

    def required(self) -> tuple[str, ...]:
        fields = [f for f in REQUIRED if not (f == "recording_id" and self.recording is not None)]
        if self.clip_seconds is not None:
            fields = [f for f in fields if f not in ("t_min", "t_max")]
        return (*fields, "f_max") if self.nyquist is None else tuple(fields)

    def defaults(self) -> dict[str, str]:
        """Text of the fields without a column."""
        values = {"songtype_id": "0", "f_min": "0", "path": ""}
        if self.nyquist is not None:
            values["f_max"] = repr(float(self.nyquist))
        if self.recording is not None:
            values["recording_id"] = self.recording
        if self.clip_seconds is not None:
            values.update(t_min="0", t_max="0")
        return values


RFCX = Layout()


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


def _plain(text: str) -> bool:
    """Whether ``int``/``float`` read ``text`` as written: no digit-grouping underscore, ASCII only."""
    return "_" not in text and text.isascii()


def _number(text: str, name: str, cast: type) -> int | float:
    try:
        value = cast(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not _plain(text):
        raise ValueError(f"{name} {text!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} {text!r} is not finite")
    return value


def _recording(fields: Mapping[str, str], *, file_names: bool) -> tuple[str, str | None]:
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


# Each field named by itself, in messages about a row read without a header.
_OWN_NAMES = {name: name for name in (*FIELDS, "offset")}


def parse_row(
    fields: Mapping[str, str],
    *,
    kind: int,
    source: str,
    line: int,
    n_classes: int | None = None,
    classes: ClassCoder | None = None,
    names: Mapping[str, str] | None = None,
    layout: Layout = RFCX,
) -> Row:
    """Validate one record, ``fields`` by field name. Raises ValueError with a message (without
    the location) that names each field by its column in the file (``names``).

    The label (``species_id``) gets its class index from ``classes``, or, for a bare
    ``n_classes``, must be an integer id in ``0..n_classes - 1``.
    """
    names = names or _OWN_NAMES
    coder = classes if classes is not None else ClassCoder(ClassSpec(count=n_classes))
    recording_id, path = _recording(fields, file_names=layout.file_names)
    songtype = _number((fields["songtype_id"] or "").strip(), names["songtype_id"], int)
    if not SONGTYPE_MIN <= songtype <= SONGTYPE_MAX:
        raise ValueError(
            f"songtype_id {songtype} is outside {SONGTYPE_MIN}..{SONGTYPE_MAX} (int16 in the shards)"
        )
    label = (fields["species_id"] or "").strip()
    species = coder.code(label, songtype, field=names["species_id"])
    t_min = _number(fields["t_min"], names["t_min"], float)
    t_max = _number(fields["t_max"], names["t_max"], float)
    f_min = _number(fields["f_min"], names["f_min"], float)
    f_max = _number(fields["f_max"], names["f_max"], float)
    if layout.clip_seconds is not None:
        t_min, t_max = 0.0, float(layout.clip_seconds(recording_id, path))
    elif (fields.get("offset") or "").strip():
        offset = _number(fields["offset"], names["offset"], float)
        t_min, t_max = offset, offset + (t_max - t_min)
    if t_min < 0 or t_max < 0:
        raise ValueError(f"negative time: t_min {t_min}, t_max {t_max}")
    if t_min >= t_max:
        raise ValueError(f"t_min {t_min} >= t_max {t_max}")
    if f_min < 0 or f_min >= f_max:
        raise ValueError(f"f_min {f_min} >= f_max {f_max} (or negative)")
    return Row(recording_id, species, songtype, t_min, f_min, t_max, f_max, kind, source, line, path)


def iter_manifest(
    path: str | Path,
    *,
    kind: int,
    n_classes: int | None = None,
    on_error: str = "skip",
    failures: list[RowFailure],
    classes: ClassCoder | None = None,
    layout: Layout = RFCX,
    source: str | None = None,
    ignored: dict[str, list[str]] | None = None,
) -> Iterator[Row]:
    """Validated rows of one table, read as a stream; rejected rows are appended to ``failures``.

    Parameters
    ----------
    path : the table file (a CSV in RFCX columns by default; ``layout`` says otherwise)
    kind : ``EVENT_TP`` for ``train_tp.csv``, ``EVENT_FP`` for ``train_fp.csv``
    n_classes : without ``classes``: labels are integer ids in ``0..n_classes-1``
    on_error : ``"skip"`` records bad rows and continues, ``"fail"`` raises at the first
    failures : receives a ``RowFailure`` per rejected row, in file order
    classes : gives each label its class index (shared by every table of a run)
    layout : where each field is (``Layout``)
    source : the table's name in messages (default: the file name)
    ignored : receives ``{source: [columns the layout does not use]}``

    A file-level problem raises ManifestError at the first ``next()``.
    """
    path = Path(path)
    source = source or path.name
    if kind not in (EVENT_TP, EVENT_FP):
        raise ValueError(f"kind must be EVENT_TP or EVENT_FP, got {kind}")
    coder = classes if classes is not None else ClassCoder(ClassSpec(count=n_classes))
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory, expected a table file") from None
    with fh:
        try:
            yield from _rows(
                csv.reader(fh, delimiter=layout.delimiter),
                source=source,
                context=_Context(
                    kind, coder, layout, on_error, failures, ignored, defaults=layout.defaults()
                ),
            )
        except UnicodeDecodeError:
            found = _first_non_utf8(path)
            if found is None:
                raise ManifestError(f"{source}: not UTF-8 text; save the manifest as UTF-8") from None
            line, offset, byte = found
            raise ManifestError(
                f"{source} line {line}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}); "
                "save the manifest as UTF-8"
            ) from None


@dataclass(frozen=True)
class _Context:
    """What ``_rows`` needs besides the records: how to read, code and report them."""

    kind: int
    coder: ClassCoder
    layout: Layout
    on_error: str
    failures: list[RowFailure]
    ignored: dict[str, list[str]] | None
    seen: set[str] = dataclasses.field(default_factory=set)  # values of ``layout.once_per`` read so far
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)  # ``layout.defaults()``


def _rows(reader, *, source: str, context: _Context) -> Iterator[Row]:
    """``iter_manifest`` past the opening of the file: the header, then every record."""
    line = 0  # where the last record read ends
    try:
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{source}: empty manifest, expected header {','.join(COLUMNS)}")
        line = reader.line_num
        if any("\x00" in cell for cell in header):
            raise _nul_error(source, line)
        header = [h.strip() for h in header]
        positions, names = _resolve_header(header, source=source, context=context)
        missing = {f: text for f, text in context.defaults.items() if f not in positions}
        for record in reader:
            line = reader.line_num
            if not (record and record[0].strip()) and not any(cell.strip() for cell in record):
                continue
            yield from _record_rows(
                record, header, positions, names, missing, source=source, line=line, context=context
            )
    except csv.Error as err:
        first, last = line + 1, reader.line_num
        if "field limit" in str(err):
            problem = f"field longer than {csv.field_size_limit()} characters"
        else:
            problem = f"not CSV text ({err})"
        if last > first:
            problem += f", from line {first} to line {last} (a quote left open?)"
        raise ManifestError(f"{source} line {first}: {problem}; is this a manifest?") from None


def _record_rows(
    record: list[str],
    header: list[str],
    positions: dict[str, int],
    names: dict[str, str],
    missing: dict[str, str],
    *,
    source: str,
    line: int,
    context: _Context,
) -> list[Row]:
    """The rows of one record (one per label of a multi-label field), or none (a failure).

    ``missing`` holds the default text of each field the table has no column for.
    """
    layout = context.layout
    try:
        if len(record) != len(header):
            raise ValueError(f"{len(record)} fields, header has {len(header)}")
        fields = {f: record[k] for f, k in positions.items()}
        fields.update(missing)
        if "once_per" in fields:
            key = fields.pop("once_per").strip()
            if key in context.seen:
                return []
            context.seen.add(key)
        kind, coder = context.kind, context.coder
        if not layout.separator:
            return [
                parse_row(
                    fields, kind=kind, source=source, line=line, classes=coder, names=names, layout=layout
                )
            ]
        labels = [part for part in fields["species_id"].split(layout.separator) if part.strip()] or [""]
        return [
            parse_row(
                {**fields, "species_id": label},
                kind=kind,
                source=source,
                line=line,
                classes=coder,
                names=names,
                layout=layout,
            )
            for label in labels
        ]
    except ValueError as err:
        # Checked only here: a NUL never makes a valid field (parse_row refuses it in each of
        # them), so good rows pay nothing for the check.
        if any("\x00" in cell for cell in record):
            raise _nul_error(source, line) from None
        if context.on_error == "fail":
            raise ManifestError(f"{source} line {line}: {err}") from None
        k = positions.get("recording_id")
        recording_id = record[k].strip() if k is not None and len(record) == len(header) else ""
        context.failures.append(RowFailure(source, line, recording_id or layout.recording or "", str(err)))
        return []


def _resolve_header(
    header: list[str], *, source: str, context: _Context
) -> tuple[dict[str, int], dict[str, str]]:
    """Column position and name of every field the header holds; ManifestError for a missing one."""
    layout = context.layout
    if len(set(header)) != len(header):
        raise ManifestError(f"{source} line 1: duplicate column names in {','.join(header)}")
    positions, names = {}, {}
    wanted = dict(layout.columns)
    if layout.once_per:
        wanted["once_per"] = (layout.once_per,)
    if layout.offset:
        wanted["offset"] = (layout.offset,)
    for name, candidates in wanted.items():
        found = next((c for c in candidates if c in header), None)
        if found is not None:
            positions[name], names[name] = header.index(found), found
    missing = [f for f in layout.required() if f not in positions]
    if context.coder.songtypes and "songtype_id" not in positions:
        missing.append("songtype_id")
    if missing:
        raise ManifestError(f"{source} line 1: {_missing_text(missing, header, layout)}")
    if context.ignored is not None:
        unused = [c for c in header if c not in names.values()]
        if unused:
            context.ignored[source] = unused
    return positions, {**_OWN_NAMES, **names}


def _missing_text(missing: list[str], header: list[str], layout: Layout) -> str:
    mapped = [f for f in missing if f in layout.mapped]
    parts = [
        f"the column mapping names {f}={layout.columns[f][0]!r}, not a column of the file" for f in mapped
    ]
    others = [f for f in missing if f not in layout.mapped]
    if others:
        listed = []
        for f in others:
            candidates = layout.columns.get(f, (f,))
            named = " or ".join(repr(c) for c in candidates[:3])
            listed.append(f if candidates == (f,) else f"{f} ({named})")
        parts.append(f"missing column(s) {', '.join(listed)}")
    hint = (
        "map columns with --columns field=column"
        if layout.name != "Raven table"
        else "see docs/annotations.md"
    )
    return f"{'; '.join(parts)}; the file has {','.join(header) or 'no columns'} ({hint})"


def _nul_error(source: str, line: int) -> ManifestError:
    return ManifestError(
        f"{source} line {line}: contains a NUL byte (a binary or UTF-16 file?); save the manifest as UTF-8 text"
    )


def _first_non_utf8(path: Path) -> tuple[int, int, int] | None:
    """(line, byte offset, byte value) of the first byte of ``path`` that is not UTF-8 text.

    Read in chunks, so a binary file without line breaks takes no more memory than a chunk.
    None if every byte decodes (the file changed since it failed to).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = offset = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            carried = decoder.getstate()[0]  # the start of a character the last chunk cut
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                bad = err.start  # an index into ``err.object``, which is ``carried + chunk``
                line += err.object.count(b"\n", 0, bad)
                return line + 1, offset - len(carried) + bad, err.object[bad]
            if not chunk:
                return None
            line += chunk.count(b"\n")
            offset += len(chunk)


def read_manifest(
    path: str | Path, *, kind: int, n_classes: int, on_error: str = "skip"
) -> tuple[list[Row], list[RowFailure]]:
    """Read and validate one RFCX manifest (``iter_manifest`` into a list): valid rows, rejected rows."""
    failures: list[RowFailure] = []
    rows = list(iter_manifest(path, kind=kind, n_classes=n_classes, on_error=on_error, failures=failures))
    return rows, failures


class NoValidRows(ManifestError):
    """Every row of the annotations was rejected; ``failures`` lists why, in reading order."""

    def __init__(self, message: str, failures: list[RowFailure]) -> None:
        super().__init__(message)
        self.failures = failures


# Int16 in the shards (``anchor/songtype_id``); RFCX uses 1 and 4.
SONGTYPE_MIN, SONGTYPE_MAX = -(2**15), 2**15 - 1

# One record per manifest row. Strings (recording id, source file, path column) are stored
# once in the table and referred to by index.
ROW_DTYPE = np.dtype(
    [
        ("recording", np.int32),
        ("source", np.int32),  # a Raven folder holds a table per recording
        ("path", np.int32),
        ("species_id", np.int16),
        ("songtype_id", np.int16),
        ("t_min", np.float64),
        ("f_min", np.float64),
        ("t_max", np.float64),
        ("f_max", np.float64),
        ("kind", np.int8),
        ("line", np.int64),
    ]
)
_VALUES = ("species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max", "kind", "line")


@dataclass(frozen=True, eq=False)
class RowTable:
    """Validated manifest rows as one numpy record array: no Python object per row.

    data : np.ndarray [shape=(n,)], ``ROW_DTYPE`` -- ``recording``, ``source`` and ``path``
        index ``recording_ids``, ``sources`` and ``paths``; the other fields are the Row's
    recording_ids, sources, paths : the distinct strings (``paths`` holds None for rows
        without a ``path`` column value)

    ``table[i]`` and iteration give ``Row`` objects; ``take`` selects rows and keeps only
    the strings they use, so a shard job carries its own rows and nothing more.
    """

    data: np.ndarray
    recording_ids: tuple[str, ...]
    sources: tuple[str, ...]
    paths: tuple[str | None, ...]

    @classmethod
    def from_rows(cls, rows: Iterable[Row], *, chunk: int = 1 << 14) -> RowTable:
        """Build a table from a stream of rows, converting every ``chunk`` rows to records."""
        names: dict[str, int] = {}
        sources: dict[str, int] = {}
        paths: dict[str | None, int] = {None: 0}
        parts: list[np.ndarray] = []
        pending: list[tuple] = []
        for row in rows:
            pending.append(
                (
                    names.setdefault(row.recording_id, len(names)),
                    sources.setdefault(row.source, len(sources)),
                    paths.setdefault(row.path, len(paths)),
                    row.species_id,
                    row.songtype_id,
                    row.t_min,
                    row.f_min,
                    row.t_max,
                    row.f_max,
                    row.kind,
                    row.line,
                )
            )
            if len(pending) == chunk:
                parts.append(np.array(pending, dtype=ROW_DTYPE))
                pending.clear()
        parts.append(np.array(pending, dtype=ROW_DTYPE))
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return cls(data, tuple(names), tuple(sources), tuple(paths))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, i: int) -> Row:
        r = self.data[i]
        return Row(
            self.recording_ids[r["recording"]],
            int(r["species_id"]),
            int(r["songtype_id"]),
            float(r["t_min"]),
            float(r["f_min"]),
            float(r["t_max"]),
            float(r["f_max"]),
            int(r["kind"]),
            self.sources[r["source"]],
            int(r["line"]),
            self.paths[r["path"]],
        )

    def __iter__(self) -> Iterator[Row]:
        return (self[i] for i in range(len(self)))

    def take(self, index: np.ndarray | slice) -> RowTable:
        """The rows at ``index`` (positions or a slice), with only the strings they use."""
        data = self.data[index]
        if isinstance(index, slice):
            data = data.copy()
        strings = []
        for field, values in (
            ("recording", self.recording_ids),
            ("source", self.sources),
            ("path", self.paths),
        ):
            if len(values) > 2:  # worth re-coding (RFCX has two sources, a Raven folder many)
                used, data[field] = np.unique(data[field], return_inverse=True)
                values = tuple(values[k] for k in used.tolist())
            strings.append(values)
        return RowTable(data, *strings)

    def keys(self) -> list[list]:
        """Each row as ``[*Row.key(), source, line]``, plain Python values (for fingerprints)."""
        d = self.data
        columns = [[self.recording_ids[k] for k in d["recording"].tolist()]]
        columns += [d[name].tolist() for name in _VALUES[:-2]]
        columns += [d["kind"].tolist(), [self.sources[k] for k in d["source"].tolist()], d["line"].tolist()]
        return [list(values) for values in zip(*columns, strict=True)]


def drop_duplicates(table: RowTable, *, on_error: str = "skip") -> tuple[RowTable, list[RowFailure]]:
    """Keep the first (in reading order) of rows with identical content (``Row.key``).

    Sorting the records by their key puts duplicates side by side: no per-row object, no
    hash table. Returns the kept rows, in their order, and one failure per dropped row.
    """
    d = table.data
    n = d.shape[0]
    fields = ("recording", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max", "kind")
    # lexsort: last key first; position last, so a group of equal keys starts with its first row
    order = np.lexsort([np.arange(n), *(d[f] for f in reversed(fields))])
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = True
    for f in fields:
        column = d[f][order]
        repeat[1:] &= column[1:] == column[:-1]
    first = order[np.maximum.accumulate(np.where(repeat, 0, np.arange(n)))]
    dropped, firsts = order[repeat], first[repeat]
    by_position = np.argsort(dropped, kind="stable")
    failures = []
    for i, j in zip(dropped[by_position].tolist(), firsts[by_position].tolist(), strict=True):
        row, original = table[i], table[j]
        message = f"duplicate of {original.where}"
        if on_error == "fail":
            raise ManifestError(f"{row.where}: {message}")
        failures.append(RowFailure(row.source, row.line, row.recording_id, message))
    if not failures:
        return table, failures
    keep = np.ones(n, dtype=bool)
    keep[dropped] = False
    return table.take(np.flatnonzero(keep)), failures
