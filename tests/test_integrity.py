"""The loader reads only what the index lists, inside the feature directory, as plain data; a
hostile index is one line naming the file and the field, in every command that reads it."""

import json

import h5py
import numpy as np
import pytest

from loader import ShardSequence
from loader.feature_set import FeatureSet
from melshards.errors import FormatError
from melshards.files import sha256_file
from melshards.names import INDEX_FILE
from precompute.cli import main as precompute_main
from synthetic_features import make_feature_set


@pytest.fixture
def root(tmp_path):
    return make_feature_set(tmp_path / "feat", n_recordings=4, per_recording=3, shard_size=6)


def reseal(root, shard="shard-00000.h5"):
    """Make the index agree with a modified shard again (size and sha256), as a crafted set would."""
    index = json.loads((root / INDEX_FILE).read_text())
    for entry in index["shards"]:
        if entry["file"] == shard:
            entry["bytes"] = (root / shard).stat().st_size
            entry["sha256"] = sha256_file(root / shard)
    (root / INDEX_FILE).write_text(json.dumps(index))


def test_rejects_an_external_link(root, tmp_path):
    with h5py.File(tmp_path / "outside.h5", "w") as other:
        other["data"] = np.zeros(3)
    with h5py.File(root / "shard-00000.h5", "r+") as h5:
        h5["extra"] = h5py.ExternalLink(str(tmp_path / "outside.h5"), "/data")
    reseal(root)
    with pytest.raises(FormatError, match=r"shard-00000\.h5: link 'extra' points outside the shard"):
        ShardSequence(root, split="all")


def test_rejects_a_virtual_dataset(root, tmp_path):
    with h5py.File(tmp_path / "outside.h5", "w") as other:
        other["start"] = np.arange(6, dtype=np.float64)
    with h5py.File(root / "shard-00000.h5", "r+") as h5:
        layout = h5py.VirtualLayout(shape=(6,), dtype=np.float64)
        layout[:] = h5py.VirtualSource(str(tmp_path / "outside.h5"), "start", shape=(6,))
        del h5["start"]
        h5.create_virtual_dataset("start", layout)
    reseal(root)
    with pytest.raises(
        FormatError, match=r"shard-00000\.h5: dataset 'start' uses virtual or external storage"
    ):
        ShardSequence(root, split="all")


def test_rejects_external_storage(root, tmp_path):
    (tmp_path / "raw.bin").write_bytes(np.arange(6, dtype=np.float64).tobytes())
    with h5py.File(root / "shard-00000.h5", "r+") as h5:
        del h5["start"]
        h5.create_dataset(
            "start", shape=(6,), dtype=np.float64, external=[(str(tmp_path / "raw.bin"), 0, 48)]
        )
    reseal(root)
    with pytest.raises(
        FormatError, match=r"shard-00000\.h5: dataset 'start' uses virtual or external storage"
    ):
        ShardSequence(root, split="all")


def test_rejects_a_shard_name_outside_the_directory(root):
    index = json.loads((root / INDEX_FILE).read_text())
    index["shards"][0]["file"] = "../shard-00000.h5"
    (root / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(FormatError, match=r"shard name '\.\./shard-00000\.h5' is not a plain file"):
        ShardSequence(root, split="all")


def test_rejects_a_shard_modified_after_indexing(root):
    with h5py.File(root / "shard-00001.h5", "r+") as h5:
        h5.attrs["note"] = "edited"
    with pytest.raises(FormatError, match=r"shard-00001\.h5: shard is \d+ bytes, the index says \d+"):
        ShardSequence(root, split="all")


def test_files_not_in_the_index_are_never_opened(root):
    expected = ShardSequence(root, split="all", shuffle=False, augment=False)[0]
    (root / "shard-00099.h5").write_bytes(b"garbage, not HDF5")
    (root / ".shard-00002.h5.123.tmp").write_bytes(b"half a shard")
    got = ShardSequence(root, split="all", shuffle=False, augment=False)[0]
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# -- hostile indexes: one line in inspect, verify and train ----------------------------------------


def one_line_everywhere(root, message: str, capsys) -> None:
    """``precompute inspect``, ``precompute verify`` and ``experiments.train`` each print
    ``message`` as their one error line and exit 2; opening the set raises it."""
    from experiments import train

    for command in (["inspect", str(root)], ["verify", "-q", str(root)]):
        assert precompute_main(command) == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", f"precompute {command[0]}: error: {message}\n")
    argv = ["--features", str(root), "--out", str(root.parent / "run"), "--epochs", "1", "-q"]
    assert train.main(argv) == 2
    assert capsys.readouterr().err == f"experiments.train: error: {message}\n"
    with pytest.raises(FormatError) as raised:
        FeatureSet(root)
    assert str(raised.value) == message


@pytest.mark.parametrize("depth", [40, 200_000])
def test_an_index_nested_too_deep_is_one_line(root, capsys, depth):
    index = json.loads((root / INDEX_FILE).read_text())
    index["source"] = {"note": "@"}
    text = json.dumps(index).replace('"@"', "[" * depth + "]" * depth)
    (root / INDEX_FILE).write_text(text)
    message = f"{root / INDEX_FILE}: malformed index: lists or mappings nested more than 32 deep"
    one_line_everywhere(root, message, capsys)


def test_a_nul_in_a_shard_name_is_one_line_naming_the_field(root, capsys):
    index = json.loads((root / INDEX_FILE).read_text())
    index["shards"][1]["file"] = "shard-\x0000001.h5"
    (root / INDEX_FILE).write_text(json.dumps(index))
    message = (
        f"{root / INDEX_FILE} shards[1] file: shard name 'shard-\\x0000001.h5' holds a control "
        "character (NUL, newline, ...)"
    )
    one_line_everywhere(root, message, capsys)


def test_statistics_of_another_number_of_mel_bands_are_refused(tmp_path, capsys):
    root = make_feature_set(tmp_path / "feat", n_recordings=2, per_recording=3, shard_size=3, n_mels=32)
    index = json.loads((root / INDEX_FILE).read_text())
    assert len(index["stats"]["mean"]) == 32
    index["stats"].update(mean=[0.25], std=[0.5])
    (root / INDEX_FILE).write_text(json.dumps(index))
    message = f"{root / INDEX_FILE} stats mean: 1 bins, expected 32 (one per mel band, the config's n_mels)"
    with pytest.raises(FormatError) as raised:
        ShardSequence(root, split="all")
    assert str(raised.value) == message
    assert precompute_main(["inspect", str(root)]) == 2
    assert capsys.readouterr().err == f"precompute inspect: error: {message}\n"
