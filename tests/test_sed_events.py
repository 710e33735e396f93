"""Events from frame scores (thresholds, median filter, gaps, short events, scores), event tables
as CSV, and the frames an event table covers: exact events on hand-made score arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.errors import ExperimentError
from experiments.sed_events import (
    event_columns,
    event_table,
    events_from_scores,
    frames_of_events,
    majority_filter,
    read_events_csv,
    write_events_csv,
)
from melshards.errors import ConfigError

# One recording, one class, 8 frames of 0.5 s. Above 0.5: frames 0-1, 4, 6-7.
ROW = [0.9, 0.9, 0.1, 0.1, 0.8, 0.1, 0.7, 0.7]
EDGES = np.arange(9) * 0.5


def rows_of(table):
    return [(r, on, off, lab, round(sc, 12)) for r, on, off, lab, sc in table.tolist()]


def one(row=ROW, **options):
    return rows_of(events_from_scores(np.array(row)[None, :, None], EDGES, **options))


def test_runs_become_events_up_to_the_first_and_last_frame():
    assert one() == [(0, 0.0, 1.0, 0, 0.9), (0, 2.0, 2.5, 0, 0.8), (0, 3.0, 4.0, 0, 0.7)]


def test_a_score_equal_to_the_threshold_is_not_active():
    assert one(threshold=0.8) == [(0, 0.0, 1.0, 0, 0.9)]


def test_gaps_up_to_min_gap_are_merged_and_the_score_covers_the_gap():
    # the 0.5 s gap between 2.0-2.5 and 3.0-4.0 is merged, the 1.0 s gap before is not
    assert one(min_gap=0.5) == [(0, 0.0, 1.0, 0, 0.9), (0, 2.0, 4.0, 0, 0.8)]
    # mean over frames 4-7 including the gap frame: (0.8 + 0.1 + 0.7 + 0.7) / 4
    assert one(min_gap=0.5, score="mean") == [(0, 0.0, 1.0, 0, 0.9), (0, 2.0, 4.0, 0, 0.575)]
    assert one(min_gap=1.0) == [(0, 0.0, 4.0, 0, 0.9)]


def test_short_events_are_dropped_after_merging():
    assert one(min_duration=0.75) == [(0, 0.0, 1.0, 0, 0.9), (0, 3.0, 4.0, 0, 0.7)]
    # merged first, the 2.0-2.5 event is part of a 2 s one and stays
    assert one(min_duration=1.5, min_gap=0.5) == [(0, 2.0, 4.0, 0, 0.8)]


def test_median_filter_removes_a_lone_frame_and_fills_a_lone_hole():
    # active 1 1 0 0 1 0 1 1; length 3 with reflected edges -> 1 1 0 0 0 1 1 1
    assert one(median=3) == [(0, 0.0, 1.0, 0, 0.9), (0, 2.5, 4.0, 0, 0.7)]
    # length 5 over 1 1 | 1 1 0 0 1 0 1 1 | 1 1 -> 1 1 1 0 0 1 1 1: frame 2 joins the first event
    assert one(median=5) == [(0, 0.0, 1.5, 0, 0.9), (0, 2.5, 4.0, 0, 0.7)]


def test_majority_filter_equals_scipy_median_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    for steps in (1, 2, 5, 12):
        for length in range(1, 2 * steps + 2, 2):
            active = rng.random((30, steps)) < 0.5
            expected = ndimage.median_filter(active.astype(np.uint8), size=(1, length), mode="reflect") > 0
            np.testing.assert_array_equal(majority_filter(active, length), expected)


def test_recordings_and_classes_with_their_own_thresholds():
    # 2 recordings x 4 frames of 1 s x 2 classes; class 1's threshold is 0.2
    scores = np.zeros((2, 4, 2))
    scores[0, :, 0] = [0.0, 0.6, 0.6, 0.0]
    scores[0, :, 1] = [0.3, 0.0, 0.0, 0.3]
    scores[1, :, 0] = [0.9, 0.0, 0.0, 0.0]
    scores[1, :, 1] = [0.1, 0.1, 0.1, 0.1]
    table = events_from_scores(
        scores, np.arange(5.0), threshold=[0.5, 0.2], recordings=["r1", "r2"], classes=[11, 22]
    )
    assert rows_of(table) == [
        ("r1", 0.0, 1.0, 22, 0.3),
        ("r1", 1.0, 3.0, 11, 0.6),
        ("r1", 3.0, 4.0, 22, 0.3),
        ("r2", 0.0, 1.0, 11, 0.9),
    ]
    assert table.dtype.names == ("recording", "onset", "offset", "label", "score")


def test_each_recording_can_have_its_own_frame_times():
    scores = np.array([[[0.9], [0.0]], [[0.0], [0.9]]])
    edges = np.array([[0.0, 1.0, 2.0], [10.0, 10.5, 11.0]])
    assert rows_of(events_from_scores(scores, edges)) == [(0, 0.0, 1.0, 0, 0.9), (1, 10.5, 11.0, 0, 0.9)]


def test_nothing_above_the_threshold_is_an_empty_table():
    table = events_from_scores(np.zeros((2, 3, 2)), np.arange(4.0))
    assert len(table) == 0
    assert table.dtype.names == ("recording", "onset", "offset", "label", "score")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"median": 4}, r"median must be an odd number of steps, got 4"),
        ({"median": 0}, r"median must be an integer >= 1, got 0"),
        ({"threshold": [0.5, 0.5]}, r"threshold must be a number or 1 numbers \(one per class\)"),
        ({"min_gap": -1.0}, r"min_gap must be >= 0, got -1.0"),
        ({"score": "median"}, r"score must be one of max, mean, got 'median'"),
        ({"recordings": ["a", "b"]}, r"recordings must name 1 items, got 2"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        events_from_scores(np.zeros((1, 8, 1)), EDGES, **options)


def test_bad_scores_and_edges_are_refused():
    with pytest.raises(
        ConfigError, match=r"edges must be frame edges of shape \(9,\) or \(1, 9\) for 8 steps, got \(8,\)"
    ):
        events_from_scores(np.zeros((1, 8, 1)), EDGES[:-1])
    with pytest.raises(ConfigError, match=r"edges must be finite and strictly increasing"):
        events_from_scores(np.zeros((1, 8, 1)), EDGES[::-1])
    with pytest.raises(ConfigError, match=r"scores must be \(recordings, steps, classes\)"):
        events_from_scores(np.zeros((8, 1)), EDGES)


# -- CSV ------------------------------------------------------------------------------------------


def test_csv_round_trip_keeps_every_value(tmp_path):
    table = event_table(
        ["r1", "r2"], [0.1 + 0.2, 1.0], [1 / 3, 2.5], [7, 3], [0.123456789012345678, math.nan]
    )
    path = tmp_path / "events.csv"
    write_events_csv(path, table)
    assert path.read_text().splitlines() == [
        "recording_id,species_id,t_min,t_max,score",
        "r1,7,0.30000000000000004,0.3333333333333333,0.12345678901234568",
        "r2,3,1.0,2.5,",
    ]
    back = read_events_csv(path)
    assert (
        back[["recording", "onset", "offset", "label"]].tolist()
        == table[["recording", "onset", "offset", "label"]].tolist()
    )
    assert back["score"][0] == table["score"][0] and math.isnan(back["score"][1])
    assert back["label"].dtype == np.int64


def test_csv_reads_an_rfcx_table_as_a_reference(tmp_path):
    path = tmp_path / "train_tp.csv"
    path.write_text(
        "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"
        "003bec244,14,1,44.544,2531.25,45.1307,5531.25\n"
        "006ab765f,23,1,39.9615,7235.16,46.0452,11283.4\n"
    )
    table = read_events_csv(path)
    assert table[["recording", "onset", "offset", "label"]].tolist() == [
        ("003bec244", 44.544, 45.1307, 14),
        ("006ab765f", 39.9615, 46.0452, 23),
    ]
    assert np.isnan(table["score"]).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recording_id,species_id,t_min\n", r"missing column\(s\) t_max"),
        ("recording_id,species_id,t_min,t_max\nr,1,abc,2\n", r"line 2: t_min 'abc' is not a number"),
        (
            "recording_id,species_id,t_min,t_max\nr,1,0,1\nr,1,3,2\n",
            r"line 3: t_min 3.0 must be >= 0 and <= t_max 2.0",
        ),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ExperimentError, match=r"bad\.csv.*" + message):
        read_events_csv(path)


def test_missing_csv_is_one_line(tmp_path):
    with pytest.raises(ExperimentError, match=r"nothere\.csv: no such file"):
        read_events_csv(tmp_path / "nothere.csv")


# -- frames of events and event rows --------------------------------------------------------------


def test_frames_of_events_marks_every_overlapped_frame():
    # frames of 0.5 s; 0.6-1.0 overlaps frame 1 only; 1.9-2.1 overlaps frames 3 and 4
    events = [("a", 0.6, 1.0, "x"), ("a", 1.9, 2.1, "y"), ("b", 0.0, 0.5, "x")]
    frames = frames_of_events(events, np.arange(6) * 0.5, recordings=["a", "b"], classes=["x", "y"])
    assert frames[0, :, 0].astype(int).tolist() == [0, 1, 0, 0, 0]
    assert frames[0, :, 1].astype(int).tolist() == [0, 0, 0, 1, 1]
    assert frames[1, :, 0].astype(int).tolist() == [1, 0, 0, 0, 0]
    assert not frames[1, :, 1].any()
    with pytest.raises(
        ExperimentError, match=r"events row 0: recording 'a' is not among the recordings given"
    ):
        frames_of_events(events, np.arange(6) * 0.5, recordings=["b"], classes=["x", "y"])


def test_frames_of_the_events_found_are_the_active_frames():
    rng = np.random.default_rng(11)
    scores = rng.random((3, 40, 4))
    edges = np.arange(41) * 0.25
    table = events_from_scores(scores, edges, threshold=0.6, recordings=["a", "b", "c"])
    frames = frames_of_events(table, edges, recordings=["a", "b", "c"], classes=range(4))
    np.testing.assert_array_equal(frames, scores > 0.6)


def test_event_columns_reads_rows_and_tables_alike():
    rows = [("r", 1, 2.5, "x"), ("s", 0.0, 0.0, "y", 0.4)]
    cols = event_columns(rows)
    assert cols.recording.tolist() == ["r", "s"] and cols.label.tolist() == ["x", "y"]
    assert cols.onset.tolist() == [1.0, 0.0] and cols.offset.tolist() == [2.5, 0.0]
    assert math.isnan(cols.score[0]) and cols.score[1] == 0.4
    with pytest.raises(ExperimentError, match=r"events row 1: score 'high' is not a number"):
        event_columns([("r", 0.0, 1.0, "x", 0.5), ("r", 0.0, 1.0, "x", "high")])
    with pytest.raises(ExperimentError, match=r"events: no field\(s\) label"):
        event_columns(np.zeros(2, dtype=[("recording", "U3"), ("onset", "f8"), ("offset", "f8")]))
