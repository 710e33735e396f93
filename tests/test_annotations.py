"""Annotation formats end to end: an event CSV, Raven tables, clip lists and class folders made
from the tone dataset (``precompute.demo_formats``), each into a feature set with class names;
class lists (from the data, given, n_classes, species x songtype); extra columns; a fully
rejected manifest; string class names through training and prediction."""

import json
import re

import numpy as np
import pytest

from audio_fixtures import HEADER, TINY_FLAGS, read_arrays, write_dataset
from melshards.errors import ConfigError
from melshards.index import read_index
from melshards.names import EVENT_FP, EVENT_TP, FAILURES_FILE
from precompute.cli import main
from precompute.cli_options import AnnotationOptions
from precompute.demo_formats import convert, species_name
from precompute.errors import ManifestError
from precompute.inputs.annotations import Annotations, parse_columns, raven_recording
from precompute.inputs.classes import ClassCoder, ClassSpec, parse_class_option
from precompute.inputs.layout import Layout
from precompute.inputs.manifest import iter_manifest
from precompute.inputs.references import file_reference
from precompute.inspection import inspect_lines

# The TINY config of the tone dataset (tests/audio_fixtures.py), n_classes left to the data.
CONFIG = [*TINY_FLAGS, "--set=min_overlap=0.2", "--quiet"]
# The tone dataset's events: recording -> (species, t_min, t_max, TP?) (audio_fixtures.write_dataset).
EVENTS = {
    "rec0": [(0, 1.0, 2.0, True), (1, 5.0, 6.5, True), (2, 1.2, 1.8, False)],
    "rec1": [(1, 0.2, 1.0, True), (3, 6.8, 7.9, True)],
    "rec2": [(2, 3.0, 4.0, True), (0, 3.5, 4.5, True)],
    "rec3": [(3, 2.0, 3.0, True), (1, 6.0, 7.0, False)],
}
# Species 0..3 by name, and the class list taken from the data: the names in order.
NAMES = [species_name(k) for k in range(4)]
CLASSES = sorted(NAMES)
COLUMNS = "recording_id=file,species_id=label,t_min=start,t_max=end,f_min=low_hz,f_max=high_hz"


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """The tone dataset and its annotations in every format (one clip per species, 3 s)."""
    root = tmp_path_factory.mktemp("formats")
    paths = write_dataset(root)
    counts = convert(
        root, out=root / "formats", audio_dir=paths["audio"], tp=paths["tp"], fp=paths["fp"], per_class=1
    )
    return {**paths, "formats": root / "formats", "counts": counts}


def features(argv, out):
    """``precompute features`` with the tone config; returns the exit status."""
    return main(["features", *argv, "--out", str(out), *CONFIG])


def anchors(out) -> list[tuple[str, str, int]]:
    """(recording, anchor class name, kind) of every example, sorted; checks each TP anchor's label."""
    index, data = read_index(out), read_arrays(out)
    rows = []
    for rid, species, kind, labels in zip(
        data["recording_id"].astype(str),
        data["anchor/species_id"],
        data["anchor/kind"],
        data["labels"],
        strict=True,
    ):
        assert labels[species] == (1 if kind == EVENT_TP else 0)
        rows.append((rid, index.class_names[species], int(kind)))
    return sorted(rows)


def expected_anchors(*, fp: bool = True) -> list[tuple[str, str, int]]:
    return sorted(
        (rid, NAMES[sp], EVENT_TP if tp else EVENT_FP)
        for rid, events in EVENTS.items()
        for sp, _, _, tp in events
        if tp or fp
    )


def test_the_converter_writes_every_format(formats):
    counts, folder = formats["counts"], formats["formats"]
    assert (counts["events"], counts["fp_events"], counts["raven_tables"], counts["clips"]) == (7, 2, 4, 4)
    lines = (folder / "events.csv").read_text().splitlines()
    assert lines[0] == "file,label,start,end,low_hz,high_hz,call_type,observer"
    assert lines[1] == "rec0.flac,screaming piha,1.0000,2.0000,450.00,550.00,1,demo"
    table = (folder / "raven" / "rec2.Table.1.selections.txt").read_text().splitlines()
    assert table[0].split("\t")[3:5] == ["Begin Time (s)", "End Time (s)"]
    assert [row.split("\t")[:2] for row in table[1:3]] == [["1", "Waveform 1"], ["1", "Spectrogram 1"]]
    # The ant tanager's clip (rec2, 2.0..5.0 s) holds a screaming piha call too: two labels.
    clips = (folder / "clips.csv").read_text().splitlines()
    assert clips[0] == "file,labels" and "ant tanager/rec2_003.flac,ant tanager;screaming piha" in clips
    assert sorted(p.parent.name for p in (folder / "clips").rglob("*.flac")) == CLASSES


def test_event_csv_with_mapped_columns_and_named_classes(formats, tmp_path):
    f = formats["formats"]
    argv = [
        "--audio-dir",
        str(formats["audio"]),
        "--tp",
        str(f / "events.csv"),
        "--fp",
        str(f / "events_fp.csv"),
    ]
    assert features([*argv, "--columns", COLUMNS], tmp_path / "out") == 0
    index = read_index(tmp_path / "out")
    assert index.class_names == tuple(CLASSES) and index.config.n_classes == 4
    assert anchors(tmp_path / "out") == expected_anchors()
    assert index.source["ignored_columns"] == {
        "events.csv": ["call_type", "observer"],
        "events_fp.csv": ["call_type", "observer"],
    }
    # Without the mapping, the file's columns are not RFCX's: one line naming what is missing.
    assert features(argv, tmp_path / "bad") == 2


def test_raven_tables_read_each_selection_once(formats, tmp_path):
    argv = ["--audio-dir", str(formats["audio"]), "--raven", str(formats["formats"] / "raven")]
    assert features(argv, tmp_path / "out") == 0
    assert read_index(tmp_path / "out").class_names == tuple(CLASSES)
    assert anchors(tmp_path / "out") == expected_anchors(fp=False)  # 7, not 14 (two views each)


def test_clip_list_gives_one_window_per_clip_labelled_with_all_its_labels(formats, tmp_path):
    argv = [
        "--audio-dir",
        str(formats["formats"] / "clips"),
        "--clips",
        str(formats["formats"] / "clips.csv"),
    ]
    assert features(argv, tmp_path / "out") == 0
    data = read_arrays(tmp_path / "out")
    assert read_index(tmp_path / "out").class_names == tuple(CLASSES)
    # Four clips, one with two labels: five rows, four windows, each event from 0 to the clip's 3 s.
    assert sorted(data["recording_id"].astype(str)) == sorted(
        ["ant tanager/rec2_003", "cocoa thrush/rec1_002", "screaming piha/rec0_000", "white wren/rec0_001"]
    )
    np.testing.assert_allclose(data["anchor/t_min"], 0.0)
    np.testing.assert_allclose(data["anchor/t_max"], 3.0)
    two = data["recording_id"].astype(str) == "ant tanager/rec2_003"
    assert data["labels"][two][0].tolist() == [1, -1, 1, -1]  # ant tanager and screaming piha


def test_class_folders_label_each_clip_with_its_folder(formats, tmp_path):
    argv = ["--audio-dir", str(formats["formats"] / "clips"), "--class-folders"]
    assert features(argv, tmp_path / "out") == 0
    got = anchors(tmp_path / "out")
    assert [(rid.split("/")[0], name) for rid, name, _ in got] == [(n, n) for n in CLASSES]
    lines = inspect_lines(tmp_path / "out")
    assert "classes      4 (from the data): ant tanager, cocoa thrush, screaming piha, white wren" in lines
    assert any(line.startswith("  0 ant tanager ") for line in lines)


def test_rfcx_classes_come_from_the_data_unless_given(tmp_path):
    paths = write_dataset(tmp_path)
    keep = [
        line
        for line in paths["tp"].read_text().splitlines()
        if line.split(",")[1] in ("species_id", "0", "2")
    ]
    tp = tmp_path / "tp02.csv"
    tp.write_text("\n".join(keep) + "\n")
    argv = ["--audio-dir", str(paths["audio"]), "--tp", str(tp)]
    assert features(argv, tmp_path / "data") == 0
    # Numeric ids keep their column: ids 0 and 2 give s0, s1, s2.
    assert read_index(tmp_path / "data").class_names == ("s0", "s1", "s2")
    assert features([*argv, "--set", "n_classes=5"], tmp_path / "given") == 0
    assert read_index(tmp_path / "given").class_names == ("s0", "s1", "s2", "s3", "s4")
    # A given list keeps its order; a label outside it rejects its row, with its line.
    assert features([*argv, "--classes", "s2,s0"], tmp_path / "listed") == 0
    assert read_index(tmp_path / "listed").class_names == ("s2", "s0")
    assert features([*argv, "--classes", "s2"], tmp_path / "short") == 3
    failures = [json.loads(x) for x in (tmp_path / "short" / FAILURES_FILE).read_text().splitlines()]
    assert [f["message"] for f in failures] == [
        "tp02.csv line 2: class 's0' is not in the class list (s2)",
        "tp02.csv line 4: class 's0' is not in the class list (s2)",
    ]


def test_species_songtype_classes(tmp_path):
    paths = write_dataset(tmp_path)
    text = paths["tp"].read_text().replace("rec1,1,1,", "rec1,1,4,")
    paths["tp"].write_text(text)
    argv = ["--audio-dir", str(paths["audio"]), "--tp", str(paths["tp"]), "--classes", "species_songtype"]
    assert features(argv, tmp_path / "out") == 0
    index = read_index(tmp_path / "out")
    assert index.class_names == ("s0_t1", "s1_t1", "s1_t4", "s2_t1", "s3_t1")
    assert index.source["class_scheme"] == "species_songtype"
    data = read_arrays(tmp_path / "out")
    rec1 = (data["recording_id"].astype(str) == "rec1") & (data["anchor/songtype_id"] == 4)
    assert data["anchor/species_id"][rec1].tolist() == [2] and data["labels"][rec1][0, 2] == 1


def test_extra_columns_are_ignored_and_shown(tmp_path, capsys):
    paths = write_dataset(tmp_path)
    lines = paths["tp"].read_text().splitlines()
    tp = tmp_path / "tp_notes.csv"
    tp.write_text("\n".join([lines[0] + ",notes,site"] + [line + ",checked,A" for line in lines[1:]]) + "\n")
    assert main(["features", "--audio-dir", str(paths["audio"]), "--tp", str(tp), "--out", str(tmp_path / "o"),
                 *CONFIG[:-1]]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "ignoring column(s) notes, site of tp_notes.csv (not used by precompute)" in err
    assert len(read_arrays(tmp_path / "o")["labels"]) == 7
    assert "ignored      column(s) notes, site of 1 table(s): not stored" in inspect_lines(tmp_path / "o")


def test_a_fully_rejected_manifest_names_its_reasons_and_writes_failures(tmp_path, capsys):
    paths = write_dataset(tmp_path)
    tp = tmp_path / "bad.csv"
    tp.write_text(
        HEADER
        + "rec0,1,1,3.0,450,2.0,550\nrec0,x,1,1.0,450,2.0,550\nrec1,1,1,-1,450,2.0,550\nrec2,1,1,1,1,1,1\n"
    )
    argv = ["--audio-dir", str(paths["audio"]), "--tp", str(tp), "--set", "n_classes=4"]
    assert features(argv, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(
        f"precompute features: error: {tp}: no valid rows to precompute (4 rejected): "
        "bad.csv line 2: t_min 3.0 >= t_max 2.0; bad.csv line 3: species_id 'x' is not an integer; "
        "bad.csv line 4: negative time: t_min -1.0, t_max 2.0; ... (4 in all)"
    )
    failures = [json.loads(x) for x in (tmp_path / "out" / FAILURES_FILE).read_text().splitlines()]
    assert [f["line"] for f in failures] == [2, 3, 4, 5]
    assert failures[3]["message"] == "bad.csv line 5: t_min 1.0 >= t_max 1.0"
    assert not (tmp_path / "out" / "index.json").exists()


def test_a_rejected_run_leaves_a_finished_sets_failures_alone(tmp_path, capsys):
    paths = write_dataset(tmp_path)
    good = ["--audio-dir", str(paths["audio"]), "--tp", str(paths["tp"]), "--set", "n_classes=4"]
    out = tmp_path / "out"
    assert features(good, out) in (0, 3)
    kept = (out / FAILURES_FILE).read_bytes()
    tp = tmp_path / "bad.csv"
    tp.write_text(HEADER + "rec0,1,1,3.0,450,2.0,550\n")
    assert features(["--audio-dir", str(paths["audio"]), "--tp", str(tp), "--set", "n_classes=4"], out) == 2
    assert f"every rejected row in {out / 'rejected.jsonl'}" in capsys.readouterr().err
    assert (out / FAILURES_FILE).read_bytes() == kept
    assert json.loads((out / "rejected.jsonl").read_text())["line"] == 2


# -- the pieces -----------------------------------------------------------------------------------


def test_class_coder_orders_names_naturally_and_numbers_by_id():
    coder = ClassCoder()
    codes = [coder.code(label, 0) for label in ("wren", "s10", "s2", "owl", "wren")]
    names, remap = coder.finish()
    assert names == ("owl", "s2", "s10", "wren")
    assert [names[remap[c]] for c in codes] == ["wren", "s10", "s2", "owl", "wren"]
    numeric = ClassCoder()
    assert [numeric.code(label, 0) for label in ("3", "1")] == [0, 1]
    assert numeric.finish()[0] == ("s0", "s1", "s2", "s3")
    with pytest.raises(ValueError, match="species_id 4 is outside the class list 0..3"):
        ClassCoder(ClassSpec(count=4)).code("4", 1)
    with pytest.raises(ValueError, match="class name 'a,b' has a comma"):
        ClassCoder().code("a,b", 0)
    counted = ClassCoder(ClassSpec(count=3, scheme="species_songtype"))
    counted.code("1", 4)
    with pytest.raises(ConfigError, match=r"n_classes is 3, but the annotations hold 1 classes \(s1_t4\)"):
        counted.finish()


def test_options_parse_and_refuse_with_one_line():
    assert parse_columns("recording_id=file, t_min=start") == {"recording_id": "file", "t_min": "start"}
    with pytest.raises(ConfigError, match=r"--columns 'start=t_min': unknown field 'start'"):
        parse_columns("start=t_min")
    with pytest.raises(ConfigError, match="expected field=column pairs"):
        parse_columns("t_min")
    assert parse_class_option("species_songtype") == ClassSpec(scheme="species_songtype")
    assert parse_class_option("b, a").names == ("b", "a")
    with pytest.raises(ConfigError, match=r"--classes 'a,a': class 'a' is listed twice"):
        parse_class_option("a,a")
    with pytest.raises(ConfigError, match="false positives come as an RFCX or event CSV"):
        Annotations("raven", "t.txt", kind=EVENT_FP)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--label-separator", "--label-separator is empty; give the text between several labels of one clip"),
        ("--label-column", "--label-column is empty; give the name of the labels' column"),
        ("--columns", "--columns is empty; give field=column pairs, e.g. recording_id=file,t_min=start"),
        ("--classes", "--classes is empty; give class names (a,b,c) or species_songtype"),
    ],
)
def test_an_empty_annotation_flag_is_refused_not_taken_for_the_default(tmp_path, capsys, flag, message):
    message += ", or leave the flag out for the default"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        AnnotationOptions(**{flag[2:].replace("-", "_"): ""}, class_folders=True)
    argv = ["--audio-dir", str(tmp_path), "--class-folders", flag, ""]
    assert features(argv, tmp_path / "out") == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"precompute features: error: {message}"
    assert not (tmp_path / "out").exists()


def test_recordings_named_by_their_files():
    assert file_reference("a") == ("a", None)
    assert file_reference("a.WAV") == ("a", "a.WAV")
    assert file_reference("site2\\a.flac") == ("site2/a", "site2/a.flac")
    assert raven_recording(type("P", (), {"name": "XC12.Table.1.selections.txt"})()) == "XC12"


def test_raven_begin_file_and_offset_and_a_missing_label_column(tmp_path):
    table = tmp_path / "list.txt"
    table.write_text(
        "Selection\tView\tBegin File\tFile Offset (s)\tBegin Time (s)\tEnd Time (s)\tNotes\tSound\n"
        "1\tSpectrogram 1\tb.wav\t2.5\t62.5\t63.0\t\tcall\n"
    )
    layout = Layout(
        name="Raven table",
        columns={"recording_id": ("Begin File",), "t_min": ("Begin Time (s)",), "t_max": ("End Time (s)",),
                 "species_id": ("Sound",)},
        delimiter="\t", file_names=True, selection="Selection", view="View", offset="File Offset (s)",
        nyquist=8000.0,
    )  # fmt: skip
    failures, ignored = [], {}
    rows = list(iter_manifest(table, kind=EVENT_TP, layout=layout, failures=failures, ignored=ignored))
    assert [(r.recording_id, r.path, r.t_min, r.t_max, r.f_min, r.f_max) for r in rows] == [
        ("b", "b.wav", 2.5, 3.0, 0.0, 8000.0)
    ]
    assert ignored == {"list.txt": ["Notes"]} and failures == []
    from precompute.inputs.annotations import raven_layout

    with pytest.raises(
        ManifestError, match=r"list.txt line 1: missing column\(s\) species_id \('Annotation'"
    ):
        list(iter_manifest(table, kind=EVENT_TP, layout=raven_layout(table, label_column=None, nyquist=8e3),
                           failures=[]))  # fmt: skip


def test_string_classes_through_training_and_prediction(formats, tmp_path):
    from experiments.predict import predict
    from experiments.train import train

    f = formats["formats"]
    argv = ["--audio-dir", str(formats["audio"]), "--tp", str(f / "events.csv"), "--columns", COLUMNS]
    assert features(argv, tmp_path / "train") == 0
    metrics = train(
        tmp_path / "train", out=tmp_path / "run", model="tiny", epochs=1, n_folds=2, batch_size=2, quiet=True
    )
    assert metrics["config"]["class_names"] == CLASSES and set(metrics["val_class_lwlrap"]) == set(CLASSES)
    windows = [
        "windows",
        "--audio-dir",
        str(formats["audio"]),
        "--out",
        str(tmp_path / "test"),
        "--step",
        "3",
    ]
    assert main([*windows, *CONFIG]) == 0
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "recording_id," + ",".join(CLASSES) + "\nrec0,0,0,1,1\nrec1,0,1,0,1\nrec2,1,0,1,0\nrec3,0,1,0,0\n"
    )
    result = predict(tmp_path / "test", model=tmp_path / "run" / "model.keras", out=tmp_path / "sub.csv",
                     truth=truth, quiet=True)  # fmt: skip
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "recording_id,ant tanager,cocoa thrush,screaming piha,white wren"
    assert [line.split(",")[0] for line in lines[1:]] == ["rec0", "rec1", "rec2", "rec3"]
    assert result["recordings"] == 4 and 0.0 <= result["test_lwlrap"] <= 1.0


def test_species_songtype_outputs_merge_back_to_species():
    from experiments.submission import merge_columns, submission_columns

    run = {
        "config": {"class_names": ["s0_t1", "s1_t1", "s1_t4", "s2_t1"], "class_scheme": "species_songtype"}
    }
    columns, column_of = submission_columns(run, 4)
    assert columns == ["s0", "s1", "s2"] and column_of.tolist() == [0, 1, 1, 2]
    scores = np.array([[0.1, 0.2, 0.7, 0.3], [0.5, 0.9, 0.4, 0.0]], dtype=np.float32)
    expected = np.array([[0.1, 0.7, 0.3], [0.5, 0.9, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(merge_columns(scores, column_of, 3), expected)
    assert submission_columns(None, 3)[0] == ["s0", "s1", "s2"]


def test_the_config_file_can_hold_the_annotation_options(formats, tmp_path):
    config = tmp_path / "events.toml"
    config.write_text(
        "sample_rate = 16000\nn_fft = 512\nhop_length = 256\nn_mels = 32\nfmax = 8000.0\nduration = 2.0\n"
        "context = 0.25\nshard_size = 3\n\n[annotations]\n"
        'columns = { recording_id = "file", species_id = "label", t_min = "start", t_max = "end" }\n'
        'classes = ["white wren", "screaming piha", "ant tanager", "cocoa thrush"]\n'
    )
    argv = ["--audio-dir", str(formats["audio"]), "--tp", str(formats["formats"] / "events.csv")]
    assert main(["features", *argv, "--out", str(tmp_path / "out"), "--config", str(config), "--quiet"]) == 0
    index = read_index(tmp_path / "out")
    assert index.class_names == ("white wren", "screaming piha", "ant tanager", "cocoa thrush")
    assert index.config.fmax == 8000.0 and index.source["classes"] == "given list"
    # No f_min/f_max columns mapped: 0 Hz to the Nyquist frequency of the config.
    data = read_arrays(tmp_path / "out")
    assert (data["anchor/f_min"] == 0.0).all() and (data["anchor/f_max"] == 8000.0).all()
    config.write_text(config.read_text() + 'label_colum = "x"\n')
    assert main(["features", *argv, "--out", str(tmp_path / "bad"), "--config", str(config), "--quiet"]) == 2
