"""Fixtures shared by several test files: small feature sets and audio datasets with known content."""

import h5py
import numpy as np
import pytest

from melshards.index import read_index
from synthetic_features import make_feature_set


@pytest.fixture(scope="session")
def feats(tmp_path_factory):
    # A long directory name: inspect must still fit WIDTH columns.
    root = tmp_path_factory.mktemp("labelled") / ("a-rather-long-directory-name-" * 3) / "feat"
    return make_feature_set(root, n_recordings=10, per_recording=4, n_classes=4, seed=5)


@pytest.fixture(scope="session")
def table(feats):
    """Per-example metadata read with plain h5py, in global example order."""
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
