"""Frame targets: what each time step of a crop shows, from the events stored with each example.

With ``targets="frames"`` a batch's ``y`` and ``known`` are (B, steps, n_classes) float32
instead of one vector per crop. Step ``j`` holds the crop's frames ``j * target_step`` to
``(j + 1) * target_step - 1`` (the last step may hold fewer); ``steps = ceil(crop_frames /
target_step)``.

**Where a step lies.** Frame ``k`` of a crop sits at ``t0 + k * hop / sr``, ``t0`` being the
crop's start of ``melshards.config.crop_span``, which spans ``[t0, t1]`` from the crop's first
frame to its last. A step reaches half a frame beyond its outer frames, so that neighbouring
steps meet half-way between their frames, and is cut to ``[t0, t1]``: step ``j`` spans
``[max(t0, t0 + (a - 1/2) * spf), min(t1, t0 + (b + 1/2) * spf)]`` for its first and last frames
``a``, ``b``. The steps tile the crop's span exactly; one step holding the whole crop spans
exactly what ``crop_span`` does.

**The rule.** An event counts in a step when it counts in the crop (``melshards.labels``'
rule with the config's ``min_overlap`` on ``[t0, t1]``, as the clip labels) and it counts in
the step by that same rule with ``min_overlap`` scaled to the step: at least
``min(min_overlap, step / 2, visible / 2)`` seconds of overlap, ``step`` the step's length and
``visible`` the event's overlap with the crop (or it lies inside the step). Steps of half a
frame carry a call that covers half of them; a short call across a step boundary counts in the
step that holds at least half of it.

- ``y`` is 1 where a TP of the class counts in the step;
- ``known`` is 1 there, and where an FP of the class counts in the step unless a TP of that
  class that counts in the crop overlaps the step at all (then the step is unknown: the call
  may sound there);
- everything else is unknown (0 in both), padding beyond a recording included.

So the clip labels are the maximum over steps: ``y.max(axis=1)`` and ``known.max(axis=1)`` are
the ``(y, known)`` of ``targets="clip"`` (a counting event overlaps some step by half its
visible part or a whole step). Vectorized over the batch's (event, step) pairs, each event
paired only with the steps around it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from loader.buffers import BufferPool
from melshards.config import FeatureConfig, crop_span
from melshards.labels import overlap_mask
from melshards.names import EVENT_FP, EVENT_TP

if TYPE_CHECKING:
    from loader.feature_set import FeatureSet

# What ``y`` describes: the whole crop, or each step of it.
TARGETS = ("clip", "frames")
# Steps tested before an event's first step and after its last: float rounding never drops one.
_MARGIN = np.array([[-1], [1]])


def target_steps(crop_frames: int, target_step: int) -> int:
    """Steps of ``target_step`` frames in a crop of ``crop_frames`` (the last may be shorter)."""
    return -(-int(crop_frames) // int(target_step))


def step_spans(config: FeatureConfig, crop_frames: int, target_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds from the crop's first frame to where each step begins and ends.

    Returns (begin, end), np.ndarray [shape=(steps,)], float64 each (see the module docstring);
    ``t0 + end[-1]`` is the crop's ``t1`` of ``crop_span``, bit for bit.
    """
    spf = config.seconds_per_frame
    first = np.arange(0, crop_frames, target_step, dtype=np.int64)
    last = np.minimum(first + target_step, crop_frames) - 1
    begin = np.maximum((first - 0.5) * spf, 0.0)
    end = np.minimum((last + 0.5) * spf, (int(crop_frames) - 1) * spf)
    return begin, end


def batch_events(event_ptr: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch row, event index) of every event stored with the examples ``ids``, (E,) int64 each."""
    lo, hi = event_ptr[ids], event_ptr[ids + 1]
    counts = hi - lo
    total = int(counts.sum())
    owner = np.repeat(np.arange(ids.shape[0], dtype=np.int64), counts)
    events = np.arange(total, dtype=np.int64) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return owner, events


def _ragged_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which range, value) of every integer in each ``[lo[i], hi[i]]``, in order."""
    sizes = hi - lo + 1
    which = np.repeat(np.arange(lo.shape[0], dtype=np.int64), sizes)
    value = np.arange(which.shape[0], dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes - lo, sizes)
    return which, value


class FrameTargets:
    """``(y, known)`` of crops of ``crop_frames`` per step of ``target_step`` frames,
    float32 (B, steps, n_classes) each (the rule: the module docstring).

    batch_size : up to this many examples, ``y`` and ``known`` come from pools of recycled,
        aligned arrays (``loader.buffers``): at one step per frame they are megabytes, and
        fresh pages would cost more than the targets themselves
    """

    def __init__(
        self, features: FeatureSet, crop_frames: int, target_step: int, *, batch_size: int = 0
    ) -> None:
        self.features, self.crop_frames, self.target_step = features, int(crop_frames), int(target_step)
        self.steps = target_steps(crop_frames, target_step)
        self.begin, self.end = step_spans(features.config, self.crop_frames, self.target_step)
        self.length = self.end - self.begin
        shape = (batch_size, self.steps, features.config.n_classes)
        self._pools = (BufferPool(shape, np.float32), BufferPool(shape, np.float32)) if batch_size else None
        self._tp, self._fp = features.event_kind == EVENT_TP, features.event_kind == EVENT_FP

    def _zeros(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        pools = self._pools
        if pools is None or b > pools[0].shape[0]:
            shape = (b, self.steps, self.features.config.n_classes)
            return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
        y, known = pools[0].take(b), pools[1].take(b)
        y.fill(0.0)
        known.fill(0.0)
        return y, known

    def __call__(self, ids: np.ndarray, crop_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y, known) of the examples ``ids`` cropped at stored frames ``crop_start``, (B,) each."""
        features, config = self.features, self.features.config
        ids = np.asarray(ids, dtype=np.int64)
        y, known = self._zeros(ids.shape[0])
        owner, events = batch_events(features.event_ptr, ids)
        t0, t1 = crop_span(config, features.start[ids], crop_start, self.crop_frames)
        t0, t1 = t0[owner], t1[owner]
        t_min, t_max = features.event_t_min[events], features.event_t_max[events]
        counts = overlap_mask(t_min, t_max, t0, t1, min_overlap=config.min_overlap)
        which, step = _ragged_ranges(*self._reach(np.stack([t_min - t0, t_max - t0]), counts))
        if not which.size:
            return y, known
        # Each (event, step) pair: the step's span, and the event's overlap scaled to the step.
        start = t0[which]
        s0, s1 = start + self.begin[step], start + self.end[step]
        a, b = t_min[which], t_max[which]
        visible = np.minimum(t_max, t1) - np.maximum(t_min, t0)
        scaled = np.minimum(self.length[step], visible[which]) * 0.5
        in_step = overlap_mask(a, b, s0, s1, min_overlap=np.minimum(scaled, config.min_overlap))
        touches = np.minimum(b, s1) - np.maximum(a, s0) > 0
        event = events[which]
        cell = (owner[which] * self.steps + step) * config.n_classes + features.event_species[event]
        tp = self._tp[event]
        positive = cell[tp & in_step]
        flat_known = known.reshape(-1)
        # FPs mark known negatives first; the steps a counting TP overlaps go back to unknown,
        # and the steps where it counts become known positives.
        flat_known[cell[self._fp[event] & in_step]] = 1.0
        flat_known[cell[tp & touches]] = 0.0
        flat_known[positive] = 1.0
        y.reshape(-1)[positive] = 1.0
        return y, known

    def _reach(self, since: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last step to test for each event: the steps its span reaches, one more on
        each side so that rounding never drops one; none (last < first) where it does not count
        in the crop.

        since : np.ndarray [shape=(2, E)] -- seconds from t0 to each event's start and end
        """
        # Step j holds the times (j * target_step - 1/2) to ((j + 1) * target_step - 1/2) frames
        # from t0.
        spf = self.features.config.seconds_per_frame
        k = np.floor((since / spf + 0.5) / self.target_step).astype(np.int64) + _MARGIN
        np.minimum(np.maximum(k, 0, out=k), self.steps - 1, out=k)
        return k[0], np.where(counts, k[1], k[0] - 1)
