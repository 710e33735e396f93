"""The parsed shard metadata kept between processes (``loader.meta_cache``): served only while
each shard is the very file that was read, never an error, never other data."""

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from loader import meta_cache
from loader.batches import ShardBatches
from loader.feature_set import FeatureSet
from melshards.errors import ConfigError, FormatError, IntegrityError
from melshards.files import sha256_file
from melshards.names import INDEX_FILE
from melshards.remote import set_name
from synthetic_features import make_feature_set

SHARD = "shard-00001.h5"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The cache directory (``MELSHARDS_CACHE``), the cache on; a shard counts as recently
    changed for 50 ms (``settle`` waits that out)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MELSHARDS_CACHE", str(root))
    monkeypatch.delenv(meta_cache.ENV, raising=False)
    monkeypatch.setattr(meta_cache, "RECENT_NS", 50_000_000)
    return root


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The shards each ``FeatureSet`` reads from their files, in order."""
    read_checked = FeatureSet._read_checked
    files: list[str] = []

    def counted(self, entry, **kwargs):
        files.append(entry.file)
        return read_checked(self, entry, **kwargs)

    monkeypatch.setattr(FeatureSet, "_read_checked", counted)
    return files


def settle() -> None:
    time.sleep(0.1)


def build(root: Path, **params) -> Path:
    root = make_feature_set(root, n_recordings=4, per_recording=3, shard_size=4, **params)
    settle()
    return root


def opened(root: Path, reads: list[str], **kwargs) -> tuple[FeatureSet, list[str]]:
    """A feature set of ``root`` and the shards it read from their files."""
    reads.clear()
    features = FeatureSet(root, **kwargs)
    return features, list(reads)


def uncached(root: Path, monkeypatch) -> FeatureSet:
    with monkeypatch.context() as m:
        m.setenv(meta_cache.ENV, "0")
        return FeatureSet(root)


def assert_same(got: FeatureSet, expected: FeatureSet) -> None:
    """Every array and every shard layout of ``got`` is ``expected``'s: values and dtypes."""
    names = [
        k for k, v in vars(expected).items() if isinstance(v, np.ndarray) or k in ("mel_offset", "mel_scale")
    ]
    assert len(names) >= 12
    for name in names:
        a, b = getattr(got, name), getattr(expected, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert len(got.shards) == len(expected.shards)
    for x, y in zip(got.shards, expected.shards, strict=True):
        assert (x.entry, x.path, x.n, x.first, x.compressed, x.identity) == (
            y.entry,
            y.path,
            y.n,
            y.first,
            y.compressed,
            y.identity,
        )
        for name in ("byte_offsets", "chunk_sizes"):
            a, b = getattr(x, name), getattr(y, name)
            assert (a is None) == (b is None), name
            if b is not None:
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "params",
    [{}, {"dtype": "uint8", "compression": "zstd"}, {"compression": "gzip"}],
    ids=["float16", "uint8-zstd", "float16-gzip"],
)
def test_cached_metadata_equals_freshly_read_metadata(tmp_path, cache, reads, monkeypatch, params):
    root = build(tmp_path / "feat", **params)
    fresh = uncached(root, monkeypatch)
    cold, cold_reads = opened(root, reads)
    warm, warm_reads = opened(root, reads)
    assert cold_reads == [f"shard-{i:05d}.h5" for i in range(3)]
    assert warm_reads == []
    assert [p.name for p in (cache / "meta").iterdir()] == [f"{set_name(str(root.resolve()))}.meta"]
    assert_same(cold, fresh)
    assert_same(warm, fresh)
    if params.get("dtype") == "uint8":
        assert warm.mel_offset.dtype == np.float32 and warm.shards[0].compressed
    a = ShardBatches(warm, split="all", batch_size=12, shuffle=False, augment=False).batch(0)
    b = ShardBatches(fresh, split="all", batch_size=12, shuffle=False, augment=False).batch(0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def flip_label(path: Path) -> int:
    """Change example 0's label of class 0 in place (the file keeps its size); the new value."""
    with h5py.File(path, "r+", locking=False) as h5:
        new = 1 if h5["labels"][0, 0] != 1 else 0
        h5["labels"][0, 0] = new
    return new


def rewrite(path: Path) -> None:
    flip_label(path)


def rewrite_keeping_mtime(path: Path) -> None:
    st = path.stat()
    flip_label(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def replace(path: Path) -> None:
    copy = path.with_name("copy.h5")
    shutil.copyfile(path, copy)
    os.replace(copy, path)


@pytest.mark.parametrize("change", [rewrite, rewrite_keeping_mtime, touch, replace])
def test_a_changed_shard_is_read_again_not_served_from_the_cache(tmp_path, cache, reads, monkeypatch, change):
    root = build(tmp_path / "feat")
    opened(root, reads)
    before, _ = opened(root, reads)
    change(root / SHARD)
    after, again = opened(root, reads)
    assert again == [SHARD]
    assert_same(after, uncached(root, monkeypatch))
    row = before.shards[1].first
    changed = change in (rewrite, rewrite_keeping_mtime)
    assert (after.labels[row, 0] != before.labels[row, 0]) == changed
    settle()
    opened(root, reads)
    assert opened(root, reads)[1] == []  # kept again


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    path.write_bytes(b"not a cache file")


@pytest.mark.parametrize("damage", [truncate, flip_byte, garbage, "another set's"])
def test_a_damaged_or_foreign_cache_file_is_ignored_and_written_again(
    tmp_path, cache, reads, monkeypatch, damage
):
    root = build(tmp_path / "feat")
    opened(root, reads)
    (kept,) = (cache / "meta").iterdir()
    if damage == "another set's":
        other = build(tmp_path / "other", seed=3)
        opened(other, reads)
        shutil.copyfile(next(p for p in (cache / "meta").iterdir() if p != kept), kept)
    else:
        damage(kept)
    features, again = opened(root, reads)
    assert again == [f"shard-{i:05d}.h5" for i in range(3)]
    assert_same(features, uncached(root, monkeypatch))
    assert opened(root, reads)[1] == []  # written again


def test_a_cache_directory_that_cannot_be_written_still_opens_the_set(tmp_path, reads, monkeypatch, cache):
    root = build(tmp_path / "feat")
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the cache directory would be")
    features, first = opened(root, reads, cache_dir=blocked / "cache")
    assert first == [f"shard-{i:05d}.h5" for i in range(3)]
    assert_same(features, uncached(root, monkeypatch))
    assert opened(root, reads, cache_dir=blocked / "cache")[1] == first
    assert blocked.read_text() == "a file where the cache directory would be"


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_cache_can_be_turned_off(tmp_path, cache, reads, monkeypatch, value):
    root = build(tmp_path / "feat")
    monkeypatch.setenv(meta_cache.ENV, value)
    opened(root, reads)
    assert opened(root, reads)[1] == [f"shard-{i:05d}.h5" for i in range(3)]
    assert not cache.exists()


def test_a_mistyped_switch_is_one_line_naming_it(tmp_path, cache, monkeypatch):
    root = build(tmp_path / "feat")
    monkeypatch.setenv(meta_cache.ENV, "maybe")
    with pytest.raises(
        ConfigError,
        match=r"^\$MELSHARDS_META_CACHE is 'maybe': give 1 \(keep parsed metadata\) or 0 \(off\)$",
    ):
        FeatureSet(root)


def test_a_shard_changed_just_before_it_was_read_is_not_kept(tmp_path, cache, reads, monkeypatch):
    # File times are coarse: a rewrite within the same tick could look like the file read.
    monkeypatch.setattr(meta_cache, "RECENT_NS", 3_600 * 10**9)
    root = build(tmp_path / "feat")
    opened(root, reads)
    assert opened(root, reads)[1] == [f"shard-{i:05d}.h5" for i in range(3)]
    assert not (cache / "meta").exists()


def test_the_cache_keeps_at_most_max_sets_files(tmp_path, cache, reads, monkeypatch):
    monkeypatch.setattr(meta_cache, "MAX_SETS", 2)
    roots = [build(tmp_path / f"feat{i}", seed=i) for i in range(3)]
    for root in roots:
        opened(root, reads)
    names = sorted(p.name for p in (cache / "meta").iterdir())
    assert names == sorted(f"{set_name(str(r.resolve()))}.meta" for r in roots[1:])


def reseal(root: Path) -> None:
    """Make the index agree with a modified shard again (size and sha256), as a crafted set would."""
    index = json.loads((root / INDEX_FILE).read_text())
    for entry in index["shards"]:
        if entry["file"] == SHARD:
            entry["bytes"] = (root / SHARD).stat().st_size
            entry["sha256"] = sha256_file(root / SHARD)
    (root / INDEX_FILE).write_text(json.dumps(index))


def flip_stored_label(root: Path) -> None:
    """Invert a stored byte of ``labels`` in place (its checksum then fails), the file's
    modification time put back."""
    path = root / SHARD
    st = path.stat()
    with h5py.File(path, "r", locking=False) as h5:
        offset = h5["labels"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def add_external_link(root: Path) -> None:
    with h5py.File(root.parent / "outside.h5", "w") as other:
        other["data"] = np.zeros(3)
    with h5py.File(root / SHARD, "r+") as h5:
        h5["extra"] = h5py.ExternalLink(str(root.parent / "outside.h5"), "/data")
    reseal(root)


def grow(root: Path) -> None:
    with h5py.File(root / SHARD, "r+") as h5:
        h5.attrs["note"] = "edited"


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (flip_stored_label, IntegrityError, r"shard-00001\.h5: dataset 'labels' fails its checksum"),
        (add_external_link, FormatError, r"shard-00001\.h5: link 'extra' points outside the shard"),
        (grow, FormatError, r"shard-00001\.h5: shard is \d+ bytes, the index says \d+"),
    ],
)
def test_a_damaged_shard_is_refused_with_its_error_even_with_a_warm_cache(
    tmp_path, cache, reads, monkeypatch, damage, error, message
):
    root = build(tmp_path / "feat")
    opened(root, reads)
    assert opened(root, reads)[1] == []
    damage(root)
    with pytest.raises(error, match=message):
        FeatureSet(root)
    with pytest.raises(error, match=message):
        ShardBatches(root, split="all")
    monkeypatch.setenv(meta_cache.ENV, "0")
    with pytest.raises(error, match=message):
        FeatureSet(root)


def test_a_shard_overwritten_under_batches_opened_from_the_cache_is_an_error(tmp_path, cache, reads):
    root = build(tmp_path / "feat")
    opened(root, reads)
    reads.clear()
    batches = ShardBatches(root, split="all", batch_size=4, shuffle=False, augment=False)
    assert reads == []
    assert batches.features.shards[1].identity is not None
    flip_label(root / SHARD)
    with pytest.raises(
        IntegrityError,
        match=r"shard-00001\.h5: shard was replaced since the feature set was opened; open it again",
    ):
        batches.batch(1)
    batches.close()
