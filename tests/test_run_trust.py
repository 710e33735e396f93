"""A training run directory that can be trusted: a run resumes only from the files it wrote
(named, hashed, every entry checked), writes nothing through a link planted in its directory,
ends a resume with the files of an uninterrupted run byte for byte, and refuses bad inputs
(a model file that is not one, a batch size beyond the split, a labelled set where windows are
meant) in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import experiments.train_run
from experiments import predict, pseudo, train
from experiments.checkpoints import CHECKPOINT_STATE
from loader import ShardSequence
from loader.state import read_state
from melshards.index_fields import short
from synthetic_features import make_feature_set

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "checkpoint-e00002-b000000.keras"
UNREADABLE = "not a readable Keras model (a .keras file saved by experiments.train)"
NOT_WINDOWS = "not a windows one (sliding windows over whole recordings: precompute windows makes them)"
# One epoch of 4 batches of 8 (32 examples in the train split of fold 0), a checkpoint every 2.
RUN_OPTIONS = {"model": "tiny", "epochs": 1, "batch_size": 8, "seed": 1, "verbose": 0, "quiet": True}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trust")
    return {
        "train": make_feature_set(root / "train", n_recordings=10, per_recording=4, n_classes=4, seed=3),
        "windows": make_feature_set(
            root / "win", n_recordings=3, per_recording=3, n_classes=4, kind="windows"
        ),
        "one": make_feature_set(root / "one", n_recordings=1, per_recording=3, n_classes=4, kind="windows"),
    }


@pytest.fixture(scope="module")
def interrupted(sets, tmp_path_factory) -> Path:
    """A run killed after its checkpoint at the end of epoch 1 (of 1), before ``metrics.json``:
    ``checkpoint.loader.json`` at (2, 0), its model file, ``history.csv`` (1 row), ``model.keras``,
    ``run.json``, ``batches.log`` (4 lines)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"

    def stop(*args, **kwargs):
        raise Interrupted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiments.train_run, "finish_run", stop)
        with pytest.raises(Interrupted):
            train.train(sets["train"], out=out, checkpoint_every=2, batch_log=True, **RUN_OPTIONS)
    return out


@pytest.fixture
def run(interrupted, tmp_path) -> Path:
    """A copy of ``interrupted`` to tamper with."""
    copy = tmp_path / "run"
    shutil.copytree(interrupted, copy)
    return copy


def error_line(capsys, prog: str = "experiments.train") -> str:
    """The one line of a user error, without its prefix."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: "), captured.err
    return lines[0].removeprefix(f"{prog}: error: ")


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))  # NaN as the bare token, which json reads back


# -- item: a run resumes only from the files it wrote ---------------------------------------------


def test_the_untouched_checkpoint_resumes(run, capsys):
    assert train.main(["--resume", str(run), "-q"]) == 0
    assert capsys.readouterr().out.startswith("tiny: val_lwlrap ")
    assert sorted(p.name for p in run.iterdir()) == [
        "batches.log",
        "curves.png",
        "history.csv",
        "metrics.json",
        "model.keras",
        "run.json",
        "thresholds.json",
        "validation_scores.npz",
    ]


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_checkpoint_naming_a_model_elsewhere_is_refused(run, tmp_path, capsys, where):
    other = tmp_path / "ref" / "model.keras"
    other.parent.mkdir()
    shutil.copyfile(run / MODEL_NAME, other)  # a good model: loaded before
    name = str(other) if where == "absolute" else "../ref/model.keras"
    edit_json(run / CHECKPOINT_STATE, lambda d: d.update(model=name))
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == (
        f"{run / CHECKPOINT_STATE} model: expected '{MODEL_NAME}', the model file of the loader's "
        f"position, got {short(name)}; a run resumes only from files it wrote"
    )
    assert not (run / "metrics.json").exists()


def test_a_model_file_with_other_bytes_is_refused(run, capsys):
    model = keras.saving.load_model(run / MODEL_NAME)  # a Keras model, but not the checkpoint's
    model.set_weights([w + 1 for w in model.get_weights()])
    (run / MODEL_NAME).unlink()
    model.save(run / MODEL_NAME)
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == (
        f"{run / MODEL_NAME}: its bytes disagree with the sha256 recorded in {run / CHECKPOINT_STATE}; "
        "refusing to resume from it"
    )


def test_a_model_file_that_is_a_link_is_refused(run, tmp_path, capsys):
    outside = tmp_path / "outside.keras"
    (run / MODEL_NAME).rename(outside)  # the very bytes recorded, but not a file of the run
    (run / MODEL_NAME).symlink_to(outside)
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == (
        f"{run / MODEL_NAME}: is a symbolic link; a run reads back only the files it wrote (remove it)"
    )


# -- item: every entry read back is checked ------------------------------------------------------


def _without(key):
    return lambda d: d.pop(key)


def _set(path: str, value):
    def change(document):
        *parents, last = path.split(".")
        for name in parents:
            document = document[name]
        document[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_without("model_sha256"), ": malformed: missing model_sha256"),
        (_without("variables"), ": malformed: missing variables"),
        (_set("variables.metrics", [1.0, 2.0]), " variables.metrics: 2 values for the model's 6 variables"),
        (_set("variables.metrics", [float("nan")] * 6), " variables.metrics[0]: nan is not finite"),
        (
            _set("variables.seed_generators", [[1, 2, 3]]),
            " variables.seed_generators[0]: expected shape (2,), got (3,)",
        ),
        (_set("variables.seed_generators", "x"), " variables.seed_generators: expected a list, got 'x'"),
        (
            _set("fit.history.val_loss", [float("nan")]),
            " fit.history.val_loss: value 0 is nan, not a finite number",
        ),
        (_set("fit.history.loss", "0.5"), " fit.history.loss: expected a list of numbers"),
        (
            _set("fit.history.val_lwlrap", [0.5, 0.6]),
            " fit.history.val_lwlrap: 2 values, but loss has 1 (one per epoch)",
        ),
        (
            _set("fit.train_seconds", []),
            " fit.train_seconds: 0 values, expected one per epoch of the history (1)",
        ),
        (_set("fit.stopped", "no"), " fit.stopped: expected true or false, got 'no'"),
        (
            _without("fit"),
            " fit: malformed: missing fit_seconds, history, partial_train_seconds, seconds, stopped, train_seconds",
        ),
        (_set("fit.seconds", -1), " fit.seconds: expected a finite number of seconds >= 0, got -1"),
        (
            _set("fit.history", {"loss": [0.5, 0.4], "val_lwlrap": [0.5, 0.6]}),
            " fit.history: 2 epochs, but the loader state's next epoch is 2 (expected 3)",
        ),
    ],
)
def test_a_bad_checkpoint_entry_is_one_line_naming_it(run, capsys, change, message):
    edit_json(run / CHECKPOINT_STATE, change)
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == f"{run / CHECKPOINT_STATE}{message}"
    assert not (run / "metrics.json").exists()


def test_a_truncated_model_file_is_one_line(run, capsys):
    path = run / MODEL_NAME
    path.write_bytes(path.read_bytes()[:5000])
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == (
        f"{path}: its bytes disagree with the sha256 recorded in {run / CHECKPOINT_STATE}; refusing to resume from it"
    )
    # Even with its hash recorded, a truncated archive is one line.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    edit_json(run / CHECKPOINT_STATE, lambda d: d.update(model_sha256=digest))
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert (
        error_line(capsys)
        == f"{path}: cannot restore the checkpoint: not a Keras model of this run (BadZipFile)"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["train"].pop("lr"), " train: malformed: missing lr"),
        (lambda d: d["train"].update(epochs="three"), " train: epochs must be an integer >= 1, got 'three'"),
        (lambda d: d["train"].update(augment="no"), " train augment: expected true or false, got 'no'"),
        (lambda d: d["train"].update(features=5), " train features: expected a string, got 5"),
        (lambda d: d["train"].update(mixup=float("nan")), " train: mixup must be finite, got nan"),
        (lambda d: d.update(other=1), ": malformed: unknown other"),
        (lambda d: d.update(train=[1]), " train: expected a mapping, got list"),
    ],
)
def test_a_bad_run_json_is_one_line_naming_the_field(run, capsys, change, message):
    edit_json(run / "run.json", change)
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == f"{run / 'run.json'}{message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 0 abc\n", "line 1: expected 'EPOCH INDEX SHA256' and a newline, got b'1 0 abc\\n'"),
        ("", None),  # an empty log is a log
        (
            "1 0 " + "a" * 64,
            "line 1: expected 'EPOCH INDEX SHA256' and a newline, got " + short(b"1 0 " + b"a" * 64),
        ),
        ("1 0 " + "a" * 64 + "\nx\n", "line 2: expected 'EPOCH INDEX SHA256' and a newline, got b'x\\n'"),
    ],
)
def test_a_bad_batch_log_is_one_line_naming_the_line(run, capsys, text, message):
    (run / "batches.log").write_text(text)
    if message is None:
        assert train.main(["--resume", str(run), "-q"]) == 0
        assert (run / "batches.log").read_text() == ""
        return
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == f"{run / 'batches.log'} {message}"


def test_a_history_shorter_than_the_checkpoint_is_refused(run, capsys):
    history = run / "history.csv"
    history.write_bytes(history.read_bytes().splitlines(keepends=True)[0])  # the header alone
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert error_line(capsys) == f"{history}: holds 0 epoch row(s), fewer than the checkpoint's 1"


# -- item: nothing is written through a link -----------------------------------------------------

WRITTEN = [
    "model.keras",
    "curves.png",
    "history.csv",
    "metrics.json",
    "run.json",
    "batches.log",
    "thresholds.json",
    "validation_scores.npz",
    CHECKPOINT_STATE,
]


def test_a_run_writes_nothing_through_links_planted_in_its_directory(sets, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    victims = {}
    names = [*WRITTEN, "checkpoint-e00001-b000002.keras", MODEL_NAME]
    names += [f".{name}.{os.getpid()}.tmp" for name in WRITTEN]  # the temp names this process uses
    for name in names:
        victim = tmp_path / f"victim-{name.strip('.')}"
        victim.write_text("precious\n")
        (out / name).symlink_to(victim)
        victims[name] = victim
    train.train(sets["train"], out=out, checkpoint_every=2, batch_log=True, **RUN_OPTIONS)
    assert all(v.read_text() == "precious\n" for v in victims.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN[:-1])
    assert not any(p.is_symlink() for p in out.iterdir())
    keras.saving.load_model(out / "model.keras", compile=False)  # a model, written by the run
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize("name", ["history.csv", "batches.log"])
def test_a_resumed_run_does_not_read_a_log_through_a_link(run, tmp_path, capsys, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / name).unlink()
    (run / name).symlink_to(victim)
    assert train.main(["--resume", str(run), "-q"]) == 2
    assert (
        error_line(capsys)
        == f"{run / name}: is a symbolic link; a run reads back only the files it wrote (remove it)"
    )
    assert victim.read_text() == "precious\n"


def test_a_submission_replaces_a_link_and_leaves_its_target(interrupted, sets, tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    out = tmp_path / "submission.csv"
    out.symlink_to(victim)
    predict.predict(sets["windows"], model=interrupted / "model.keras", out=out, quiet=True)
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and out.read_text().startswith("recording_id,s0,s1,s2,s3\n")


# -- item: a resumed run's files are an uninterrupted run's, byte for byte ----------------------

KILL_ARGS = ["--model", "tiny", "--epochs", "3", "--batch-size", "4", "--seed", "1", "--mixup", "0.5"]
KILL_ARGS += ["--checkpoint-every", "0", "--batch-log", "--verbose", "0"]
TIMINGS = ("seconds", "fit_seconds", "train_seconds", "samples_per_second")


def run_train(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.train", *argv]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_at_first_checkpoint(process: subprocess.Popen, state: Path, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.communicate()


def test_a_run_killed_at_an_epoch_boundary_resumes_to_the_same_bytes(sets, tmp_path, monkeypatch):
    # Both runs are "run" in a directory of their own: run.json and metrics.json name it alike.
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    killed.mkdir()
    argv = ["--features", str(sets["train"]), "--out", "run", *KILL_ARGS]
    monkeypatch.chdir(clean)
    assert train.main(argv) == 0

    kill_at_first_checkpoint(run_train(argv, killed), killed / "run" / CHECKPOINT_STATE)
    state = read_state(killed / "run" / CHECKPOINT_STATE)[0]
    assert state.batch == 0 and state.epoch >= 2, "the test wants a kill at an epoch's end"
    resumed = run_train(["--resume", "run"], killed)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    a, b = clean / "run", killed / "run"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in ("history.csv", "batches.log", "run.json", "curves.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert b"\r\n" in (b / "history.csv").read_bytes() and b"\n" not in (
        b / "history.csv"
    ).read_bytes().replace(b"\r\n", b"")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (a, b)]
    for m in metrics:
        for key in TIMINGS:
            del m[key]
    assert metrics[0] == metrics[1] and list(metrics[0]) == list(metrics[1])
    weights = [keras.saving.load_model(d / "model.keras", compile=False).get_weights() for d in (a, b)]
    for x, y in zip(*weights, strict=True):
        np.testing.assert_array_equal(x, y)


# -- item: bad inputs are one line ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_init_from_a_file_that_is_no_model_is_one_line(interrupted, sets, tmp_path, capsys, kind):
    path = tmp_path / "notes.keras"
    if kind == "text":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    else:
        path.write_bytes((interrupted / "model.keras").read_bytes()[:3000])
    argv = ["--features", str(sets["train"]), "--out", str(tmp_path / "r"), "--init-from", str(path), "-q"]
    assert train.main(argv) == 2
    assert error_line(capsys) == f"{path}: init_from: {UNREADABLE}"


@pytest.mark.parametrize("size", ["1000000000", "99999999999999999999"])
def test_a_batch_size_beyond_the_split_is_one_line(sets, tmp_path, capsys, size):
    out = tmp_path / "r"
    argv = ["--features", str(sets["train"]), "--out", str(out), "--batch-size", size, "-q"]
    assert train.main(argv) == 2
    assert error_line(capsys) == f"batch size {size} is larger than the 32 examples of the train split"
    assert not out.exists()


def test_predict_names_the_directory_given_as_out(interrupted, sets, tmp_path, capsys):
    out = tmp_path / "dir"
    out.mkdir()
    argv = [
        "--model",
        str(interrupted / "model.keras"),
        "--features",
        str(sets["windows"]),
        "--out",
        str(out),
    ]
    assert predict.main([*argv, "-q"]) == 2
    assert error_line(capsys, "experiments.predict") == f"{out}: is a directory, not a file name to write"
    assert list(out.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["dir"]


def test_predict_calls_a_truncated_model_unreadable(interrupted, sets, tmp_path, capsys):
    model = tmp_path / "model.keras"
    model.write_bytes((interrupted / "model.keras").read_bytes()[:3000])
    argv = ["--model", str(model), "--features", str(sets["windows"]), "--out", str(tmp_path / "s.csv"), "-q"]
    assert predict.main(argv) == 2
    assert error_line(capsys, "experiments.predict") == f"{model}: {UNREADABLE}"


def test_predict_refuses_a_labelled_set(interrupted, sets, tmp_path, capsys):
    argv = ["--model", str(interrupted / "model.keras"), "--features", str(sets["train"])]
    assert predict.main([*argv, "--out", str(tmp_path / "s.csv"), "-q"]) == 2
    assert error_line(capsys, "experiments.predict") == (
        f"{sets['train']}: features: holds a labelled feature set, {NOT_WINDOWS}"
    )
    assert not (tmp_path / "s.csv").exists()


def test_train_windows_must_be_a_windows_set(sets, tmp_path, capsys):
    argv = [
        "--features",
        str(sets["train"]),
        "--out",
        str(tmp_path / "r"),
        "--windows",
        str(sets["train"]),
        "-q",
    ]
    assert train.main([*argv, "--batch-size", "8"]) == 2
    assert error_line(capsys) == f"{sets['train']}: windows: holds a labelled feature set, {NOT_WINDOWS}"
    assert not (tmp_path / "r").exists()


def test_pseudo_windows_must_be_a_windows_set(sets, tmp_path, capsys):
    argv = [
        "--features",
        str(sets["train"]),
        "--windows",
        str(sets["train"]),
        "--out",
        str(tmp_path / "o"),
        "-q",
    ]
    assert pseudo.main(argv) == 2
    assert (
        error_line(capsys, "python -m experiments.pseudo")
        == f"{sets['train']}: windows: holds a labelled feature set, {NOT_WINDOWS}"
    )
    assert not (tmp_path / "o").exists()


def test_windows_over_none_of_the_training_recordings_say_so(sets, tmp_path, capsys):
    # The fold whose validation split holds rec000, the one recording of the "one" windows set.
    fold = next(
        f for f in range(5) if "rec000" in ShardSequence(sets["train"], split="val", fold=f).recording_id
    )
    argv = ["--features", str(sets["train"]), "--out", str(tmp_path / "r"), "--windows", str(sets["one"])]
    assert train.main([*argv, "--fold", str(fold), "--batch-size", "8", "-q"]) == 2
    assert error_line(capsys) == (
        f"{sets['one']}: windows: the windows cover none of the 8 recordings of the train split of "
        f"{sets['train']} (fold {fold} of 5)"
    )
