"""Reviewed Raven tables as annotations (``--reviews``): each verdict becomes its rows (a call, a
confirmed negative, a relabelled call and the negative of the class it was called), an empty one
is skipped and counted; a reviewed set grows without touching its shards; a plain ``--raven``
read refuses a filled verdict column."""

import hashlib
import json
import logging
import re

import h5py
import numpy as np
import pytest

from audio_fixtures import HEADER, TINY, TINY_FLAGS, read_arrays, write_dataset
from melshards.errors import ConfigError
from melshards.index import read_index
from melshards.names import EVENT_FP, EVENT_TP, FAILURES_FILE
from precompute.cli import main
from precompute.cli_options import AnnotationOptions
from precompute.errors import ManifestError
from precompute.inputs.annotations import Annotations, iter_annotations, read_annotation_options
from precompute.inputs.classes import ClassCoder, ClassSpec
from precompute.inputs.reviews import ACCEPTED, REJECTED, RELABELLED, UNREVIEWED, verdict
from precompute.inputs.row_table import RowTable, drop_duplicates

TABLE_HEADER = "\t".join(
    ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]
    + ["Class", "Score", "Review"]
)
TP, FP = EVENT_TP, EVENT_FP
# The tone dataset's config (tests/audio_fixtures.py) with its 4 classes s0..s3.
CONFIG = [*TINY_FLAGS, "--set=min_overlap=0.2", "--set=n_classes=4"]
REFUSAL = (
    "rec2.Table.1.selections.txt: a reviewed table (its Review column is filled); read it with "
    "--reviews, which turns rejected selections into confirmed negatives"
)


def write_table(path, *rows, views=("Spectrogram 1",), header=TABLE_HEADER):
    """A selection table of ``rows`` (begin, end, class, review), each listed in every view."""
    lines = [header]
    for number, (begin, end, label, review) in enumerate(rows, start=1):
        lines += [
            f"{number}\t{view}\t1\t{begin}\t{end}\t50.0\t8000.0\t{label}\t0.9\t{review}" for view in views
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_rows(item, *, classes=None, on_error="skip"):
    """(recording, class index, t_min, t_max, kind, line) of every row read; failures; unreviewed."""
    failures, unreviewed = [], {}
    rows = iter_annotations(
        [item],
        audio_dir=item.path,
        config=TINY,
        classes=ClassCoder(classes or ClassSpec(count=4)),
        on_error=on_error,
        failures=failures,
        ignored={},
        unreviewed=unreviewed,
    )
    read = [(r.recording_id, r.species_id, r.t_min, r.t_max, r.kind, r.line) for r in rows]
    return read, failures, unreviewed


@pytest.mark.parametrize(
    "text, said",
    [
        *[(w, ACCEPTED) for w in ("yes", "Y", " TRUE ", "1", "accept", "Accepted")],
        *[(w, REJECTED) for w in ("no", " N", "false", "0", "REJECT", "rejected")],
        *[(w, RELABELLED) for w in ("s3", "wren", "maybe", "Yes please")],
        *[(w, UNREVIEWED) for w in ("", "   ", "\t")],
    ],
)
def test_verdict_words(text, said):
    assert verdict(text) == said


def test_each_verdict_becomes_exactly_its_rows(tmp_path, caplog):
    tables = tmp_path / "reviews"
    tables.mkdir()
    write_table(
        tables / "rec0.Table.1.selections.txt",
        (1.0, 2.0, "s0", "yes"),  # line 2: accepted -> a call of s0
        (5.0, 6.5, "s1", " No "),  # line 3: rejected -> a confirmed negative of s1
        (1.2, 1.8, "s2", "s3"),  # line 4: relabelled -> a call of s3, a negative of s2
        (3.0, 4.0, "s1", ""),  # line 5: not reviewed -> skipped, counted
        (6.0, 7.0, "s2", "ACCEPTED"),  # line 6
        (2.0, 3.0, "s1", "s1"),  # line 7: relabelled as its own class -> accepted
    )
    write_table(tables / "rec1.Table.1.selections.txt", (0.2, 1.0, "s3", "  "), (4.0, 5.0, "s0", "n"))
    caplog.set_level(logging.INFO, logger="melshards")
    rows, failures, unreviewed = read_rows(Annotations("reviews", tables))
    assert rows == [
        ("rec0", 0, 1.0, 2.0, TP, 2),
        ("rec0", 1, 5.0, 6.5, FP, 3),
        ("rec0", 3, 1.2, 1.8, TP, 4),
        ("rec0", 2, 1.2, 1.8, FP, 4),
        ("rec0", 2, 6.0, 7.0, TP, 6),
        ("rec0", 1, 2.0, 3.0, TP, 7),
        ("rec1", 0, 4.0, 5.0, FP, 3),
    ]
    assert failures == []
    assert unreviewed == {"rec0.Table.1.selections.txt": 1, "rec1.Table.1.selections.txt": 1}
    assert f"{tables}: 2 selections not reviewed, skipped (an empty verdict, in 2 tables)" in (
        caplog.messages
    )


def test_a_selection_listed_in_two_views_is_read_once_and_classes_are_names_as_written(tmp_path):
    path = write_table(
        tmp_path / "rec0.Table.1.selections.txt",
        (1.0, 2.0, "7", "yes"),  # the class named "7", not the id 7 (class s7)
        (5.0, 6.5, "wren", "s7"),
        views=("Waveform 1", "Spectrogram 1"),
    )
    rows, failures, _ = read_rows(Annotations("reviews", path), classes=ClassSpec(names=("s7", "7", "wren")))
    assert rows == [("rec0", 1, 1.0, 2.0, TP, 2), ("rec0", 0, 5.0, 6.5, TP, 4), ("rec0", 2, 5.0, 6.5, FP, 4)]
    assert failures == []


def test_a_relabel_outside_the_class_list_rejects_its_row_with_file_and_line(tmp_path):
    path = write_table(
        tmp_path / "rec0.Table.1.selections.txt", (1.0, 2.0, "s0", "wren"), (5.0, 6.5, "s1", "yes")
    )
    rows, failures, _ = read_rows(Annotations("reviews", path), classes=ClassSpec(names=("s0", "s1")))
    assert rows == [("rec0", 1, 5.0, 6.5, TP, 3)]
    assert [f.to_record()["message"] for f in failures] == [
        "rec0.Table.1.selections.txt line 2: Review 'wren' is not yes or no, and class 'wren' is "
        "not in the class list (s0, s1)"
    ]
    # Every check of a Raven row still holds: times here.
    write_table(path, (2.0, 1.0, "s0", "no"))
    with pytest.raises(
        ManifestError, match=r"^rec0\.Table\.1\.selections\.txt line 2: t_min 2\.0 >= t_max 1\.0$"
    ):
        read_rows(Annotations("reviews", path), on_error="fail")


def test_band_and_duplicate_checks_hold_for_reviewed_rows(tmp_path):
    path = write_table(
        tmp_path / "rec0.Table.1.selections.txt",
        (1.0, 2.0, "s0", "yes"),
        (5.0, 6.5, "s1", "s2"),
        (1.0, 2.0, "s0", "yes"),  # line 2 again
        (3.0, 4.0, "s1", "no"),
    )
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("\t50.0\t8000.0\t", "\t9000.0\t8000.0\t")  # line 5: an upside-down band
    path.write_text("\n".join(lines) + "\n")
    failures: list = []
    rows = list(
        iter_annotations(
            [Annotations("reviews", path)],
            audio_dir=tmp_path,
            config=TINY,
            classes=ClassCoder(ClassSpec(count=4)),
            on_error="skip",
            failures=failures,
            ignored={},
        )
    )
    assert [f.to_record()["message"] for f in failures] == [
        "rec0.Table.1.selections.txt line 5: f_min 9000.0 >= f_max 8000.0 (or negative)"
    ]
    kept, dropped = drop_duplicates(RowTable.from_rows(rows))
    assert [(r.species_id, r.kind, r.line) for r in kept] == [(0, TP, 2), (2, TP, 3), (1, FP, 3)]
    assert [f.to_record()["message"] for f in dropped] == [
        "rec0.Table.1.selections.txt line 4: duplicate of rec0.Table.1.selections.txt line 2"
    ]


def test_raven_refuses_a_filled_review_column_and_reads_an_empty_one(tmp_path):
    path = write_table(tmp_path / "rec2.Table.1.selections.txt", (1.0, 2.0, "s0", ""), (5.0, 6.5, "s1", "no"))
    with pytest.raises(ManifestError, match=f"^{re.escape(REFUSAL)}$"):
        read_rows(Annotations("raven", path))
    write_table(path, (1.0, 2.0, "s0", ""), (5.0, 6.5, "s1", ""))  # predict's table, as written
    rows, _, unreviewed = read_rows(Annotations("raven", path), classes=ClassSpec(names=("s0", "s1")))
    assert rows == [("rec2", 0, 1.0, 2.0, TP, 2), ("rec2", 1, 5.0, 6.5, TP, 3)]
    assert unreviewed == {}


def test_a_reviewed_table_needs_its_review_column(tmp_path):
    header = TABLE_HEADER.replace("\tReview", "\tVerdict")
    path = write_table(tmp_path / "rec0.Table.1.selections.txt", (1.0, 2.0, "s0", "yes"), header=header)
    with pytest.raises(ManifestError, match=r"line 1: missing column\(s\) review \('Review'\)"):
        read_rows(Annotations("reviews", path))
    rows, _, _ = read_rows(Annotations("reviews", path, review_column="Verdict"))
    assert rows == [("rec0", 0, 1.0, 2.0, TP, 2)]


def test_review_column_options_refuse_an_empty_name(tmp_path):
    message = "--review-column is empty; give the name of the reviewers' verdicts column"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        AnnotationOptions(reviews=tmp_path, review_column="")
    with pytest.raises(ConfigError, match="the review column must be a column name, got ' '"):
        Annotations("reviews", tmp_path, review_column=" ")
    config = tmp_path / "c.toml"
    config.write_text('[annotations]\nreview_column = "Verdict"\n')
    assert read_annotation_options(config) == {"review_column": "Verdict"}


# -- end to end: the tone dataset, calls of rec0 and rec1 in --tp, rec2 and rec3 reviewed -----------


@pytest.fixture
def reviewed(tmp_path):
    paths = write_dataset(tmp_path)
    tp = tmp_path / "tp.csv"  # the calls of rec0 and rec1 only (audio_fixtures.write_dataset)
    tp.write_text(
        HEADER
        + "rec0,0,1,1.0,450,2.0,550\nrec0,1,1,5.0,950,6.5,1050\n"
        + "rec1,1,1,0.2,950,1.0,1050\nrec1,3,1,6.8,1950,7.9,2050\n"
    )
    tables = tmp_path / "reviews"
    tables.mkdir()
    write_table(
        tables / "rec2.Table.1.selections.txt",
        (3.0, 4.0, "s2", "yes"),
        (3.5, 4.5, "s1", "s0"),  # called s1, a call of s0
        (6.0, 7.0, "s2", ""),
    )
    write_table(
        tables / "rec3.Table.1.selections.txt",
        (2.0, 3.0, "s3", "y"),
        (6.0, 7.0, "s1", "no"),
        (0.5, 1.0, "s0", "Rejected"),
    )
    return {"audio": paths["audio"], "tp": tp, "reviews": tables}


def features(paths, out, *more):
    argv = ["features", "--audio-dir", str(paths["audio"]), "--tp", str(paths["tp"])]
    return main([*argv, "--out", str(out), *CONFIG, *more])


def stored(out):
    """(recording, class, kind, t_min, t_max) of every stored example's anchor, sorted; checks
    each anchor's own label (1 for a call, 0 for a confirmed negative)."""
    names, data = read_index(out).class_names, read_arrays(out)
    rows = []
    for rid, species, kind, t_min, t_max, labels in zip(
        data["recording_id"].astype(str),
        data["anchor/species_id"],
        data["anchor/kind"],
        data["anchor/t_min"],
        data["anchor/t_max"],
        data["labels"],
        strict=True,
    ):
        assert labels[species] == (1 if kind == TP else 0)
        rows.append((rid, names[species], int(kind), float(t_min), float(t_max)))
    return sorted(rows)


CALLS = [
    ("rec0", "s0", TP, 1.0, 2.0),
    ("rec0", "s1", TP, 5.0, 6.5),
    ("rec1", "s1", TP, 0.2, 1.0),
    ("rec1", "s3", TP, 6.8, 7.9),
]
REVIEWED = [
    ("rec2", "s0", TP, 3.5, 4.5),
    ("rec2", "s1", FP, 3.5, 4.5),
    ("rec2", "s2", TP, 3.0, 4.0),
    ("rec3", "s0", FP, 0.5, 1.0),
    ("rec3", "s1", FP, 6.0, 7.0),
    ("rec3", "s3", TP, 2.0, 3.0),
]


def test_features_stores_each_reviewed_selection_as_its_verdict_says(reviewed, tmp_path, capsys):
    out = tmp_path / "out"
    assert features(reviewed, out, "--reviews", str(reviewed["reviews"])) == 0
    assert stored(out) == sorted(CALLS + REVIEWED)
    err = capsys.readouterr().err
    skipped = "1 selection not reviewed, skipped (an empty verdict, in rec2.Table.1.selections.txt)"
    assert f"{reviewed['reviews']}: {skipped}" in err
    rows = f"7 TP rows from {reviewed['tp']}, {reviewed['reviews']}, 3 FP rows from {reviewed['reviews']}"
    assert f"annotations: {rows}; 0 rejected; 4 classes (n_classes 4): s0, s1, s2, s3" in err
    # The relabelled selection's events: the call of s0 and the negative of s1 (and the s2 call).
    index = read_index(out)
    [entry] = [e for e in index.shards if "rec2" in e.recordings]
    with h5py.File(out / entry.file, "r", locking=False) as h5:
        ids, kinds = h5["recording_id"][:].astype(str), h5["anchor/kind"][:]
        [negative] = np.flatnonzero((ids == "rec2") & (kinds == FP)).tolist()
        mine = h5["events/example"][:] == negative
        events = sorted(
            (index.class_names[s], int(k), float(a), float(b))
            for s, k, a, b in zip(
                *(h5[f"events/{f}"][:][mine] for f in ("species_id", "kind", "t_min", "t_max")),
                strict=True,
            )
        )
        labels = h5["labels"][negative].tolist()
    assert events == [("s0", TP, 3.5, 4.5), ("s1", FP, 3.5, 4.5), ("s2", TP, 3.0, 4.0)]
    assert labels == [1, 0, 1, -1]  # s3: not known in this window
    source = read_index(out).source["annotations"][-1]
    assert source == {
        "format": "reviews",
        "path": str(reviewed["reviews"]),
        "kind": "tp",
        "review_column": "Review",
    }


def test_reviews_of_new_recordings_leave_every_existing_shard_byte_identical(reviewed, tmp_path, capsys):
    out = tmp_path / "out"
    assert features(reviewed, out, "--set=shard_size=2", "--quiet") == 0
    assert stored(out) == CALLS
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.h5")}
    assert len(before) == 2
    capsys.readouterr()
    assert (
        features(reviewed, out, "--set=shard_size=2", "--reviews", str(reviewed["reviews"]), "--quiet") == 0
    )
    summary = capsys.readouterr().out.strip()
    assert "; 2 built: 2 for new recordings (rec2 rec3); 2 reused) to " in summary
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.h5")}
    assert {name: after[name] for name in before} == before
    assert [(e.file, e.recordings) for e in read_index(out).shards][2:] == [
        ("shard-00002.h5", ("rec2",)),
        ("shard-00003.h5", ("rec3",)),
    ]
    assert stored(out) == sorted(CALLS + REVIEWED)


def test_a_bad_verdict_is_one_failure_and_raven_refuses_a_reviewed_table(reviewed, tmp_path, capsys):
    table = reviewed["reviews"] / "rec2.Table.1.selections.txt"
    table.write_text(table.read_text().replace("\ts0\n", "\twren\n"))  # line 3: a class not listed
    message = (
        "rec2.Table.1.selections.txt line 3: Review 'wren' is not yes or no, and class 'wren' is not "
        "in the class list s0..s3 (n_classes 4)"
    )
    assert features(reviewed, tmp_path / "skip", "--reviews", str(reviewed["reviews"]), "--quiet") == 3
    lines = (tmp_path / "skip" / FAILURES_FILE).read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == [message]
    assert [r for r in stored(tmp_path / "skip") if r[0] == "rec2"] == [("rec2", "s2", TP, 3.0, 4.0)]
    capsys.readouterr()
    argv = ["--reviews", str(reviewed["reviews"]), "--on-error", "fail", "--quiet"]
    assert features(reviewed, tmp_path / "fail", *argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"precompute features: error: {message}"]
    assert features(reviewed, tmp_path / "raven", "--raven", str(reviewed["reviews"]), "--quiet") == 2
    assert capsys.readouterr().err.splitlines() == [f"precompute features: error: {REFUSAL}"]
    assert not (tmp_path / "raven").exists()
