"""Frame targets in experiments: the masked frame loss, the sed model, training on frame targets,
events from stitched window scores (frame and clip models), and their metrics."""

import csv
import json
import math

import keras
import numpy as np
import pytest

from commandline.console import EXIT_INTERRUPTED
from experiments import predict, train
from experiments.checkpoints import CHECKPOINT_STATE, LoaderCheckpoint
from experiments.losses import MaskedBinaryCrossentropy
from experiments.metrics import Lwlrap, clip_scores, lwlrap
from experiments.models import build_model, is_frame_model
from experiments.run_fields import run_options
from experiments.sed_events import read_events_csv
from experiments.sed_metrics import event_based, segment_based
from experiments.sed_predict import (
    event_labels,
    frame_step,
    grid_frames,
    median_frames,
    stitch_windows,
    window_steps,
)
from experiments.sequences import score_sequence
from experiments.thresholds import fit_thresholds, read_thresholds, read_validation, refit
from experiments.train_options import TrainOptions
from loader import ShardSequence
from loader.state import read_state
from melshards.errors import ConfigError
from synthetic_features import make_feature_set, synthetic_config


def bce(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


# -- the loss ------------------------------------------------------------------------------------

Y = np.array([[[1, 0], [0, 0], [1, 1]], [[0, 1], [0, 0], [0, 0]]], dtype=np.float32)  # (2, 3, 2)
P = np.array([[[0.9, 0.2], [0.4, 0.3], [0.6, 0.7]], [[0.1, 0.8], [0.5, 0.05], [0.3, 0.6]]], dtype=np.float32)
KNOWN = np.array([[[1, 1], [0, 1], [1, 0]], [[1, 1], [0, 0], [1, 0]]], dtype=np.float32)


def test_masked_frame_loss_ignores_unknown_steps():
    loss = MaskedBinaryCrossentropy(unknown="ignore")
    got = float(loss(Y, P, sample_weight=KNOWN))
    expected = (KNOWN * bce(Y, P)).sum() / KNOWN.sum()  # 8 known (step, class) labels
    assert got == pytest.approx(expected, rel=1e-5)
    # What the model scores, or what y says, at an unknown step changes nothing.
    p2, y2 = P.copy(), Y.copy()
    p2[KNOWN == 0], y2[KNOWN == 0] = 0.99, 1.0
    assert float(loss(y2, p2, sample_weight=KNOWN)) == pytest.approx(got, rel=1e-6)


def test_masked_frame_loss_weights_unknown_steps_as_negatives():
    loss = MaskedBinaryCrossentropy(unknown="negative", unknown_weight=0.25)
    weight = KNOWN + (1 - KNOWN) * 0.25
    expected = (weight * bce(Y, P)).sum() / weight.sum()
    assert float(loss(Y, P, sample_weight=KNOWN)) == pytest.approx(expected, rel=1e-5)


def test_frame_scores_against_clip_targets_are_pooled_by_the_maximum():
    loss = MaskedBinaryCrossentropy(unknown="ignore")
    y, known = Y.max(axis=1), KNOWN.max(axis=1)
    expected = (known * bce(y, P.max(axis=1))).sum() / known.sum()
    assert float(loss(y, P, sample_weight=known)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("unknown", "fill"), [("ignore", 0.0), ("negative", 0.25)])
def test_the_clip_term_charges_each_crops_maximum_against_its_clip_label(unknown, fill):
    loss = MaskedBinaryCrossentropy(unknown=unknown, unknown_weight=0.25, clip_weight=0.5)
    weight = KNOWN + (1 - KNOWN) * fill
    frame = (weight * bce(Y, P)).sum() / weight.sum()
    # Clip labels: crop 0 holds class 0 and 1, crop 1 class 1. A positive clip counts in full;
    # a negative one (none here) would count with its smallest step weight.
    clip_y, clip_p = Y.max(axis=1), P.max(axis=1)
    clip_w = np.maximum(clip_y, weight.min(axis=1))
    np.testing.assert_array_equal(clip_w, [[1, 1], [fill, 1]])
    clip = (clip_w * bce(clip_y, clip_p)).sum() / clip_w.sum()
    got = float(loss(Y, P, sample_weight=KNOWN))
    assert got == pytest.approx(frame + 0.5 * clip, rel=1e-5)
    # Without a mask every clip counts; with weight 0 the frame term stands alone.
    plain = bce(Y, P).mean() + 0.5 * bce(clip_y, clip_p).mean()
    assert float(loss(Y, P)) == pytest.approx(plain, rel=1e-5)
    assert float(
        MaskedBinaryCrossentropy(unknown=unknown, unknown_weight=0.25)(Y, P, sample_weight=KNOWN)
    ) == (pytest.approx(frame, rel=1e-5))


def test_the_clip_term_leaves_clip_targets_and_the_config_as_they_were():
    loss = MaskedBinaryCrossentropy(unknown="ignore", clip_weight=2.0)
    y, known = Y.max(axis=1), KNOWN.max(axis=1)
    expected = (known * bce(y, P.max(axis=1))).sum() / known.sum()
    assert float(loss(y, P, sample_weight=known)) == pytest.approx(expected, rel=1e-5)
    again = MaskedBinaryCrossentropy.from_config(loss.get_config())
    assert (again.clip_weight, again.unknown) == (2.0, "ignore")
    with pytest.raises(ConfigError, match=r"^clip_weight must be >= 0, got -1$"):
        MaskedBinaryCrossentropy(clip_weight=-1)


def test_lwlrap_of_frame_scores_is_that_of_their_clip_scores():
    metric = Lwlrap()
    metric.update_state(Y, P)
    assert float(metric.result()) == pytest.approx(lwlrap(Y.max(axis=1), P.max(axis=1)), abs=1e-6)
    np.testing.assert_array_equal(clip_scores(P), P.max(axis=1))
    np.testing.assert_array_equal(clip_scores(P[:, 0]), P[:, 0])


# -- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "target_step", "steps"),
    [
        ((16, 50, 1), 1, 50),
        ((16, 50, 1), 3, 17),
        ((16, 50, 1), 8, 7),
        ((16, 101, 1), 16, 7),
        ((128, 938, 1), 8, 118),
    ],
)
@pytest.mark.parametrize("name", ["sed", "sed_gated"])
def test_sed_gives_one_score_per_step_of_target_step_frames(name, shape, target_step, steps):
    model = build_model(name, input_shape=shape, n_classes=5, target_step=target_step)
    assert model.output_shape == (None, steps, 5)
    x = np.random.default_rng(0).random((2, *shape)).astype("float16")
    scores = keras.ops.convert_to_numpy(model(x, training=False))
    assert scores.shape == (2, steps, 5) and scores.dtype == np.float32
    assert np.all((scores > 0) & (scores < 1))
    assert is_frame_model(name) and not is_frame_model("baseline")


def test_sed_gated_scores_are_the_clip_gate_times_the_step_scores(tmp_path):
    model = build_model("sed_gated", input_shape=(16, 50, 1), n_classes=3, target_step=4)
    parts = keras.Model(model.inputs, [model.get_layer(n).output for n in ("step_scores", "clip_gate")])
    x = np.random.default_rng(4).normal(size=(3, 16, 50, 1)).astype("float32")
    scores = keras.ops.convert_to_numpy(model(x, training=False))
    steps, clip = (keras.ops.convert_to_numpy(t) for t in parts(x, training=False))
    assert steps.shape == (3, 13, 3) and clip.shape == (3, 3)
    np.testing.assert_allclose(scores, steps * clip[:, None, :], rtol=1e-6)
    # A crop's clip score (its maximum over steps) never exceeds the gate of its class.
    assert np.all(scores.max(axis=1) <= clip)
    model.save(tmp_path / "gated.keras")
    again = keras.saving.load_model(tmp_path / "gated.keras", compile=False)  # stock layers only
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_sed_refuses_a_target_step_below_one():
    with pytest.raises(ConfigError, match=r"^target_step must be an integer >= 1, got 0$"):
        build_model("sed", input_shape=(16, 50, 1), n_classes=2, target_step=0)


# -- training on frame targets -------------------------------------------------------------------


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sed")
    labelled = make_feature_set(root / "train", n_recordings=10, per_recording=4, n_classes=4, seed=3)
    windows = make_feature_set(root / "test", n_recordings=3, per_recording=3, n_classes=4, kind="windows")
    return {"train": labelled, "windows": windows, "root": root}


FRAME_ARGS = ["--model", "sed", "--targets", "frames", "--target-step", "8", "--epochs", "2"]
FRAME_ARGS += ["--batch-size", "8", "--seed", "2", "--verbose", "0"]


@pytest.fixture(scope="module")
def frame_run(feature_sets):
    out = feature_sets["root"] / "runs" / "sed"
    assert train.main(["--features", str(feature_sets["train"]), "--out", str(out), *FRAME_ARGS]) == 0
    return out


def test_train_on_frame_targets_records_them_and_scores_clip_lwlrap(frame_run, feature_sets):
    options = json.loads((frame_run / "run.json").read_text())["train"]
    assert (options["model"], options["targets"], options["target_step"]) == ("sed", "frames", 8)
    metrics = json.loads((frame_run / "metrics.json").read_text())
    assert metrics["config"]["train"] == options
    assert metrics["epochs_run"] == 2
    # val_lwlrap is the saved model's clip scores (the maximum over steps) against clip truth.
    model = keras.saving.load_model(frame_run / "model.keras", compile=False)
    assert model.output_shape == (None, 13, 4)  # ceil(101 / 8) steps
    val = ShardSequence(feature_sets["train"], split="val", fold=0, shuffle=False, augment=False)
    truths, scores = [], []
    for x, y in val:
        truths.append(y)
        scores.append(model.predict(x, verbose=0).max(axis=1))
    assert metrics["val_lwlrap"] == pytest.approx(
        lwlrap(np.concatenate(truths), np.concatenate(scores)), abs=1e-6
    )


def test_score_sequence_pools_frame_scores_and_frame_targets(frame_run, feature_sets):
    model = keras.saving.load_model(frame_run / "model.keras", compile=False)
    frames = ShardSequence(feature_sets["train"], split="val", augment=False, targets="frames", target_step=8)
    clips = ShardSequence(feature_sets["train"], split="val", augment=False)
    truth, scores = score_sequence(model, frames)
    np.testing.assert_array_equal(truth, np.concatenate([y for _, y in clips]))
    assert scores.shape == truth.shape


def test_a_frame_run_fits_its_thresholds_on_validation_steps(frame_run, feature_sets):
    # Events are steps above the threshold: the run fits it on the validation steps (score,
    # frame target, known mask of each step of each centred crop), not on the clip maxima.
    model = keras.saving.load_model(frame_run / "model.keras", compile=False)
    val = ShardSequence(
        feature_sets["train"],
        split="val",
        fold=0,
        shuffle=False,
        augment=False,
        targets="frames",
        target_step=8,
        return_mask=True,
    )
    batches = [val[i] for i in range(len(val))]
    scores = np.concatenate([model.predict(b[0], verbose=0) for b in batches]).reshape(-1, 4)
    labels = np.concatenate([b[1] for b in batches]).reshape(-1, 4)
    known = np.concatenate([b[2] for b in batches]).reshape(-1, 4)
    n_val = json.loads((frame_run / "metrics.json").read_text())["n_val"]
    stored = read_validation(frame_run / "validation_scores.npz")
    assert stored["rows"] == "step" and stored["scores"].shape == (n_val * 13, 4)
    np.testing.assert_allclose(stored["scores"], scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(stored["labels"], labels > 0.5)
    np.testing.assert_array_equal(stored["known"], known)
    assert 0 < labels.sum() < labels.size and 0 < known.sum() < known.size
    written = read_thresholds(frame_run / "thresholds.json")
    # The run's unknown labels counted as negatives (unknown="negative", the default): so here.
    assert stored["unknown"] == "negative"
    fit_on = np.ones_like(stored["known"])
    assert written == fit_thresholds(
        stored["scores"], stored["labels"], fit_on, class_names=stored["class_names"]
    )
    assert written.positives == tuple(int(n) for n in ((labels > 0.5) & (known > 0)).sum(axis=0))
    _, said = refit(frame_run)
    assert said == f"{n_val * 13} validation steps"


def test_frame_targets_need_a_frame_model(feature_sets, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--features",
        str(feature_sets["train"]),
        "--out",
        str(out),
        "--model",
        "tiny",
        "--targets",
        "frames",
    ]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "experiments.train: error: model 'tiny' scores whole clips; targets 'frames' need a frame model: sed, sed_gated"
    )
    assert not out.exists()


def test_the_clip_weight_needs_frame_targets(feature_sets, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--features", str(feature_sets["train"]), "--out", str(out), "--clip-weight", "0.5"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "experiments.train: error: clip_weight 0.5 adds a clip term to frame targets; "
        "targets are 'clip' (use targets 'frames' or clip_weight 0)"
    )
    assert not out.exists()
    options = TrainOptions.from_kwargs(features="f", out="o", targets="frames", clip_weight=0.5)
    assert options.loss.clip_weight == 0.5 and options.to_kwargs()["clip_weight"] == 0.5


def test_a_frame_run_resumes_to_the_uninterrupted_result(frame_run, feature_sets, tmp_path, monkeypatch):
    run = tmp_path / "stopped"
    save = LoaderCheckpoint.save

    def save_then_stop(self, next_batch):
        save(self, next_batch)
        if self._epoch == 2 and next_batch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(LoaderCheckpoint, "save", save_then_stop)
    argv = [
        "--features",
        str(feature_sets["train"]),
        "--out",
        str(run),
        *FRAME_ARGS,
        "--checkpoint-every",
        "1",
    ]
    assert train.main(argv) == EXIT_INTERRUPTED
    state, _ = read_state(run / CHECKPOINT_STATE)
    assert (state.epoch, state.batch, state.targets, state.target_step) == (2, 2, "frames", 8)
    monkeypatch.setattr(LoaderCheckpoint, "save", save)
    assert train.main(["--resume", str(run), "--quiet"]) == 0
    assert (run / "history.csv").read_text() == (frame_run / "history.csv").read_text()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (frame_run, run)]
    for m in metrics:
        for key in ("seconds", "fit_seconds", "train_seconds", "samples_per_second"):
            del m[key]
        (
            m["config"]["train"].pop("out"),
            m["config"]["train"].pop("checkpoint_every"),
            m["config"]["train"].pop("quiet"),
        )
    assert metrics[0] == metrics[1]


def test_a_run_recorded_before_frame_targets_reads_as_a_clip_run():
    recorded = TrainOptions.from_kwargs(features="f", out="o").to_kwargs()
    del recorded["targets"], recorded["target_step"]
    options = run_options({"train": recorded}, where="o/run.json")
    assert (options["targets"], options["target_step"]) == ("clip", 8)
    recorded["targets"] = "steps"
    with pytest.raises(
        Exception, match=r"^o/run\.json train: targets must be one of \('clip', 'frames'\), got 'steps'$"
    ):
        run_options({"train": recorded}, where="o/run.json")


# -- stitching and events ------------------------------------------------------------------------


def test_stitching_averages_overlapping_windows_on_the_frame_grid():
    # Two windows of "a" overlapping by 4 frames, one of "b"; crops of 8 frames, steps of 2.
    steps = np.array(
        [
            [[0.1], [0.2], [0.3], [0.4]],
            [[0.5], [0.6], [0.7], [0.8]],
            [[0.9], [0.9], [0.9], [0.9]],
        ]
    )
    got = stitch_windows(
        steps,
        2,
        recording_ids=["a", "a", "b"],
        first_frames=[10, 14, 0],
        crop_frames=8,
        seconds_per_frame=0.5,
    )
    assert got.recordings == ["a", "b"] and got.first.tolist() == [10, 0]
    a = got.scores[0][:, 0]
    expected = [0.1, 0.1, 0.2, 0.2, (0.3 + 0.5) / 2, (0.3 + 0.5) / 2, (0.4 + 0.6) / 2, (0.4 + 0.6) / 2]
    assert a.tolist() == [*expected, 0.7, 0.7, 0.8, 0.8]
    assert got.scores[1][:, 0].tolist() == [0.9] * 8
    # Frame k spans [(k - 1/2), (k + 1/2)] x 0.5 s, cut at 0.
    np.testing.assert_array_equal(got.edges(1)[:3], [0.0, 0.25, 0.75])
    np.testing.assert_array_equal(got.edges(0)[[0, -1]], [4.75, 10.75])


def test_frames_no_window_holds_score_zero():
    steps = np.ones((2, 1, 1))
    got = stitch_windows(
        steps, 3, recording_ids=["a", "a"], first_frames=[0, 5], crop_frames=3, seconds_per_frame=1
    )
    assert got.scores[0][:, 0].tolist() == [1, 1, 1, 0, 0, 1, 1, 1]


def test_a_clip_model_spreads_each_window_score_over_its_crop():
    scores = np.array([[0.2, 0.6], [0.4, 0.0]])
    steps, step = window_steps(scores, 5, None)
    assert step == 5 and steps.shape == (2, 1, 2)
    got = stitch_windows(
        steps, step, recording_ids=["r", "r"], first_frames=[0, 3], crop_frames=5, seconds_per_frame=1
    )
    np.testing.assert_allclose(
        got.scores[0], [[0.2, 0.6]] * 3 + [[0.3, 0.3]] * 2 + [[0.4, 0.0]] * 3, rtol=0, atol=1e-15
    )


def test_frame_grid_and_steps_of_windows():
    config = synthetic_config()  # 100 frames per second, 151 stored frames, crops of 101
    assert grid_frames(config, np.array([0.0, 1.0, 2.5]), 101).tolist() == [25, 125, 275]
    assert frame_step(13, 101) == 8 and frame_step(13, 101, 8) == 8 and frame_step(101, 101) == 1
    with pytest.raises(
        Exception, match=r"gives 13 steps for crops of 101 frames, which a target_step of 4 does not"
    ):
        frame_step(13, 101, 4)
    assert event_labels(["s0", "s12"]) == [0, 12] and event_labels(["s0", "robin"]) == ["s0", "robin"]
    assert [median_frames(s, 0.01) for s in (0.0, 0.05, 0.1, 0.3)] == [1, 5, 11, 31]


# -- predict: events.csv and the event metrics ---------------------------------------------------


def saved_model(path, name, **options):
    build_model(name, input_shape=(16, 101, 1), n_classes=4, **options).save(path)
    return path


def controlled(monkeypatch, outputs):
    monkeypatch.setattr(predict, "window_outputs", lambda model, seq, progress=False: np.asarray(outputs))


def events_rows(path):
    with open(path) as fh:
        return list(csv.reader(fh))


def frame_outputs():
    """Steps of 8 frames for the 9 windows (3 recordings x starts 0, 1, 2 s; crops at grid
    frames 25, 125, 225 of 101 frames): class 2 in steps 3-5 of rec000's second window, class 0
    in the last (5-frame) step of rec001's second window, whose last frame the next window's
    crop holds too (scored 0 there: the mean 0.4 is not above 0.5)."""
    outputs = np.zeros((9, 13, 4), dtype=np.float32)
    outputs[1, 3:6, 2] = 0.9
    outputs[4, 12, 0] = 0.8
    return outputs


def test_predict_writes_the_events_of_controlled_frame_scores(feature_sets, tmp_path, monkeypatch):
    model = saved_model(tmp_path / "model.keras", "sed", target_step=8)
    controlled(monkeypatch, frame_outputs())
    result = predict.predict(feature_sets["windows"], model=model, out=tmp_path / "sub.csv", quiet=True)
    assert result == {"recordings": 3, "windows": 9, "events": 2}
    rows = events_rows(tmp_path / "events.csv")
    assert rows[0] == ["recording_id", "species_id", "t_min", "t_max", "score"]
    got = [(r[0], int(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows[1:]]
    assert got == [
        ("rec000", 2, pytest.approx(1.485), pytest.approx(1.725), pytest.approx(0.9)),  # grid frames 149-172
        ("rec001", 0, pytest.approx(2.205), pytest.approx(2.245), pytest.approx(0.8)),  # grid frames 221-224
    ]
    # The submission is the maximum over each recording's clip scores (max over steps).
    sub = events_rows(tmp_path / "sub.csv")
    assert [float(v) for v in sub[1][1:]] == pytest.approx([0.0, 0.0, 0.9, 0.0])


def test_predict_spreads_a_clip_models_window_scores(feature_sets, tmp_path, monkeypatch, capsys):
    model = saved_model(tmp_path / "model.keras", "tiny")
    outputs = np.zeros((9, 4), dtype=np.float32)
    outputs[1, 3] = 0.7  # rec000's second window: grid frames 125-225, the ends shared (mean 0.35)
    controlled(monkeypatch, outputs)
    predict.main(
        ["--model", str(model), "--features", str(feature_sets["windows"]), "--out", str(tmp_path / "s.csv")]
    )
    assert f"1 event -> {tmp_path / 'events.csv'}\n" in capsys.readouterr().err
    rows = events_rows(tmp_path / "events.csv")[1:]
    assert [(r[0], int(r[1])) for r in rows] == [("rec000", 3)]
    assert (float(rows[0][2]), float(rows[0][3])) == (pytest.approx(1.255), pytest.approx(2.245))


def test_predict_event_options_threshold_median_and_min_duration(feature_sets, tmp_path, monkeypatch):
    model = saved_model(tmp_path / "model.keras", "sed", target_step=8)
    controlled(monkeypatch, frame_outputs())
    out = tmp_path / "sub.csv"
    predict.predict(feature_sets["windows"], model=model, out=out, min_duration=0.1, quiet=True)
    assert [r[0] for r in events_rows(tmp_path / "events.csv")[1:]] == ["rec000"]  # 40 ms dropped
    predict.predict(
        feature_sets["windows"], model=model, out=out, threshold=[0.5, 0.5, 0.95, 0.5], quiet=True
    )
    assert [r[0] for r in events_rows(tmp_path / "events.csv")[1:]] == ["rec001"]
    predict.predict(feature_sets["windows"], model=model, out=out, median=0.09, quiet=True)  # 9 frames
    assert [r[0] for r in events_rows(tmp_path / "events.csv")[1:]] == ["rec000"]
    with pytest.raises(
        Exception, match=r"^threshold: 2 values for 4 classes \(give one, or one per class\)$"
    ):
        predict.predict(feature_sets["windows"], model=model, out=out, threshold=[0.5, 0.5], quiet=True)
    with pytest.raises(ConfigError, match=r"^threshold must be in \[0, 1\], got 1.5$"):
        predict.predict(feature_sets["windows"], model=model, out=out, threshold=1.5)


def write_reference(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"])
        writer.writerows(rows)


def test_metrics_json_gets_the_event_scores_of_the_events_written(
    feature_sets, tmp_path, monkeypatch, capsys
):
    model = saved_model(tmp_path / "model.keras", "sed", target_step=8)
    controlled(monkeypatch, frame_outputs())
    reference = tmp_path / "test_events.csv"
    rows = [["rec000", 2, 1, 1.5, 500, 1.7, 900], ["rec001", 0, 1, 0.3, 500, 0.6, 900]]
    write_reference(reference, [*rows, ["rec002", 1, 1, 2.0, 500, 2.5, 900]])
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"val_lwlrap": 0.5}))
    argv = [
        "--model",
        str(model),
        "--features",
        str(feature_sets["windows"]),
        "--out",
        str(tmp_path / "s.csv"),
    ]
    argv += ["--truth-events", str(reference), "--metrics", str(metrics), "--quiet"]
    assert predict.main(argv) == 0
    written = json.loads(metrics.read_text())
    est, ref = read_events_csv(tmp_path / "events.csv"), read_events_csv(reference)
    assert written["test_segment_f1"] == segment_based(ref, est).overall.f1
    assert written["test_event_f1"] == event_based(ref, est).overall.f1
    assert written["test_event_f1"] == pytest.approx(0.4)  # 1 of 2 estimates matches 1 of 3 calls
    assert (written["events"], written["test_reference_events"], written["val_lwlrap"]) == (2, 3, 0.5)
    assert capsys.readouterr().out == (
        f"3 recordings (9 windows) -> {tmp_path / 's.csv'}; test_segment_f1 "
        f"{written['test_segment_f1']:.4f}, test_event_f1 0.4000 (added to {metrics})\n"
    )


def test_no_event_at_all_scores_zero_and_a_missing_recording_is_an_error(feature_sets, tmp_path, monkeypatch):
    model = saved_model(tmp_path / "model.keras", "sed", target_step=8)
    controlled(monkeypatch, np.zeros((9, 13, 4), dtype=np.float32))
    reference = tmp_path / "ref.csv"
    write_reference(reference, [["rec000", 2, 1, 1.5, 500, 1.7, 900]])
    result = predict.predict(
        feature_sets["windows"], model=model, out=tmp_path / "s.csv", truth_events=reference, quiet=True
    )
    assert (result["events"], result["test_segment_f1"], result["test_event_f1"]) == (0, 0.0, 0.0)
    assert math.isnan(segment_based(read_events_csv(reference), []).overall.f1)  # sed_eval's NaN
    write_reference(reference, [["rec999", 2, 1, 1.5, 500, 1.7, 900]])
    with pytest.raises(Exception, match=r"ref\.csv: 1 recording\(s\) have no prediction, e\.g\. 'rec999'$"):
        predict.predict(feature_sets["windows"], model=model, out=tmp_path / "s.csv", truth_events=reference)
