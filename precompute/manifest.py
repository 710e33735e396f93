"""Reading and validating RFCX manifests (``train_tp.csv``, ``train_fp.csv``).

Every row is checked before any audio is read. A row-level problem is reported with its
file and line (``train_tp.csv line 17: t_min 12.5 >= t_max 3.0``); under the ``skip`` policy
the row is recorded as a failure and the others go on, under ``fail`` the first one raises.
A file-level problem (missing file, wrong columns) always raises.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from loader.errors import ManifestError
from loader.format import KIND_FP, KIND_TP

COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
OPTIONAL_COLUMNS = ("path",)


@dataclass(frozen=True)
class Row:
    """One validated manifest row; ``kind`` is ``KIND_TP`` or ``KIND_FP``."""

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


@dataclass(frozen=True)
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


def _number(text: str, name: str, cast: type) -> int | float:
    try:
        value = cast(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {text!r} is not a number") from None
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
    if not 0 <= species < n_classes:
        raise ValueError(f"species_id {species} is outside the class list 0..{n_classes - 1}")
    songtype = _number((fields["songtype_id"] or "").strip(), "songtype_id", int)
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
    if path is not None and (Path(path).is_absolute() or ".." in Path(path).parts):
        raise ValueError(f"path {path!r} leaves the audio directory; refusing it")
    return Row(recording_id, species, songtype, t_min, f_min, t_max, f_max, kind, source, line, path)


def read_manifest(
    path: str | Path, *, kind: int, n_classes: int, on_error: str = "skip"
) -> tuple[list[Row], list[RowFailure]]:
    """Read and validate one manifest.

    Parameters
    ----------
    path : the CSV file (RFCX columns, optionally ``path``)
    kind : ``KIND_TP`` for ``train_tp.csv``, ``KIND_FP`` for ``train_fp.csv``
    n_classes : species ids must lie in ``0..n_classes-1``
    on_error : ``"skip"`` records bad rows and continues, ``"fail"`` raises at the first

    Returns the valid rows and the rejected ones.
    """
    path = Path(path)
    source = path.name
    if kind not in (KIND_TP, KIND_FP):
        raise ValueError(f"kind must be KIND_TP or KIND_FP, got {kind}")
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    rows: list[Row] = []
    failures: list[RowFailure] = []
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path}: empty manifest, expected header {','.join(COLUMNS)}")
        header = [h.strip() for h in header]
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
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
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
                if on_error == "fail":
                    raise ManifestError(f"{source} line {line}: {err}") from None
                recording_id = record[header.index("recording_id")] if len(record) == len(header) else ""
                failures.append(RowFailure(source, line, recording_id.strip(), str(err)))
                continue
            rows.append(row)
    return rows, failures


def drop_duplicates(rows: list[Row], *, on_error: str = "skip") -> tuple[list[Row], list[RowFailure]]:
    """Keep the first of rows with identical content (across TP and FP files)."""
    seen: dict[tuple, Row] = {}
    kept: list[Row] = []
    failures: list[RowFailure] = []
    for row in rows:
        first = seen.get(row.key())
        if first is None:
            seen[row.key()] = row
            kept.append(row)
            continue
        message = f"duplicate of {first.where}"
        if on_error == "fail":
            raise ManifestError(f"{row.where}: {message}")
        failures.append(RowFailure(row.source, row.line, row.recording_id, message))
    return kept, failures
