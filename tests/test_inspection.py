"""``precompute inspect`` on a synthetic feature set whose every stored value is known."""

import json
import re
import shutil
from pathlib import Path

import h5py

from melshards.files import sha256_file
from melshards.index import read_index
from melshards.names import INDEX_FILE
from precompute.cli import main
from precompute.inspection import WIDTH, inspect_lines
from synthetic_features import LABELLED_SET, make_feature_set


def test_inspect_fits_100_columns_and_prints_the_real_values(feats, table):
    lines = inspect_lines(feats)
    assert max(len(line) for line in lines) <= WIDTH == 100
    text = "\n".join(lines)
    assert "examples     40 from 10 recordings in 5 shards" in text
    assert "example      mel (16, 151) float16: 16 mel bands x 151 frames (1.5 s)" in text
    assert "model input  (16, 101, 1): 1 s, cropped inside 0.25 s of context on each side" in text
    # The resolved config: every parameter with its value and unit.
    assert re.search(r"^  sample_rate +16000  Hz +audio is resampled", text, re.M)
    assert re.search(r"^  hop_length +160  samples +step between STFT frames", text, re.M)
    assert re.search(r"^  n_mels +16  bands ", text, re.M)
    assert re.search(r"^  top_db +80  dB ", text, re.M)
    assert re.search(r"^  compression +none  filter ", text, re.M)
    # The class table, two classes per line, named: counts from the labels themselves.
    labels = table["labels"]
    for c in range(4):
        pos, fp, unknown = ((labels[:, c] == v).sum() for v in (1, 0, -1))
        recs = len(set(table["rid"][labels[:, c] == 1]))
        assert re.search(rf"(^|    ) +{c} s{c} +{pos} +{fp} +{unknown} +{recs}( |$)", text, re.M), c
    assert "classes      4: s0, s1, s2, s3" in text
    multi = int(((labels == 1).sum(axis=1) > 1).sum())
    assert f"examples with more than one positive class: {multi} of 40" in text


def test_cli_inspect_of_a_missing_feature_set_is_one_line_with_status_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"precompute inspect: error: {tmp_path / 'nope' / 'index.json'}: no index; not a finished feature set\n"
    )


# -- an index that does not describe the shards beside it -----------------------------------------


def own_fingerprints(root: Path) -> list[str]:
    """Give every shard of ``root`` a fingerprint of its own, as the shards of a precompute run
    have (each job's covers its rows), and make the index agree; the fingerprints, by shard."""
    index = json.loads((root / INDEX_FILE).read_text())
    for s, entry in enumerate(index["shards"]):
        path = root / entry["file"]
        with h5py.File(path, "r+") as h5:
            h5.attrs["fingerprint"] = entry["fingerprint"] = f"{s:032x}"
        entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    (root / INDEX_FILE).write_text(json.dumps(index))
    return [entry["fingerprint"] for entry in index["shards"]]


def test_inspect_refuses_two_shards_of_the_same_size_swapped(tmp_path, capsys):
    root = make_feature_set(tmp_path / "set", **LABELLED_SET)
    fingerprints = own_fingerprints(root)
    first, second = root / "shard-00000.h5", root / "shard-00001.h5"
    assert first.stat().st_size == second.stat().st_size
    assert main(["inspect", str(root)]) == 0
    capsys.readouterr()
    first.rename(tmp_path / "swap.h5")
    second.rename(first)
    (tmp_path / "swap.h5").rename(second)
    assert main(["inspect", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"precompute inspect: error: {first}: shard fingerprint '{fingerprints[1]}' disagrees with "
        f"the index ('{fingerprints[0]}')\n"
    )


def test_inspect_refuses_the_index_of_another_set(tmp_path, capsys):
    root = make_feature_set(tmp_path / "set", **LABELLED_SET)
    other = make_feature_set(tmp_path / "other", min_overlap=0.3, seed=1, **LABELLED_SET)
    shutil.copyfile(other / INDEX_FILE, root / INDEX_FILE)
    theirs = read_index(other).shards[0].fingerprint
    with h5py.File(root / "shard-00000.h5", "r") as h5:
        ours = h5.attrs["fingerprint"]
    assert ours != theirs and (root / "shard-00000.h5").stat().st_size == read_index(other).shards[0].bytes
    assert main(["inspect", str(root)]) == 2
    assert capsys.readouterr().err == (
        f"precompute inspect: error: {root / 'shard-00000.h5'}: shard fingerprint '{ours}' disagrees with "
        f"the index ('{theirs}')\n"
    )
