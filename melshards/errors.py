"""Exceptions shared by the precompute and loader packages.

Every message names the offending value and where it came from (file, line, shard), so a
user can fix the input without reading a traceback.
"""


class MelShardsError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(MelShardsError, ValueError):
    """A feature, split or augmentation parameter is out of range or inconsistent."""


class ManifestError(MelShardsError, ValueError):
    """A manifest row (or the manifest file itself) is invalid."""


class AudioError(MelShardsError):
    """A recording cannot be decoded or does not fit the feature config."""


class FormatError(MelShardsError):
    """A feature set on disk is missing, of an unknown version, or disagrees with its index."""


class IntegrityError(FormatError):
    """Stored bytes fail their checksum: the shard is corrupt."""


class StorageError(MelShardsError):
    """The output cannot be written: disk full, quota, or a file too large for the file system."""


class LockedError(MelShardsError):
    """Another precompute run holds the output directory."""


class ExperimentError(MelShardsError):
    """A model file, run directory or prediction input is missing or does not fit."""
