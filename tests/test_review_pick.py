"""What to review next: the pick rule on hand-made scores (order, diversity, the asked record,
the random control), and ``python -m experiments.review pick`` on a tiny trained model."""

import csv
import json

import numpy as np
import pytest
from test_flags import own_value, plain

from commandline.flags import build, groups, parser_flags
from experiments import review, train
from experiments.detection_tables import RAVEN_COLUMNS, read_selection_table
from experiments.errors import ExperimentError
from experiments.predict import load_model, score_windows, window_sequence
from experiments.review import PickOptions, pick_order, pick_windows, uncertainty
from experiments.review_files import read_asked as read_asked_record
from experiments.thresholds import Thresholds
from melshards.errors import ConfigError
from synthetic_features import make_feature_set


def pairs(picks):
    return [(p.window, p.cls) for p in picks]


# Three windows, two classes: w0 and w2 of recording a touch (end 1 = start 1), w1 is b's.
SCORES = np.array([[0.5, 0.9], [0.2, 0.6], [0.5, 0.1]])
RECORDINGS = ["a", "b", "a"]
STARTS, ENDS = [0.0, 0.0, 1.0], [1.0, 1.0, 2.0]
THRESHOLDS = np.array([0.5, 0.6])


def test_uncertainty_is_one_at_the_threshold_and_zero_farthest_from_it():
    u = uncertainty(SCORES, THRESHOLDS)
    np.testing.assert_allclose(u, [[1.0, 0.5], [0.4, 1.0], [1.0, 1 - 0.5 / 0.6]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(uncertainty([[0.0, 1.0]], [0.5, 0.25]), [[0.0, 0.0]], atol=1e-12)


def test_uncertainty_order_is_exact_with_its_ties():
    u = uncertainty(SCORES, THRESHOLDS)
    windows, classes = pick_order(
        SCORES, np.array(RECORDINGS, dtype=object), np.array(STARTS), u, strategy="uncertainty", seed=0
    )
    # u = 1 three times: the higher score first (w1's 0.6), then a's two windows by start;
    # then u 0.5, 0.4 and 0.17.
    assert list(zip(windows.tolist(), classes.tolist(), strict=True)) == [
        (1, 1),
        (0, 0),
        (2, 0),
        (0, 1),
        (1, 0),
        (2, 1),
    ]
    # Equal in u, score, recording and start: the class order decides.
    windows, classes = pick_order(
        np.array([[0.5, 0.5]]),
        np.array(["r"], dtype=object),
        np.zeros(1),
        np.ones((1, 2)),
        strategy="uncertainty",
        seed=0,
    )
    assert classes.tolist() == [0, 1]


def test_top_asks_each_class_about_its_best_windows_in_turn():
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.2, 0.05, 0.7], [0.1, 0.6, 0.1]])
    windows, classes = pick_order(
        scores, np.array(list("abcd"), dtype=object), np.zeros(4), None, strategy="top", seed=0
    )
    # The classes' best: c0 0.9 (w0), c2 0.7 (w2), c1 0.6 (w3); their second best: c0 0.8 (w1),
    # c2 0.2 (w0), c1 0.3 (w1); ...
    assert list(zip(windows.tolist(), classes.tolist(), strict=True))[:6] == [
        (0, 0),
        (2, 2),
        (3, 1),
        (1, 0),
        (0, 2),
        (1, 1),
    ]
    assert sorted(zip(windows.tolist(), classes.tolist(), strict=True)) == [
        (w, c) for w in range(4) for c in range(3)
    ]
    # One pick per recording, w0 and w1 both a's: c0 takes w0, c2 w2 (b), c1 w3 (c), and then
    # every window left is a's.
    picks = pick_windows(scores, list("aabc"), [0, 5, 0, 0], [4, 9, 4, 4], n=4, strategy="top")
    assert pairs(picks) == [(0, 0), (2, 2), (3, 1)]


def test_picks_follow_the_order_under_the_diversity_rule():
    common = {"thresholds": THRESHOLDS, "strategy": "uncertainty"}
    assert pairs(pick_windows(SCORES, RECORDINGS, STARTS, ENDS, n=2, per_recording=1, **common)) == [
        (1, 1),
        (0, 0),
    ]
    # Two per recording: w2 touches w0 without overlapping it; a window is asked about once.
    picks = pick_windows(SCORES, RECORDINGS, STARTS, ENDS, n=6, per_recording=2, **common)
    assert pairs(picks) == [(1, 1), (0, 0), (2, 0)]
    assert [(p.recording, p.start, p.end, p.score, p.u) for p in picks] == [
        ("b", 0.0, 1.0, 0.6, 1.0),
        ("a", 0.0, 1.0, 0.5, 1.0),
        ("a", 1.0, 2.0, 0.5, 1.0),
    ]


# Recording a: three windows, the middle one overlapping both others; b: one window. One class.
A_B = {
    "scores": np.array([[0.5], [0.625], [0.75], [0.25]]),
    "recordings": ["a", "a", "a", "b"],
    "starts": [0.0, 1.0, 2.0, 0.0],
    "ends": [2.0, 3.0, 4.0, 2.0],
}


def test_per_recording_cap_overlap_and_asked_pairs():
    # u: a0 1, a1 0.75, a2 0.5, b0 0.5 (a2 first: the higher score).
    assert pairs(pick_windows(**A_B, n=5, per_recording=2)) == [(0, 0), (2, 0), (3, 0)]
    assert pairs(pick_windows(**A_B, n=5, per_recording=1)) == [(0, 0), (3, 0)]
    assert pairs(pick_windows(**A_B, n=5, per_recording=3)) == [(0, 0), (2, 0), (3, 0)]
    # a0 was asked in an earlier round (its start as the asked record writes it): a1 instead,
    # which overlaps a2.
    asked = {("a", 0.0000001, 0)}
    assert pairs(pick_windows(**A_B, n=5, per_recording=2, asked=asked)) == [(1, 0), (3, 0)]
    assert pairs(pick_windows(**A_B, n=5, per_recording=2, asked={("a", 0.0, 1), ("b", 0.5, 0)})) == [
        (0, 0),
        (2, 0),
        (3, 0),
    ]


def test_random_strategy_is_reproducible_by_seed_and_differs_by_seed():
    rng = np.random.default_rng(0)
    scores = rng.random((40, 3))
    recordings = [f"r{i:02d}" for i in range(40)]
    starts, ends = np.zeros(40), np.ones(40)
    kw = {"n": 10, "strategy": "random"}
    first = pick_windows(scores, recordings, starts, ends, seed=1, **kw)
    assert first == pick_windows(scores, recordings, starts, ends, seed=1, **kw)
    assert pairs(first) != pairs(pick_windows(scores, recordings, starts, ends, seed=2, **kw))
    assert [p.window for p in first] == np.random.default_rng(1).permutation(40)[:10].tolist()
    assert [p.cls for p in first] == [int(np.argmax(scores[p.window])) for p in first]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 0}, r"^n must be an integer >= 1, got 0$"),
        ({"per_recording": 0}, r"^per_recording must be an integer >= 1, got 0$"),
        ({"strategy": "margin"}, r"^strategy must be one of uncertainty, top, random, got 'margin'$"),
        ({"thresholds": 1.5}, r"^thresholds must be in \[0, 1\], got 1.5$"),
        ({"ends": [1.0, 1.0, 0.5]}, r"^window starts and ends must be finite, each end after its start$"),
    ],
)
def test_pick_refuses_bad_arguments(change, message):
    kw = {"scores": SCORES, "recordings": RECORDINGS, "starts": STARTS, "ends": ENDS, "n": 1, **change}
    with pytest.raises(ConfigError, match=message):
        pick_windows(**kw)


# -- the command line ------------------------------------------------------------------------------

BASE = ["pick", "--model", "m", "--windows", "w", "--n", "2", "--out", "o"]


@pytest.mark.parametrize(
    "action", [a for where, a in parser_flags(review.build_parser()) if where == "pick"], ids=lambda a: a.dest
)
def test_every_pick_flag_reaches_its_field(action):
    assert action.dest.startswith("pick.") and action.dest[5:] in PickOptions.__dataclass_fields__
    words, value = own_value(action)
    options = build(PickOptions, groups(review.build_parser().parse_args([*BASE, *words]))["pick"])
    assert plain(getattr(options, action.dest[5:])) == plain(value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    labelled = make_feature_set(root / "train", n_recordings=6, per_recording=3, n_classes=4, seed=3)
    windows = make_feature_set(root / "pool", n_recordings=4, per_recording=3, n_classes=4, kind="windows")
    out = root / "run"
    argv = ["--features", str(labelled), "--model", "tiny", "--epochs", "1", "--fold", "0", "--seed", "1"]
    assert train.main([*argv, "--out", str(out), "--batch-size", "8", "--verbose", "0"]) == 0
    return out / "model.keras", windows


def read_asked(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_pick_command_writes_tables_and_the_asked_record(tiny_run, tmp_path, capsys):
    model, windows = tiny_run
    out = tmp_path / "round-1"
    argv = ["pick", "--model", str(model), "--windows", str(windows), "--out", str(out), "-q"]
    assert review.main([*argv, "--n", "3"]) == 0
    asked = read_asked(out / "asked.csv")
    mean = np.mean([float(r["score"]) for r in asked])
    assert capsys.readouterr().out == (
        f"3 picks from 3 recordings; mean score {mean:.4f}; strategy uncertainty -> {out} "
        f"(asked: {out / 'asked.csv'})\n"
    )
    # The same picks as the rule on the model's own scores and the run's thresholds.
    net = load_model(model)
    seq = window_sequence(windows, net)
    starts, ends = review.window_spans(seq)
    thresholds = json.loads(model.with_name("thresholds.json").read_text())["values"]
    scores = score_windows(net, seq)
    expected = pick_windows(scores, list(seq.recording_id), starts, ends, thresholds=thresholds, n=3)
    assert [
        (r["round"], r["strategy"], r["recording_id"], r["class"], r["t_min"], r["t_max"]) for r in asked
    ] == [
        ("round-1", "uncertainty", p.recording, f"s{p.cls}", f"{p.start:.6f}", f"{p.end:.6f}")
        for p in expected
    ]
    for row in asked:
        (table,) = out.glob(f"{row['recording_id']}.Table.1.selections.txt")
        columns, rows = read_selection_table(table)
        assert tuple(columns) == RAVEN_COLUMNS
        assert [(r["Selection"], r["Class"], r["Begin Time (s)"], r["Review"]) for r in rows] == [
            ("1", row["class"], row["t_min"], "")
        ]
    # A second round into the same folder asks about none of the first round's windows and
    # adds its rows after those already in a table.
    assert review.main([*argv, "--n", "12", "--per-recording", "3"]) == 0
    again = read_asked(out / "asked.csv")
    keys = [(r["recording_id"], r["t_min"], r["class"]) for r in again]
    assert len(again) > len(asked) and len(set(keys)) == len(keys)
    rows = read_selection_table(out / f"{asked[0]['recording_id']}.Table.1.selections.txt")[1]
    assert rows[0]["Begin Time (s)"] == asked[0]["t_min"]
    assert [r["Selection"] for r in rows] == [str(k) for k in range(1, len(rows) + 1)]


def test_pick_reads_the_runs_thresholds(tiny_run, tmp_path, capsys):
    model, windows = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(model.read_bytes())
    names = ("s0", "s1", "s2", "s3")
    fitted = Thresholds("f1", (0.1, 0.2, 0.3, 0.4), ("fitted",) * 4, (3,) * 4, names)
    (run / "thresholds.json").write_text(fitted.to_json())
    out = tmp_path / "picks"
    argv = ["pick", "--model", str(run / "model.keras"), "--windows", str(windows), "--out", str(out), "-q"]
    assert review.main([*argv, "--n", "4", "--per-recording", "2"]) == 0
    for row in read_asked(out / "asked.csv"):
        t = [0.1, 0.2, 0.3, 0.4][int(row["class"][1:])]
        assert float(row["u"]) == pytest.approx(1 - abs(float(row["score"]) - t) / max(t, 1 - t), abs=2e-4)
    capsys.readouterr()
    two = Thresholds("f1", (0.5, 0.5), ("default",) * 2, (0, 0), names[:2])
    (run / "thresholds.json").write_text(two.to_json())
    assert review.main([*argv, "--n", "1"]) == 2
    assert capsys.readouterr().err == (
        f"experiments.review: error: {run / 'thresholds.json'}: 2 classes, but the model has 4 outputs\n"
    )
    assert len(read_asked(out / "asked.csv")) == 4  # refused before anything was picked


def test_a_bad_asked_record_is_one_line_naming_it(tmp_path):
    path = tmp_path / "asked.csv"
    path.write_text("recording_id,class\nrec0,s1\n")
    with pytest.raises(
        ExperimentError, match=rf"^{path}: not an asked record: no column\(s\) round, strategy, t_min"
    ):
        read_asked_record(path)
    path.write_text(
        "round,strategy,recording_id,class,t_min,t_max,score,u\nr1,random,rec0,s1,x,1.0,0.5,0.5\n"
    )
    with pytest.raises(ExperimentError, match=rf"^{path} line 2: t_min 'x' is not a number$"):
        read_asked_record(path)
    assert read_asked_record(tmp_path / "none.csv") == []
