"""Detections as Raven selection tables: the exact format, read back by the project's own Raven
reader, and written by ``experiments.predict`` beside the submission."""

import csv
import logging

import numpy as np
import pytest

from experiments import predict, train
from experiments.detection_tables import (
    RAVEN_COLUMNS,
    read_selection_table,
    table_path,
    write_detections_csv,
    write_raven_tables,
    write_selection_table,
)
from experiments.errors import ExperimentError
from experiments.sed_events import event_table
from precompute.inputs.annotations import Annotations, iter_annotations
from precompute.inputs.classes import ClassCoder
from synthetic_features import make_feature_set, synthetic_config

HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tClass\tScore\tReview"
RFCX = [f"s{k}" for k in range(24)]
# Two recordings' detections, labels as predict gives them for RFCX columns (species ids).
DETECTIONS = event_table(
    ["b", "a", "a", "a"],
    [1.5, 0.25, 0.25, 2.0000004],
    [2.0, 1.0, 3.125, 2.5],
    [7, 12, 3, 7],
    [0.91234, 0.5, 0.12345, 0.99999],
)
BAND = {"low_freq": 50.0, "high_freq": 8000.0}


def read_back(folder):
    """(recording, class, t_min, t_max, f_min, f_max) of every row the Raven reader reads."""
    coder, failures = ClassCoder(), []
    rows = list(
        iter_annotations(
            [Annotations(format="raven", path=folder)],
            audio_dir=folder,
            config=synthetic_config(),
            classes=coder,
            on_error="fail",
            failures=failures,
            ignored={},
        )
    )
    names, remap = coder.finish()
    assert failures == []
    return [(r.recording_id, names[remap[r.species_id]], r.t_min, r.t_max, r.f_min, r.f_max) for r in rows]


def test_tables_read_back_as_the_same_events(tmp_path):
    paths = write_raven_tables(tmp_path, DETECTIONS, class_names=RFCX, recordings=["a", "b", "c"], **BAND)
    assert [p.name for p in paths] == [f"{r}.Table.1.selections.txt" for r in ("a", "b", "c")]
    for path in paths:
        assert path.read_text().split("\n")[0] == HEADER
        assert tuple(read_selection_table(path)[0]) == RAVEN_COLUMNS
    got = read_back(tmp_path)
    expected = [
        ("a", "s3", 0.25, 3.125),
        ("a", "s12", 0.25, 1.0),
        ("a", "s7", 2.0000004, 2.5),
        ("b", "s7", 1.5, 2.0),
    ]
    assert [row[:2] for row in got] == [row[:2] for row in expected]
    np.testing.assert_allclose([row[2:4] for row in got], [row[2:] for row in expected], atol=1e-6)
    assert {row[4:] for row in got} == {(50.0, 8000.0)}


def test_a_table_is_written_exactly(tmp_path):
    write_raven_tables(tmp_path, DETECTIONS, class_names=RFCX, recordings=["a", "b", "c"], **BAND)
    assert (tmp_path / "a.Table.1.selections.txt").read_text() == (
        f"{HEADER}\n"
        "1\tSpectrogram 1\t1\t0.250000\t3.125000\t50\t8000\ts3\t0.1235\t\n"
        "2\tSpectrogram 1\t1\t0.250000\t1.000000\t50\t8000\ts12\t0.5000\t\n"
        "3\tSpectrogram 1\t1\t2.000000\t2.500000\t50\t8000\ts7\t1.0000\t\n"
    )
    # A recording scored without a detection: the header alone.
    assert (tmp_path / "c.Table.1.selections.txt").read_text() == f"{HEADER}\n"


def test_detections_csv_is_written_exactly(tmp_path):
    write_detections_csv(tmp_path / "d.csv", DETECTIONS, class_names=RFCX, low_freq=93.75, high_freq=11025.0)
    assert (tmp_path / "d.csv").read_text() == (
        "recording_id,class,t_min,t_max,f_min,f_max,score\n"
        "a,s3,0.250000,3.125000,93.75,11025,0.1235\n"
        "a,s12,0.250000,1.000000,93.75,11025,0.5000\n"
        "a,s7,2.000000,2.500000,93.75,11025,1.0000\n"
        "b,s7,1.500000,2.000000,93.75,11025,0.9123\n"
    )


def test_named_classes_sort_in_their_class_order_and_unknown_labels_are_refused(tmp_path):
    named = event_table(["r", "r"], [1.0, 1.0], [2.0, 2.0], ["wren", "piha"], [0.6, 0.7])
    write_raven_tables(tmp_path, named, class_names=["piha", "wren"], **BAND)
    _, rows = read_selection_table(tmp_path / "r.Table.1.selections.txt")
    assert [(r["Selection"], r["Class"]) for r in rows] == [("1", "piha"), ("2", "wren")]
    with pytest.raises(
        ExperimentError, match=r"^detections row 1: label 'piha' is not among the classes \(wren\)$"
    ):
        write_raven_tables(tmp_path / "x", named, class_names=["wren"], **BAND)
    with pytest.raises(
        ExperimentError, match=r"^detections row 0: label 7 \(class s7\) is not among the classes"
    ):
        write_raven_tables(tmp_path / "x", DETECTIONS[:1], class_names=["s0", "s1"], **BAND)
    assert not (tmp_path / "x").exists()


def test_recording_ids_with_folders_go_in_folders_and_unsafe_ids_are_refused(tmp_path):
    events = event_table(["site2/rec7"], [0.5], [1.0], [3], [0.8])
    (path,) = write_raven_tables(tmp_path, events, class_names=RFCX, **BAND)
    assert path == tmp_path / "site2" / "rec7.Table.1.selections.txt"
    for bad in ("../up", "/abs", "a\\b", "", "a//b", "tab\tid"):
        with pytest.raises(ExperimentError, match=r"cannot name a selection table file"):
            table_path(tmp_path, bad)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["rec7.Table.1.selections.txt", "site2"]


def test_selection_table_round_trip_and_malformed_tables(tmp_path):
    write_raven_tables(tmp_path, DETECTIONS, class_names=RFCX, **BAND)
    path = tmp_path / "b.Table.1.selections.txt"
    columns, rows = read_selection_table(path)
    rows[0]["Review"] = "yes"
    write_selection_table(path, columns, rows)
    assert path.read_text().endswith("\ts7\t0.9123\tyes\n")
    assert read_selection_table(path) == (columns, rows)

    bad = tmp_path / "bad.txt"
    bad.write_text(f"{HEADER}\r\n1\tSpectrogram 1\t1\t0.5\r\n")
    with pytest.raises(ExperimentError, match=rf"^{bad} line 2: 4 tab-separated fields, the header has 10$"):
        read_selection_table(bad)
    bad.write_text("A\tB\tA\n")
    with pytest.raises(ExperimentError, match=rf"^{bad} line 1: column 'A' appears twice$"):
        read_selection_table(bad)
    bad.write_text("")
    with pytest.raises(ExperimentError, match=rf"^{bad} line 1: no header"):
        read_selection_table(bad)
    with pytest.raises(ExperimentError, match=rf"^{tmp_path / 'none.txt'}: no such selection table$"):
        read_selection_table(tmp_path / "none.txt")
    with pytest.raises(ExperimentError, match=r"row 1, Review: 'a\\tb' holds a tab or a line break$"):
        write_selection_table(bad, columns, [{"Review": "a\tb"}])
    with pytest.raises(ExperimentError, match=r"row 1 has column 'Note', which the header lacks$"):
        write_selection_table(bad, columns, [{"Note": "x"}])


# -- written by predict ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("detections")
    labelled = make_feature_set(root / "train", n_recordings=6, per_recording=3, n_classes=4, seed=3)
    windows = make_feature_set(root / "test", n_recordings=3, per_recording=3, n_classes=4, kind="windows")
    out = root / "run"
    argv = ["--features", str(labelled), "--model", "tiny", "--epochs", "1", "--fold", "0"]
    assert train.main([*argv, "--out", str(out), "--batch-size", "8", "--verbose", "0", "--seed", "1"]) == 0
    return out / "model.keras", windows


def test_predict_writes_a_table_per_recording_and_the_csv(tiny_run, tmp_path, caplog):
    model, windows = tiny_run
    with caplog.at_level(logging.INFO, logger="melshards"):
        result = predict.predict(windows, model=model, out=tmp_path / "s.csv", threshold=0.3)
    folder = tmp_path / "detections"
    tables = sorted(folder.glob("*.Table.1.selections.txt"))
    assert [t.name.split(".")[0] for t in tables] == ["rec000", "rec001", "rec002"]
    with open(folder / "detections.csv", newline="") as fh:
        listed = list(csv.DictReader(fh))
    in_tables = [(t.name.split(".")[0], row) for t in tables for row in read_selection_table(t)[1]]
    assert len(listed) == len(in_tables) == result["events"] > 0
    assert [(r["recording_id"], r["class"], r["t_min"], r["t_max"]) for r in listed] == [
        (rec, row["Class"], row["Begin Time (s)"], row["End Time (s)"]) for rec, row in in_tables
    ]
    with open(tmp_path / "events.csv", newline="") as fh:
        events = sorted(
            (r["recording_id"], f"s{r['species_id']}", float(r["t_min"])) for r in csv.DictReader(fh)
        )
    assert sorted((r["recording_id"], r["class"], round(float(r["t_min"]), 6)) for r in listed) == [
        (rec, cls, round(t, 6)) for rec, cls, t in events
    ]
    # The band of the synthetic features (fmin 50, fmax 8000).
    assert {(r["f_min"], r["f_max"]) for r in listed} == {("50", "8000")}
    line = f"3 Raven tables, {len(listed)} detections -> {folder}"
    assert line in caplog.messages


def test_predict_detections_flag_and_a_file_in_the_way(tiny_run, tmp_path, capsys):
    model, windows = tiny_run
    argv = ["--model", str(model), "--features", str(windows), "--out", str(tmp_path / "s.csv"), "--quiet"]
    assert predict.main([*argv, "--detections", str(tmp_path / "raven")]) == 0
    assert len(list((tmp_path / "raven").glob("*.Table.1.selections.txt"))) == 3
    assert (tmp_path / "raven" / "detections.csv").is_file()
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    assert predict.main([*argv, "--detections", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"experiments.predict: error: {tmp_path / 'file'}: not a folder; the detections go into a folder "
        "of Raven tables\n"
    )
