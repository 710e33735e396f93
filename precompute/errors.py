"""The precompute side's own errors: bad annotation rows, unreadable audio, a held output.

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
