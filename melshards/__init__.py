"""The on-disk format of a feature set, alone: what precompute writes and the loader reads.

A feature set is a directory::

    index.json        written last and atomically; readers trust nothing else
    shard-00000.h5    one writer, written once, renamed into place when complete
    failures.jsonl    one JSON line per skipped recording or slice

This package imports neither ``precompute`` nor ``loader``; it needs numpy, h5py and the
standard library. Its modules: ``names`` (every file, dataset, attribute and kind name),
``config`` (``FeatureConfig``, the one source of feature parameters), ``labels`` (the overlap
rule), ``files`` (atomic writes, hashes), ``index`` (``Index``), ``shard`` (writing, reading
and checking a shard), ``verify``; and, shared by every command line, ``errors`` and
``console``. ``docs/format.md`` is the contract in prose.
"""

from melshards.config import FeatureConfig
from melshards.errors import ConfigError, FormatError, IntegrityError, MelShardsError
from melshards.index import Index, ShardEntry, read_index, write_index
from melshards.names import FORMAT_NAME, FORMAT_VERSION

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ConfigError",
    "FeatureConfig",
    "FormatError",
    "Index",
    "IntegrityError",
    "MelShardsError",
    "ShardEntry",
    "read_index",
    "write_index",
]
