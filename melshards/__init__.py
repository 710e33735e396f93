"""The on-disk format of a feature set, alone: what precompute writes and the loader reads.

A feature set is a directory::

    index.json        written last and atomically; readers trust nothing else
    shard-00000.h5    one writer, written once, renamed into place when complete
    failures.jsonl    one JSON line per skipped recording or slice

This package imports neither ``precompute`` nor ``loader``; it needs numpy, h5py and the
standard library, and imports where they are used tqdm (``verify``'s progress bar), fsspec (a
set at a URL) and hdf5plugin and its decoders (compressed codecs). Its modules:

- ``names``: every file, dataset, attribute and kind name of the format
- ``errors``: the format's exceptions and ``MelShardsError``, the root of every error of the project
- ``checks``: the one check of an integer or number option (``check_int``, ``check_number``)
- ``config``: ``FeatureConfig``, the one source of feature parameters, and the window geometry
- ``codec``: the stored dtypes (float16, float32, quantized uint8) and compression filters
- ``labels``: the overlap rule that labels a window from its events
- ``files``: atomic writes, durable renames, hashes and fingerprints
- ``index``: ``Index`` (``index.json``), read and written; ``index_fields``: its field checks
- ``shard``: writing a shard atomically, and reading back its summary
- ``shard_open``: opening a shard read-only (local, cached or through range requests)
- ``shard_check``: checking a shard against its index entry
- ``shard_read``: reading a checked shard's metadata, and where its ``mel`` chunks lie
- ``remote``: URLs (``file://``, ``s3://``, ``gs://``, ``http(s)://``) and object storage I/O
- ``remote_limits``: the timeouts and attempts of every request to object storage
- ``shard_cache``: the verified local cache of the shards of a set at a URL
- ``verify``: re-checking a whole feature set against its index

``docs/format.md`` is the contract in prose.
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
