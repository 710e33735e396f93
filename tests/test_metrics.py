from fractions import Fraction

import numpy as np
import pytest

from experiments.metrics import Lwlrap, Top1, class_lwlrap, lwlrap, positive_precisions, top1
from melshards.errors import ConfigError

# Four samples, three classes. Worked by hand (rank = classes scored >= the class):
#   sample 0: truth {0, 2}, scores .9 .5 .1 -> class 0 rank 1, 1 hit: 1; class 2 rank 3, 2 hits: 2/3
#   sample 1: truth {1},    scores .7 .2 .4 -> class 1 rank 3, 1 hit: 1/3
#   sample 2: no positive                   -> does not count
#   sample 3: truth {2},    scores .3 .6 .6 -> class 2 ties class 1: rank 2, 1 hit: 1/2
# LWLRAP = (1 + 2/3 + 1/3 + 1/2) / 4 positives = 5/8
TRUTH = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1]])
SCORES = np.array([[0.9, 0.5, 0.1], [0.7, 0.2, 0.4], [0.8, 0.1, 0.3], [0.3, 0.6, 0.6]])


def test_lwlrap_hand_computed():
    # One precision per positive label of TRUTH, as worked out above; their mean is 5/8.
    precisions = [Fraction(1), Fraction(2, 3), Fraction(1, 3), Fraction(1, 2)]
    assert len(precisions) == TRUTH.sum()
    assert lwlrap(TRUTH, SCORES) == pytest.approx(float(sum(precisions) / len(precisions)), abs=1e-12)
    assert lwlrap(TRUTH, SCORES) == pytest.approx(5 / 8, abs=1e-12)


def test_positive_precisions_hand_computed():
    expected = np.array([[1, 0, 2 / 3], [0, 1 / 3, 0], [0, 0, 0], [0, 0, 1 / 2]])
    np.testing.assert_allclose(positive_precisions(TRUTH, SCORES), expected, atol=1e-12)


def test_class_lwlrap_hand_computed():
    per_class, weight = class_lwlrap(TRUTH, SCORES)
    # class 0: {1}, class 1: {1/3}, class 2: {2/3, 1/2}; weights are shares of 4 positives
    np.testing.assert_allclose(per_class, [1.0, 1 / 3, 7 / 12], atol=1e-12)
    np.testing.assert_allclose(weight, [0.25, 0.25, 0.5], atol=1e-12)
    assert float(np.sum(per_class * weight)) == pytest.approx(5 / 8, abs=1e-12)


def test_top1_hand_computed():
    # best classes 0, 0, (no positive), 1 (first of the tie) -> hits 1, 0, -, 0
    assert top1(TRUTH, SCORES) == pytest.approx(1 / 3, abs=1e-12)


def test_perfect_scores_give_one():
    rng = np.random.default_rng(0)
    truth = (rng.random((50, 24)) < 0.1).astype(int)
    scores = truth + 0.5 * rng.random(truth.shape)  # every positive above every negative
    assert lwlrap(truth, scores) == 1.0
    assert top1(truth, scores) == 1.0


def test_constant_scores_are_not_rewarded():
    truth = np.zeros((2, 4), dtype=int)
    truth[:, 0] = 1
    # every class ties, so the positive is ranked last: precision 1/4
    assert lwlrap(truth, np.full((2, 4), 0.5)) == pytest.approx(0.25)


def test_lwlrap_rejects_bad_input():
    with pytest.raises(ConfigError, match="one shape"):
        lwlrap(TRUTH, SCORES[:, :2])
    with pytest.raises(ConfigError, match="only 0 and 1"):
        lwlrap(TRUTH * 2, SCORES)


def test_keras_metrics_match_numpy_over_batches():
    rng = np.random.default_rng(1)
    truth = (rng.random((70, 24)) < 0.08).astype("float32")
    truth[::7] = 0  # some samples without positives
    scores = rng.random((70, 24)).astype("float32")
    scores[3, :5] = scores[3, 5]  # and some ties
    truth[3, 5] = 1
    metric, hit = Lwlrap(), Top1()
    for lo in range(0, 70, 32):  # uneven last batch
        metric.update_state(truth[lo : lo + 32], scores[lo : lo + 32])
        hit.update_state(truth[lo : lo + 32], scores[lo : lo + 32])
    assert float(metric.result()) == pytest.approx(lwlrap(truth, scores), abs=1e-6)
    assert float(hit.result()) == pytest.approx(top1(truth, scores), abs=1e-6)
    metric.reset_state()
    metric.update_state(TRUTH.astype("float32"), SCORES.astype("float32"))
    assert float(metric.result()) == pytest.approx(5 / 8, abs=1e-6)
