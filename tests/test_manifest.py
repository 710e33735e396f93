import pytest

from audio_fixtures import HEADER
from melshards.names import EVENT_FP, EVENT_TP
from precompute.errors import ManifestError
from precompute.inputs.manifest import read_manifest
from precompute.inputs.row_table import RowTable, drop_duplicates


def write(tmp_path, body, name="train_tp.csv", header=HEADER):
    path = tmp_path / name
    path.write_text(header + body)
    return path


def test_valid_rows_are_parsed_with_their_lines(tmp_path):
    path = write(tmp_path, "r1,3,1,1.5,100,2.5,900.5\nr2,0,4,0,50,10,80\n")
    rows, failures = read_manifest(path, kind=EVENT_TP, n_classes=24)
    assert failures == []
    assert [
        (r.recording_id, r.species_id, r.songtype_id, r.t_min, r.t_max, r.f_max, r.line) for r in rows
    ] == [
        ("r1", 3, 1, 1.5, 2.5, 900.5, 2),
        ("r2", 0, 4, 0.0, 10.0, 80.0, 3),
    ]
    assert all(r.kind == EVENT_TP for r in rows)


BAD_ROWS = [
    ("r1,3,1,12.5,100,3.0,900", "line 3: t_min 12.5 >= t_max 3.0"),
    ("r1,3,1,-1,100,3.0,900", "line 3: negative time"),
    ("r1,24,1,1,100,3.0,900", "line 3: species_id 24 is outside the class list 0..23"),
    ("r1,x,1,1,100,3.0,900", "line 3: species_id 'x' is not an integer"),
    ("r1,3,1,1,100,nan,900", "line 3: t_max 'nan' is not finite"),
    ("r1,3,1,1,900,3.0,100", "line 3: f_min 900.0 >= f_max 100.0"),
    ("../etc/passwd,3,1,1,100,3.0,900", "line 3: recording_id '../etc/passwd' contains a path separator"),
    ("a/b,3,1,1,100,3.0,900", "line 3: recording_id 'a/b' contains a path separator"),
    ("r1,3,1,1,100,3.0", "line 3: 6 fields, header has 7"),
    ("r1,3,40000,1,100,3.0,900", "line 3: songtype_id 40000 is outside -32768..32767 (int16 in the shards)"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_row_is_skipped_with_file_and_line_and_good_rows_kept(tmp_path, row, message):
    path = write(tmp_path, f"good,1,1,0.5,10,1.5,20\n{row}\ngood2,2,1,0.5,10,1.5,20\n")
    rows, failures = read_manifest(path, kind=EVENT_TP, n_classes=24)
    assert [r.recording_id for r in rows] == ["good", "good2"]
    assert len(failures) == 1
    assert failures[0].to_record()["message"].startswith(f"train_tp.csv {message}")


@pytest.mark.parametrize(("row", "message"), BAD_ROWS[:3])
def test_fail_policy_raises_at_the_first_bad_row(tmp_path, row, message):
    path = write(tmp_path, f"good,1,1,0.5,10,1.5,20\n{row}\n")
    with pytest.raises(ManifestError, match=f"^train_tp.csv {message}"):
        read_manifest(path, kind=EVENT_TP, n_classes=24, on_error="fail")


def test_blank_lines_are_skipped_and_do_not_shift_line_numbers(tmp_path):
    path = write(tmp_path, "r1,3,1,1.5,100,2.5,900.5\n\n,,,,,,\n  \nr2,0,4,0,50,10,80\n")
    rows, failures = read_manifest(path, kind=EVENT_TP, n_classes=24)
    assert [(r.recording_id, r.line) for r in rows] == [("r1", 2), ("r2", 6)] and failures == []


def test_missing_columns_are_file_level_errors_and_extra_columns_are_ignored(tmp_path):
    missing = write(tmp_path, "r1,1,1,0,1\n", header="recording_id,species_id,songtype_id,t_min,t_max\n")
    with pytest.raises(ManifestError, match=r"train_tp.csv line 1: missing column\(s\) f_max; the file has"):
        read_manifest(missing, kind=EVENT_TP, n_classes=24)
    extra = write(tmp_path, "r1,1,1,0,1,2,3,x\n", name="fp.csv", header=HEADER.strip() + ",comment\n")
    rows, failures = read_manifest(extra, kind=EVENT_FP, n_classes=24)
    assert failures == [] and [(r.recording_id, r.species_id, r.t_max, r.f_max) for r in rows] == [
        ("r1", 1, 2.0, 3.0)
    ]


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match="nope.csv: manifest not found"):
        read_manifest(tmp_path / "nope.csv", kind=EVENT_TP, n_classes=24)


def test_duplicates_keep_the_first_and_name_it(tmp_path):
    path = write(tmp_path, "r1,1,1,0.5,10,1.5,20\nr2,1,1,0.5,10,1.5,20\nr1,1,1,0.5,10,1.5,20\n")
    rows, _ = read_manifest(path, kind=EVENT_TP, n_classes=24)
    kept, dups = drop_duplicates(RowTable.from_rows(rows))
    assert [r.line for r in kept] == [2, 3]
    assert dups[0].to_record()["message"] == "train_tp.csv line 4: duplicate of train_tp.csv line 2"
    with pytest.raises(ManifestError, match="line 4: duplicate of train_tp.csv line 2"):
        drop_duplicates(RowTable.from_rows(rows), on_error="fail")
