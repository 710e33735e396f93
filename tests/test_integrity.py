"""The loader reads only what the index lists, inside the feature directory, as plain data."""

import json

import h5py
import numpy as np
import pytest

from loader import ShardSequence
from melshards.errors import FormatError
from melshards.files import sha256_file
from melshards.names import INDEX_FILE
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
