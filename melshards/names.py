"""Every name of the on-disk format: files, datasets, attributes, kinds and label values.

Nothing else in the project spells these strings; writers and readers import them from here.
``docs/format.md`` describes what each one holds.
"""

from __future__ import annotations

FORMAT_NAME = "melshards"
# Version 4 added ``valid`` (the frames of each example that hold audio): windows may now reach
# beyond their recording, so an older set lacks what the loader needs to keep crops on audio.
FORMAT_VERSION = 4

# -- files of a feature set directory --------------------------------------------------------
INDEX_FILE = "index.json"
FAILURES_FILE = "failures.jsonl"
# What a run records of each shard it finishes (one index entry as JSON per line), so that a
# resumed run reuses a shard only when its bytes still hash to what was written.
BUILT_FILE = ".built.jsonl"
LOCK_FILE = ".lock"  # held (flock) by the run writing the directory; holds its pid
SHARD_PATTERN = "shard-{:05d}.h5"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".h5"
# A shard is written as ``.<final name>.<pid>.tmp`` and renamed into place when complete.
TEMP_SUFFIX = ".tmp"

# -- feature-set kinds (``index.json`` "kind", shard attribute ``kind``) ----------------------
SET_LABELLED = "labelled"  # one window per manifest row, labelled from the events
SET_WINDOWS = "windows"  # sliding windows over unlabelled recordings, for inference
SET_KINDS = (SET_LABELLED, SET_WINDOWS)

# -- event kinds (a manifest row's, an anchor's and a stored event's ``kind``) ----------------
EVENT_TP = 1  # a labelled call (train_tp.csv)
EVENT_FP = 0  # a confirmed false positive (train_fp.csv)
EVENT_NONE = -1  # no event: the anchor of a sliding window

# -- label values (dataset ``labels``) ------------------------------------------------------
LABEL_POSITIVE = 1  # a TP of the class counts in the window
LABEL_NEGATIVE = 0  # only FPs of the class count: a confirmed negative
LABEL_UNKNOWN = -1  # no event of the class counts
LABEL_VALUES = (LABEL_UNKNOWN, LABEL_NEGATIVE, LABEL_POSITIVE)

# -- datasets of a shard ----------------------------------------------------------------------
MEL = "mel"  # (n, n_mels, n_frames), the config's dtype (MEL_DTYPES), one example per chunk
# With dtype uint8 only: each example's value is ``mel_offset + code * mel_scale`` (float32).
MEL_OFFSET = "mel_offset"
MEL_SCALE = "mel_scale"
LABELS = "labels"
RECORDING_ID = "recording_id"
START = "start"
# (n, 2) int32: ``[first, stop)`` stored frames of each example whose centre lies on the
# recording; the frames outside are padding (the window reaches beyond the recording).
VALID = "valid"
ANCHOR = "anchor"  # group: the manifest row each window was cut around
EVENTS = "events"  # group: every event overlapping each stored window, as one flat table

MEL_DTYPES = ("float16", "float32", "uint8")
QUANTIZED_DTYPE = "uint8"  # the dtype whose values are codes, decoded with MEL_OFFSET/MEL_SCALE
# HDF5 filters on ``mel``: h5py's own (gzip, lzf), and those registered by the hdf5plugin
# package (name -> registered HDF5 filter id), whose chunks the loader decodes itself (each
# example is one chunk).
PLUGIN_FILTER_IDS = {"zstd": 32015, "bitshuffle-lz4": 32008}
COMPRESSIONS = (None, "gzip", "lzf", *PLUGIN_FILTER_IDS)
CHECKSUM_BYTES = 4  # fletcher32 appends this many bytes to each stored chunk
METADATA_CHUNK_ROWS = 4096  # rows per chunk of the metadata datasets

# Fields of the ``anchor`` group, one value per example, with their dtypes.
ANCHOR_FIELDS: dict[str, str] = {
    "species_id": "int16",
    "songtype_id": "int16",
    "t_min": "float64",
    "t_max": "float64",
    "f_min": "float64",
    "f_max": "float64",
    "kind": "int8",
    "line": "int32",
}
# Fields of the ``events`` group, one value per stored event; ``example`` points at the row.
EVENT_EXAMPLE = "example"
EVENT_FIELDS: dict[str, str] = {
    "species_id": "int16",
    "kind": "int8",
    "t_min": "float64",
    "t_max": "float64",
}

# Every dataset but ``mel`` (whose dtype is the config's), name -> numpy dtype; "str" is a
# fixed-length UTF-8 string (as long as the longest value), so its bytes lie in the chunks that
# the checksum covers. Every dataset of a shard, ``mel`` included, is chunked with fletcher32.
METADATA_DATASETS: dict[str, str] = {
    LABELS: "int8",
    RECORDING_ID: "str",
    START: "float64",
    VALID: "int32",
    **{f"{ANCHOR}/{key}": dtype for key, dtype in ANCHOR_FIELDS.items()},
    f"{EVENTS}/{EVENT_EXAMPLE}": "int32",
    **{f"{EVENTS}/{key}": dtype for key, dtype in EVENT_FIELDS.items()},
}
# Per-example decoding of quantized ``mel`` (dtype uint8 only), name -> numpy dtype.
QUANT_DATASETS: dict[str, str] = {MEL_OFFSET: "float32", MEL_SCALE: "float32"}
SHARD_DATASETS: tuple[str, ...] = (MEL, *METADATA_DATASETS)


def shard_datasets(dtype: str) -> tuple[str, ...]:
    """Every dataset of a shard whose ``mel`` is stored as ``dtype``."""
    return (*SHARD_DATASETS, *QUANT_DATASETS) if dtype == QUANTIZED_DTYPE else SHARD_DATASETS


# -- shard attributes --------------------------------------------------------------------------
ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_FINGERPRINT = "fingerprint"  # the shard job's fingerprint, repeated in the index entry
ATTR_CONFIG = "config"  # the feature config as canonical JSON
ATTR_CONFIG_PREFIX = "config."  # and one attribute per parameter, for HDF5 tools
ATTR_STATS_COUNT = "stats_count"  # per-mel-bin sums, so a resumed run reuses a shard unread
ATTR_STATS_SUM = "stats_sum"
ATTR_STATS_SUMSQ = "stats_sumsq"
ATTR_FAILURES = "failures"  # JSON list of what the job skipped
ATTR_KIND = "kind"  # SET_LABELLED or SET_WINDOWS
# Every attribute of a shard, besides one ``config.<name>`` per feature parameter.
SHARD_ATTRIBUTES = (
    ATTR_FORMAT,
    ATTR_FORMAT_VERSION,
    ATTR_FINGERPRINT,
    ATTR_CONFIG,
    ATTR_STATS_COUNT,
    ATTR_STATS_SUM,
    ATTR_STATS_SUMSQ,
    ATTR_FAILURES,
    ATTR_KIND,
)
