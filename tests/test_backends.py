"""Keras on JAX and PyTorch, and what each side of the project imports.

Keras picks its backend once per process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from reference import ROOT, run_python
from synthetic_features import LABELLED_SET, make_feature_set

BACKENDS = {"jax": "jax", "torch": "torch"}  # backend -> the package it needs


def needs(package: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None,
        reason=f"{package} is not installed (it is in the dev install)",
    )


@pytest.fixture(scope="module")
def feature_set(tmp_path_factory):
    return make_feature_set(tmp_path_factory.mktemp("backends"), dtype="uint8", **LABELLED_SET)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_model_fit_from_shard_sequence_on_every_backend(backend, feature_set):
    pytest.importorskip(BACKENDS[backend])
    done = run_python(
        """
        import json, sys
        import keras, numpy as np
        from loader import ShardSequence
        seq = ShardSequence(sys.argv[1], split="train", batch_size=8, seed=0)
        x, y = seq[0]
        model = keras.Sequential([
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(y.shape[1], activation="sigmoid"),
        ])
        model.compile(optimizer="adam", loss="binary_crossentropy")
        history = model.fit(seq, epochs=2, shuffle=False, verbose=0)
        print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"],
                          "tensorflow": "tensorflow" in sys.modules}))
        """,
        str(feature_set),
        env={"KERAS_BACKEND": backend},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend and len(result["loss"]) == 2
    assert all(0 < loss < 10 for loss in result["loss"])
    assert not result["tensorflow"]  # a JAX or PyTorch user's process never loads TensorFlow


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_experiments_train_runs_on_every_backend(backend, feature_set, tmp_path):
    pytest.importorskip(BACKENDS[backend])
    out = tmp_path / f"run-{backend}"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--features", str(feature_set), "--model", "tiny"]
        + ["--epochs", "2", "--out", str(out), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["versions"]["backend"] == backend and metrics["epochs_run"] == 2
    assert 0 <= metrics["val_lwlrap"] <= 1


def test_the_precompute_side_and_the_numpy_reader_import_no_training_framework():
    done = run_python(
        """
        import json, sys
        import melshards, melshards.verify
        import precompute, precompute.cli, precompute.run, precompute.job
        import loader, loader.batches, loader.reader
        heavy = ["tensorflow", "keras", "torch", "jax", "matplotlib"]
        print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_shard_sequence_imports_keras_only_when_asked_for(feature_set):
    done = run_python(
        """
        import sys
        import loader
        before = "keras" in sys.modules
        from loader import ShardSequence
        print(before, "keras" in sys.modules, ShardSequence.__module__)
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "loader.sequence"]
