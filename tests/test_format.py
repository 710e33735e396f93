"""The on-disk format as a contract: the index round trip, refused indexes, every name in a shard."""

import copy
import dataclasses
import json

import h5py
import numpy as np
import pytest

from melshards import names
from melshards.config import PARAMETERS, FeatureConfig, parameter_names
from melshards.errors import ConfigError, FormatError
from melshards.index import BinStats, Index, ShardEntry, read_index, write_index
from melshards.shard import ShardExample, ShardStats, read_shard_summary, write_shard
from synthetic_features import make_feature_set, synthetic_config


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory):
    return make_feature_set(
        tmp_path_factory.mktemp("format") / "fs", n_recordings=3, per_recording=3, shard_size=4
    )


@pytest.fixture
def index_dict(feature_dir):
    return json.loads((feature_dir / names.INDEX_FILE).read_text())


def refused(data) -> str:
    with pytest.raises(FormatError) as info:
        Index.from_dict(data, source="idx.json")
    return str(info.value)


# -- the index ---------------------------------------------------------------------------------


def test_index_round_trips_through_dict_and_file(feature_dir, index_dict, tmp_path):
    index = read_index(feature_dir)
    assert index.to_dict() == index_dict
    assert Index.from_dict(index.to_dict()) == index
    # The file is exactly what write_index writes for the same Index.
    write_index(tmp_path, index)
    assert (tmp_path / names.INDEX_FILE).read_bytes() == (feature_dir / names.INDEX_FILE).read_bytes()
    assert read_index(tmp_path) == index


def test_index_fields_have_their_documented_values(feature_dir, index_dict):
    index = read_index(feature_dir)
    config = index.config
    assert index_dict["format"] == {"name": "melshards", "version": 4}
    assert list(index_dict) == [
        "format",
        "fingerprint",
        "kind",
        "config",
        "classes",
        "class_names",
        "n_examples",
        "n_frames",
        "crop_frames",
        "shards",
        "stats",
        "failures",
        "versions",
    ]
    assert index.kind == names.SET_LABELLED
    assert index.classes == (0, 1, 2, 3) == tuple(range(config.n_classes))
    assert index.class_names == ("s0", "s1", "s2", "s3")
    assert index.n_examples == index_dict["n_examples"] == 9
    assert [e.n for e in index.shards] == [4, 4, 1]
    assert [e.file for e in index.shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert index_dict["n_frames"] == config.n_frames == 151
    assert index_dict["crop_frames"] == config.crop_frames == 101
    assert len(index.stats.mean) == len(index.stats.std) == config.n_mels
    assert index.stats.frames == 9 * config.n_frames


def test_build_sorts_shards_and_fingerprints_config_and_shards():
    config = synthetic_config()
    a = ShardEntry(file="shard-00001.h5", n=2, sha256="b" * 64, fingerprint="fb", bytes=10)
    b = ShardEntry(file="shard-00000.h5", n=3, sha256="a" * 64, fingerprint="fa", bytes=20)
    stats = BinStats(mean=(0.5,) * config.n_mels, std=(0.1,) * config.n_mels, frames=5)
    index = Index.build(config=config, entries=[a, b], stats=stats, failures=1, kind="windows", versions={})
    assert [e.file for e in index.shards] == ["shard-00000.h5", "shard-00001.h5"]
    assert index.n_examples == 5
    other = Index.build(config=config, entries=[b, a], stats=stats, failures=0, kind="windows", versions={})
    assert other.fingerprint == index.fingerprint  # order of the entries given does not matter
    labelled = Index.build(
        config=config, entries=[a, b], stats=stats, failures=1, kind="labelled", versions={}
    )
    assert labelled.fingerprint != index.fingerprint
    with pytest.raises(ConfigError, match="kind must be one of"):
        Index.build(config=config, entries=[a], stats=stats, failures=0, kind="clips", versions={})


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"name": "melshards", "version": 5}, "format version 5 is unknown; this reader knows version 4"),
        ({"name": "melshards", "version": 0}, "format version 0 is unknown"),
        (
            {"name": "melshards", "version": 3},
            "format version 3 is unknown; this reader knows version 4; run the same precompute command "
            "again to rebuild it",
        ),
        ({"name": "melshards"}, "format version None is unknown"),
        ({"name": "lhotse", "version": 1}, "not a melshards index"),
        ("melshards", "not a melshards index"),
    ],
)
def test_refuses_other_formats_and_versions(index_dict, fmt, message):
    index_dict["format"] = fmt
    assert message in refused(index_dict)


def test_refuses_a_file_that_is_no_index(tmp_path):
    with pytest.raises(FormatError, match="no index; not a finished feature set"):
        read_index(tmp_path)
    (tmp_path / names.INDEX_FILE).write_text("{not json")
    with pytest.raises(FormatError, match="unreadable index"):
        read_index(tmp_path)
    (tmp_path / names.INDEX_FILE).write_text("[1, 2]")
    with pytest.raises(FormatError, match="not a melshards index"):
        read_index(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("shards"), "missing shards"),
        (lambda d: d.update(kind="clips"), "kind 'clips' is not one of"),
        (lambda d: d.update(fingerprint=7), "fingerprint: expected a string, got 7"),
        (lambda d: d.update(n_examples=10), "shards hold 9 examples but n_examples is 10"),
        (lambda d: d.update(n_examples=-1), "n_examples: expected a count"),
        (lambda d: d.update(failures=True), "failures: expected a count"),
        (lambda d: d.update(n_frames=150), "n_frames 150 disagrees with the config's 151"),
        (lambda d: d.update(crop_frames="101"), "crop_frames '101' disagrees"),
        (lambda d: d.update(classes=[0, 1, 2]), "3 classes, but the config has n_classes 4"),
        (lambda d: d.update(classes=[0, 1, 2, "3"]), "classes must be a list of integers"),
        (
            lambda d: d.update(class_names=["a", "b", "c"]),
            "class_names: 3 names, but the config has n_classes 4",
        ),
        (lambda d: d.update(class_names=["a", "b", "c", "a"]), "class_names: class name 'a' appears twice"),
        (lambda d: d.update(class_names=["a", "b", "c", "d,e"]), "class name 'd,e' has a comma"),
        (lambda d: d.update(class_names=["a", "b", "c", 4]), "class name 4 is not a string"),
        (lambda d: d.pop("class_names"), "missing class_names"),
        (lambda d: d.update(shards={}), "shards must be a list"),
        (lambda d: d["shards"][0].update(file="../x.h5"), "shard name '../x.h5' is not a plain file"),
        (lambda d: d["shards"][0].update(file=".hidden.h5"), "is not a plain file"),
        (lambda d: d["shards"][0].update(file="shard.txt"), "is not a plain file"),
        (lambda d: d["shards"][1].update(file="shard-00000.h5"), "a shard file is listed twice"),
        (
            lambda d: d["shards"][0].update(n="4"),
            "shards[0] n: expected a count (integer in 0..2**53), got '4'",
        ),
        (lambda d: d["shards"][2].pop("sha256"), "shards[2]: malformed: missing sha256"),
        (lambda d: d["shards"][0].update(extra=1), "shards[0]: malformed: unknown extra"),
        (lambda d: d["stats"].update(mean=[0.5]), "mean has 1 bins, std 16"),
        (lambda d: d["stats"].update(std="wide"), "stats std: expected a list of numbers"),
        (lambda d: d["config"].update(n_mels=0), "config n_mels must be in [1, 1024], got 0"),
        (lambda d: d["config"].update(duration="10"), "config duration must be a number, got '10'"),
        (lambda d: d["config"].update(hop_length=10**30), "config hop_length must be in [1, 65536]"),
        (lambda d: d["config"].update(top_db=float("nan")), "config top_db must be finite, got nan"),
        (lambda d: d["stats"]["mean"].__setitem__(3, float("nan")), "stats mean: value 3 is nan"),
        (lambda d: d["stats"]["std"].__setitem__(0, float("inf")), "stats std: value 0 is inf"),
        (lambda d: d["stats"].update(frames=10**40), "stats frames: expected a count"),
        (lambda d: d["shards"][0].update(bytes=2**64), "shards[0] bytes: expected a count"),
        (lambda d: d["shards"][0].update(sha256="0" * 63), "shards[0] sha256: expected 64 lowercase hex"),
        (lambda d: d["shards"][1].update(sha256=None), "shards[1] sha256: expected 64 lowercase hex"),
        (lambda d: d["config"].update(colour="red"), "unknown feature parameter(s) colour"),
        (lambda d: d.update(config=[]), "config: expected a mapping"),
        (lambda d: d.update(versions=["numpy"]), "versions must be a mapping"),
    ],
)
def test_refuses_malformed_fields_naming_them(index_dict, edit, message):
    data = copy.deepcopy(index_dict)
    edit(data)
    text = refused(data)
    assert text.startswith("idx.json")
    assert message in text


def test_index_without_a_directory_cannot_locate_shards(index_dict):
    index = Index.from_dict(index_dict)
    assert index.root is None
    with pytest.raises(FormatError, match="no directory"):
        index.shard_path(index.shards[0])


# -- the feature config --------------------------------------------------------------------------


def test_feature_config_is_the_one_source_of_parameters():
    fields = dataclasses.fields(FeatureConfig)
    assert parameter_names() == tuple(f.name for f in fields)
    assert {f.name: (f.metadata["unit"], f.metadata["meaning"]) for f in fields} == PARAMETERS
    config = FeatureConfig(n_mels=64, top_db=None)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    assert config.fingerprint() != FeatureConfig().fingerprint()
    with pytest.raises(ConfigError, match="idx: unknown feature parameter"):
        FeatureConfig.from_dict({"n_mel": 64}, source="idx")


@pytest.mark.parametrize("dtype", names.MEL_DTYPES)
def test_config_dtype_is_the_stored_mel_dtype(dtype):
    assert FeatureConfig(dtype=dtype).dtype == dtype
    with pytest.raises(ConfigError, match="dtype must be one of"):
        FeatureConfig(dtype="int8")


# -- every name in a shard -----------------------------------------------------------------------


def shard_names(path):
    datasets = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        return set(datasets), dict(h5.attrs), {name: h5[name].dtype for name in datasets}


@pytest.mark.parametrize("dtype", names.MEL_DTYPES)
def test_a_written_shard_holds_exactly_the_named_datasets_and_attributes(tmp_path, dtype):
    config = synthetic_config(dtype=dtype)
    mel = np.linspace(0, 1, config.n_mels * config.n_frames).reshape(config.n_mels, config.n_frames)
    anchor = {"species_id": 2, "songtype_id": 1, "t_min": 1.0, "t_max": 1.5, "f_min": 500.0, "f_max": 900.0}
    anchor |= {"kind": names.EVENT_TP, "line": 7}
    events = {
        "species_id": np.array([2, 3]),
        "kind": np.array([names.EVENT_TP, names.EVENT_FP]),
        "t_min": np.array([1.0, 1.2]),
        "t_max": np.array([1.5, 1.3]),
    }
    labels = np.array([-1, -1, 1, 0], dtype=np.int8)
    example = ShardExample(mel, labels, "rec-a", 0.75, anchor=anchor, events=events)
    failures = [{"id": "rec-b", "error": "AudioError", "message": "too short"}]
    path = tmp_path / names.SHARD_PATTERN.format(3)
    entry, stats = write_shard(
        path,
        [example, example],
        config=config,
        fingerprint="f" * 32,
        kind=names.SET_LABELLED,
        failures=failures,
    )
    assert entry == ShardEntry(
        file="shard-00003.h5", n=2, sha256=entry.sha256, fingerprint="f" * 32, bytes=entry.bytes
    )
    assert entry.bytes == path.stat().st_size
    assert not list(tmp_path.glob(f".*{names.TEMP_SUFFIX}"))  # the temp file was renamed away

    datasets, attrs, dtypes = shard_names(path)
    assert datasets == set(names.shard_datasets(dtype))
    assert (names.MEL_OFFSET in datasets) == (dtype == "uint8")
    assert dtypes[names.MEL] == np.dtype(dtype)
    for name, kind in names.METADATA_DATASETS.items():
        if kind != "str":
            assert dtypes[name] == np.dtype(kind), name
    expected_attrs = {
        *names.SHARD_ATTRIBUTES,
        *(f"{names.ATTR_CONFIG_PREFIX}{key}" for key in parameter_names()),
    }
    assert set(attrs) == expected_attrs
    assert attrs[names.ATTR_FORMAT] == "melshards" and attrs[names.ATTR_FORMAT_VERSION] == 4
    assert attrs[names.ATTR_KIND] == "labelled"
    assert json.loads(attrs[names.ATTR_CONFIG]) == config.to_dict()
    assert attrs[f"{names.ATTR_CONFIG_PREFIX}compression"] == "none"

    # Plain h5py reads back every value (uint8: codes, with the example's offset and scale).
    with h5py.File(path, "r") as h5:
        if dtype == "uint8":
            step = h5[names.MEL_SCALE][1]
            assert h5[names.MEL_OFFSET][1] == 0 and step == np.float32(1 / 255)
            stored = h5[names.MEL_OFFSET][1] + h5[names.MEL][1] * step
            assert np.abs(stored - mel).max() <= step / 2 * (1 + 1e-5)
            assert 0.4 * step < np.abs(stored - mel).max()  # the codes really are 8-bit
        else:
            stored = mel.astype(dtype)
            np.testing.assert_array_equal(h5[names.MEL][1], stored)
        assert h5[names.MEL].chunks == (1, config.n_mels, config.n_frames) and h5[names.MEL].fletcher32
        np.testing.assert_array_equal(h5[names.LABELS][()], [labels, labels])
        assert list(h5[names.RECORDING_ID].asstr()[()]) == ["rec-a", "rec-a"]
        assert h5[f"{names.ANCHOR}/line"][()].tolist() == [7, 7]
        assert h5[f"{names.EVENTS}/{names.EVENT_EXAMPLE}"][()].tolist() == [0, 0, 1, 1]
        assert h5[f"{names.EVENTS}/kind"][()].tolist() == [1, 0, 1, 0]
        # An example without ``valid`` holds audio in every frame.
        assert h5[names.VALID][()].tolist() == [[0, config.n_frames], [0, config.n_frames]]

    summary = read_shard_summary(path)
    assert (summary.fingerprint, summary.n, summary.failures) == ("f" * 32, 2, failures)
    expected = ShardStats.empty(config.n_mels)
    expected.add(stored)
    expected.add(stored)
    np.testing.assert_allclose(summary.stats.sum, expected.sum, rtol=1e-6)
    assert summary.stats.count == stats.count == 2 * config.n_frames


def test_every_name_is_distinct():
    groups = [
        (names.MEL, names.LABELS, names.RECORDING_ID, names.START, names.VALID, names.ANCHOR, names.EVENTS),
        tuple(names.SHARD_DATASETS),
        names.SHARD_ATTRIBUTES,
        (names.EVENT_TP, names.EVENT_FP, names.EVENT_NONE),
        names.LABEL_VALUES,
        names.SET_KINDS,
    ]
    for group in groups:
        assert len(set(group)) == len(group), group
    assert names.SHARD_PATTERN.format(12).startswith(names.SHARD_PREFIX)
    assert names.SHARD_PATTERN.format(12).endswith(names.SHARD_SUFFIX)
