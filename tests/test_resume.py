"""Mid-epoch resume: ``loader.state``, the loaders' ``state_dict`` / ``load_state_dict``, the
Keras checkpoint callback and ``python -m experiments.train --resume`` after a SIGKILL."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from experiments import train
from experiments.checkpoints import CHECKPOINT_STATE, LoaderCheckpoint
from experiments.errors import ExperimentError
from loader import ShardBatches, ShardSequence
from loader.sequence import PairedSequence
from loader.state import LoaderState, read_state, write_state
from melshards.errors import ConfigError, FormatError
from synthetic_features import make_feature_set

ROOT = Path(__file__).resolve().parent.parent
# Augmentation and mixup on: every batch depends on (seed, epoch, index) draws.
OPTIONS = {"split": "train", "batch_size": 4, "seed": 3, "augment": {"mixup_p": 0.5}, "return_mask": True}


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """40 examples, 32 in the training split of fold 0: 8 batches of 4 per epoch."""
    return make_feature_set(
        tmp_path_factory.mktemp("resume") / "fs", n_recordings=10, per_recording=4, seed=3
    )


def digest(batch) -> str:
    h = hashlib.sha256()
    for array in batch:
        h.update(np.ascontiguousarray(np.asarray(array)).tobytes())
    return h.hexdigest()


def uninterrupted(root, epochs, **options) -> list[str]:
    """Digests of every batch of ``epochs``, in order, from a fresh loader."""
    seq = ShardBatches(root, lookahead=False, **{**OPTIONS, **options})
    return [digest(seq.batch(i, epoch=e)) for e in epochs for i in range(len(seq))]


# -- the state ---------------------------------------------------------------------------------


def test_state_round_trips_through_a_dict_and_a_file(features, tmp_path):
    seq = ShardBatches(features, **OPTIONS)
    seq.set_epoch(2)
    state = seq.loader_state(next_batch=5)
    assert (state.seed, state.epoch, state.batch, state.rank, state.world_size) == (3, 2, 5, 0, 1)
    assert (state.batch_size, state.batches, state.fingerprint) == (4, 8, seq.fingerprint)
    assert LoaderState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert seq.state_dict(next_batch=5) == state.to_dict()

    path = tmp_path / "state.json"
    write_state(path, state, model="checkpoint-x.keras", fit={"history": {"loss": [0.5]}})
    assert read_state(path) == (state, {"model": "checkpoint-x.keras", "fit": {"history": {"loss": [0.5]}}})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    # The end of an epoch is the start of the next one.
    assert dataclasses.replace(state, batch=8).normalized() == dataclasses.replace(state, epoch=3, batch=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 5}, "loader state: saved with batch_size 4, this loader has 5"),
        ({"seed": 4}, "loader state: saved with seed 3, this loader has 4"),
        ({"split": "all"}, "loader state: saved with batches 8, this loader has 10"),
        ({"rank": 1, "world_size": 2}, "loader state: saved with rank 0, this loader has 1"),
    ],
)
def test_a_state_of_another_setup_is_refused_in_one_line(features, change, message):
    saved = ShardBatches(features, **OPTIONS).state_dict(next_batch=3)
    other = ShardBatches(features, **{**OPTIONS, **change})
    with pytest.raises(ConfigError) as info:
        other.load_state_dict(saved)
    assert str(info.value) == message
    assert (other.epoch, other.start_batch) == (0, 0)


def test_a_state_of_another_feature_set_is_refused(features, tmp_path):
    saved = ShardBatches(features, **OPTIONS).loader_state(next_batch=3)
    other = ShardBatches(
        make_feature_set(tmp_path / "other", n_recordings=10, per_recording=4, n_mels=8, seed=3), **OPTIONS
    )
    with pytest.raises(ConfigError, match=f"^loader state: saved with fingerprint '{saved.fingerprint}', "):
        other.load_state_dict(saved)


def test_bad_state_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(FormatError, match=f"^{path}: no loader state there$"):
        read_state(path)
    path.write_text("{not json")
    with pytest.raises(FormatError, match=f"^{path}: cannot read the loader state: "):
        read_state(path)
    path.write_text(json.dumps({"loader": {"format": "melshards-loader-state", "version": 9}}))
    with pytest.raises(FormatError, match="not a loader state of version 1 .*version 9"):
        read_state(path)
    fields = {"format": "melshards-loader-state", "version": 1, "seed": 0, "epoch": 1, "batch": 9}
    fields |= {"rank": 0, "world_size": 1, "fingerprint": "f", "batch_size": 4, "batches": 8}
    path.write_text(json.dumps({"loader": fields}))
    with pytest.raises(FormatError, match="batch 9 is beyond the 8 batches of an epoch"):
        read_state(path)


# -- numpy and Keras sequences -----------------------------------------------------------------


@pytest.mark.parametrize("stop", [1, 5, 8])  # 8: the saved epoch is done, the next one starts
def test_shard_batches_go_on_from_a_loaded_state(features, stop):
    reference = uninterrupted(features, [2, 3])
    seq = ShardBatches(features, **OPTIONS)
    seq.load_state_dict(seq.state_dict(next_batch=0) | {"epoch": 2, "batch": stop})
    got = [digest(b) for b in seq]
    seq.on_epoch_end()
    got += [digest(b) for b in seq] if stop < 8 else []
    assert got == reference[stop:]
    # Only the first pass over the loaded epoch is short.
    seq.set_epoch(2 if stop < 8 else 3)
    assert len(list(seq)) == 8


def keras_fit(seq, epochs: int = 1) -> list[str]:
    """What one ``model.fit`` call of ``epochs`` epochs asks of a PyDataset, in order (Keras 3's
    EpochIterator): the number of steps, fixed when the call starts, on_epoch_end before the
    first epoch, then on_epoch_begin, the batches and on_epoch_end of each epoch."""
    steps = seq.num_batches
    seq.on_epoch_end()
    batches = []
    for _ in range(epochs):
        seq.on_epoch_begin()
        batches += [digest(seq[i]) for i in range(steps)]
        seq.on_epoch_end()
    return batches


def test_shard_sequence_resumes_in_two_fit_calls(features):
    fresh = ShardSequence(features, **OPTIONS)
    reference = keras_fit(fresh, epochs=3)  # the sequence's epochs 1, 2 and 3

    seq = ShardSequence(features, **OPTIONS)
    seq.load_state_dict(fresh.state_dict(next_batch=0) | {"epoch": 2, "batch": 3})
    first_call = keras_fit(seq)  # fit(initial_epoch=1, epochs=2): the rest of epoch 2
    assert len(first_call) == 5 and seq.epoch == 3
    second_call = keras_fit(seq)  # fit(initial_epoch=2, epochs=3): epoch 3, whole
    assert first_call + second_call == reference[8 + 3 :]


def test_paired_sequence_resumes_with_its_first_sequence(features):
    def paired():
        return PairedSequence(
            ShardSequence(features, **OPTIONS), ShardSequence(features, **{**OPTIONS, "seed": 9})
        )

    fresh = paired()
    reference = keras_fit(fresh, epochs=2)  # epochs 1 and 2
    seq = paired()
    seq.load_state_dict(fresh.state_dict(next_batch=0) | {"epoch": 1, "batch": 6})
    assert keras_fit(seq) + keras_fit(seq) == reference[6:]
    assert (seq.first.epoch, seq.second.epoch) == (3, 3)


# -- the Keras checkpoint callback -------------------------------------------------------------


def small_model(seq) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((seq.config.n_mels, seq.crop_frames, 1))
    x = keras.layers.Dropout(0.3)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(seq.classes), activation="sigmoid")(x))
    model.compile(keras.optimizers.AdamW(1e-2), "binary_crossentropy", metrics=["binary_accuracy"])
    return model


def every_variable(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v) for v in [*model.variables, *model.optimizer.variables]]


def test_checkpoint_pairs_the_model_with_the_loader_state(features, tmp_path):
    options = {**OPTIONS, "return_mask": False}
    seq = ShardSequence(features, **options)
    model = small_model(seq)
    checkpoint = LoaderCheckpoint(seq, tmp_path, every=3, extra=lambda: {"note": 1})
    model.fit(seq, epochs=1, callbacks=[checkpoint], shuffle=False, verbose=0)
    # Saved after batches 3 and 6, then at the epoch's end: the last one only is kept.
    state, extra = read_state(tmp_path / CHECKPOINT_STATE)
    assert (state.epoch, state.batch) == (2, 0)  # Keras' first epoch is the sequence's epoch 1
    assert extra["model"] == "checkpoint-e00002-b000000.keras" and extra["fit"] == {"note": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [extra["model"], CHECKPOINT_STATE]

    restored_seq = ShardSequence(features, **options)
    restored = small_model(restored_seq)
    assert LoaderCheckpoint(restored_seq, tmp_path).restore(restored) == {"note": 1}
    assert (restored_seq.epoch, restored_seq.start_batch) == (2, 0)
    for a, b in zip(every_variable(model), every_variable(restored), strict=True):
        np.testing.assert_array_equal(a, b)  # weights, optimizer, dropout seed state


def test_checkpoint_restore_without_a_checkpoint_is_none(features, tmp_path):
    seq = ShardSequence(features, **OPTIONS)
    assert LoaderCheckpoint(seq, tmp_path).restore(small_model(seq)) is None


# -- PyTorch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_torch_loader_goes_on_from_a_saved_state(features, num_workers):
    pytest.importorskip("torch")
    from loader.torch import ShardDataset

    reference = uninterrupted(features, [1, 2])
    data = ShardDataset(features, **OPTIONS)
    data.set_epoch(1)
    seen = []
    for batch in data.loader(num_workers=num_workers):  # prefetches ahead of what it yields
        seen.append(digest(t.numpy() for t in batch))
        if len(seen) == 3:
            saved = data.state_dict()
            break
    data.close()
    assert (saved["epoch"], saved["batch"]) == (1, 3)

    resumed = ShardDataset(features, **OPTIONS)
    resumed.load_state_dict(json.loads(json.dumps(saved)))
    loader = resumed.loader(num_workers=num_workers, persistent_workers=num_workers > 0)
    assert len(loader) == 5
    for epoch in (1, 2):
        resumed.set_epoch(epoch)
        seen += [digest(t.numpy() for t in batch) for batch in loader]
    assert seen == reference
    assert resumed.state_dict()["batch"] == 8 and len(loader) == 8
    resumed.close()


# -- python -m experiments.train --resume, after a SIGKILL ---------------------------------------

TRAIN_ARGS = ["--model", "tiny", "--epochs", "3", "--batch-size", "4", "--seed", "1", "--mixup", "0.5"]
TRAIN_ARGS += ["--checkpoint-every", "1", "--batch-log", "--verbose", "0"]


def run_train(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.train", *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_mid_epoch(process: subprocess.Popen, state: Path, *, timeout: float = 120) -> None:
    """SIGKILL ``process`` once its loader state is inside its second epoch (batch 1 or more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            loader = json.loads(state.read_text())["loader"]
        except (OSError, ValueError, KeyError):
            loader = None
        if loader and loader["epoch"] >= 2 and loader["batch"] >= 1:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.communicate()


def test_a_killed_run_resumes_to_the_uninterrupted_result(features, tmp_path):
    # The uninterrupted run, in this process (its numbers match a subprocess's: test_experiments).
    clean = tmp_path / "clean"
    assert train.main(["--features", str(features), "--out", str(clean), *TRAIN_ARGS]) == 0

    run = tmp_path / "killed"
    kill_mid_epoch(
        run_train(["--features", str(features), "--out", str(run), *TRAIN_ARGS]), run / CHECKPOINT_STATE
    )
    state, extra = read_state(run / CHECKPOINT_STATE)
    assert state.epoch >= 2 and 0 < state.batch < 8, "killed at an epoch's end: the test wants mid-epoch"
    assert (run / extra["model"]).is_file() and not (run / train.METRICS_FILE).exists()

    resumed = run_train(["--resume", str(run)])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    # The resumed process trained exactly the batches after the checkpoint, and the run ends as
    # the uninterrupted one: the same batches, epoch logs (losses and metrics to the last bit,
    # the resumed epoch's running metrics included), best model and metrics.
    log = [line.split() for line in (run / train.BATCH_LOG_FILE).read_text().splitlines()]
    assert [(int(e), int(i)) for e, i, _ in log] == [(e, i) for e in (1, 2, 3) for i in range(8)]
    assert (run / train.BATCH_LOG_FILE).read_text() == (clean / train.BATCH_LOG_FILE).read_text()
    assert (run / train.HISTORY_FILE).read_text() == (clean / train.HISTORY_FILE).read_text()
    with open(run / train.HISTORY_FILE) as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["0", "1", "2"]
    best = [keras.saving.load_model(d / train.MODEL_FILE, compile=False).get_weights() for d in (clean, run)]
    for a, b in zip(*best, strict=True):
        np.testing.assert_array_equal(a, b)
    metrics = [json.loads((d / train.METRICS_FILE).read_text()) for d in (clean, run)]
    for m in metrics:
        for key in ("seconds", "fit_seconds", "train_seconds", "samples_per_second"):
            del m[key]
        del m["config"]["train"]["out"]
    assert metrics[0] == metrics[1]
    assert sorted(p.name for p in run.iterdir()) == sorted(
        p.name for p in clean.iterdir()
    )  # no checkpoint left
    assert out.startswith("tiny: val_lwlrap ")


def test_resume_with_nothing_to_resume_is_one_line(features, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train.main(["--resume", str(empty)]) == 2
    assert (
        capsys.readouterr().err
        == f"experiments.train: error: {empty}: no run.json, so no run to resume there\n"
    )

    started = tmp_path / "started"  # killed before its first checkpoint
    started.mkdir()
    options = {
        **vars(train.parse_args(["--features", str(features), "--out", str(started)])),
        "model": "tiny",
    }
    del options["resume"]
    (started / train.RUN_FILE).write_text(json.dumps({"train": options}))
    assert train.main(["--resume", str(started)]) == 2
    message = f"{started}: no checkpoint to resume from (no {CHECKPOINT_STATE}); start the run again"
    assert capsys.readouterr().err == f"experiments.train: error: {message}\n"

    with pytest.raises(
        ConfigError, match=f"^{started / train.RUN_FILE}: the run started with lr 0.005, not 0.1$"
    ):
        train.train(features, out=started, model="tiny", lr=0.1, resume=True)
    (started / train.METRICS_FILE).write_text("{}")
    with pytest.raises(
        ExperimentError, match="the run is finished \\(metrics.json is there\\), nothing to resume"
    ):
        train.resume_run(started)


def test_resume_takes_no_other_option(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", "runs/x", "--lr", "0.1"])
    assert "--resume RUN takes the options from RUN/run.json; drop --lr" in capsys.readouterr().err
    args = train.parse_args(["--resume", "runs/x", "-q"])
    assert args.resume == "runs/x" and args.verbose == 0
