"""Per-class thresholds: the rules on hand-made scores, the fallbacks, thresholds.json, the
training run that writes them, ``python -m experiments.thresholds`` and predict using them."""

import contextlib
import io
import json
import math
import re
import shutil

import numpy as np
import pytest

from commandline.console import plural, setup_logging
from experiments import predict, thresholds, train
from experiments.checkpoints import start_run
from experiments.errors import ExperimentError
from experiments.run_fields import run_options
from experiments.sed_events import read_events_csv
from experiments.thresholds import (
    Thresholds,
    fit_thresholds,
    read_thresholds,
    read_validation,
    refit,
    write_thresholds,
)
from experiments.thresholds_run import column_thresholds, keep_thresholds, validation_known
from experiments.train_options import TrainOptions
from loader import ShardSequence
from melshards.errors import ConfigError
from synthetic_features import make_feature_set


def near(*values):
    """The expected thresholds, to float rounding of the midpoints (0.7 + 0.6) / 2."""
    return pytest.approx(values, abs=1e-12)


def column(*values):
    return np.array(values, dtype=np.float64)[:, None]


# Scores highest first and their labels: F1 of the cuts after 1..6 rows is 0.5, 0.8, 0.67,
# 0.857, 0.75, 0.67; precision 1, 1, 0.67, 0.75, 0.6, 0.5.
SCORES = column(0.9, 0.8, 0.7, 0.6, 0.4, 0.2)
LABELS = column(1, 1, 0, 1, 0, 0)


# -- the rules -----------------------------------------------------------------------------------


def test_f1_threshold_lies_half_way_below_the_best_cut():
    fitted = fit_thresholds(SCORES, LABELS)
    assert fitted.values == near(0.5)  # between 0.6 (the 4th row, F1 6/7) and 0.4
    assert (fitted.source, fitted.positives, fitted.class_names, fitted.rule) == (
        ("fitted",),
        (3,),
        ("s0",),
        "f1",
    )


def test_f1_ties_take_the_highest_threshold():
    # F1 after 3 rows (2 TP, 1 FP, 1 FN) = 4/6 = after 6 rows (3 TP, 3 FP) = 6/9.
    fitted = fit_thresholds(column(0.9, 0.8, 0.7, 0.6, 0.5, 0.4), column(1, 0, 1, 0, 0, 1))
    assert fitted.values == near(0.65)


def test_equal_scores_are_never_split():
    # Splitting the 0.7s after the positive would give F1 1; kept together: 4/5 above them (best),
    # 6/8 with them.
    scores = column(0.9, 0.8, 0.7, 0.7, 0.7, 0.1)
    fitted = fit_thresholds(scores, column(1, 1, 1, 0, 0, 0))
    assert fitted.values == near(0.75)
    assert (scores[:, 0] > fitted.values[0]).tolist() == [True, True, False, False, False, False]


def test_f1_of_the_tie_when_it_is_best():
    fitted = fit_thresholds(column(0.9, 0.8, 0.7, 0.7, 0.1), column(1, 1, 1, 1, 0))
    assert fitted.values == near(0.4)  # every positive, tie included, and not the 0.1 negative


def test_every_example_detected_gives_half_the_lowest_score():
    fitted = fit_thresholds(SCORES, LABELS, rule="precision:0.5")
    assert fitted.values == near(0.1)  # precision 3/6 = 0.5 with every row detected


@pytest.mark.parametrize(
    ("rule", "expected"), [("precision:1", 0.75), ("precision:0.7", 0.5), ("precision:0.75", 0.5)]
)
def test_precision_takes_the_lowest_threshold_that_reaches_it(rule, expected):
    assert fit_thresholds(SCORES, LABELS, rule=rule).values == near(expected)


def test_unreachable_precision_gives_the_highest_negative_score():
    # The best-scored example is a negative: precision never reaches 0.9; 0.95 detects nothing.
    scores, labels = column(0.95, 0.8, 0.7, 0.6, 0.2), column(0, 1, 1, 0, 1)
    fitted = fit_thresholds(scores, labels, rule="precision:0.9")
    assert fitted.values == near(0.95) and fitted.source == ("fitted",)
    assert not (scores > fitted.values[0]).any()


def test_unknown_labels_take_no_part():
    noise_scores = column(0.99, 0.45, 0.01)
    scores = np.vstack([SCORES, noise_scores])
    labels = np.vstack([LABELS, column(0, 1, 1)])
    known = np.vstack([np.ones_like(LABELS), np.zeros((3, 1))])
    for rule in ("f1", "precision:1"):
        assert fit_thresholds(scores, labels, known, rule=rule) == fit_thresholds(SCORES, LABELS, rule=rule)


def test_classes_are_fitted_each_on_its_own_known_labels():
    scores = np.hstack([SCORES, SCORES[::-1]])
    labels = np.hstack([LABELS, LABELS[::-1]])
    known = np.ones_like(labels)
    known[0, 1] = 0  # class 1's lowest-scored negative (0.2) is unknown
    fitted = fit_thresholds(scores, labels, known, class_names=["a", "b"])
    assert fitted.values == near(0.5, 0.5)
    assert fitted.class_names == ("a", "b") and fitted.positives == (3, 3)
    only_b = fit_thresholds(scores[1:, 1:], labels[1:, 1:])
    assert only_b.values == near(0.5)


# -- the fallbacks ---------------------------------------------------------------------------------


def test_a_class_with_one_positive_gets_the_pooled_threshold():
    scores = np.hstack([SCORES, column(0.3, 0.1, 0.9, 0.05, 0.02, 0.01)])
    labels = np.hstack([LABELS, column(1, 0, 0, 0, 0, 0)])
    fitted = fit_thresholds(scores, labels, class_names=["a", "b"])
    # Pooled, highest first: 0.9+ 0.9- 0.8+ 0.7- 0.6+ 0.4- 0.3+ 0.2- 0.1- 0.05- 0.02- 0.01-:
    # F1 of the cuts after the tie, 0.8, 0.7, 0.6, 0.4, 0.3: 2/6, 4/7, 4/8, 6/9, 6/10, 8/11 (best).
    assert fitted.values == near(0.5, 0.25)
    assert fitted.source == ("fitted", "pooled") and fitted.positives == (3, 1)


def test_a_class_without_a_known_negative_is_pooled():
    scores = np.hstack([SCORES, column(0.9, 0.8, 0.7, 0.6, 0.4, 0.2)])
    labels = np.hstack([LABELS, column(1, 1, 1, 1, 0, 0)])
    known = np.hstack([np.ones_like(LABELS), column(1, 1, 1, 1, 0, 0)])
    fitted = fit_thresholds(scores, labels, known)
    assert fitted.source == ("fitted", "pooled") and fitted.positives == (3, 4)


def test_too_few_positives_everywhere_gives_the_default():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3]])
    labels = np.array([[1, 0], [0, 1], [0, 0]])
    fitted = fit_thresholds(scores, labels, min_positives=3)
    assert fitted.values == near(0.5, 0.5) and fitted.source == ("default", "default")
    assert fitted.positives == (1, 1)
    assert fit_thresholds(scores, labels, min_positives=2).source == ("pooled", "pooled")
    none = fit_thresholds(np.zeros((0, 2)), np.zeros((0, 2)))
    assert none.values == (0.5, 0.5) and none.source == ("default", "default") and none.positives == (0, 0)


RULE_FORMS = "threshold rule must be f1 or precision:P with 0 < P <= 1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "f2"}, f"{RULE_FORMS}, got 'f2'"),
        ({"rule": "precision:1.5"}, f"{RULE_FORMS}, got 'precision:1.5'"),
        ({"rule": "precision:0"}, f"{RULE_FORMS}, got 'precision:0'"),
        ({"rule": "precision:nan"}, f"{RULE_FORMS}, got 'precision:nan'"),
        ({"rule": 0.9}, f"{RULE_FORMS}, got 0.9"),
        ({"min_positives": 0}, "min_positives must be an integer >= 1, got 0"),
        ({"class_names": ["a", "b"]}, "class_names: 2 names for 1 classes"),
    ],
)
def test_bad_rules_and_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        fit_thresholds(SCORES, LABELS, **kwargs)


def test_bad_arrays_are_refused():
    with pytest.raises(ConfigError, match=r"^scores must be in \[0, 1\]$"):
        fit_thresholds(SCORES * 2, LABELS)
    with pytest.raises(ConfigError, match=r"^known must hold only 0 and 1$"):
        fit_thresholds(SCORES, LABELS, LABELS * 2)
    with pytest.raises(ConfigError, match=r"must be 2-D arrays of one shape"):
        fit_thresholds(SCORES[:, 0], LABELS[:, 0])


# -- thresholds.json -------------------------------------------------------------------------------

GOOD = Thresholds(
    rule="precision:0.9",
    values=(0.25, 0.5),
    source=("fitted", "default"),
    positives=(4, 0),
    class_names=("robin", "wren"),
)


def test_thresholds_json_round_trip(tmp_path):
    write_thresholds(tmp_path / "thresholds.json", GOOD)
    assert read_thresholds(tmp_path / "thresholds.json") == GOOD
    assert json.loads((tmp_path / "thresholds.json").read_text())["values"] == [0.25, 0.5]


def changed(**fields):
    data = json.loads(GOOD.to_json())
    data.update(fields)
    return data


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({k: v for k, v in changed().items() if k != "positives"}, "missing key 'positives'"),
        (changed(values=[0.25]), "values has 1 entries, but class_names has 2"),
        (changed(values=0.25), "values must be a list, got float"),
        (changed(values=[0.25, 1.5]), "values[1] (class wren) must be in [0, 1], got 1.5"),
        (changed(values=[math.nan, 0.5]), "values[0] (class robin) must be in [0, 1], got nan"),
        (changed(values=[0.25, "0.5"]), "values[1] (class wren) must be in [0, 1], got '0.5'"),
        (
            changed(source=["fitted", "guessed"]),
            "source[1] (class wren) must be one of fitted, pooled, default, got 'guessed'",
        ),
        (changed(positives=[4, -1]), "positives[1] (class wren) must be an integer >= 0, got -1"),
        (changed(rule="f3"), f"rule: {RULE_FORMS}, got 'f3'"),
        (changed(class_names=["robin", "robin"]), "class_names must be distinct strings"),
        ([1, 2], "not a thresholds file (expected a JSON object)"),
    ],
)
def test_bad_thresholds_files_are_one_line_errors(tmp_path, document, message):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ExperimentError, match=f"^{re.escape(f'{path}: {message}')}$"):
        read_thresholds(path)


def test_unreadable_or_missing_thresholds_files(tmp_path):
    (tmp_path / "thresholds.json").write_text("{not json")
    with pytest.raises(ExperimentError, match=r"thresholds\.json: not a thresholds file: Expecting"):
        read_thresholds(tmp_path / "thresholds.json")
    with pytest.raises(ExperimentError, match=r"nothing\.json: no such thresholds file$"):
        read_thresholds(tmp_path / "nothing.json")


# -- predict's columns -----------------------------------------------------------------------------


def test_thresholds_go_to_columns_by_class_name():
    found = column_thresholds(GOOD, ["wren", "robin"], np.array([0, 1]), 2, where="t.json")
    assert found == (0.5, 0.25)
    # Outputs merged into one column (species x songtype): the lowest of theirs.
    assert column_thresholds(GOOD, ["robin", "wren"], np.array([0, 0]), 1, where="t.json") == (0.25,)
    with pytest.raises(ExperimentError, match=r"^t\.json: 2 classes, but the model has 3 outputs$"):
        column_thresholds(GOOD, ["robin", "wren", "owl"], np.array([0, 1, 2]), 3, where="t.json")
    with pytest.raises(ExperimentError, match=r"^t\.json: no threshold for the model's class 'owl'$"):
        column_thresholds(GOOD, ["robin", "owl"], np.array([0, 1]), 2, where="t.json")


# -- the training option ---------------------------------------------------------------------------


def test_threshold_rule_is_an_option_checked_when_made(tmp_path):
    options = TrainOptions.from_kwargs(features="f", out="o", threshold_rule="precision:0.8")
    assert options.keep.threshold_rule == "precision:0.8"
    assert options.to_kwargs()["threshold_rule"] == "precision:0.8"
    with pytest.raises(
        ConfigError, match=r"^threshold rule must be f1 or precision:P with 0 < P <= 1, got 'f0'$"
    ):
        train.train(tmp_path / "f", out=tmp_path / "run", threshold_rule="f0")
    assert not (tmp_path / "run").exists()


def test_a_run_recorded_before_thresholds_reads_as_f1():
    recorded = TrainOptions.from_kwargs(features="f", out="o").to_kwargs()
    del recorded["threshold_rule"]
    assert run_options({"train": recorded}, where="o/run.json")["threshold_rule"] == "f1"


def test_no_validation_examples_leaves_no_thresholds(tmp_path, capsys):
    setup_logging()
    (tmp_path / "thresholds.json").write_text("stale")
    empty = np.zeros((0, 2))
    found = keep_thresholds(
        tmp_path, truth=empty, scores=empty, val_seq=None, class_names=["a", "b"], rule="f1"
    )
    assert found is None and not (tmp_path / "thresholds.json").exists()
    assert (
        capsys.readouterr().err
        == "thresholds: no validation examples, so no thresholds.json (predict uses 0.5)\n"
    )


def test_a_new_run_clears_an_earlier_runs_thresholds(tmp_path):
    for name in ("thresholds.json", "validation_scores.npz"):
        (tmp_path / name).write_text("of an earlier model")
    start_run(tmp_path, TrainOptions.from_kwargs(features="f", out=tmp_path).to_kwargs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


# -- a tiny run, refit, predict --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("thresholds")
    labelled = make_feature_set(root / "train", n_recordings=16, per_recording=4, n_classes=4, seed=3)
    windows = make_feature_set(root / "test", n_recordings=3, per_recording=3, n_classes=4, kind="windows")
    out = root / "runs" / "tiny"
    argv = ["--features", str(labelled), "--model", "tiny", "--epochs", "1", "--fold", "0", "--out", str(out)]
    argv += ["--batch-size", "8", "--verbose", "0", "--seed", "1", "--threshold-rule", "precision:0.5"]
    argv += [
        "--unknown",
        "ignore",
    ]  # the fit on known labels alone (the default counts unknowns as negatives)
    with contextlib.redirect_stderr(io.StringIO()) as log:
        assert train.main(argv) == 0
    return {"train": labelled, "windows": windows, "run": out, "log": log.getvalue()}


def test_training_writes_thresholds_fitted_on_its_validation_scores(tiny):
    run = tiny["run"]
    written = read_thresholds(run / "thresholds.json")
    stored = np.load(run / "validation_scores.npz")
    refitted = fit_thresholds(
        stored["scores"],
        stored["labels"],
        stored["known"],
        rule="precision:0.5",
        class_names=[str(c) for c in stored["class_names"]],
    )
    assert written == refitted
    metrics = json.loads((run / "metrics.json").read_text())
    assert written.class_names == tuple(metrics["config"]["class_names"])
    assert stored["scores"].shape == (metrics["n_val"], 4)
    assert json.loads((run / "run.json").read_text())["train"]["threshold_rule"] == "precision:0.5"
    # The labels and known mask are the validation batches' (centred crops).
    val = ShardSequence(tiny["train"], split="val", fold=0, shuffle=False, augment=False, return_mask=True)
    batches = [val[i] for i in range(len(val))]
    np.testing.assert_array_equal(stored["labels"], np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(stored["known"], np.concatenate([b[2] for b in batches]))
    labels, known = validation_known(val)
    np.testing.assert_array_equal(known, stored["known"])
    assert 0 < known.sum() < known.size  # the synthetic set has unknown labels


def test_unknown_labels_count_as_the_runs_loss_counted_them(tmp_path):
    # Scores of 6 rows, one class: positives 0.9, 0.8, 0.7; an unknown 0.6 (truly negative); a
    # known negative at 0.1 and an unknown 0.05. On the known labels alone, F1 takes every
    # positive with the threshold under 0.7 and above 0.1: half-way, 0.4; with the unknown
    # labels as negatives, 0.6 must stay below it: 0.65.
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.1], [0.05]], dtype=np.float32)
    labels = np.array([[1], [1], [1], [0], [0], [0]], dtype=np.float32)
    known = np.array([[1], [1], [1], [0], [1], [0]], dtype=np.float32)
    for unknown, expected in (("ignore", 0.4), ("negative", 0.65)):
        run = tmp_path / unknown
        run.mkdir()
        kept = keep_thresholds(
            run,
            truth=None,
            scores=None,
            val_seq=None,
            class_names=["s0"],
            rule="f1",
            steps=(scores, labels, known),
            unknown=unknown,
            quiet=True,
        )
        assert kept.values == pytest.approx((expected,)) and kept.source == ("fitted",)
        assert refit(run, rule="f1")[0] == kept  # the stored rows and mode refit the same
        assert read_validation(run / "validation_scores.npz")["unknown"] == unknown
        np.testing.assert_array_equal(read_validation(run / "validation_scores.npz")["known"], known)


def test_the_training_log_names_the_thresholds(tiny):
    run = tiny["run"]
    fitted = read_thresholds(run / "thresholds.json")
    n_val = json.loads((run / "metrics.json").read_text())["n_val"]
    line = (
        f"thresholds (precision:0.5 on {n_val} validation examples): "
        f"{plural(fitted.count('fitted'), 'class')} fitted, {fitted.count('pooled')} pooled"
    )
    # Validation positives (6, 3, 1, 3), known negatives (0, 2, 2, 0): only s1 has its own.
    assert (fitted.positives, fitted.source) == ((6, 3, 1, 3), ("pooled", "fitted", "pooled", "pooled"))
    assert f"{line} -> {run / 'thresholds.json'}\n" in tiny["log"]


def test_the_command_refits_from_the_stored_scores(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    assert thresholds.main([str(run), "--rule", "precision:1", "--min-positives", "1"]) == 0
    stored = np.load(run / "validation_scores.npz")
    expected = fit_thresholds(
        stored["scores"],
        stored["labels"],
        stored["known"],
        rule="precision:1",
        min_positives=1,
        class_names=[str(c) for c in stored["class_names"]],
    )
    assert read_thresholds(run / "thresholds.json") == expected
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "class  positives  threshold  source"
    assert lines[1] == f"s0     {expected.positives[0]:>9}  {expected.values[0]:>9.6f}  {expected.source[0]}"
    assert len(lines) == 5
    assert f"-> {run / 'thresholds.json'}\n" in captured.err
    # Without --rule: the run's own rule.
    assert thresholds.main([str(run), "-q"]) == 0
    assert read_thresholds(run / "thresholds.json").rule == "precision:0.5"


def test_the_command_errors_are_one_line(tiny, tmp_path, capsys):
    assert thresholds.main([str(tmp_path), "--rule", "f1"]) == 2
    assert capsys.readouterr().err == (
        f"experiments.thresholds: error: {tmp_path / 'validation_scores.npz'}: no such file "
        "(the run kept no validation scores)\n"
    )
    assert thresholds.main([str(tiny["run"]), "--rule", "recall:0.5"]) == 2
    assert capsys.readouterr().err == (
        "experiments.thresholds: error: threshold rule must be f1 or precision:P with 0 < P <= 1, "
        "got 'recall:0.5'\n"
    )


def predicted(tiny, run, out, capsys, *more):
    argv = ["--model", str(run / "model.keras"), "--features", str(tiny["windows"]), "--out", str(out)]
    assert predict.main([*argv, *more]) == 0
    return read_events_csv(out.with_name("events.csv")), capsys.readouterr().err


def test_predict_uses_the_runs_thresholds(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "metrics.json"):
        shutil.copy(tiny["run"] / name, run / name)
    _, err = predicted(tiny, run, tmp_path / "none" / "s.csv", capsys)
    assert "thresholds: 0.5 (no thresholds.json beside the model)\n" in err
    # Thresholds of 1 and 0 per class: nothing, then everything of classes 1 and 3 is an event.
    names = ("s0", "s1", "s2", "s3")
    never = Thresholds("f1", (1.0, 1.0, 1.0, 1.0), ("fitted",) * 4, (3, 3, 3, 3), names)
    write_thresholds(run / "thresholds.json", never)
    events, err = predicted(tiny, run, tmp_path / "never" / "s.csv", capsys)
    assert len(events) == 0 and f"thresholds: {run / 'thresholds.json'} (f1)\n" in err
    some = Thresholds("precision:0.9", (1.0, 0.0, 1.0, 0.0), ("fitted",) * 4, (3, 3, 3, 3), names)
    write_thresholds(run / "thresholds.json", some)
    events, err = predicted(tiny, run, tmp_path / "some" / "s.csv", capsys)
    assert f"thresholds: {run / 'thresholds.json'} (precision:0.9)\n" in err
    assert sorted(set(events["label"].tolist())) == [1, 3] and len(events) == 6  # 3 recordings x 2
    # --threshold still wins.
    events, err = predicted(tiny, run, tmp_path / "given" / "s.csv", capsys, "--threshold", "0")
    assert "thresholds: 0 (given)\n" in err and len(events) == 12


def test_predict_with_the_trained_thresholds_equals_them_given(tiny, tmp_path, capsys):
    fitted = read_thresholds(tiny["run"] / "thresholds.json")
    own, _ = predicted(tiny, tiny["run"], tmp_path / "own" / "s.csv", capsys)
    given, _ = predicted(
        tiny, tiny["run"], tmp_path / "given" / "s.csv", capsys, "--threshold", *map(repr, fitted.values)
    )
    assert (tmp_path / "own" / "events.csv").read_text() == (tmp_path / "given" / "events.csv").read_text()
    assert len(own) == len(given)


def test_predict_refuses_thresholds_of_another_class_count(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "metrics.json"):
        shutil.copy(tiny["run"] / name, run / name)
    write_thresholds(run / "thresholds.json", GOOD)
    argv = [
        "--model",
        str(run / "model.keras"),
        "--features",
        str(tiny["windows"]),
        "--out",
        str(tmp_path / "s.csv"),
    ]
    assert predict.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"experiments.predict: error: {run / 'thresholds.json'}: 2 classes, but the model has 4 outputs"
    )
