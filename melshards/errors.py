"""The format's exceptions, and the root that every error of the project derives from.

Every message names the offending value and where it came from (file, line, shard), so a
user can fix the input without reading a traceback. The errors of reading annotations and
audio live in ``precompute.errors``, those of runs and models in ``experiments.errors``; all
derive from ``MelShardsError``, which the command lines (``commandline.console``) report as
one line.
"""


class MelShardsError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(MelShardsError, ValueError):
    """A feature, split or augmentation parameter is out of range or inconsistent."""


class FormatError(MelShardsError):
    """A feature set on disk is missing, of an unknown version, or disagrees with its index."""


class IntegrityError(FormatError):
    """Stored bytes fail their checksum: the shard is corrupt."""


class StorageError(MelShardsError):
    """The output cannot be written: disk full, quota, or a file too large for the file system."""
