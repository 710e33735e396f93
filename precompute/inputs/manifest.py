"""Reading and validating annotation tables: RFCX manifests, event CSVs, Raven selection tables.

Every row is checked before any audio is read. A row-level problem is reported with its
file and line (``train_tp.csv line 17: t_min 12.5 >= t_max 3.0``); under the ``skip`` policy
the row is recorded as a failure and the others go on, under ``fail`` the first one raises.
A file-level problem always raises ``ManifestError`` naming the file (and line): a missing
file, missing columns, bytes that are not UTF-8 text, a NUL byte, a field longer than the csv
module's limit (``csv.field_size_limit()``, 131072 characters). The last three mean the file
is not a text manifest (a binary, gzip or UTF-16 file), so no row of it can be trusted.

Where each field is comes from a ``precompute.inputs.layout.Layout``; how a row names its
recording, from ``precompute.inputs.references``. Numbers are plain ASCII decimals: times and
frequencies decimal or exponent floats (``12.5``, ``1e3``). Python's ``int`` and ``float``
also accept underscores (``1_0`` is 10) and non-ASCII digits; a manifest field with either is
not a number. Labels become class indexes through a ``precompute.inputs.classes.ClassCoder``:
integer ids (``3``, class ``s3``) or names (``"wren"``). Rows come as a stream
(``iter_manifest``), which ``precompute.inputs.row_table.RowTable`` stores compactly. A
reviewed table's row is read by its verdict (``Layout.review``, ``precompute.inputs.reviews``).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from melshards.names import EVENT_FP, EVENT_TP
from precompute.errors import ManifestError
from precompute.inputs.classes import ClassCoder, ClassSpec
from precompute.inputs.layout import COLUMNS, FIELDS, RFCX, Layout
from precompute.inputs.references import row_recording
from precompute.inputs.reviews import ACCEPTED, REJECTED, UNREVIEWED, reviewed_table_message, verdict
from precompute.inputs.row_table import SONGTYPE_MAX, SONGTYPE_MIN, Row, RowFailure


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
    recording_id, path = row_recording(fields, file_names=layout.file_names)
    songtype = _number((fields["songtype_id"] or "").strip(), names["songtype_id"], int)
    if not SONGTYPE_MIN <= songtype <= SONGTYPE_MAX:
        raise ValueError(
            f"songtype_id {songtype} is outside {SONGTYPE_MIN}..{SONGTYPE_MAX} (int16 in the shards)"
        )
    label = (fields["species_id"] or "").strip()
    species = coder.code(label, songtype, field=names["species_id"], verbatim=layout.label_names)
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
    unreviewed: dict[str, int] | None = None,
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
    unreviewed : a reviewed table's (``layout.reviewed``): receives ``{source: rows without
        a verdict}``, which are skipped

    A file-level problem raises ManifestError at the first ``next()``; a filled verdict in a
    table read as not reviewed (``layout.review``), at its row.
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
                    kind,
                    coder,
                    layout,
                    on_error,
                    failures,
                    ignored,
                    defaults=layout.defaults(),
                    unreviewed={} if unreviewed is None else unreviewed,
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
    # (selection number, field texts) -> records of it read per view (``layout.selection``)
    views: dict[tuple[str, ...], dict[str, int]] = dataclasses.field(default_factory=dict)
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)  # ``layout.defaults()``
    unreviewed: dict[str, int] = dataclasses.field(default_factory=dict)  # source -> rows skipped


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
    at = positions.get("review")
    if not layout.reviewed and at is not None and at < len(record) and record[at].strip():
        raise ManifestError(reviewed_table_message(source, layout.review))
    try:
        if len(record) != len(header):
            raise ValueError(f"{len(record)} fields, header has {len(header)}")
        fields = {f: record[k] for f, k in positions.items()}
        fields.update(missing)
        if ("selection" in fields or "view" in fields) and _another_view(fields, context.views):
            return []
        if layout.reviewed:
            return _reviewed_rows(fields, names, source=source, line=line, context=context)
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


def _reviewed_rows(
    fields: dict[str, str], names: dict[str, str], *, source: str, line: int, context: _Context
) -> list[Row]:
    """The rows of one reviewed selection by its verdict (``precompute.inputs.reviews``): a call
    of its class, a confirmed negative of it, a call of the class named and a confirmed negative
    of its own, or none (not reviewed: counted in ``context.unreviewed``)."""
    text = fields.pop("review").strip()
    said = verdict(text)
    if said == UNREVIEWED:
        context.unreviewed[source] = context.unreviewed.get(source, 0) + 1
        return []
    common = {"source": source, "line": line, "classes": context.coder, "layout": context.layout}
    own = parse_row(fields, kind=EVENT_TP if said == ACCEPTED else EVENT_FP, names=names, **common)
    if said in (ACCEPTED, REJECTED):
        return [own]
    try:
        named = parse_row(
            {**fields, "species_id": text},
            kind=EVENT_TP,
            names={**names, "species_id": names["review"]},
            **common,
        )
    except ValueError as err:
        raise ValueError(f"{names['review']} {text!r} is not yes or no, and {err}") from None
    # Relabelled as its own class: accepted (never a call and a negative of one class).
    return [named] if named.species_id == own.species_id else [named, own]


def _another_view(fields: dict[str, str], views: dict[tuple[str, ...], dict[str, int]]) -> bool:
    """Whether the record is a selection read before, listed again for another view.

    Pops the ``selection`` and ``view`` fields. The k-th record of a selection in one view is
    read when no other view had a k-th yet: a selection listed twice in every view is read
    twice, and ``drop_duplicates`` reports the second (as every repeat in a table without views).
    """
    view = fields.pop("view", "").strip()
    key = (fields.pop("selection", "").strip(), *(fields[f].strip() for f in sorted(fields)))
    counts = views.setdefault(key, {})
    counts[view] = counts.get(view, 0) + 1
    return counts[view] <= max((n for v, n in counts.items() if v != view), default=0)


def _resolve_header(
    header: list[str], *, source: str, context: _Context
) -> tuple[dict[str, int], dict[str, str]]:
    """Column position and name of every field the header holds; ManifestError for a missing one."""
    layout = context.layout
    if len(set(header)) != len(header):
        raise ManifestError(f"{source} line 1: duplicate column names in {','.join(header)}")
    positions, names = {}, {}
    wanted = dict(layout.columns)
    if layout.selection:
        wanted["selection"] = (layout.selection,)
    if layout.view:
        wanted["view"] = (layout.view,)
    if layout.offset:
        wanted["offset"] = (layout.offset,)
    if layout.review:
        wanted["review"] = (layout.review,)
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
            candidates = layout.columns.get(f, (layout.review,) if f == "review" else (f,))
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
