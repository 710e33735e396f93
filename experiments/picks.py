"""Which stored examples a picture of a feature set shows, and their arrays as the loader reads them.

``choose_examples`` picks, deterministically, up to a number of examples anchored on a TP call
of each class (from as many recordings as it can); ``window_examples`` the first windows of the
first recordings of a windows feature set (no labels); ``parse_classes`` reads ``--classes``.
``read_windows`` reads the chosen examples (whole stored windows, or crops) through the loader's
``MelReader``. ``experiments.pictures`` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loader.reader import MelReader
from melshards.errors import ConfigError
from melshards.names import EVENT_TP, LABEL_POSITIVE
from melshards.shard_open import open_listed
from melshards.shard_read import read_anchors


@dataclass(frozen=True)
class Pick:
    """One stored example chosen for a picture."""

    id: int  # global example id (shard by shard, in index order)
    recording_id: str
    start: float  # stored window start in the recording, seconds
    species: int  # the anchor row's species, -1 for sliding windows
    box: tuple[float, float, float, float] | None  # anchor (t_min, t_max, f_min, f_max), s and Hz


def _anchors(features) -> dict[str, np.ndarray]:
    """Anchor columns of every example, in global example order."""
    names = ("species_id", "kind", "t_min", "t_max", "f_min", "f_max")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for layout in features.shards:
        with open_listed(features.index, layout.entry, url=features.url, cache=features.cache) as h5:
            for name, values in read_anchors(h5, names).items():
                parts[name].append(values)
    return {name: np.concatenate(parts[name]) if parts[name] else np.zeros(0) for name in names}


def parse_classes(
    text: str | None, *, classes: tuple[int, ...], names: tuple[str, ...] = ()
) -> tuple[int, ...]:
    """``"0-5,9"`` -> ``(0, 1, 2, 3, 4, 5, 9)``; a class name (one of ``names``) counts as its
    id; None -> every class of the feature set."""
    if text is None:
        return tuple(classes)
    chosen: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            if part.strip() in names:
                values = [names.index(part.strip())]
            else:
                values = range(int(low), int(high) + 1) if sep else [int(low)]
        except ValueError:
            raise ConfigError(f"--classes {text!r}: expected class ids like 0-5,9, or class names") from None
        chosen += [c for c in values if c not in chosen]
    outside = [c for c in chosen if c not in classes]
    if outside or not chosen:
        raise ConfigError(
            f"--classes {text!r}: class {outside[0] if outside else '(none)'} is not in the feature "
            f"set's classes {classes[0]}..{classes[-1]}"
        )
    return tuple(chosen)


def choose_examples(features, *, classes: tuple[int, ...], per_class: int) -> dict[int, list[Pick]]:
    """Up to ``per_class`` examples anchored on a TP call of each class, chosen deterministically.

    Candidates are the examples cut around a TP row of the class whose label is positive; they
    are taken from as many different recordings as possible, spread evenly over the recordings
    sorted by id (then by start time), so the same feature set always gives the same picture.
    """
    anchors = _anchors(features)
    chosen: dict[int, list[Pick]] = {}
    for c in classes:
        ids = np.flatnonzero(
            (anchors["species_id"] == c)
            & (anchors["kind"] == EVENT_TP)
            & (features.labels[:, c] == LABEL_POSITIVE)
        )
        order = sorted(ids, key=lambda i: (features.recording_id[i], features.start[i]))
        # First example of each recording, then the rest: distinct recordings come first.
        seen: set[str] = set()
        firsts, rest = [], []
        for i in order:
            (rest if features.recording_id[i] in seen else firsts).append(i)
            seen.add(features.recording_id[i])
        pool = firsts + rest
        if len(firsts) >= per_class:
            pool = [firsts[int(round(j))] for j in np.linspace(0, len(firsts) - 1, per_class)]
        chosen[c] = [
            Pick(
                id=int(i),
                recording_id=str(features.recording_id[i]),
                start=float(features.start[i]),
                species=c,
                box=(
                    float(anchors["t_min"][i]),
                    float(anchors["t_max"][i]),
                    float(anchors["f_min"][i]),
                    float(anchors["f_max"][i]),
                ),
            )
            for i in pool[:per_class]
        ]
    return chosen


def window_examples(features, *, rows: int, per_row: int) -> dict[int, list[Pick]]:
    """For a windows feature set (no labels): the first windows of the first recordings."""
    chosen: dict[int, list[Pick]] = {}
    for row, rid in enumerate(sorted(set(features.recording_id))[:rows]):
        ids = np.flatnonzero(features.recording_id == rid)
        ids = sorted(ids, key=lambda i: features.start[i])[:per_row]
        chosen[row] = [Pick(int(i), rid, float(features.start[i]), -1, None) for i in ids]
    return chosen


def read_windows(features, ids: list[int], *, crop_start: np.ndarray | None = None, crop: int | None = None):
    """Stored examples ``ids`` (whole windows, or crops), np.ndarray [shape=(B, n_mels, frames)], float32."""
    cfg = features.config
    crop = cfg.n_frames if crop is None else crop
    starts = np.zeros(len(ids), np.int64) if crop_start is None else crop_start
    out = np.empty((len(ids), cfg.n_mels, crop, 1), dtype=np.float32)
    MelReader(features).read(np.asarray(ids, dtype=np.int64), starts, out)
    return out[..., 0]
