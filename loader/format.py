"""The on-disk format of a feature set: the one place that knows its names.

A feature set is a directory::

    index.json        written last and atomically; readers trust nothing else
    shard-00000.h5    one writer, written once, renamed into place when complete
    failures.jsonl    one JSON line per skipped recording or slice

Both the precompute stage (writer) and the loader (reader) import this module; it needs
only numpy and the standard library, so the training side never needs librosa or joblib.

Each shard holds, for ``n`` examples (see ``SHARD_DATASETS``):

- ``mel`` ``(n, n_mels, n_frames)`` float16, one example per chunk, fletcher32;
- ``labels`` ``(n, n_classes)`` int8: 1 a TP overlaps, 0 only FPs overlap, -1 unknown;
- ``recording_id`` str, ``start`` float64 (window start in seconds, context included);
- ``anchor/*``: the manifest row the window was cut around (species, songtype, times,
  frequencies, kind 1 = TP / 0 = FP / -1 = none, source line);
- ``events/*``: every event of the recording that overlaps the stored window, as a flat table
  with ``events/example`` pointing at its example, so labels can be recomputed after a crop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loader.errors import ConfigError, FormatError

FORMAT_NAME = "melshards"
FORMAT_VERSION = 1

INDEX_FILE = "index.json"
FAILURES_FILE = "failures.jsonl"
SHARD_PATTERN = "shard-{:05d}.h5"

KIND_TP = 1
KIND_FP = 0
KIND_NONE = -1

LABEL_POSITIVE = 1
LABEL_NEGATIVE = 0
LABEL_UNKNOWN = -1

# name -> numpy dtype of every dataset in a shard; "str" is a variable-length UTF-8 string.
SHARD_DATASETS: dict[str, str] = {
    "mel": "float16",
    "labels": "int8",
    "recording_id": "str",
    "start": "float64",
    "anchor/species_id": "int16",
    "anchor/songtype_id": "int16",
    "anchor/t_min": "float64",
    "anchor/t_max": "float64",
    "anchor/f_min": "float64",
    "anchor/f_max": "float64",
    "anchor/kind": "int8",
    "anchor/line": "int32",
    "events/example": "int32",
    "events/species_id": "int16",
    "events/kind": "int8",
    "events/t_min": "float64",
    "events/t_max": "float64",
}

NORMALIZE_MODES = ("minmax", "none")
DB_MODES = ("power", "amplitude")
STORE_DTYPES = ("float16", "float32")


def frames_for(seconds: float, *, sample_rate: int, hop_length: int) -> int:
    """Number of STFT frames (``center=True``) for a clip of ``seconds``."""
    return 1 + int(round(seconds * sample_rate)) // hop_length


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Every parameter that shapes the stored arrays.

    Serialized into ``index.json`` and every shard's attributes, so data describes itself.
    ``duration`` is what the model sees; ``context`` seconds are stored on each side so the
    loader can shift in time by cropping. ``db`` picks ``power_to_db`` (``"power"``) or the
    classic recipe's ``amplitude_to_db`` applied to a power spectrogram (``"amplitude"``);
    ``db_ref`` is the 0 dB reference (absent: each slice's maximum).
    """

    preset: str = "default"
    sample_rate: int = 48000
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 50.0
    fmax: float = 16000.0
    power: float = 2.0
    db: str = "power"
    db_ref: float | None = None
    top_db: float | None = 80.0
    duration: float = 10.0
    context: float = 0.5
    normalize: str = "minmax"
    min_overlap: float = 0.5
    n_classes: int = 24
    dtype: str = "float16"
    compression: str | None = None
    shard_size: int = 32

    def __post_init__(self) -> None:
        positive = {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "duration": self.duration,
            "n_classes": self.n_classes,
            "shard_size": self.shard_size,
            "power": self.power,
        }
        for name, value in positive.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config {name} must be a positive number, got {value!r}")
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_classes", "shard_size"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"config {name} must be an integer, got {getattr(self, name)!r}")
        if self.context < 0:
            raise ConfigError(f"config context must be >= 0 seconds, got {self.context!r}")
        if self.min_overlap < 0:
            raise ConfigError(f"config min_overlap must be >= 0 seconds, got {self.min_overlap!r}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(
                f"config needs 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} "
                f"fmax={self.fmax} sample_rate={self.sample_rate}"
            )
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"config normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if self.db not in DB_MODES:
            raise ConfigError(f"config db must be one of {DB_MODES}, got {self.db!r}")
        if self.dtype not in STORE_DTYPES:
            raise ConfigError(f"config dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        if self.compression not in (None, "gzip", "lzf"):
            raise ConfigError(f"config compression must be none, gzip or lzf, got {self.compression!r}")
        if self.db_ref is not None and not self.db_ref > 0:
            raise ConfigError(
                f"config db_ref must be positive or absent (slice maximum), got {self.db_ref!r}"
            )
        if self.top_db is not None and self.top_db <= 0:
            raise ConfigError(f"config top_db must be positive or absent, got {self.top_db!r}")

    # Geometry derived from the parameters; the loader relies on these, never recomputes.
    @property
    def window_seconds(self) -> float:
        """Stored window length: ``duration`` plus ``context`` on both sides."""
        return self.duration + 2 * self.context

    @property
    def n_frames(self) -> int:
        """Frames stored per example."""
        return frames_for(self.window_seconds, sample_rate=self.sample_rate, hop_length=self.hop_length)

    @property
    def crop_frames(self) -> int:
        """Frames the model sees (``duration`` seconds)."""
        return frames_for(self.duration, sample_rate=self.sample_rate, hop_length=self.hop_length)

    @property
    def seconds_per_frame(self) -> float:
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> FeatureConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown feature parameter(s) {', '.join(unknown)}")
        return cls(**dict(data))

    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


def center_offset(config: FeatureConfig, crop_frames: int | None = None) -> int:
    """First stored frame of the centred crop of ``crop_frames`` (default ``config.crop_frames``)."""
    crop = config.crop_frames if crop_frames is None else int(crop_frames)
    return (config.n_frames - crop) // 2


def crop_span(config: FeatureConfig, start: Any, offset: Any, crop_frames: int) -> tuple[Any, Any]:
    """Seconds ``(t0, t1)`` covered by a crop of ``crop_frames`` starting at stored frame ``offset``.

    ``start`` is the stored window's start (seconds); frame ``k`` sits at ``start + k * hop / sr``,
    so the crop spans from its first to its last frame. Arguments broadcast (numpy arrays in,
    arrays out); the same rule serves precompute labels and the loader's labels after a crop.
    """
    spf = config.seconds_per_frame
    t0 = np.asarray(start, dtype=np.float64) + np.asarray(offset, dtype=np.float64) * spf
    t1 = t0 + (int(crop_frames) - 1) * spf
    if t0.ndim == 0:
        return float(t0), float(t1)
    return t0, t1


def fingerprint_of(obj: Any) -> str:
    """sha256 (hex, first 16 bytes) of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def overlap_mask(
    t_min: np.ndarray, t_max: np.ndarray, w_start: np.ndarray, w_end: np.ndarray, *, min_overlap: float
) -> np.ndarray:
    """Whether events ``[t_min, t_max]`` count as present in windows ``[w_start, w_end]``.

    The rule, shared by precompute and by the loader after a crop: an event counts when it
    overlaps the window by at least ``min_overlap`` seconds, or lies fully inside it (a call
    shorter than ``min_overlap`` still counts when the window holds all of it). Arguments
    broadcast against each other.
    """
    t_min, t_max = np.asarray(t_min, dtype=np.float64), np.asarray(t_max, dtype=np.float64)
    w_start, w_end = np.asarray(w_start, dtype=np.float64), np.asarray(w_end, dtype=np.float64)
    overlap = np.minimum(t_max, w_end) - np.maximum(t_min, w_start)
    # A tolerance of a microsecond keeps the rule stable against float rounding of times.
    inside = (t_min >= w_start - 1e-6) & (t_max <= w_end + 1e-6)
    return (overlap > 0) & ((overlap >= min_overlap - 1e-6) | inside)


def label_rows(species: np.ndarray, kind: np.ndarray, present: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Label vector from the events present in one window.

    species, kind, present : np.ndarray [shape=(m,)]
        Species id, ``KIND_TP``/``KIND_FP`` and whether each event counts in the window.

    Returns np.ndarray [shape=(n_classes,)], int8: 1 where a TP of the species is present,
    0 where only FPs are, -1 elsewhere.
    """
    labels = np.full(n_classes, LABEL_UNKNOWN, dtype=np.int8)
    fp = species[present & (kind == KIND_FP)]
    tp = species[present & (kind == KIND_TP)]
    labels[fp] = LABEL_NEGATIVE
    labels[tp] = LABEL_POSITIVE  # a TP wins over an FP of the same species
    return labels


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, *, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    file: str
    n: int
    sha256: str
    fingerprint: str
    bytes: int


@dataclasses.dataclass(frozen=True)
class Index:
    """A parsed, validated ``index.json``."""

    root: Path
    fingerprint: str
    config: FeatureConfig
    classes: tuple[int, ...]
    n_examples: int
    shards: tuple[ShardEntry, ...]
    stats: dict[str, Any]
    failures: int
    kind: str
    raw: dict[str, Any]

    def shard_path(self, entry: ShardEntry) -> Path:
        return self.root / entry.file


def read_index(root: str | os.PathLike) -> Index:
    """Read and validate ``root/index.json``.

    Raises FormatError when the index is missing, unparsable, of another format or version,
    or names a file outside the feature directory.
    """
    root = Path(root)
    path = root / INDEX_FILE
    if not path.is_file():
        hint = " (is a precompute run still going, or did it fail?)" if root.is_dir() else ""
        raise FormatError(f"{path}: no index; not a finished feature set{hint}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: unreadable index: {err}") from err
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if not isinstance(fmt, dict) or fmt.get("name") != FORMAT_NAME:
        raise FormatError(f"{path}: not a {FORMAT_NAME} index (format={fmt!r})")
    if fmt.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"{path}: format version {fmt.get('version')!r} is unknown; this reader knows "
            f"version {FORMAT_VERSION}"
        )
    try:
        config = FeatureConfig.from_dict(raw["config"], source=str(path))
        shards = tuple(ShardEntry(**s) for s in raw["shards"])
        index = Index(
            root=root,
            fingerprint=str(raw["fingerprint"]),
            config=config,
            classes=tuple(int(c) for c in raw["classes"]),
            n_examples=int(raw["n_examples"]),
            shards=shards,
            stats=dict(raw.get("stats", {})),
            failures=int(raw.get("failures", 0)),
            kind=str(raw.get("kind", "labelled")),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise FormatError(f"{path}: malformed index: {err!r}") from err
    for entry in shards:
        name = entry.file
        if Path(name).name != name or name.startswith(".") or not name.endswith(".h5"):
            raise FormatError(f"{path}: shard name {name!r} is not a plain file in the feature directory")
    if sum(s.n for s in shards) != index.n_examples:
        raise FormatError(
            f"{path}: shards hold {sum(s.n for s in shards)} examples but n_examples is {index.n_examples}"
        )
    return index


def check_shard_file(h5: Any, entry: ShardEntry, config: FeatureConfig, *, path: Path) -> None:
    """Check an open shard (an ``h5py.File``) against its index entry.

    Refuses anything the index does not describe: wrong counts or shapes, another
    fingerprint, and HDF5 indirections (external links, external storage, virtual datasets)
    that would make the reader open files outside the feature directory.
    """
    import h5py  # the format module itself stays importable without h5py

    n = entry.n
    if h5.attrs.get("fingerprint") != entry.fingerprint:
        raise FormatError(
            f"{path}: shard fingerprint {h5.attrs.get('fingerprint')!r} disagrees with the index "
            f"({entry.fingerprint!r})"
        )

    def indirect(name: str, link: Any) -> str | None:
        # Returning a value stops the visit; raising inside an h5py callback is not safe.
        return name if isinstance(link, h5py.ExternalLink | h5py.SoftLink) else None

    linked = h5.visititems_links(indirect)
    if linked is not None:
        raise FormatError(f"{path}: link {linked!r} points outside the shard; refusing it")
    expected_shapes = {
        "mel": (n, config.n_mels, config.n_frames),
        "labels": (n, config.n_classes),
    }
    for name in SHARD_DATASETS:
        if name not in h5:
            raise FormatError(f"{path}: dataset {name!r} is missing")
        ds = h5[name]
        if ds.is_virtual or ds.external:
            raise FormatError(f"{path}: dataset {name!r} uses virtual or external storage; refusing it")
        shape = expected_shapes.get(name)
        if shape is None and not name.startswith("events/"):
            shape = (n,)
        if shape is not None and ds.shape != shape:
            raise FormatError(f"{path}: dataset {name!r} has shape {ds.shape}, index implies {shape}")
    m = h5["events/example"].shape[0]
    for name in SHARD_DATASETS:
        if name.startswith("events/") and h5[name].shape != (m,):
            raise FormatError(f"{path}: dataset {name!r} has shape {h5[name].shape}, expected ({m},)")
