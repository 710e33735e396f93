"""The experiments side's own error: a model, run directory or prediction input that does not fit."""

from melshards.errors import MelShardsError


class ExperimentError(MelShardsError):
    """A model file, run directory or prediction input is missing or does not fit."""
