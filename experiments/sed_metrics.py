"""Sound-event detection metrics: segment-based and event-based F1 and error rate, frame AP.

The definitions are those of the DCASE ``sed_eval`` toolbox (Mesaros, Heittola and Virtanen,
"Metrics for polyphonic sound event detection", 2016), computed over every recording at once;
each recording is what one ``evaluate(reference, estimated)`` call of ``sed_eval`` sees, and
the counts add up over recordings.

- **Segment-based** (``segment_based``): a recording's length is its latest offset (reference or
  estimate) unless ``durations`` names it, cut into ``ceil(length / segment)`` segments; an
  event is active in segments ``floor(onset / segment)`` up to ``ceil(offset / segment)``
  (exclusive). Per class: true positives are segments active in both. Overall, per segment:
  substitutions ``min(Nref, Nsys) - TP``, deletions ``max(0, Nref - Nsys)``, insertions
  ``max(0, Nsys - Nref)``.
- **Event-based** (``event_based``): an estimate of the same recording and class matches a
  reference when its onset is within ``collar`` of the reference's and its offset within
  ``max(collar, offset_ratio * reference length)`` of the reference's; each reference and
  each estimate matches at most once (``experiments.sed_matching``: the largest matching, or
  ``matching="greedy"``: references in their order). Overall, the references and estimates
  left over are paired by time alone, references in order, each taking the first estimate
  left: those are substitutions; deletions and insertions are what remains.

Precision is ``TP / Nsys`` (NaN without estimates), recall ``TP / Nref`` (NaN without
references), F1 their harmonic mean (0 when both are 0). The rates divide by ``Nref + eps``
(``eps = np.spacing(1)``), as ``sed_eval`` does, so a class without references has an enormous
insertion rate; the error rate is substitutions + deletions + insertions. Per class there are
no substitutions. ``overall`` adds the counts over classes (micro average); ``class_average``
is the mean over classes of the per-class scores, NaN ignored (macro average).

``frame_average_precision`` is threshold-free: per class, the average precision of frame scores
against frame truth (``experiments.sed_events.frames_of_events``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from experiments.errors import ExperimentError
from experiments.sed_events import EventColumns, event_columns
from experiments.sed_matching import greedy_matching, maximum_matching, time_pairs
from melshards.checks import check_number
from melshards.errors import ConfigError

EPS = float(np.spacing(1))
MATCHINGS = ("optimal", "greedy")


@dataclass(frozen=True)
class Scores:
    """F1, precision, recall and the error rate with its parts (NaN where undefined)."""

    f1: float
    precision: float
    recall: float
    error_rate: float
    substitution_rate: float
    deletion_rate: float
    insertion_rate: float


@dataclass(frozen=True)
class Counts:
    """What a metric counted: references, estimates, true positives and the errors (segments
    for the segment-based metric, events for the event-based one)."""

    n_ref: int
    n_sys: int
    tp: int
    substitutions: int
    deletions: int
    insertions: int

    def scores(self) -> Scores:
        """The scores of these counts, with ``sed_eval``'s formulas."""
        precision = math.nan if self.n_sys == 0 else self.tp / float(self.n_sys)
        recall = math.nan if self.n_ref == 0 else self.tp / float(self.n_ref)
        f1 = 0.0 if precision == 0 and recall == 0 else 2.0 * precision * recall / (precision + recall)
        sub, dele, ins = (
            x / (self.n_ref + EPS) for x in (self.substitutions, self.deletions, self.insertions)
        )
        return Scores(f1, precision, recall, sub + dele + ins, sub, dele, ins)


@dataclass(frozen=True)
class SedResult:
    """One metric's counts and scores: overall (micro), per class, and the class average."""

    classes: tuple[Any, ...]
    counts: Counts
    class_counts: dict[Any, Counts]
    overall: Scores
    class_wise: dict[Any, Scores]
    class_average: Scores

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts of floats and ints, for JSON (NaN stays NaN)."""
        return {
            "overall": asdict(self.overall),
            "class_average": asdict(self.class_average),
            "class_wise": {str(c): asdict(s) for c, s in self.class_wise.items()},
            "counts": asdict(self.counts),
            "class_counts": {str(c): asdict(k) for c, k in self.class_counts.items()},
        }


def _nan_mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _result(classes: tuple[Any, ...], counts: Counts, class_counts: list[Counts]) -> SedResult:
    class_wise = {c: k.scores() for c, k in zip(classes, class_counts, strict=True)}
    fields = Scores.__dataclass_fields__
    average = Scores(**{f: _nan_mean([getattr(s, f) for s in class_wise.values()]) for f in fields})
    return SedResult(
        classes=classes,
        counts=counts,
        class_counts=dict(zip(classes, class_counts, strict=True)),
        overall=counts.scores(),
        class_wise=class_wise,
        class_average=average,
    )


@dataclass(frozen=True)
class _Coded:
    """Both event lists with recordings and classes as integer codes."""

    ref: EventColumns
    est: EventColumns
    ref_rec: np.ndarray
    est_rec: np.ndarray
    ref_lab: np.ndarray
    est_lab: np.ndarray
    recordings: tuple[Any, ...]
    classes: tuple[Any, ...]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _code(reference: Any, estimated: Any, classes: Sequence[Any] | None) -> _Coded:
    ref, est = event_columns(reference, name="reference"), event_columns(estimated, name="estimated")
    if classes is None:
        try:
            classes = sorted(set(ref.label.tolist()) | set(est.label.tolist()))
        except TypeError:
            raise ExperimentError(
                "class ids of the events must be all text or all numbers to sort them"
            ) from None
    classes = tuple(_plain(c) for c in classes)
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes must not repeat, got {list(classes)}")
    class_code = {c: i for i, c in enumerate(classes)}
    rec_code: dict[Any, int] = {}
    for rec in (*ref.recording.tolist(), *est.recording.tolist()):
        rec_code.setdefault(rec, len(rec_code))
    labels = []
    for name, cols in (("reference", ref), ("estimated", est)):
        unknown = [i for i, lab in enumerate(cols.label.tolist()) if lab not in class_code]
        if unknown:
            raise ExperimentError(
                f"{name} row {unknown[0]}: class {cols.label[unknown[0]]!r} is not among the classes"
            )
        labels.append(np.array([class_code[lab] for lab in cols.label.tolist()], dtype=np.int64))
    recs = [np.array([rec_code[r] for r in cols.recording.tolist()], dtype=np.int64) for cols in (ref, est)]
    return _Coded(ref, est, recs[0], recs[1], labels[0], labels[1], tuple(rec_code), classes)


# -- segment-based ------------------------------------------------------------------------------


def _segment_roll(
    rec: np.ndarray,
    lab: np.ndarray,
    cols: EventColumns,
    n_segments: np.ndarray,
    n_classes: int,
    segment: float,
) -> np.ndarray:
    """Activity of every (segment, class), recordings one after another.

    Returns np.ndarray [shape=(sum(n_segments), n_classes)], bool.
    """
    first = np.concatenate([[0], np.cumsum(n_segments)])
    limit = n_segments[rec]
    lo = np.minimum(np.floor(cols.onset / segment).astype(np.int64), limit)
    hi = np.minimum(np.ceil(cols.offset / segment).astype(np.int64), limit)
    keep = hi > lo
    marks = np.zeros((first[-1] + 1, n_classes), dtype=np.int32)
    np.add.at(marks, (first[rec[keep]] + lo[keep], lab[keep]), 1)
    np.add.at(marks, (first[rec[keep]] + hi[keep], lab[keep]), -1)
    return np.cumsum(marks[:-1], axis=0) > 0


def _lengths(coded: _Coded, durations: Mapping[Any, float] | None) -> np.ndarray:
    length = np.zeros(len(coded.recordings))
    np.maximum.at(length, coded.ref_rec, coded.ref.offset)
    np.maximum.at(length, coded.est_rec, coded.est.offset)
    if durations:
        index = {r: i for i, r in enumerate(coded.recordings)}
        for rec, seconds in durations.items():
            seconds = check_number(f"duration of recording {rec!r}", seconds, low=0)
            if _plain(rec) in index:
                length[index[_plain(rec)]] = seconds
    return length


def segment_based(
    reference: Any,
    estimated: Any,
    *,
    segment: float = 1.0,
    classes: Sequence[Any] | None = None,
    durations: Mapping[Any, float] | None = None,
) -> SedResult:
    """Segment-based metrics of ``estimated`` events against ``reference`` events.

    reference, estimated : event rows ``(recording, onset, offset, class, ...)`` or event
        tables (``experiments.sed_events``)
    segment : float > 0, the segment length in seconds
    classes : the classes to score, in order (default: every class seen, sorted); an event of
        another class is an ExperimentError
    durations : seconds per recording; a recording not named lasts until its latest offset

    Returns a SedResult whose counts are (segment, class) cells.
    """
    segment = check_number("segment", segment, low=0)
    if segment <= 0:
        raise ConfigError(f"segment must be > 0 seconds, got {segment}")
    coded = _code(reference, estimated, classes)
    n_classes = len(coded.classes)
    n_segments = np.ceil(_lengths(coded, durations) / segment).astype(np.int64)
    ref = _segment_roll(coded.ref_rec, coded.ref_lab, coded.ref, n_segments, n_classes, segment)
    est = _segment_roll(coded.est_rec, coded.est_lab, coded.est, n_segments, n_classes, segment)
    both = ref & est
    n_ref, n_sys, tp = ref.sum(axis=0), est.sum(axis=0), both.sum(axis=0)
    class_counts = [
        Counts(int(r), int(s), int(t), 0, int(r - t), int(s - t))
        for r, s, t in zip(n_ref, n_sys, tp, strict=True)
    ]
    ref_n, sys_n, tp_n = ref.sum(axis=1), est.sum(axis=1), both.sum(axis=1)
    counts = Counts(
        n_ref=int(ref_n.sum()),
        n_sys=int(sys_n.sum()),
        tp=int(tp_n.sum()),
        substitutions=int((np.minimum(ref_n, sys_n) - tp_n).sum()),
        deletions=int(np.maximum(0, ref_n - sys_n).sum()),
        insertions=int(np.maximum(0, sys_n - ref_n).sum()),
    )
    return _result(coded.classes, counts, class_counts)


# -- event-based --------------------------------------------------------------------------------


def _pairs(coded: _Coded, ref_pos: np.ndarray, est_pos: np.ndarray, timing: dict, *, by_class: bool) -> tuple:
    """Pairs of ``coded.ref[ref_pos]`` and ``coded.est[est_pos]`` that agree in time, within
    one recording (and class, when ``by_class``): positions into ``ref_pos`` and ``est_pos``."""
    n_classes = len(coded.classes) if by_class else 1
    ref_group = coded.ref_rec[ref_pos] * n_classes + (coded.ref_lab[ref_pos] if by_class else 0)
    est_group = coded.est_rec[est_pos] * n_classes + (coded.est_lab[est_pos] if by_class else 0)
    ref, est = coded.ref, coded.est
    return time_pairs(
        ref.onset[ref_pos],
        ref.offset[ref_pos],
        est.onset[est_pos],
        est.offset[est_pos],
        ref_group=ref_group,
        est_group=est_group,
        **timing,
    )


def _match(coded: _Coded, timing: dict, matching: str) -> tuple[np.ndarray, np.ndarray]:
    """Which references and estimates are matched, within each recording and class."""
    ref_pos, est_pos = np.arange(len(coded.ref)), np.arange(len(coded.est))
    ri, ei = _pairs(coded, ref_pos, est_pos, timing, by_class=True)
    pairs = maximum_matching(ri, ei) if matching == "optimal" else greedy_matching(ri, ei, len(est_pos))
    ref_hit, est_hit = np.zeros(len(ref_pos), bool), np.zeros(len(est_pos), bool)
    ref_hit[pairs[:, 0]] = True
    est_hit[pairs[:, 1]] = True
    return ref_hit, est_hit


def _substitutions(coded: _Coded, ref_hit: np.ndarray, est_hit: np.ndarray, timing: dict) -> int:
    """The references and estimates left over, paired by time alone within each recording:
    references in order, each taking the first estimate left that agrees."""
    ref_pos, est_pos = np.flatnonzero(~ref_hit), np.flatnonzero(~est_hit)
    ri, ei = _pairs(coded, ref_pos, est_pos, timing, by_class=False)
    return len(greedy_matching(ri, ei, len(est_pos)))


def event_based(
    reference: Any,
    estimated: Any,
    *,
    collar: float = 0.2,
    offset_ratio: float = 0.2,
    classes: Sequence[Any] | None = None,
    matching: str = "optimal",
    onset: bool = True,
    offset: bool = True,
) -> SedResult:
    """Event-based metrics of ``estimated`` events against ``reference`` events.

    reference, estimated : event rows ``(recording, onset, offset, class, ...)`` or event
        tables (``experiments.sed_events``); the order of a recording's rows decides ties
    collar : float > 0, seconds, for the onset and the least for the offset
    offset_ratio : float in [0, 1], the offset's collar as a share of the reference's length
    classes : the classes to score, in order (default: every class seen, sorted)
    matching : ``"optimal"`` (the most matches) or ``"greedy"`` (references in order)
    onset, offset : which ends are compared (at least one)

    Returns a SedResult whose counts are events.
    """
    collar = check_number("collar", collar, low=0)
    if collar <= 0:
        raise ConfigError(f"collar must be > 0 seconds, got {collar}")
    offset_ratio = check_number("offset_ratio", offset_ratio, low=0, high=1)
    if matching not in MATCHINGS:
        raise ConfigError(f"matching must be one of {', '.join(MATCHINGS)}, got {matching!r}")
    if not (onset or offset):
        raise ConfigError("event_based must compare the onset, the offset or both")
    coded = _code(reference, estimated, classes)
    timing = {"collar": collar, "offset_ratio": offset_ratio, "onset": bool(onset), "offset": bool(offset)}
    ref_hit, est_hit = _match(coded, timing, matching)
    n_classes = len(coded.classes)
    n_ref = np.bincount(coded.ref_lab, minlength=n_classes)
    n_sys = np.bincount(coded.est_lab, minlength=n_classes)
    tp = np.bincount(coded.ref_lab[ref_hit], minlength=n_classes)
    class_counts = [
        Counts(int(r), int(s), int(t), 0, int(r - t), int(s - t))
        for r, s, t in zip(n_ref, n_sys, tp, strict=True)
    ]
    subs = _substitutions(coded, ref_hit, est_hit, timing)
    total_ref, total_sys, total_tp = len(coded.ref), len(coded.est), int(ref_hit.sum())
    counts = Counts(
        total_ref, total_sys, total_tp, subs, total_ref - total_tp - subs, total_sys - total_tp - subs
    )
    return _result(coded.classes, counts, class_counts)


# -- frames ---------------------------------------------------------------------------------------


def frame_average_precision(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each class over frames, without a threshold.

    truth : np.ndarray [shape=(..., n_classes)], 0/1 (or bool)
    scores : np.ndarray [shape=(..., n_classes)], float, the same shape

    Per class: frames ranked by score, AP is the sum over distinct score values (highest
    first) of the recall gained there times the precision there; tied frames count together.
    This is scikit-learn's ``average_precision_score``. A class without positive frames is NaN.

    Returns np.ndarray [shape=(n_classes,)], float64.
    """
    truth, scores = np.asarray(truth), np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim < 1:
        raise ConfigError(
            f"truth and scores must have one shape (..., classes), got {truth.shape} and {scores.shape}"
        )
    if not np.isin(truth, (0, 1)).all():
        raise ConfigError("truth must hold only 0 and 1")
    if not np.isfinite(scores).all():
        raise ConfigError("scores must be finite")
    n_classes = scores.shape[-1]
    truth = truth.reshape(-1, n_classes).astype(np.int64)
    scores = scores.reshape(-1, n_classes)
    if len(scores) == 0:
        return np.full(n_classes, math.nan)
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=0)
    hits = np.cumsum(np.take_along_axis(truth, order, axis=0), axis=0)
    block_end = np.ones(ranked.shape, dtype=bool)
    block_end[:-1] = ranked[:-1] != ranked[1:]
    at_ends = np.where(block_end, hits, 0)
    before = np.vstack([np.zeros((1, n_classes), np.int64), np.maximum.accumulate(at_ends, axis=0)[:-1]])
    gained = np.where(block_end, hits - before, 0)
    precision = hits / np.arange(1, len(scores) + 1)[:, None]
    positives = hits[-1]
    total = (gained * precision).sum(axis=0)
    return np.divide(total, positives, out=np.full(n_classes, math.nan), where=positives > 0)
