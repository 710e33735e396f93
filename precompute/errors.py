"""The precompute side's own errors: bad rows (or none left), unreadable audio, a held output.

The format's errors (``ConfigError``, ``FormatError``, ``StorageError``, ...) come from
``melshards.errors``; these derive from the same root, so the command line reports them as one
line too.
"""

from melshards.errors import MelShardsError


class ManifestError(MelShardsError, ValueError):
    """A manifest row (or the manifest file itself) is invalid."""


class AudioError(MelShardsError):
    """A recording cannot be decoded or does not fit the feature config."""


class LockedError(MelShardsError):
    """Another precompute run holds the output directory."""


class NoValidRows(ManifestError):
    """Every row of the annotations was rejected; ``failures`` lists why (``RowFailure``s of
    ``precompute.inputs.row_table``), in reading order."""

    def __init__(self, message: str, failures: list) -> None:
        super().__init__(message)
        self.failures = failures
