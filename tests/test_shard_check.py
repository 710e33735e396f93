"""``check_shard`` in one visit of the file's links, each dataset opened once: the same verdicts,
and what it opened read by ``read_metadata`` as reading by name reads it."""

import json

import h5py
import numpy as np
import pytest

from loader.feature_set import FeatureSet
from melshards.errors import FormatError
from melshards.files import sha256_file
from melshards.index import read_index
from melshards.names import INDEX_FILE, shard_datasets
from melshards.shard_check import check_shard
from melshards.shard_open import open_shard
from melshards.shard_read import read_metadata
from synthetic_features import make_feature_set

SHARD = "shard-00000.h5"


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MELSHARDS_META_CACHE", "0")
    return make_feature_set(tmp_path / "feat", n_recordings=2, per_recording=3, shard_size=4, dtype="uint8")


def edit(root, change) -> None:
    """Change the shard in place, then make the index agree with it (size and sha256), as a
    crafted set would."""
    with h5py.File(root / SHARD, "r+") as h5:
        change(h5)
    index = json.loads((root / INDEX_FILE).read_text())
    for entry in index["shards"]:
        if entry["file"] == SHARD:
            entry["bytes"] = (root / SHARD).stat().st_size
            entry["sha256"] = sha256_file(root / SHARD)
    (root / INDEX_FILE).write_text(json.dumps(index))


def group_for_start(h5) -> None:
    del h5["start"]
    h5.create_group("start")


def soft_link(h5) -> None:
    h5["zzz"] = h5py.SoftLink("/labels")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (group_for_start, r"shard-00000\.h5: 'start' is not a dataset$"),
        (soft_link, r"shard-00000\.h5: link 'zzz' points outside the shard; refusing it$"),
    ],
)
def test_what_is_not_a_plain_dataset_is_one_line(root, change, message):
    edit(root, change)
    with pytest.raises(FormatError, match=message):
        FeatureSet(root)


def test_a_group_linked_under_two_names_still_reads(root):
    expected = FeatureSet(root)
    edit(root, lambda h5: h5.__setitem__("aaa", h5["events"]))  # "events" is visited as "aaa"
    got = FeatureSet(root)
    np.testing.assert_array_equal(got.event_ptr, expected.event_ptr)
    np.testing.assert_array_equal(got.event_t_min, expected.event_t_min)


def test_the_checked_datasets_read_as_those_looked_up_by_name(root):
    index = read_index(root)
    entry = index.shards[0]
    path = index.shard_path(entry)
    with open_shard(path) as h5:
        datasets = check_shard(h5, entry, index.config, path=path)
        assert sorted(datasets) == sorted(shard_datasets("uint8"))
        opened = read_metadata(h5, entry, index.config, path=path, datasets=datasets)
        by_name = read_metadata(h5, entry, index.config, path=path)
    for name in ("recording_id", "start", "labels", "valid", "mel_offset", "mel_scale"):
        a, b = getattr(opened, name), getattr(by_name, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert opened.recording_id.dtype == object and isinstance(opened.recording_id[0], str)
    assert opened.events.keys() == by_name.events.keys()
    for key in opened.events:
        assert opened.events[key].dtype == by_name.events[key].dtype
        np.testing.assert_array_equal(opened.events[key], by_name.events[key], err_msg=key)
