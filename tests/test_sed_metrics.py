"""Segment- and event-based SED metrics and frame AP: hand-worked cases that run everywhere, and
the same numbers as the DCASE ``sed_eval`` package on seeded random cases where it is installed."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from experiments.errors import ExperimentError
from experiments.sed_events import event_table
from experiments.sed_matching import greedy_matching, maximum_matching, time_pairs
from experiments.sed_metrics import Counts, event_based, frame_average_precision, segment_based
from melshards.errors import ConfigError

EPS = float(np.spacing(1))


def scores_of(result, where="overall"):
    scores = getattr(result, where) if isinstance(where, str) else result.class_wise[where[1]]
    return (scores.f1, scores.precision, scores.recall, scores.error_rate)


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# -- event-based, by hand -------------------------------------------------------------------------


def test_onset_exactly_at_the_collar_matches_and_just_past_it_does_not():
    # 0.25 and 0.5 are exact in binary: |onset difference| == collar is a match, one ulp more is not.
    ref = [("r", 1.0, 3.0, "a")]
    at_edge = [("r", 1.25, 3.0, "a")]
    past_edge = [("r", np.nextafter(1.25, 2.0), 3.0, "a")]
    assert event_based(ref, at_edge, collar=0.25).counts.tp == 1
    assert event_based(ref, past_edge, collar=0.25).counts.tp == 0


def test_offset_collar_is_the_larger_of_collar_and_share_of_length():
    # reference 2 s long: offset collar max(0.25, 0.25 * 2) = 0.5
    ref = [("r", 1.0, 3.0, "a")]
    assert event_based(ref, [("r", 1.0, 3.5, "a")], collar=0.25, offset_ratio=0.25).counts.tp == 1
    assert event_based(ref, [("r", 1.0, 3.625, "a")], collar=0.25, offset_ratio=0.25).counts.tp == 0
    # a short reference (0.5 s) keeps the collar itself: 0.25 >= 0.25 * 0.5
    short = [("r", 1.0, 1.5, "a")]
    assert event_based(short, [("r", 1.0, 1.75, "a")], collar=0.25, offset_ratio=0.25).counts.tp == 1
    assert event_based(short, [("r", 1.0, 1.875, "a")], collar=0.25, offset_ratio=0.25).counts.tp == 0


def test_one_estimate_near_two_references_matches_one():
    # Nref 2, Nsys 1, TP 1: P 1, R 1/2, F1 2/3; the other reference is a deletion: ER 1/2.
    ref = [("r", 0.0, 1.0, "a"), ("r", 0.1, 1.1, "a")]
    est = [("r", 0.05, 1.05, "a")]
    result = event_based(ref, est)
    assert result.counts == Counts(n_ref=2, n_sys=1, tp=1, substitutions=0, deletions=1, insertions=0)
    assert scores_of(result) == pytest.approx((2 / 3, 1.0, 0.5, 0.5 / (1 + EPS / 2)), rel=1e-12)


def test_one_reference_near_two_estimates_matches_one_and_the_other_is_an_insertion():
    result = event_based([("r", 0.0, 1.0, "a")], [("r", 0.0, 1.0, "a"), ("r", 0.1, 1.0, "a")])
    assert result.counts == Counts(n_ref=1, n_sys=2, tp=1, substitutions=0, deletions=0, insertions=1)
    assert scores_of(result) == pytest.approx((2 / 3, 0.5, 1.0, 1.0), rel=1e-12)


def test_optimal_matching_finds_more_pairs_than_greedy():
    # E0 fits both references, E1 only R0. Greedy: R0 takes E0 (first in order), R1 is left.
    # Optimal: R0-E1 and R1-E0.
    ref = [("r", 0.0, 1.0, "a"), ("r", 0.3, 1.3, "a")]
    est = [("r", 0.15, 1.15, "a"), ("r", 0.0, 1.0, "a")]
    assert event_based(ref, est, matching="greedy").counts.tp == 1
    assert event_based(ref, est, matching="optimal").counts.tp == 2


def test_wrong_class_at_the_right_time_is_a_substitution():
    # One substitution: S = 1, D = I = 0, ER 1; nothing right: P = R = 0, F1 0.
    result = event_based([("r", 0.0, 1.0, "a")], [("r", 0.0, 1.0, "b")])
    assert result.counts == Counts(n_ref=1, n_sys=1, tp=0, substitutions=1, deletions=0, insertions=0)
    assert scores_of(result) == pytest.approx((0.0, 0.0, 0.0, 1 / (1 + EPS)), rel=1e-12)
    # per class there are no substitutions: a misses its event, b inserts one with no reference
    assert result.class_wise["a"].deletion_rate == pytest.approx(1.0)
    assert result.class_wise["b"].insertion_rate == 1 / EPS


def test_no_estimates_leave_precision_undefined():
    ref = [("r", 0.0, 1.0, "a"), ("s", 2.0, 3.0, "b")]
    result = event_based(ref, [])
    assert result.counts == Counts(n_ref=2, n_sys=0, tp=0, substitutions=0, deletions=2, insertions=0)
    f1, precision, recall, error_rate = scores_of(result)
    assert math.isnan(f1) and math.isnan(precision)
    assert recall == 0.0
    assert error_rate == pytest.approx(1.0)


def test_events_of_other_recordings_never_match():
    result = event_based([("r", 0.0, 1.0, "a")], [("s", 0.0, 1.0, "a")])
    assert result.counts == Counts(n_ref=1, n_sys=1, tp=0, substitutions=0, deletions=1, insertions=1)


def test_class_average_ignores_undefined_class_scores():
    # a: 1 of 1 found (F1 1); b: a reference, no estimate (F1 NaN, R 0); c: an estimate alone
    # (F1 NaN, P 0). Class average F1 = mean(1) = 1, recall = mean(1, 0) = 1/2, P = mean(1, 0).
    ref = [("r", 0.0, 1.0, "a"), ("r", 5.0, 6.0, "b")]
    est = [("r", 0.0, 1.0, "a"), ("r", 9.0, 9.5, "c")]
    average = event_based(ref, est).class_average
    assert (average.f1, average.precision, average.recall) == pytest.approx((1.0, 0.5, 0.5))


def test_an_event_table_and_rows_score_the_same():
    ref_rows = [("r", 0.0, 1.0, 3), ("r", 2.0, 4.0, 5)]
    est_rows = [("r", 0.1, 1.0, 3, 0.9), ("r", 2.1, 3.5, 3, 0.4)]
    table = event_table(["r", "r"], [0.1, 2.1], [1.0, 3.5], [3, 3], [0.9, 0.4])
    from_table, from_rows = event_based(ref_rows, table), event_based(ref_rows, est_rows)
    assert from_table.class_counts == from_rows.class_counts
    assert from_table.counts == from_rows.counts == Counts(2, 2, 1, 0, 1, 1)
    assert from_table.classes == (3, 5)


def test_matchings_of_the_pair_lists():
    # pairs sorted by reference: R0-{E0, E1}, R1-{E0}
    ri, ei = np.array([0, 0, 1]), np.array([0, 1, 0])
    assert greedy_matching(ri, ei, 2).tolist() == [[0, 0]]
    assert maximum_matching(ri, ei).tolist() == [[0, 1], [1, 0]]
    pairs = time_pairs(
        np.array([0.0, 5.0]), np.array([1.0, 6.0]), np.array([5.1, 0.1, 9.0]), np.array([6.0, 1.0, 9.5]),
        collar=0.2, offset_ratio=0.2,
    )  # fmt: skip
    assert [p.tolist() for p in pairs] == [[0, 1], [1, 0]]


def test_maximum_matching_is_as_large_as_scipy_finds():
    csgraph = pytest.importorskip("scipy.sparse.csgraph")
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(5)
    for _ in range(50):
        n, m = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        edges = rng.random((n, m)) < rng.uniform(0.05, 0.4)
        ri, ei = np.nonzero(edges)  # sorted by reference, then estimate
        pairs = maximum_matching(ri, ei)
        assert all(edges[r, e] for r, e in pairs)
        assert len(set(pairs[:, 0])) == len(set(pairs[:, 1])) == len(pairs)
        best = csgraph.maximum_bipartite_matching(sparse.csr_matrix(edges), perm_type="column")
        assert len(pairs) == int((best >= 0).sum())


# -- segment-based, by hand -----------------------------------------------------------------------


def test_segment_based_by_hand():
    # 3 one-second segments. ref: a in [0, 1), b in [2, 3); est: a in [0, 2) (0.1-1.1 rounds out
    # to whole segments), a in [2, 3).
    # seg 0: ref {a}, est {a}: TP 1. seg 1: est {a}: I 1. seg 2: ref {b}, est {a}: S 1.
    ref = [("r", 0.0, 1.0, "a"), ("r", 2.0, 3.0, "b")]
    est = [("r", 0.1, 1.1, "a"), ("r", 2.05, 3.0, "a")]
    result = segment_based(ref, est)
    assert result.counts == Counts(n_ref=2, n_sys=3, tp=1, substitutions=1, deletions=0, insertions=1)
    assert scores_of(result) == pytest.approx((0.4, 1 / 3, 0.5, 1.0), rel=1e-12)
    assert result.class_counts["a"] == Counts(
        n_ref=1, n_sys=3, tp=1, substitutions=0, deletions=0, insertions=2
    )
    assert result.class_counts["b"] == Counts(
        n_ref=1, n_sys=0, tp=0, substitutions=0, deletions=1, insertions=0
    )


def test_segment_edges_and_durations():
    # 0.5-1.0 lies in segment 0 only (ceil(1.0) = 1); 1.0-1.5 in segment 1 only.
    ref = [("r", 0.5, 1.0, "a")]
    # two segments: 0 holds the reference alone (a deletion), 1 the estimate alone (an insertion)
    apart = segment_based(ref, [("r", 1.0, 1.5, "a")])
    assert apart.counts == Counts(n_ref=1, n_sys=1, tp=0, substitutions=0, deletions=1, insertions=1)
    # a duration of 1 s cuts the estimate in segment 1 away: one segment, nothing inserted
    cut = segment_based(ref, [("r", 0.0, 1.5, "a")], durations={"r": 1.0})
    assert cut.counts == Counts(n_ref=1, n_sys=1, tp=1, substitutions=0, deletions=0, insertions=0)
    # half-second segments: ref in segment 1, estimate in segments 0 and 1
    half = segment_based(ref, [("r", 0.0, 1.0, "a")], segment=0.5)
    assert half.counts == Counts(n_ref=1, n_sys=2, tp=1, substitutions=0, deletions=0, insertions=1)


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ([("r", -1.0, 1.0, "a")], r"reference row 0: onset -1.0 is negative"),
        ([("r", 0.0, 1.0, "a"), ("r", 2.0, 1.0, "a")], r"reference row 1: onset 2.0 > offset 1.0"),
        ([("r", "x", 1.0, "a")], r"reference row 0: onset 'x' is not a number"),
        ([("r", 0.0, 1.0)], r"reference row 0: needs \(recording, onset, offset, class\)"),
        ([("r", 0.0, float("inf"), "a")], r"reference row 0: offset inf is not finite"),
    ],
)
def test_bad_events_name_the_row(reference, message):
    with pytest.raises(ExperimentError, match=message):
        event_based(reference, [])


def test_unknown_class_and_bad_options():
    ref = [("r", 0.0, 1.0, "a")]
    with pytest.raises(ExperimentError, match=r"estimated row 0: class 'b' is not among the classes"):
        segment_based(ref, [("r", 0.0, 1.0, "b")], classes=["a"])
    with pytest.raises(ConfigError, match=r"matching must be one of optimal, greedy, got 'best'"):
        event_based(ref, ref, matching="best")
    with pytest.raises(ConfigError, match=r"collar must be > 0 seconds, got 0.0"):
        event_based(ref, ref, collar=0)
    with pytest.raises(ConfigError, match=r"offset_ratio must be in \[0, 1\], got 1.5"):
        event_based(ref, ref, offset_ratio=1.5)
    with pytest.raises(ConfigError, match=r"segment must be > 0 seconds, got 0.0"):
        segment_based(ref, ref, segment=0.0)
    with pytest.raises(ConfigError, match=r"event_based must compare the onset, the offset or both"):
        event_based(ref, ref, onset=False, offset=False)


# -- frame average precision ----------------------------------------------------------------------


def test_frame_average_precision_by_hand():
    # class 0 ranked .9 (hit) .8 .8 (one hit of the tie) .1: at .9 P 1, R 1/2; at .8 P 2/3, R 1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. Class 1 has no positive frame: NaN.
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.3], [0.8, 0.2], [0.8, 0.1], [0.1, 0.0]])
    ap = frame_average_precision(truth, scores)
    assert ap[0] == pytest.approx(5 / 6, rel=1e-12)
    assert math.isnan(ap[1])
    # (recordings, steps, classes) is the same frames
    assert frame_average_precision(truth[None], scores[None])[0] == pytest.approx(5 / 6, rel=1e-12)


def test_frame_average_precision_equals_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    truth = rng.random((400, 5)) < 0.2
    scores = np.round(rng.random((400, 5)) + 0.3 * truth, 2)  # rounding makes ties
    expected = [metrics.average_precision_score(truth[:, c], scores[:, c]) for c in range(5)]
    np.testing.assert_allclose(frame_average_precision(truth, scores), expected, rtol=1e-12)


def test_frame_average_precision_refuses_bad_input():
    with pytest.raises(ConfigError, match=r"truth must hold only 0 and 1"):
        frame_average_precision(np.array([[2]]), np.array([[0.5]]))
    with pytest.raises(
        ConfigError, match=r"must have one shape \(\.\.\., classes\), got \(1, 1\) and \(1, 2\)"
    ):
        frame_average_precision(np.array([[1]]), np.array([[0.5, 0.1]]))


# -- against sed_eval -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sed_eval():
    # dcase_util imports pkg_resources, which warns that it is deprecated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("sed_eval")


def random_events(rng, *, n_recordings, classes, dense):
    """Reference and estimated rows: estimates jitter, relabel or drop references, add extras.
    Times on a 0.05 s grid half the time, so that differences land on collar edges."""
    ref, est = [], []
    for r in range(n_recordings):
        rec = f"rec{r}"
        n = int(rng.integers(0, 30 if dense else 12))
        span = 6.0 if dense else 30.0
        for _ in range(n):
            onset = float(rng.uniform(0, span))
            length = float(rng.choice([rng.uniform(0.02, 0.4), rng.uniform(0.5, 4.0)]))
            label = str(rng.choice(classes[:-1]))  # the last class never has a reference
            ref.append((rec, onset, onset + length, label))
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                on = max(0.0, onset + rng.normal(0, 0.15))
                off = max(on, onset + length + rng.normal(0, 0.2))
                lab = label if rng.random() < 0.8 else str(rng.choice(classes))
                est.append((rec, on, off, lab))
        for _ in range(int(rng.integers(0, 5))):
            on = float(rng.uniform(0, span))
            est.append((rec, on, on + float(rng.uniform(0.05, 2.0)), str(rng.choice(classes))))
    if rng.random() < 0.5:
        ref = [(r, round(a * 20) / 20, round(b * 20) / 20, c) for r, a, b, c in ref]
        est = [(r, round(a * 20) / 20, round(b * 20) / 20, c) for r, a, b, c in est]
    order = rng.permutation(len(est))
    return ref, [est[i] for i in order]


def sed_eval_results(sed_eval, metric, ref, est, durations=None):
    """``metric.evaluate`` once per recording (as DCASE scripts call it), then its results."""
    files = list(dict.fromkeys([r[0] for r in ref] + [e[0] for e in est]))
    as_dicts = lambda rows, f: [  # noqa: E731
        {"filename": f, "event_label": c, "onset": a, "offset": b} for r, a, b, c in rows if r == f
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            if durations is None:
                metric.evaluate(as_dicts(ref, f), as_dicts(est, f))
            else:
                metric.evaluate(as_dicts(ref, f), as_dicts(est, f), evaluated_length_seconds=durations[f])
        return metric.results()


def assert_same_as_sed_eval(mine, theirs, classes):
    pairs = [
        (mine.overall, theirs["overall"], True),
        (mine.class_average, theirs["class_wise_average"], False),
    ]
    pairs += [(mine.class_wise[c], theirs["class_wise"][c], False) for c in classes]
    for scores, expected, overall in pairs:
        f, e = expected["f_measure"], expected["error_rate"]
        got = [
            scores.f1,
            scores.precision,
            scores.recall,
            scores.error_rate,
            scores.deletion_rate,
            scores.insertion_rate,
        ]
        want = [
            f["f_measure"],
            f["precision"],
            f["recall"],
            e["error_rate"],
            e["deletion_rate"],
            e["insertion_rate"],
        ]
        if overall:
            got.append(scores.substitution_rate)
            want.append(e["substitution_rate"])
        assert all(same(a, b) for a, b in zip(got, want, strict=True)), (got, want)


CLASSES = ["bird", "frog", "insect", "unused"]


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("matching", ["optimal", "greedy"])
def test_event_based_equals_sed_eval(sed_eval, seed, matching):
    rng = np.random.default_rng(seed)
    ref, est = random_events(rng, n_recordings=int(rng.integers(1, 5)), classes=CLASSES, dense=seed % 3 == 0)
    collar, ratio = [(0.2, 0.2), (0.25, 0.5), (0.1, 0.0)][seed % 3]
    theirs = sed_eval_results(
        sed_eval,
        sed_eval.sound_event.EventBasedMetrics(
            event_label_list=CLASSES,
            t_collar=collar,
            percentage_of_length=ratio,
            event_matching_type=matching,
        ),
        ref,
        est,
    )
    mine = event_based(ref, est, collar=collar, offset_ratio=ratio, classes=CLASSES, matching=matching)
    assert_same_as_sed_eval(mine, theirs, CLASSES)


def crowded_events(rng):
    """Many overlapping events of two classes in 4 s per recording, estimates jittered on a
    0.05 s grid: matchings need augmenting paths, and which references are left over decides
    the substitutions."""
    ref, est = [], []
    for rec in ("a", "b"):
        for _ in range(int(rng.integers(10, 40))):
            on = round(float(rng.uniform(0, 3)) * 20) / 20
            off = on + round(float(rng.uniform(0.2, 1.5)) * 20) / 20
            ref.append((rec, on, off, str(rng.choice(["bird", "bird", "frog"]))))
    for rec, on, off, label in ref:
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            a = max(0.0, round((on + rng.normal(0, 0.12)) * 20) / 20)
            b = max(a, round((off + rng.normal(0, 0.15)) * 20) / 20)
            est.append((rec, a, b, label if rng.random() < 0.85 else "frog"))
    return ref, [est[i] for i in rng.permutation(len(est))]


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("matching", ["optimal", "greedy"])
def test_crowded_event_matching_equals_sed_eval(sed_eval, seed, matching):
    ref, est = crowded_events(np.random.default_rng(500 + seed))
    classes = ["bird", "frog"]
    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=classes, percentage_of_length=0.2, event_matching_type=matching
    )
    theirs = sed_eval_results(sed_eval, metric, ref, est)
    assert_same_as_sed_eval(event_based(ref, est, classes=classes, matching=matching), theirs, classes)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("onset", "offset"), [(True, False), (False, True)])
def test_onset_only_and_offset_only_equal_sed_eval(sed_eval, seed, onset, offset):
    rng = np.random.default_rng(100 + seed)
    ref, est = random_events(rng, n_recordings=2, classes=CLASSES, dense=seed % 2 == 0)
    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=CLASSES, evaluate_onset=onset, evaluate_offset=offset, percentage_of_length=0.2
    )
    theirs = sed_eval_results(sed_eval, metric, ref, est)
    assert_same_as_sed_eval(
        event_based(ref, est, classes=CLASSES, onset=onset, offset=offset), theirs, CLASSES
    )


@pytest.mark.parametrize("seed", range(40))
def test_segment_based_equals_sed_eval(sed_eval, seed):
    rng = np.random.default_rng(1000 + seed)
    ref, est = random_events(rng, n_recordings=int(rng.integers(1, 5)), classes=CLASSES, dense=seed % 2 == 0)
    segment = [1.0, 0.5, 0.25, 2.0][seed % 4]
    durations = None
    if seed % 2:  # lengths that cut events off, or run past them
        recordings = {r[0] for r in ref} | {e[0] for e in est}
        durations = {r: float(rng.choice([5.0, 12.3, 40.0])) for r in recordings}
    metric = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=CLASSES, time_resolution=segment)
    theirs = sed_eval_results(sed_eval, metric, ref, est, durations)
    mine = segment_based(ref, est, segment=segment, classes=CLASSES, durations=durations)
    assert_same_as_sed_eval(mine, theirs, CLASSES)


def test_hand_cases_equal_sed_eval(sed_eval):
    # the hand-worked cases above, through sed_eval too
    cases = [
        ([("r", 0.0, 1.0, "a"), ("r", 0.1, 1.1, "a")], [("r", 0.05, 1.05, "a")]),
        ([("r", 0.0, 1.0, "a"), ("r", 0.3, 1.3, "a")], [("r", 0.15, 1.15, "a"), ("r", 0.0, 1.0, "a")]),
        ([("r", 0.0, 1.0, "a")], [("r", 0.0, 1.0, "b")]),
        ([("r", 0.0, 1.0, "a"), ("s", 2.0, 3.0, "b")], []),
    ]
    for ref, est in cases:
        metric = sed_eval.sound_event.EventBasedMetrics(event_label_list=["a", "b"], percentage_of_length=0.2)
        assert_same_as_sed_eval(
            event_based(ref, est, classes=["a", "b"]),
            sed_eval_results(sed_eval, metric, ref, est),
            ["a", "b"],
        )
