"""Where windows go in a recording, and what each window is labelled with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from melshards.config import FeatureConfig, center_offset, crop_span
from melshards.labels import label_rows, overlap_mask
from precompute.manifest import Row


def place_window(t_min: float, t_max: float, *, length: float, recording_seconds: float) -> float:
    """Start (seconds) of a ``length``-second window centred on the event ``[t_min, t_max]``.

    Clipped to the recording, as the classic per-sample Sequence does: a window that would
    start before 0 starts at 0, one that would end after the recording ends at its end.
    """
    centre = 0.5 * (t_min + t_max)
    start = centre - 0.5 * length
    return float(min(max(start, 0.0), max(recording_seconds - length, 0.0)))


def sliding_starts(recording_seconds: float, *, length: float, step: float) -> np.ndarray:
    """Starts of windows every ``step`` seconds; the last one is moved back to end the recording."""
    last = recording_seconds - length
    if last <= 0:
        return np.zeros(1)
    starts = np.arange(0.0, last, step)
    if starts.size == 0 or last - starts[-1] > 1e-9:
        starts = np.append(starts, last)
    return starts


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
