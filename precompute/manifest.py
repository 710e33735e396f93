"""Reading and validating RFCX manifests (``train_tp.csv``, ``train_fp.csv``).

Every row is checked before any audio is read. A row-level problem is reported with its
file and line (``train_tp.csv line 17: t_min 12.5 >= t_max 3.0``); under the ``skip`` policy
the row is recorded as a failure and the others go on, under ``fail`` the first one raises.
A file-level problem always raises ``ManifestError`` naming the file (and line): a missing
file, wrong columns, bytes that are not UTF-8 text, a NUL byte, a field longer than the csv
module's limit (``csv.field_size_limit()``, 131072 characters). The last three mean the file
is not a text manifest (a binary, gzip or UTF-16 file), so no row of it can be trusted.

Numbers are plain ASCII decimals: ids are integers (``17``), times and frequencies decimal or
exponent floats (``12.5``, ``1e3``). Python's ``int`` and ``float`` also accept underscores
(``1_0`` is 10) and non-ASCII digits; a manifest field with either is not a number.

Manifests are read as a stream (``iter_manifest``) into a ``RowTable``: one numpy record per
row, about 60 bytes, instead of a Python object per row, so planning a manifest of millions
of rows takes memory in proportion with a small constant (see ``benchmarks/plan_bench.py``).
"""

from __future__ import annotations

import codecs
import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melshards.errors import ManifestError
from melshards.names import EVENT_FP, EVENT_TP

COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
OPTIONAL_COLUMNS = ("path",)


@dataclass(frozen=True, slots=True)
class Row:
    """One validated manifest row; ``kind`` is ``EVENT_TP`` or ``EVENT_FP``."""

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
        return f"{self.source} line {self.line}"


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
            "message": f"{self.source} line {self.line}: {self.message}",
        }


def check_recording_id(recording_id: str) -> str | None:
    """Why ``recording_id`` cannot name a file inside the audio directory, or None."""
    if not recording_id:
        return "recording_id is empty"
    if "/" in recording_id or "\\" in recording_id or ".." in recording_id or "\x00" in recording_id:
        return f"recording_id {recording_id!r} contains a path separator or '..'; refusing it"
    return None


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


def parse_row(fields: dict[str, str], *, kind: int, source: str, line: int, n_classes: int) -> Row:
    """Validate one CSV record. Raises ValueError with a message (without the location)."""
    recording_id = (fields.get("recording_id") or "").strip()
    problem = check_recording_id(recording_id)
    if problem:
        raise ValueError(problem)
    species_text = (fields["species_id"] or "").strip()
    try:
        species = int(species_text)
    except ValueError:
        raise ValueError(f"species_id {species_text!r} is not an integer") from None
    if not _plain(species_text):
        raise ValueError(f"species_id {species_text!r} is not an integer")
    if not 0 <= species < n_classes:
        raise ValueError(f"species_id {species} is outside the class list 0..{n_classes - 1}")
    songtype = _number((fields["songtype_id"] or "").strip(), "songtype_id", int)
    if not SONGTYPE_MIN <= songtype <= SONGTYPE_MAX:
        raise ValueError(
            f"songtype_id {songtype} is outside {SONGTYPE_MIN}..{SONGTYPE_MAX} (int16 in the shards)"
        )
    t_min = _number(fields["t_min"], "t_min", float)
    t_max = _number(fields["t_max"], "t_max", float)
    f_min = _number(fields["f_min"], "f_min", float)
    f_max = _number(fields["f_max"], "f_max", float)
    if t_min < 0 or t_max < 0:
        raise ValueError(f"negative time: t_min {t_min}, t_max {t_max}")
    if t_min >= t_max:
        raise ValueError(f"t_min {t_min} >= t_max {t_max}")
    if f_min < 0 or f_min >= f_max:
        raise ValueError(f"f_min {f_min} >= f_max {f_max} (or negative)")
    path = (fields.get("path") or "").strip() or None
    if path is not None and "\x00" in path:
        raise ValueError(f"path {path!r} contains a NUL character")
    if path is not None and (Path(path).is_absolute() or ".." in Path(path).parts):
        raise ValueError(f"path {path!r} leaves the audio directory; refusing it")
    return Row(recording_id, species, songtype, t_min, f_min, t_max, f_max, kind, source, line, path)


def iter_manifest(
    path: str | Path, *, kind: int, n_classes: int, on_error: str = "skip", failures: list[RowFailure]
) -> Iterator[Row]:
    """Validated rows of one manifest, read as a stream; rejected rows are appended to ``failures``.

    Parameters
    ----------
    path : the CSV file (RFCX columns, optionally ``path``)
    kind : ``EVENT_TP`` for ``train_tp.csv``, ``EVENT_FP`` for ``train_fp.csv``
    n_classes : species ids must lie in ``0..n_classes-1``
    on_error : ``"skip"`` records bad rows and continues, ``"fail"`` raises at the first
    failures : receives a ``RowFailure`` per rejected row, in file order

    A file-level problem raises ManifestError at the first ``next()``.
    """
    path = Path(path)
    source = path.name
    if kind not in (EVENT_TP, EVENT_FP):
        raise ValueError(f"kind must be EVENT_TP or EVENT_FP, got {kind}")
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    with fh:
        try:
            yield from _rows(
                csv.reader(fh),
                path=path,
                kind=kind,
                n_classes=n_classes,
                on_error=on_error,
                failures=failures,
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


def _rows(
    reader, *, path: Path, kind: int, n_classes: int, on_error: str, failures: list[RowFailure]
) -> Iterator[Row]:
    """``iter_manifest`` past the opening of the file: the header, then every record."""
    source = path.name
    line = 0  # where the last record read ends
    try:
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path}: empty manifest, expected header {','.join(COLUMNS)}")
        line = reader.line_num
        if any("\x00" in cell for cell in header):
            raise _nul_error(source, line)
        header = [h.strip() for h in header]
        _check_header(header, source=source)
        for record in reader:
            line = reader.line_num
            if not (record and record[0].strip()) and not any(cell.strip() for cell in record):
                continue
            try:
                if len(record) != len(header):
                    raise ValueError(f"{len(record)} fields, header has {len(header)}")
                row = parse_row(
                    dict(zip(header, record, strict=True)),
                    kind=kind,
                    source=source,
                    line=line,
                    n_classes=n_classes,
                )
            except ValueError as err:
                # Checked only here: a NUL never makes a valid field (parse_row refuses it in
                # each of them), so good rows pay nothing for the check.
                if any("\x00" in cell for cell in record):
                    raise _nul_error(source, line) from None
                if on_error == "fail":
                    raise ManifestError(f"{source} line {line}: {err}") from None
                recording_id = record[header.index("recording_id")] if len(record) == len(header) else ""
                failures.append(RowFailure(source, line, recording_id.strip(), str(err)))
                continue
            yield row
    except csv.Error as err:
        first, last = line + 1, reader.line_num
        if "field limit" in str(err):
            problem = f"field longer than {csv.field_size_limit()} characters"
        else:
            problem = f"not CSV text ({err})"
        if last > first:
            problem += f", from line {first} to line {last} (a quote left open?)"
        raise ManifestError(f"{source} line {first}: {problem}; is this a manifest?") from None


def _check_header(header: list[str], *, source: str) -> None:
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS and c not in OPTIONAL_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise ManifestError(f"{source} line 1: {'; '.join(parts)}; expected {','.join(COLUMNS)}")
    if len(set(header)) != len(header):
        raise ManifestError(f"{source} line 1: duplicate column names in {','.join(header)}")


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
    """Read and validate one manifest (``iter_manifest`` into a list): valid rows, rejected rows."""
    failures: list[RowFailure] = []
    rows = list(iter_manifest(path, kind=kind, n_classes=n_classes, on_error=on_error, failures=failures))
    return rows, failures


# Int16 in the shards (``anchor/songtype_id``); RFCX uses 1 and 4.
SONGTYPE_MIN, SONGTYPE_MAX = -(2**15), 2**15 - 1

# One record per manifest row. Strings (recording id, source file, path column) are stored
# once in the table and referred to by index.
ROW_DTYPE = np.dtype(
    [
        ("recording", np.int32),
        ("source", np.int8),
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
            if len(values) > 2:  # worth re-coding (a table has at most two sources)
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
