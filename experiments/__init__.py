"""Model experiments on precomputed mel shards: models, losses, metrics, train, predict.

Nothing here reads audio or needs librosa or joblib: experiments see only feature sets
written by ``precompute``.
"""

from loader.errors import MelShardsError


class ExperimentError(MelShardsError):
    """A model file, run directory or prediction input is missing or does not fit."""


__all__ = ["ExperimentError"]
