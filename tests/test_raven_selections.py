"""Raven selection tables: a selection is told apart by every field, not by its number.

Tables of several files (``Begin File``) restart or repeat the numbering; a selection listed
once per view is one selection; a row equal in every field to one of its own view is a
duplicate, rejected with its line and the line it repeats."""

import json

from audio_fixtures import TINY_FLAGS, read_arrays, write_dataset
from melshards.index import read_index
from melshards.names import EVENT_TP, FAILURES_FILE
from precompute.cli import main
from precompute.inputs.annotations import raven_layout
from precompute.inputs.classes import ClassCoder
from precompute.inputs.manifest import iter_manifest
from precompute.inputs.row_table import RowTable, drop_duplicates

HEADER = "Selection\tView\tChannel\tBegin File\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"
# The TINY config of the tone dataset (tests/audio_fixtures.py), n_classes left to the data.
CONFIG = [*TINY_FLAGS, "--set=min_overlap=0.2", "--quiet"]


def table(path, *rows: str):
    """A Raven table of ``rows`` (tab-separated fields, each row listed in both views)."""
    lines = [HEADER]
    for row in rows:
        number, rest = row.split("\t", 1)
        lines += [f"{number}\t{view}\t1\t{rest}" for view in ("Waveform 1", "Spectrogram 1")]
    path.write_text("\n".join(lines) + "\n")
    return path


def read(path):
    """(recording, t_min, class name, line) of every row read, the rows, and the failures."""
    failures: list = []
    coder = ClassCoder()
    layout = raven_layout(path, label_column=None, nyquist=8000.0)
    rows = list(iter_manifest(path, kind=EVENT_TP, layout=layout, failures=failures, classes=coder))
    names, remap = coder.finish()
    seen = [(r.recording_id, r.t_min, names[remap[r.species_id]], r.line) for r in rows]
    return seen, RowTable.from_rows(rows), failures


# A table of two files, each numbering its selections from 1 (as Raven writes a table of
# several files, or tables merged into one).
TWO_FILES = (
    "1\trec0.flac\t1.0\t2.0\t100\t900\twren",
    "1\trec1.flac\t0.2\t1.0\t100\t900\tthrush",
    "2\trec0.flac\t5.0\t6.5\t100\t900\twren",
    "2\trec1.flac\t6.8\t7.9\t100\t900\tpiha",
)


def test_selections_numbered_alike_in_two_files_are_each_read_once(tmp_path):
    rows, _, failures = read(table(tmp_path / "two.txt", *TWO_FILES))
    # Eight rows (four selections in two views): four selections, each from its first view.
    assert rows == [
        ("rec0", 1.0, "wren", 2),
        ("rec1", 0.2, "thrush", 4),
        ("rec0", 5.0, "wren", 6),
        ("rec1", 6.8, "piha", 8),
    ]
    assert failures == []


def test_two_selections_of_one_number_are_both_read_and_a_true_duplicate_is_reported(tmp_path):
    path = table(
        tmp_path / "rec0.Table.1.selections.txt",
        "1\trec0.flac\t1.0\t2.0\t100\t900\twren",
        "1\trec0.flac\t5.0\t6.5\t100\t900\tpiha",  # another selection numbered 1
        "1\trec0.flac\t5.0\t6.5\t200\t900\tpiha",  # and another: other frequencies
        "2\trec0.flac\t1.0\t2.0\t100\t900\twren",  # line 2's event under another number
        "1\trec0.flac\t1.0\t2.0\t100\t900\twren",  # line 2 again, in both views
    )
    rows, read_table, failures = read(path)
    assert [line for *_, line in rows] == [2, 4, 6, 8, 10] and failures == []
    kept, dropped = drop_duplicates(read_table)
    assert [r.line for r in kept] == [2, 4, 6]
    assert [(f.line, f.message) for f in dropped] == [
        (8, "duplicate of rec0.Table.1.selections.txt line 2"),
        (10, "duplicate of rec0.Table.1.selections.txt line 2"),
    ]


def test_a_table_without_views_reads_each_row_and_reports_a_repeat(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text(
        "Selection\tBegin File\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
        "1\trec0.flac\t1.0\t2.0\twren\n"
        "1\trec1.flac\t1.0\t2.0\twren\n"
        "1\trec1.flac\t1.0\t2.0\twren\n"
    )
    rows, read_table, failures = read(path)
    assert rows == [("rec0", 1.0, "wren", 2), ("rec1", 1.0, "wren", 3), ("rec1", 1.0, "wren", 4)]
    kept, dropped = drop_duplicates(read_table)
    assert len(kept) == 2 and [f.message for f in dropped] == ["duplicate of plain.txt line 3"]


def test_a_run_keeps_every_selection_and_records_the_duplicates(tmp_path):
    paths = write_dataset(tmp_path)
    tables = tmp_path / "tables"
    tables.mkdir()
    table(tables / "two.txt", *TWO_FILES, TWO_FILES[0])
    out = tmp_path / "out"
    status = main(
        ["features", "--audio-dir", str(paths["audio"]), "--raven", str(tables), "--out", str(out), *CONFIG]
    )
    assert status == 3  # written, with a rejected row
    index, data = read_index(out), read_arrays(out)
    assert index.class_names == ("piha", "thrush", "wren")
    found = sorted(zip(data["recording_id"].astype(str), data["anchor/t_min"].tolist(), strict=True))
    assert found == [("rec0", 1.0), ("rec0", 5.0), ("rec1", 0.2), ("rec1", 6.8)]
    failures = [json.loads(line) for line in (out / FAILURES_FILE).read_text().splitlines()]
    assert [f["message"] for f in failures] == ["two.txt line 10: duplicate of two.txt line 2"]
