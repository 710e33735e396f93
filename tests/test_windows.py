import dataclasses

import numpy as np
import pytest

from audio_fixtures import TINY
from melshards.config import crop_span
from melshards.labels import overlap_mask
from melshards.names import EVENT_FP, EVENT_TP
from precompute.windows import place_window, sliding_starts, window_events


@pytest.mark.parametrize(
    ("t_min", "t_max", "expected"),
    [
        (1.0, 2.0, 0.0),  # near the start: clipped to 0
        (29.0, 31.0, 24.5),  # middle: centred, 30 - 5.5
        (58.0, 59.5, 49.0),  # near the end: the window ends with the recording
        (0.0, 60.0, 24.5),  # an event as long as the recording: centred
    ],
)
def test_window_placement_start_middle_end(t_min, t_max, expected):
    assert place_window(t_min, t_max, length=11.0, recording_seconds=60.0) == pytest.approx(expected)


def test_sliding_starts_cover_the_recording_and_end_at_its_end():
    np.testing.assert_allclose(sliding_starts(60.0, length=11.0, step=10.0), [0, 10, 20, 30, 40, 49])
    np.testing.assert_allclose(sliding_starts(31.0, length=11.0, step=10.0), [0, 10, 20])
    np.testing.assert_allclose(sliding_starts(11.0, length=11.0, step=5.0), [0])


def test_overlap_rule_min_overlap_or_fully_inside():
    w0, w1 = 10.0, 20.0
    t_min = np.array([9.0, 9.6, 19.7, 12.0, 20.5, 15.0])
    t_max = np.array([10.6, 10.4, 25.0, 12.1, 22.0, 15.05])
    got = overlap_mask(t_min, t_max, w0, w1, min_overlap=0.5)
    # 0.6 s overlap, 0.4 s, 0.3 s, fully inside (short), outside, fully inside (tiny)
    np.testing.assert_array_equal(got, [True, False, False, True, False, True])


def events(*rows):
    species, kind, t_min, t_max = zip(*rows, strict=True)
    return {
        "species_id": np.array(species, np.int16),
        "kind": np.array(kind, np.int8),
        "t_min": np.array(t_min, float),
        "t_max": np.array(t_max, float),
    }


def test_multilabel_window_with_tp_fp_and_unknown():
    config = TINY  # window 2.5 s stored, centred 2 s crop, min_overlap 0.2
    ev = events(
        (0, EVENT_TP, 1.0, 2.0),  # inside the crop -> positive
        (1, EVENT_FP, 1.5, 1.9),  # FP only -> confirmed negative
        (2, EVENT_TP, 0.0, 0.3),  # only in the left context -> stored, not labelled
        (3, EVENT_TP, 5.0, 6.0),  # outside the stored window -> dropped
    )
    labels, stored = window_events(ev, 0.0, config=config)
    t0, t1 = crop_span(config, 0.0, (config.n_frames - config.crop_frames) // 2, config.crop_frames)
    assert t0 == pytest.approx(0.24) and t1 == pytest.approx(2.24)
    np.testing.assert_array_equal(labels, [1, 0, -1, -1])
    np.testing.assert_array_equal(stored["species_id"], [0, 1, 2])


def test_tp_wins_over_fp_of_the_same_species():
    ev = events((1, EVENT_FP, 1.0, 1.5), (1, EVENT_TP, 1.2, 2.0))
    labels, _ = window_events(ev, 0.0, config=TINY)
    np.testing.assert_array_equal(labels, [-1, 1, -1, -1])


def test_min_overlap_parameter_changes_the_label():
    ev = events((0, EVENT_TP, 2.0, 3.0))  # overlaps the crop [0.24, 2.24] by 0.24 s
    strict = dataclasses.replace(TINY, min_overlap=0.5)
    assert window_events(ev, 0.0, config=TINY)[0][0] == 1
    assert window_events(ev, 0.0, config=strict)[0][0] == -1
