import csv
import inspect
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from experiments import predict, train
from experiments.errors import ExperimentError
from experiments.metrics import lwlrap
from loader import ShardSequence
from melshards.errors import ConfigError
from melshards.index import read_index
from synthetic_features import make_feature_set


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    labelled = make_feature_set(root / "train", n_recordings=10, per_recording=4, n_classes=4, seed=3)
    windows = make_feature_set(root / "test", n_recordings=3, per_recording=3, n_classes=4, kind="windows")
    other_mels = make_feature_set(root / "test8", n_recordings=2, per_recording=2, n_mels=8, kind="windows")
    return {"train": labelled, "windows": windows, "windows8": other_mels, "root": root}


@pytest.fixture(scope="module")
def run_dir(feature_sets):
    out = feature_sets["root"] / "runs" / "tiny"
    argv = ["--features", str(feature_sets["train"]), "--model", "tiny", "--epochs", "1", "--fold", "0"]
    argv += ["--out", str(out), "--batch-size", "8", "--verbose", "0", "--seed", "1"]
    assert train.main(argv) == 0
    return out


def test_train_writes_every_artefact(run_dir, feature_sets):
    for name in ("model.keras", "history.csv", "metrics.json", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    index = read_index(feature_sets["train"])
    assert metrics["fingerprint"] == index.fingerprint
    assert metrics["config"]["features"] == index.config.to_dict()
    assert metrics["config"]["train"]["model"] == "tiny"
    assert metrics["config"]["train"]["epochs"] == 1
    assert metrics["config"]["train"]["unknown"] == "negative"
    assert metrics["n_train"] + metrics["n_val"] == 40
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1
    assert 0.0 <= metrics["val_lwlrap"] <= 1.0 and 0.0 <= metrics["val_top1"] <= 1.0
    assert metrics["seconds"] > 0 and metrics["samples_per_second"] > 0
    with open(run_dir / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and {"loss", "val_loss", "lwlrap", "val_lwlrap"} <= set(rows[0])


def test_train_metrics_describe_the_saved_model(run_dir, feature_sets):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    val = ShardSequence(feature_sets["train"], split="val", fold=0, shuffle=False, augment=False)
    truths, scores = [], []
    for x, y in val:
        truths.append(y)
        scores.append(model.predict(x, verbose=0))
    assert metrics["val_lwlrap"] == pytest.approx(
        lwlrap(np.concatenate(truths), np.concatenate(scores)), abs=1e-6
    )


# What differs between two runs with the same arguments and seed: wall-clock timings.
TIMING_KEYS = ("seconds", "fit_seconds", "train_seconds", "samples_per_second")


def test_train_from_python_matches_the_command_line(run_dir, feature_sets, tmp_path):
    # The same arguments as run_dir's command line, as keyword arguments (a Path, not a str).
    out = tmp_path / "py"
    returned = train.train(
        feature_sets["train"], out=out, model="tiny", epochs=1, fold=0, batch_size=8, verbose=0, seed=1
    )
    written = json.loads((out / "metrics.json").read_text())
    assert returned == written
    for name in ("model.keras", "history.csv", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert written["epochs_run"] == 1 and written["best_epoch"] == 1
    assert 0.0 <= written["val_lwlrap"] <= 1.0 and 0.0 <= written["val_top1"] <= 1.0
    assert written["n_train"] + written["n_val"] == 40 and written["model"] == "tiny"
    assert written["fingerprint"] == read_index(feature_sets["train"]).fingerprint
    assert set(written["val_class_lwlrap"]) == set(written["val_class_weight"]) == {"s0", "s1", "s2", "s3"}
    assert written["config"]["class_names"] == ["s0", "s1", "s2", "s3"]
    assert written["config"]["train"]["features"] == str(feature_sets["train"])
    assert written["config"]["train"]["out"] == str(out)

    # Training is deterministic for a seed (checked: two runs agree to the last bit), so the
    # Python call must write exactly what the command line wrote, timings and --out aside.
    cli = json.loads((run_dir / "metrics.json").read_text())
    assert list(written) == list(cli) and list(written["config"]["train"]) == list(cli["config"]["train"])
    for metrics in (written, cli):
        for key in TIMING_KEYS:
            del metrics[key]
        del metrics["config"]["train"]["out"]
    assert written == cli


def test_train_defaults_are_the_command_line_defaults():
    params = inspect.signature(train.train).parameters
    assert params["features"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in params.items() if name != "features")
    cli = vars(train.parse_args(["--features", "F", "--out", "O"]))
    assert set(params) == set(cli)  # every command-line option is a parameter, and no more
    defaults = {name: p.default for name, p in params.items() if name not in ("features", "out")}
    assert defaults == {name: v for name, v in cli.items() if name not in ("features", "out")}
    assert defaults["epochs"] == 40 and defaults["model"] == "baseline" and defaults["verbose"] == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"fold": 5}, "fold must be in [0, 5), got 5"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"mixup": 1.5}, "mixup must be in [0, 1], got 1.5"),
        ({"unknown": "positive"}, "unknown must be one of negative, ignore, got 'positive'"),
        ({"verbose": 3}, "verbose must be 0, 1 or 2, got 3"),
    ],
)
def test_train_from_python_refuses_bad_parameters(feature_sets, tmp_path, bad, message):
    with pytest.raises(ConfigError) as info:
        train.train(feature_sets["train"], out=tmp_path / "run", model="tiny", **bad)
    assert str(info.value) == message
    assert not (tmp_path / "run").exists()


def test_predict_from_python_matches_the_command_line(run_dir, feature_sets, tmp_path, capsys):
    model = run_dir / "model.keras"
    result = predict.predict(feature_sets["windows"], model=model, out=tmp_path / "py" / "s.csv", quiet=True)
    events = (tmp_path / "py" / "events.csv").read_text()
    assert result == {"recordings": 3, "windows": 9, "events": events.count("\n") - 1}
    argv = ["--model", str(model), "--features", str(feature_sets["windows"])]
    assert predict.main([*argv, "--out", str(tmp_path / "cli" / "s.csv"), "--quiet"]) == 0
    assert (tmp_path / "py" / "s.csv").read_text() == (tmp_path / "cli" / "s.csv").read_text()
    assert (tmp_path / "cli" / "events.csv").read_text() == events
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"batch_size must be an integer >= 1, got 0"):
        predict.predict(feature_sets["windows"], model=model, out=tmp_path / "x.csv", batch_size=0)


def test_max_per_recording_hand_built():
    ids = ["b", "a", "b", "c", "a"]
    scores = np.array(
        [[0.1, 0.9, 0.3], [0.5, 0.2, 0.0], [0.4, 0.1, 0.35], [0.7, 0.7, 0.7], [0.25, 0.6, 0.05]],
        dtype=np.float32,
    )
    got_ids, table = predict.max_per_recording(ids, scores)
    assert got_ids == ["a", "b", "c"]
    expected = np.array([[0.5, 0.6, 0.05], [0.4, 0.9, 0.35], [0.7, 0.7, 0.7]], dtype=np.float32)
    np.testing.assert_array_equal(table, expected)


def write_truth(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["recording_id", "s0", "s1", "s2", "s3"])
        writer.writerows(rows)


def test_predict_writes_submission_and_test_lwlrap(run_dir, feature_sets, tmp_path):
    truth_rows = [["rec000", 1, 0, 0, 1], ["rec001", 0, 1, 0, 0], ["rec002", 0, 0, 1, 0]]
    write_truth(tmp_path / "truth.csv", truth_rows)
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text((run_dir / "metrics.json").read_text())
    out = tmp_path / "sub" / "submission.csv"
    argv = ["--model", str(run_dir / "model.keras"), "--features", str(feature_sets["windows"])]
    argv += ["--out", str(out), "--truth", str(tmp_path / "truth.csv"), "--metrics", str(metrics_path)]
    assert predict.main(argv) == 0

    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["recording_id", "s0", "s1", "s2", "s3"]
    assert [r[0] for r in rows[1:]] == ["rec000", "rec001", "rec002"]
    written = np.array([[float(v) for v in r[1:]] for r in rows[1:]])

    # Independently: score every window, take the maximum per recording by hand.
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    windows = ShardSequence(feature_sets["windows"], split="all", shuffle=False, augment=False)
    scores = np.concatenate([model.predict(x, verbose=0) for x, _ in windows])
    rec = windows.recording_id
    expected = np.stack([scores[rec == r].max(axis=0) for r in ("rec000", "rec001", "rec002")])
    np.testing.assert_allclose(written, expected, atol=5e-7)

    metrics = json.loads(metrics_path.read_text())
    truth = np.array([r[1:] for r in truth_rows])
    assert metrics["test_lwlrap"] == pytest.approx(lwlrap(truth, expected), abs=1e-6)
    assert metrics["test_recordings"] == 3
    assert metrics["val_lwlrap"] == json.loads((run_dir / "metrics.json").read_text())["val_lwlrap"]


def one_error_line(capsys, prog="experiments.predict"):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == ""
    assert "\n" not in err and err.startswith(f"{prog}: error: ")
    return err


def test_predict_missing_model(feature_sets, tmp_path, capsys):
    argv = ["--model", str(tmp_path / "nope.keras"), "--features", str(feature_sets["windows"])]
    assert predict.main(argv + ["--out", str(tmp_path / "s.csv")]) == 2
    assert "nope.keras: no such model file" in one_error_line(capsys)


def test_predict_refuses_features_of_other_shape(run_dir, feature_sets, tmp_path, capsys):
    argv = ["--model", str(run_dir / "model.keras"), "--features", str(feature_sets["windows8"])]
    assert predict.main(argv + ["--out", str(tmp_path / "s.csv")]) == 2
    assert "windows of 8 mels x 101 frames" in one_error_line(capsys)
    assert not (tmp_path / "s.csv").exists()


def test_predict_refuses_features_of_another_config(feature_sets):
    config = read_index(feature_sets["windows"]).config
    trained = dict(config.to_dict(), hop_length=512, fmax=7000.0, shard_size=3)  # shard_size: harmless
    with pytest.raises(ExperimentError) as info:
        predict.check_feature_config(trained, config, metrics_path="m.json", features="F")
    assert str(info.value) == (
        "F: feature config differs from the training features in m.json: "
        "hop_length 512 -> 160, fmax 7000.0 -> 8000.0"
    )


def test_predict_refuses_bad_truth(run_dir, feature_sets, tmp_path, capsys):
    (tmp_path / "truth.csv").write_text("recording_id,s0,s1\nrec000,1,0\n")
    argv = ["--model", str(run_dir / "model.keras"), "--features", str(feature_sets["windows"])]
    argv += ["--out", str(tmp_path / "s.csv"), "--truth", str(tmp_path / "truth.csv"), "--quiet"]
    assert predict.main(argv) == 2
    assert "header must be recording_id,s0,...,s3" in one_error_line(capsys)
    write_truth(tmp_path / "truth.csv", [["rec000", 1, 0, 0, 0], ["rec999", 0, 1, 0, 0]])
    assert predict.main(argv) == 2
    assert "1 recording(s) have no prediction, e.g. 'rec999'" in one_error_line(capsys)


def test_train_errors_are_one_line(feature_sets, tmp_path, capsys):
    base = ["--epochs", "1", "--out", str(tmp_path / "run"), "--verbose", "0"]
    assert train.main(["--features", str(tmp_path / "missing"), *base]) == 2
    assert "no index" in one_error_line(capsys, "experiments.train")
    assert train.main(["--features", str(feature_sets["train"]), "--model", "resnet", *base]) == 2
    assert "unknown model 'resnet'; available models: baseline, sed, sed_gated, tiny, wide" in one_error_line(
        capsys, "experiments.train"
    )
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_training_side_needs_no_librosa_or_joblib():
    # A None entry in sys.modules makes the import fail as if the package were not installed
    # (Keras still tries sklearn, which needs joblib, and copes with its absence).
    code = (
        "import sys\n"
        "for name in ('librosa', 'joblib', 'precompute'):\n"
        "    sys.modules[name] = None\n"
        "import experiments.train, experiments.predict\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_predict_prints_one_line_and_quiet_silences_the_rest(run_dir, feature_sets, tmp_path, capsys):
    argv = ["--model", str(run_dir / "model.keras"), "--features", str(feature_sets["windows"])]
    argv += ["--out", str(tmp_path / "s.csv")]
    assert predict.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == f"3 recordings (9 windows) -> {tmp_path / 's.csv'}\n"
    assert "9 windows of 3 recordings, 1 batch\n" in captured.err
    assert "predict: 100%" in captured.err.replace("\r", "\n")  # the tqdm bar
    assert predict.main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == f"3 recordings (9 windows) -> {tmp_path / 's.csv'}\n"
