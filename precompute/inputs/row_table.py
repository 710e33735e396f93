"""Validated annotation rows: one ``Row``, the ``RowTable`` of many, and the rows a run drops.

Manifests are read as a stream (``precompute.inputs.manifest.iter_manifest``) into a
``RowTable``: one numpy record per row, about 60 bytes, instead of a Python object per row, so
planning a manifest of millions of rows takes memory in proportion with a small constant (see
``benchmarks/plan_bench.py``). A rejected row becomes a ``RowFailure`` (a ``failures.jsonl``
line); ``drop_duplicates`` and ``drop_mixed_paths`` reject rows only the whole table shows
wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from precompute.errors import ManifestError


@dataclass(frozen=True, slots=True)
class Row:
    """One validated manifest row; ``kind`` is ``EVENT_TP`` or ``EVENT_FP``.

    ``species_id`` is the class index of the row's label (``precompute.inputs.classes``); ``line``
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


def drop_mixed_paths(table: RowTable, *, on_error: str = "skip") -> tuple[RowTable, list[RowFailure]]:
    """Drop every row of each recording whose rows name different files (``path`` column).

    A row without a path names ``<recording_id>.<ext>``, which differs from any explicit path.
    Returns the kept rows, in their order, and one failure per dropped row, in reading order.
    """
    d = table.data
    recording, path = d["recording"], d["path"].astype(np.int64)
    lowest = np.full(len(table.recording_ids), np.iinfo(np.int64).max)
    highest = np.full(len(table.recording_ids), -1)
    np.minimum.at(lowest, recording, path)
    np.maximum.at(highest, recording, path)
    mixed = (highest >= 0) & (lowest != highest)
    if not mixed.any():
        return table, []
    dropped = np.flatnonzero(mixed[recording])
    messages = {}
    for k in np.flatnonzero(mixed).tolist():
        first_use: dict[int, int] = {}
        for i in dropped[recording[dropped] == k].tolist():
            first_use.setdefault(int(path[i]), i)
        named = [f"{table.paths[c] or '(no path)'} ({table[i].where})" for c, i in first_use.items()]
        listed = ", ".join(named[:-1]) + f" and {named[-1]}"
        messages[k] = f"recording {table.recording_ids[k]}: rows name different paths {listed}"
    failures = []
    for i in dropped.tolist():
        row = table[i]
        message = messages[int(recording[i])]
        if on_error == "fail":
            raise ManifestError(f"{row.where}: {message}")
        failures.append(RowFailure(row.source, row.line, row.recording_id, message))
    return table.take(np.flatnonzero(~mixed[recording])), failures
