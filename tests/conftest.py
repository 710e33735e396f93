"""Fixtures shared by several test files: small feature sets and audio datasets with known content.

Every fixture here is session-scoped and read-only: build it once, read it from many tests. A
test that edits, touches, corrupts or deletes files builds its own copy under ``tmp_path`` with
the builders ``synthetic_features.make_feature_set`` and ``audio_fixtures.write_dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pytest

from audio_fixtures import run_tiny, write_dataset
from loader.feature_set import FeatureSet
from melshards.index import read_index
from synthetic_features import LABELLED_SET, make_feature_set

if TYPE_CHECKING:
    from precompute.run import Summary


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """Every cache the tests write (feature-set metadata, remote shards) goes to a temporary
    directory, never to the user's ``~/.cache/melshards``; a test may move it again."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MELSHARDS_CACHE", str(tmp_path_factory.mktemp("melshards-cache")))
    yield
    mp.undo()


# -- synthetic feature sets (synthetic_features.py) ----------------------------------------------


@pytest.fixture(scope="session")
def feats(tmp_path_factory) -> Path:
    """A labelled synthetic feature set under a long directory name (``inspect`` must still fit
    its WIDTH columns): 10 recordings x 4 examples = 40 examples in 5 shards of 8, 16 mels,
    4 classes, seed 5. Used by test_inspection.py and test_pictures.py."""
    root = tmp_path_factory.mktemp("labelled") / ("a-rather-long-directory-name-" * 3) / "feat"
    return make_feature_set(root, n_recordings=10, per_recording=4, n_classes=4, seed=5)


@pytest.fixture(scope="session")
def table(feats):
    """Per-example metadata of ``feats`` read with plain h5py, in global example order: arrays
    ``species``, ``kind``, ``labels``, ``rid``, ``start``, ``t_min``, ``t_max``."""
    index = read_index(feats)
    cols = {k: [] for k in ("species", "kind", "labels", "rid", "start", "t_min", "t_max")}
    for entry in index.shards:
        with h5py.File(feats / entry.file, "r") as h5:
            cols["species"].append(h5["anchor/species_id"][:])
            cols["kind"].append(h5["anchor/kind"][:])
            cols["labels"].append(h5["labels"][:])
            cols["rid"].append(h5["recording_id"].asstr()[:])
            cols["start"].append(h5["start"][:])
            cols["t_min"].append(h5["anchor/t_min"][:])
            cols["t_max"].append(h5["anchor/t_max"][:])
    return {k: np.concatenate(v) for k, v in cols.items()}


@pytest.fixture(scope="session")
def labelled_set(tmp_path_factory) -> Path:
    """The loader's labelled synthetic feature set (``make_feature_set(**LABELLED_SET)``, seed 0):
    10 recordings ``rec000``..``rec009`` x 5 examples = 50 examples, ids 0..49 in storage order,
    8 uncompressed float16 shards of 7 (the last holds 1), 16 mels, 151 stored frames, crops of
    101 (centre offset 25), 4 classes. Used by test_reader.py, test_sequence.py, test_batches.py."""
    return make_feature_set(tmp_path_factory.mktemp("labelled-set") / "fs", **LABELLED_SET)


@pytest.fixture(scope="session")
def labelled_features(labelled_set) -> FeatureSet:
    """``labelled_set`` opened as a ``loader.feature_set.FeatureSet`` (metadata only; no open file)."""
    return FeatureSet(labelled_set)


# -- audio datasets and their precomputed features (audio_fixtures.py) --------------------------


@pytest.fixture(scope="session")
def tone_dataset(tmp_path_factory) -> dict[str, Path]:
    """``write_dataset``: ``audio/rec0.flac``..``rec3.flac`` (8 s at 16 kHz, a tone at
    500 * (species + 1) Hz per event), ``train_tp.csv`` (7 rows) and ``train_fp.csv`` (2 rows);
    the keys are ``audio``, ``tp`` and ``fp``. Used by test_cli.py, test_pipeline.py and
    test_crash_resume.py (through ``tiny_run``)."""
    return write_dataset(tmp_path_factory.mktemp("tones"))


@dataclass(frozen=True)
class TinyRun:
    out: Path  # the finished feature set directory
    paths: dict[str, Path]  # the tone_dataset it was computed from
    summary: Summary  # what run_features returned


@pytest.fixture(scope="session")
def tiny_run(tone_dataset, tmp_path_factory) -> TinyRun:
    """``tone_dataset`` precomputed by ``run_tiny`` (the TINY config) with 2 loky jobs: 9 examples
    (one per TP and FP row) in 3 shards of 3, 4 and 2 windows, no failures. Used by
    test_pipeline.py and test_crash_resume.py as the uninterrupted reference run."""
    out = tmp_path_factory.mktemp("tiny-run") / "feat"
    return TinyRun(out=out, paths=tone_dataset, summary=run_tiny(tone_dataset, out, jobs=2))
