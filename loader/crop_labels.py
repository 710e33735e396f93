"""The labels of a batch: what each crop shows, and pseudo labels where that is unknown.

``CropLabels`` gives ``(y, known)`` of the crops of a batch from the events stored with each
example (``FeatureSet.crop_labels``: positive where a TP counts in the crop, known negative
where only FPs do), so labels follow the frames the model sees, not the stored window. The
centred crops (every crop of an epoch without time shift) come from a table made once per
process.

``soft_labels`` are pseudo labels for the unknown ones (``experiments.pseudo``): an
(examples, classes) array in the feature set's example order, values in [0, 1] or NaN (none).
``check_soft_labels`` refuses one of the wrong shape or range; ``fill_unknown`` puts its values
where a crop's label is unknown. ``known`` is left as it is, so the loss weighs a soft label as
it weighs an unknown one.
"""

from __future__ import annotations

import os

import numpy as np

from loader.feature_set import FeatureSet
from melshards.errors import ConfigError


class CropLabels:
    """``(y, known)`` of crops of ``crop_frames`` of ``features``, float32 (B, n_classes) each.

    center : first stored frame of the centred crop; those crops are looked up in a table
        (int8, every example) built on first use and dropped when pickled
    """

    def __init__(self, features: FeatureSet, crop_frames: int, center: int) -> None:
        self.features, self.crop_frames, self.center = features, crop_frames, center
        self._table: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, ids: np.ndarray, crop_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        center = self.center
        if not (crop_start == center).all():
            return self.features.crop_labels(ids, crop_start, self.crop_frames)
        table = self._table
        if table is None:
            every = np.arange(self.features.n_examples)
            y, known = self.features.crop_labels(every, np.full(every.shape[0], center), self.crop_frames)
            table = self._table = (y.astype(np.int8), known.astype(np.int8))
        return table[0][ids].astype(np.float32), table[1][ids].astype(np.float32)

    def __getstate__(self) -> dict:
        return dict(self.__dict__) | {"_table": None}


def check_soft_labels(soft: np.ndarray | str | os.PathLike, features: FeatureSet) -> np.ndarray:
    """``soft`` (an array or the path of a ``.npy``) as float32 of ``features``' shape
    (examples, classes), values in [0, 1] or NaN; ConfigError naming it otherwise."""
    where = "soft_labels"
    if not isinstance(soft, np.ndarray):
        where = os.fspath(soft)
        try:
            soft = np.load(where, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}: cannot read soft labels: {err}") from None
    expected = (features.n_examples, features.config.n_classes)
    if soft.shape != expected or soft.dtype.kind != "f":
        raise ConfigError(
            f"{where}: soft labels must be floats of shape {expected} (examples, classes) for "
            f"{features.root}, got {soft.dtype} {soft.shape}"
        )
    soft = soft.astype(np.float32, copy=False)
    outside = np.flatnonzero(((soft < 0) | (soft > 1)).any(axis=1))
    if outside.size:
        raise ConfigError(f"{where}: example {outside[0]} has a soft label outside [0, 1]")
    return soft


def fill_unknown(y: np.ndarray, known: np.ndarray, soft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with every unknown label that has a soft value (not NaN) set to it; ``known`` as given.

    y, known : np.ndarray [shape=(B, n_classes)], or frame targets [shape=(B, steps, n_classes)]:
        then a class unknown on every step (its crop label is unknown: ``loader.frame_targets``)
        takes its soft value on every step, and a class known somewhere keeps its steps.
        y is changed in place.
    soft : np.ndarray [shape=(B, n_classes)]
    """
    if y.ndim == 3:
        rows, classes = np.nonzero((known.max(axis=1, initial=0) == 0) & ~np.isnan(soft))
        y[rows, :, classes] = soft[rows, classes][:, None]
        return y, known
    fill = (known == 0) & ~np.isnan(soft)
    y[fill] = soft[fill]
    return y, known
