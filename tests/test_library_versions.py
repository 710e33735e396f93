"""Which library versions rebuild a feature set: those that compute its numbers, not h5py's."""

from __future__ import annotations

import importlib.metadata

import pytest

from audio_fixtures import TINY, run_tiny, write_dataset
from melshards.index import read_index
from precompute.plan import COMPUTING_LIBRARIES, library_versions, plan_manifests

REAL_VERSION = importlib.metadata.version


def pretend_versions(monkeypatch, **versions: str) -> None:
    """Make ``importlib.metadata.version`` report ``versions`` (other packages as installed)."""

    def version(name: str) -> str:
        return versions[name] if name in versions else REAL_VERSION(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path)


def planned(dataset) -> tuple[list[str], str]:
    jobs, _ = plan_manifests(dataset["tp"], dataset["fp"], audio_dir=dataset["audio"], config=TINY)
    return [job.fingerprint for job in jobs], jobs[0].setup


def test_the_fingerprints_follow_the_computing_libraries_and_not_h5py(dataset, monkeypatch):
    pretend_versions(monkeypatch, h5py="3.16.0")
    newer_h5py = planned(dataset)
    pretend_versions(monkeypatch, h5py="3.14.0")
    assert library_versions()["h5py"] == "3.14.0"
    assert planned(dataset) == newer_h5py
    for name in ("numpy", "librosa", "scipy", "soundfile", "soxr", "numba"):
        pretend_versions(monkeypatch, h5py="3.14.0", **{name: "0.0.1"})
        fingerprints, setup = planned(dataset)
        assert setup != newer_h5py[1], name
        assert not set(fingerprints) & set(newer_h5py[0]), name
    assert set(COMPUTING_LIBRARIES) == {"numpy", "librosa", "scipy", "soundfile", "soxr", "numba"}


def test_installing_another_h5py_rebuilds_nothing_and_is_recorded(dataset, tmp_path, monkeypatch):
    pretend_versions(monkeypatch, h5py="3.16.0")
    assert run_tiny(dataset, tmp_path / "out").shards_built == 3
    pretend_versions(monkeypatch, h5py="3.14.0")
    summary = run_tiny(dataset, tmp_path / "out")
    assert (summary.shards_built, summary.shards_reused) == (0, 3)
    assert summary.line().startswith(f"{tmp_path / 'out'} is up to date: 9 examples in 3 shards")
    versions = read_index(tmp_path / "out").versions
    assert versions["h5py"] == "3.14.0" and versions["numpy"] == REAL_VERSION("numpy")
    # A new numpy may change the numbers: every shard is built again, and the line says why.
    pretend_versions(monkeypatch, h5py="3.14.0", numpy="9.9.9")
    summary = run_tiny(dataset, tmp_path / "out")
    assert summary.shards_built == 3
    assert "3 built: 3 for config/versions changed)" in summary.line()
