import numpy as np
import pytest

from experiments import pseudo
from melshards.config import FeatureConfig, center_offset, crop_span

# 1 s crops with 0.25 s of context; 100 frames per second.
CONFIG = FeatureConfig(
    sample_rate=16000,
    n_fft=512,
    hop_length=160,
    n_mels=16,
    fmax=8000,
    duration=1.0,
    context=0.25,
    n_classes=3,
)


def crop(start):
    return crop_span(CONFIG, start, center_offset(CONFIG), CONFIG.crop_frames)


def test_soft_label_is_the_highest_score_of_the_windows_covering_the_crop():
    # example crop [0.25, 1.24]; windows every 0.5 s: crops [0.25..], [0.75..], [1.25..], [1.75..]
    scores = np.array([[0.1, 0.9, 0.0], [0.6, 0.2, 0.0], [0.95, 0.95, 0.95], [0.3, 0.3, 0.3]], np.float32)
    windows = (np.array(["a", "a", "a", "b"]), np.array([0.0, 0.5, 1.0, 0.0]), scores)
    examples = (np.array(["a", "b", "c"]), np.array([0.0, 0.0, 0.0]))
    soft = pseudo.soft_labels(CONFIG, examples, windows)
    t0, t1 = crop(0.0)
    w0, w1 = crop(np.array([0.0, 0.5, 1.0]))
    cover = (np.minimum(t1, w1) - np.maximum(t0, w0)) / (t1 - t0)
    assert cover[0] == pytest.approx(1.0) and cover[1] > 0.49 and cover[2] <= 0  # the third only touches it
    np.testing.assert_array_equal(soft[0], np.max(scores[:2], axis=0))
    np.testing.assert_array_equal(soft[1], scores[3])  # only windows of its own recording
    assert np.isnan(soft[2]).all()  # no window of recording "c": labels stay unknown
    assert soft.dtype == np.float32


def test_min_cover_decides_which_windows_count():
    scores = np.array([[0.1, 0.1, 0.1], [0.8, 0.8, 0.8]], np.float32)
    windows = (np.array(["a", "a"]), np.array([0.0, 0.7]), scores)
    examples = (np.array(["a"]), np.array([0.0]))
    # the second window's crop covers 30% of the example's crop
    np.testing.assert_array_equal(pseudo.soft_labels(CONFIG, examples, windows, min_cover=0.5)[0], scores[0])
    np.testing.assert_array_equal(pseudo.soft_labels(CONFIG, examples, windows, min_cover=0.25)[0], scores[1])


def test_mismatched_window_arrays_are_refused():
    with pytest.raises(Exception, match="2 window ids, 1 starts, 2 score rows"):
        pseudo.soft_labels(
            CONFIG,
            (np.array(["a"]), np.array([0.0])),
            (np.array(["a", "a"]), np.array([0.0]), np.zeros((2, 3))),
        )
