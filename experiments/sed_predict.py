"""Sound events of a windows feature set: window scores stitched per recording, then events.

``experiments.predict`` scores the centred crop of every window of a windows feature set
(``precompute windows``: windows over whole recordings, overlapping when the step is shorter
than a window). From those scores to events, step by step:

1. **Steps** (``window_steps``). A frame model scores each step of ``target_step`` crop frames:
   ``(windows, steps, classes)``. A clip model scores a window once; its score counts as one
   step holding the whole crop, so it is spread over every frame of the crop: the fair baseline.
2. **The frame grid** (``grid_frames``). Frame ``k`` of a recording sits at ``k * hop / sr``
   seconds from its start. Crop frame ``i`` of a window sits at ``start + (offset + i) * hop /
   sr`` (``start`` the window's stored start, ``offset`` the centred crop's first stored frame,
   as ``melshards.config.crop_span`` places it): grid frame ``round(start * sr / hop) + offset +
   i``, exactly where windows start on the grid (``share_frames`` puts them there), within half
   a frame otherwise.
3. **Stitching** (``stitch_windows``). Every crop frame takes its step's score; a grid frame's
   score is the mean over the windows whose crops hold it (two where windows overlap by half).
   Frames between a recording's first and last crop frame that no crop holds score 0; frames
   before the first crop (the first window's context) and after the last have no score.
4. **Events** (``recording_events``). The outputs merge into the submission's columns by the
   maximum (``experiments.submission.merge_columns``), then
   ``experiments.sed_events.events_from_scores`` makes each recording's events: a frame is
   active above its class's threshold, a median filter, runs of active frames, gaps merged,
   short events dropped. Grid frame ``k`` spans ``[(k - 1/2) hop / sr, (k + 1/2) hop / sr]``
   (cut at 0): neighbours meet half-way, as the loader's steps of one frame do. An event's
   label is its column's species id (``s7`` -> 7; other names as they are).
5. **Scoring** (``score_events``). The events against a reference table holding every call of
   the recordings (``recording_id,species_id,t_min,t_max``, e.g. ``test_events.csv``), by
   ``experiments.sed_metrics`` (as ``sed_eval``): segment-based F1 over 1 s segments and
   event-based F1 (onset within 200 ms, offset within max(200 ms, 20 % of the call)), both
   micro averages (counts added over classes). A predicted recording without reference rows
   has no calls; a reference recording without prediction is an error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.errors import ExperimentError
from experiments.sed_events import (
    EVENT_FIELDS,
    event_columns,
    event_table,
    events_from_scores,
    read_events_csv,
)
from experiments.sed_metrics import SedResult, event_based, segment_based
from experiments.submission import merge_columns
from melshards.config import FeatureConfig, center_offset

# Segment length and event collars of the scores (the DCASE defaults).
SEGMENT_SECONDS = 1.0
COLLAR_SECONDS = 0.2
OFFSET_RATIO = 0.2
# An RFCX species column ``s<id>``: its events carry the integer id.
_SPECIES_COLUMN = re.compile(r"s(\d+)")


def frame_step(steps: int, crop_frames: int, recorded: Any = None) -> int:
    """Frames per step of a frame model giving ``steps`` steps for ``crop_frames`` frames: the
    run's recorded ``target_step`` when given, else the smallest that fits
    (``ceil(crop_frames / steps)``); ExperimentError when the recorded one does not fit."""
    step = math.ceil(crop_frames / steps) if recorded is None else int(recorded)
    if step < 1 or math.ceil(crop_frames / step) != steps:
        raise ExperimentError(
            f"the model gives {steps} steps for crops of {crop_frames} frames, which a target_step of "
            f"{step} does not (ceil({crop_frames} / {step}) steps)"
        )
    return step


def window_steps(outputs: np.ndarray, crop_frames: int, target_step: int | None) -> tuple[np.ndarray, int]:
    """Each window's scores per step and the frames per step: a frame model's outputs
    ``(n, steps, classes)`` with ``target_step``; a clip model's ``(n, classes)`` as one step of
    ``crop_frames`` frames (``target_step`` ignored)."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2:
        return outputs[:, None, :], int(crop_frames)
    return outputs, int(target_step)


def grid_frames(config: FeatureConfig, starts: np.ndarray, crop_frames: int) -> np.ndarray:
    """The recording's grid frame of each window's first crop frame, (n,) int64 (step 2 of the
    module docstring): the centred crop of ``crop_frames`` of windows stored from ``starts``."""
    first = np.rint(np.asarray(starts, dtype=np.float64) / config.seconds_per_frame).astype(np.int64)
    return first + center_offset(config, crop_frames)


@dataclass(frozen=True)
class Stitched:
    """Frame scores per recording on its frame grid.

    recordings : the recording ids, sorted
    first : np.ndarray [shape=(n_recordings,)], int64 -- the grid frame of each one's first score
    scores : one np.ndarray [shape=(n_frames, n_outputs)], float64, per recording
    seconds_per_frame : hop / sr
    """

    recordings: list[str]
    first: np.ndarray
    scores: list[np.ndarray]
    seconds_per_frame: float

    def edges(self, r: int) -> np.ndarray:
        """Seconds where each frame of recording ``r`` begins and ends, (n_frames + 1,) float64."""
        frames = np.arange(self.scores[r].shape[0] + 1, dtype=np.float64) + self.first[r]
        return np.maximum((frames - 0.5) * self.seconds_per_frame, 0.0)


def stitch_windows(
    steps: np.ndarray,
    target_step: int,
    *,
    recording_ids: Sequence[str],
    first_frames: np.ndarray,
    crop_frames: int,
    seconds_per_frame: float,
) -> Stitched:
    """Average the windows' step scores on each recording's frame grid (the module docstring).

    steps : np.ndarray [shape=(n_windows, n_steps, n_outputs)] -- step ``j`` holds crop frames
        ``j * target_step`` to ``(j + 1) * target_step - 1``
    recording_ids, first_frames : each window's recording and the grid frame of its first crop
        frame (``grid_frames``)
    """
    steps = np.asarray(steps)
    ids = np.asarray(recording_ids, dtype=str)
    first_frames = np.asarray(first_frames, dtype=np.int64)
    if not (len(ids) == len(first_frames) == len(steps)):
        raise ExperimentError(
            f"{len(steps)} windows of scores for {len(ids)} recording ids and {len(first_frames)} starts"
        )
    step_of = np.arange(crop_frames) // int(target_step)
    if step_of[-1] >= steps.shape[1]:
        raise ExperimentError(
            f"{steps.shape[1]} steps of {target_step} frames do not hold a crop of {crop_frames} frames"
        )
    unique, inverse = np.unique(ids, return_inverse=True)
    firsts, scores = [], []
    for r in range(len(unique)):
        mine = np.flatnonzero(inverse == r)
        lo = int(first_frames[mine].min())
        total = np.zeros((int(first_frames[mine].max()) + crop_frames - lo, steps.shape[2]))
        count = np.zeros(total.shape[0])
        for w in mine:  # in window order: the same sums, bit for bit, on every run
            at = int(first_frames[w]) - lo
            total[at : at + crop_frames] += steps[w][step_of]
            count[at : at + crop_frames] += 1
        firsts.append(lo)
        scores.append(total / np.maximum(count, 1)[:, None])
    return Stitched([str(u) for u in unique], np.array(firsts, dtype=np.int64), scores, seconds_per_frame)


def event_labels(columns: Sequence[str]) -> list[Any]:
    """The label of each submission column in an event table: ``s<id>`` -> the integer id (an
    RFCX species), any other name as it is."""
    found = [_SPECIES_COLUMN.fullmatch(c) for c in columns]
    if all(found):
        return [int(m.group(1)) for m in found]
    return list(columns)


def median_frames(seconds: float, seconds_per_frame: float) -> int:
    """The median filter's length in grid frames: ``seconds`` rounded to an odd count (0: 1, none)."""
    frames = int(round(seconds / seconds_per_frame))
    return frames + 1 if frames % 2 == 0 else frames


def recording_events(
    stitched: Stitched,
    *,
    column_of: np.ndarray,
    labels: Sequence[Any],
    threshold: float | Sequence[float] = 0.5,
    median: float = 0.0,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
) -> np.ndarray:
    """The events of every recording (step 4 of the module docstring), an event table
    (``experiments.sed_events.EVENT_FIELDS``) sorted by recording, onset and class.

    column_of : the submission column of each output (``submission_columns``); ``labels`` names
        the columns
    threshold : one for every column or one per column; ``median``, ``min_duration``,
        ``min_gap`` in seconds
    """
    spf = stitched.seconds_per_frame
    threshold = threshold[0] if not np.isscalar(threshold) and len(threshold) == 1 else threshold
    parts = []
    for r, rid in enumerate(stitched.recordings):
        scores = merge_columns(stitched.scores[r], column_of, len(labels))
        parts.append(
            events_from_scores(
                scores[None],
                stitched.edges(r),
                threshold=threshold,
                median=median_frames(median, spf),
                min_duration=min_duration,
                min_gap=min_gap,
                recordings=[rid],
                classes=labels,
            )
        )
    if not parts:
        return event_table(np.zeros(0, dtype=str), [], [], np.asarray(labels)[:0], [])
    return event_table(*(np.concatenate([p[field] for p in parts]) for field in EVENT_FIELDS))


def _comparable(reference: np.ndarray, estimated: np.ndarray) -> tuple[Any, Any]:
    """The two tables' rows, labels as text when one table's are numbers and the other's text."""
    ref, est = event_columns(reference, name="reference"), event_columns(estimated, name="events")
    kinds = {type(v) for v in (*ref.label.tolist(), *est.label.tolist())}
    as_text = kinds != {int} and kinds != {str}
    rows = []
    for cols in (ref, est):
        labels = [str(v) for v in cols.label] if as_text else list(cols.label)
        rows.append(list(zip(cols.recording.tolist(), cols.onset, cols.offset, labels, strict=True)))
    return rows[0], rows[1]


def micro_f1(result: SedResult) -> float | None:
    """The micro-averaged F1 of ``result``: 0 when there are calls and no estimate matched any
    (sed_eval's NaN for no estimates at all), None when there is nothing to score."""
    f1 = result.overall.f1
    if math.isnan(f1):
        return 0.0 if result.counts.n_ref > 0 else None
    return float(f1)


def score_events(
    estimated: np.ndarray, reference_path: str | os.PathLike, *, recordings: Sequence[str]
) -> dict[str, Any]:
    """Segment- and event-based micro F1 of ``estimated`` against the reference events of
    ``reference_path`` (step 5 of the module docstring).

    recordings : every recording predicted; ExperimentError naming the file when a reference
        recording is not among them
    """
    reference = read_events_csv(reference_path)
    missing = sorted(set(reference["recording"].tolist()) - {str(r) for r in recordings})
    if missing:
        raise ExperimentError(
            f"{reference_path}: {len(missing)} recording(s) have no prediction, e.g. {missing[0]!r}"
        )
    ref, est = _comparable(reference, estimated)
    segments = segment_based(ref, est, segment=SEGMENT_SECONDS)
    events = event_based(ref, est, collar=COLLAR_SECONDS, offset_ratio=OFFSET_RATIO)
    return {
        "test_segment_f1": micro_f1(segments),
        "test_event_f1": micro_f1(events),
        "test_reference_events": len(ref),
    }
