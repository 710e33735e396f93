"""The labelling rule, shared by precompute (each stored window) and the loader (each crop)."""

from __future__ import annotations

import numpy as np

from melshards.names import EVENT_FP, EVENT_TP, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNKNOWN


def overlap_mask(
    t_min: np.ndarray, t_max: np.ndarray, w_start: np.ndarray, w_end: np.ndarray, *, min_overlap: float
) -> np.ndarray:
    """Whether events ``[t_min, t_max]`` count as present in windows ``[w_start, w_end]``.

    The rule: an event counts when it overlaps the window by at least ``min_overlap`` seconds,
    or lies fully inside it (a call shorter than ``min_overlap`` still counts when the window
    holds all of it). Arguments broadcast against each other.
    """
    t_min, t_max = np.asarray(t_min, dtype=np.float64), np.asarray(t_max, dtype=np.float64)
    w_start, w_end = np.asarray(w_start, dtype=np.float64), np.asarray(w_end, dtype=np.float64)
    overlap = np.minimum(t_max, w_end) - np.maximum(t_min, w_start)
    # A tolerance of a microsecond keeps the rule stable against float rounding of times.
    inside = (t_min >= w_start - 1e-6) & (t_max <= w_end + 1e-6)
    return (overlap > 0) & ((overlap >= min_overlap - 1e-6) | inside)


def label_rows(species: np.ndarray, kind: np.ndarray, present: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Label vector from the events present in one window.

    species, kind, present : np.ndarray [shape=(m,)]
        Species id, ``EVENT_TP``/``EVENT_FP`` and whether each event counts in the window.

    Returns np.ndarray [shape=(n_classes,)], int8: 1 where a TP of the species is present,
    0 where only FPs are, -1 elsewhere.
    """
    labels = np.full(n_classes, LABEL_UNKNOWN, dtype=np.int8)
    fp = species[present & (kind == EVENT_FP)]
    tp = species[present & (kind == EVENT_TP)]
    labels[fp] = LABEL_NEGATIVE
    labels[tp] = LABEL_POSITIVE  # a TP wins over an FP of the same species
    return labels
