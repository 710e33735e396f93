"""Where windows go in a recording, and what each window is labelled with.

Placement works on the grid ``precompute.job.window_mels`` stores windows on: every sample, or
with ``share_frames`` every hop. A stored window may reach beyond the recording's start or end;
the samples there are zeros (padding), and each example records which of its frames hold audio
(``valid_frames``). ``docs/precompute.md`` states the rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from melshards.config import FeatureConfig, center_offset, crop_span
from melshards.labels import label_rows, overlap_mask
from precompute.inputs.row_table import Row

# Seconds of slack in "the event lies inside the crop": the labelling rule's own tolerance.
INSIDE_TOLERANCE = 1e-6


def place_window(t_min: float, t_max: float, *, length: float, recording_seconds: float) -> float:
    """Start (seconds) of a ``length``-second window centred on the event ``[t_min, t_max]``.

    Clipped to the recording, as the classic per-sample Sequence does: a window that would
    start before 0 starts at 0, one that would end after the recording ends at its end. This is
    where ``event_window_start`` begins for a recording at least ``length`` long.
    """
    centre = 0.5 * (t_min + t_max)
    start = centre - 0.5 * length
    return float(min(max(start, 0.0), max(recording_seconds - length, 0.0)))


def sliding_starts(recording_seconds: float, *, length: float, step: float) -> np.ndarray:
    """Starts of windows every ``step`` seconds; the last one is moved back to end the recording.

    A recording shorter than ``length`` gets one window (``window_set_starts`` places it).
    """
    last = recording_seconds - length
    if last <= 0:
        return np.zeros(1)
    starts = np.arange(0.0, last, step)
    if starts.size == 0 or last - starts[-1] > 1e-9:
        starts = np.append(starts, last)
    return starts


def _grid(config: FeatureConfig) -> int:
    """Samples between two possible window starts: the hop with ``share_frames``, else one."""
    return config.hop_length if config.share_frames else 1


def _window_samples(config: FeatureConfig) -> int:
    return int(round(config.window_seconds * config.sample_rate))


def _crop_geometry(config: FeatureConfig) -> tuple[int, int]:
    """(first sample of the centred crop from the window's start, samples from its first frame to its last)."""
    hop = config.hop_length
    return center_offset(config) * hop, (config.crop_frames - 1) * hop


def grid_step(start: float, *, n_samples: int, config: FeatureConfig) -> int:
    """Grid step (sample, or hop with ``share_frames``) a window asked to start at ``start`` starts on.

    The nearest one; a window meant to fit in the recording (``start`` at most the recording's
    length less the window's) never passes the last step whose window ends inside it. Any other
    start is padding on purpose and only rounded.
    """
    g, sr = _grid(config), config.sample_rate
    step = int(round(start * sr / g))
    last = n_samples - _window_samples(config)
    if start * sr <= last + 0.5:
        step = min(step, last // g)
    return step


def snap_start(start: float, *, n_samples: int, config: FeatureConfig) -> float:
    """``start`` (seconds) on the grid, as ``grid_step`` puts it."""
    return grid_step(start, n_samples=n_samples, config=config) * _grid(config) / config.sample_rate


def _short_base(n_samples: int, config: FeatureConfig) -> int:
    """Grid step of the window of a recording shorter than the stored window (see ``window_set_starts``)."""
    g = _grid(config)
    offset, span = _crop_geometry(config)
    if n_samples < span:  # shorter than the crop: the crop starts with the recording
        return -offset // g
    centred = int(round((n_samples - _window_samples(config)) / 2 / g))
    return min(max(centred, -offset // g), (n_samples - offset - span) // g)


def window_set_starts(n_samples: int, *, config: FeatureConfig, step: float) -> list[float]:
    """Starts (seconds, on the grid) of the sliding windows over a recording of ``n_samples``.

    A recording at least as long as the stored window: every ``step`` seconds, the last window
    ending with the recording (``sliding_starts``). A shorter one gets one padded window: a
    recording shorter than the crop (``crop_frames``, i.e. ``duration`` to a hop) starts where
    the centred crop starts and silence follows it; a longer one is centred in the window, its
    crop inside the recording.
    """
    g, sr = _grid(config), config.sample_rate
    if n_samples < _window_samples(config):
        return [_short_base(n_samples, config) * g / sr]
    starts = sliding_starts(n_samples / sr, length=config.window_seconds, step=step)
    return [snap_start(float(s), n_samples=n_samples, config=config) for s in starts]


def event_window_start(t_min: float, t_max: float, *, n_samples: int, config: FeatureConfig) -> float:
    """Start (seconds, on the grid) of the stored window of the event ``[t_min, t_max]``.

    The event lies inside the centred crop (an event longer than the crop covers the whole
    crop) whenever the recording is at least as long as the crop. The window starts where
    ``place_window`` puts it when the event already lies there; otherwise it moves the least
    that brings the event in. Its crop never leaves the recording, so only context (``context``
    seconds, to a hop) reaches beyond the recording's start or end. A recording shorter than the stored window starts
    from its ``window_set_starts`` window; one shorter than the crop keeps it (the crop holds
    the whole recording).
    """
    g, sr = _grid(config), config.sample_rate
    offset, span = _crop_geometry(config)
    if n_samples < span:
        return _short_base(n_samples, config) * g / sr
    if n_samples >= _window_samples(config):
        today = place_window(t_min, t_max, length=config.window_seconds, recording_seconds=n_samples / sr)
        base = grid_step(today, n_samples=n_samples, config=config)
    else:
        base = _short_base(n_samples, config)
    # Window starts (samples) whose crop [start + offset, start + offset + span] holds the event,
    # or lies inside it when the event is longer than the crop.
    e0, e1, slack = t_min * sr, t_max * sr, INSIDE_TOLERANCE * sr
    lo = min(e0, e1 - span) - offset - slack
    hi = max(e0, e1 - span) - offset + slack
    # Starts whose crop lies on the recording.
    fit_lo, fit_hi = -offset // g, (n_samples - offset - span) // g
    k_lo, k_hi = max(math.ceil(lo / g), fit_lo), min(math.floor(hi / g), fit_hi)
    if k_lo <= k_hi:
        k = min(max(base, k_lo), k_hi)
    else:  # no grid step fits exactly (an event as long as the crop): the nearest one
        k = min(max(int(round((lo + hi) / 2 / g)), fit_lo), fit_hi)
    return k * g / sr


def valid_frames(start: float, *, n_samples: int, config: FeatureConfig) -> tuple[int, int]:
    """``[first, stop)``: the stored frames of the window at ``start`` that hold audio.

    A frame holds audio when its centre lies on the recording, samples ``0 .. n_samples``
    (the frame centred on its end included, as in any window that ends with the recording);
    the others are padding.
    """
    hop = config.hop_length
    first_sample = int(round(start * config.sample_rate))
    first = max(0, -(first_sample // hop))
    stop = min(config.n_frames, (n_samples - first_sample) // hop + 1)
    return first, max(stop, first + 1)


def event_arrays(events: Sequence[Row]) -> dict[str, np.ndarray]:
    return {
        "species_id": np.array([e.species_id for e in events], dtype=np.int16),
        "kind": np.array([e.kind for e in events], dtype=np.int8),
        "t_min": np.array([e.t_min for e in events], dtype=np.float64),
        "t_max": np.array([e.t_max for e in events], dtype=np.float64),
    }


def window_events(
    events: dict[str, np.ndarray], start: float, *, config: FeatureConfig
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label a stored window and list the events stored with it.

    ``events`` are all the recording's events (``event_arrays``). Stored with the window:
    every event that counts anywhere in the stored span (context included), so the loader
    can relabel any crop. The labels returned are those of the centred ``duration`` crop,
    i.e. what the model sees without a time shift (``melshards.config.crop_span``).

    Returns (labels [shape=(n_classes,)] int8, stored events).
    """
    stored_end = start + config.window_seconds
    keep = overlap_mask(events["t_min"], events["t_max"], start, stored_end, min_overlap=config.min_overlap)
    t0, t1 = crop_span(config, start, center_offset(config), config.crop_frames)
    present = overlap_mask(events["t_min"], events["t_max"], t0, t1, min_overlap=config.min_overlap)
    labels = label_rows(events["species_id"], events["kind"], present, n_classes=config.n_classes)
    stored = {name: values[keep] for name, values in events.items()}
    return labels, stored
