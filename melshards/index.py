"""``index.json``: the one file a reader trusts, as a typed, validated ``Index``.

The index is written last and atomically (``write_index``); a directory without one is not a
finished feature set. ``Index.from_dict`` checks every field (``melshards.index_fields``), so a
reader refuses a missing, foreign, newer or inconsistent index with one ``FormatError`` naming
the file and the field. ``read_index`` reads it from a directory or a URL (``melshards.remote``;
the shards of a set at a URL are then read from ``melshards.shard_cache``). The rules for class
names live here too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from melshards import remote, shard_cache
from melshards.config import FeatureConfig
from melshards.errors import ConfigError, FormatError
from melshards.files import atomic_write_text, fingerprint_of
from melshards.index_fields import (
    TOO_DEEP,
    as_count,
    as_floats,
    as_hex,
    as_mapping,
    as_text,
    as_texts,
    check_keys,
    is_int,
    nesting_problem,
    short,
)
from melshards.names import FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, SET_KINDS, SHARD_SUFFIX


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard as the index lists it: its file name, examples, sha256, job fingerprint, size,
    and the recordings it was built from.

    ``recordings`` lists the id of every recording of the shard's job, those whose audio
    failed included, in the order the shard holds them; a later run keeps each of them in
    this shard. None when unknown (an entry written without it); it is optional on reading.
    """

    file: str
    n: int
    sha256: str
    fingerprint: str
    bytes: int
    recordings: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.recordings is None:
            del data["recordings"]
        else:
            data["recordings"] = list(self.recordings)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> ShardEntry:
        data = as_mapping(data, source)
        names = {f.name for f in dataclasses.fields(cls)}
        check_keys(data, names if "recordings" in data else names - {"recordings"}, source)
        recordings = data.get("recordings")
        entry = cls(
            file=as_text(data["file"], f"{source} file"),
            n=as_count(data["n"], f"{source} n"),
            sha256=as_hex(data["sha256"], f"{source} sha256", digits=64),
            fingerprint=as_text(data["fingerprint"], f"{source} fingerprint"),
            bytes=as_count(data["bytes"], f"{source} bytes"),
            recordings=None if recordings is None else as_texts(recordings, f"{source} recordings"),
        )
        name = entry.file
        if not name.isprintable():
            # A NUL would fail every system call on the path; a newline would split messages.
            raise FormatError(
                f"{source} file: shard name {name!r} holds a control character (NUL, newline, ...)"
            )
        if Path(name).name != name or name.startswith(".") or not name.endswith(SHARD_SUFFIX):
            raise FormatError(f"{source}: shard name {name!r} is not a plain file in the feature directory")
        return entry


@dataclasses.dataclass(frozen=True)
class BinStats:
    """Per-mel-bin mean and standard deviation of the stored values, over ``frames`` frames."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "frames": self.frames}

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> BinStats:
        data = as_mapping(data, source)
        check_keys(data, {"mean", "std", "frames"}, source)
        mean = as_floats(data["mean"], f"{source} mean")
        std = as_floats(data["std"], f"{source} std")
        if len(mean) != len(std):
            raise FormatError(f"{source}: mean has {len(mean)} bins, std {len(std)}")
        return cls(mean=mean, std=std, frames=as_count(data["frames"], f"{source} frames"))


@dataclasses.dataclass(frozen=True)
class Index:
    """A feature set's index.

    ``root`` is the directory it was read from (None for an index not yet on disk); it is not
    serialized. ``n_examples``, ``n_frames`` and ``crop_frames`` are derived, written for
    readers without this code, and checked on reading. ``class_names`` names each class
    (column of ``labels``), ``n_classes`` of them (default ``s0``, ``s1``, ...).
    """

    fingerprint: str
    kind: str
    config: FeatureConfig
    classes: tuple[int, ...]
    shards: tuple[ShardEntry, ...]
    stats: BinStats
    failures: int
    versions: Mapping[str, str]
    source: Mapping[str, Any] | None = None
    root: Path | None = dataclasses.field(default=None, compare=False)
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        names = default_class_names(self.config.n_classes) if self.class_names is None else self.class_names
        object.__setattr__(self, "class_names", tuple(names))
        problem = class_names_problem(self.class_names, self.config.n_classes)
        if problem:
            raise ConfigError(f"class_names: {problem}")

    @classmethod
    def build(
        cls,
        *,
        config: FeatureConfig,
        entries: Sequence[ShardEntry],
        stats: BinStats,
        failures: int,
        kind: str,
        versions: Mapping[str, str],
        source: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Index:
        """The index of a finished run: shards sorted by name, fingerprint over config, shards
        and class names (default ``s0..s<n_classes - 1>``)."""
        if kind not in SET_KINDS:
            raise ConfigError(f"feature set kind must be one of {SET_KINDS}, got {kind!r}")
        shards = tuple(sorted(entries, key=lambda e: e.file))
        names = default_class_names(config.n_classes) if class_names is None else tuple(class_names)
        return cls(
            fingerprint=fingerprint_of(
                [config.to_dict(), [e.fingerprint for e in shards], kind, list(names)]
            ),
            kind=kind,
            config=config,
            classes=tuple(range(config.n_classes)),
            shards=shards,
            stats=stats,
            failures=failures,
            versions=dict(versions),
            source=None if source is None else dict(source),
            class_names=names,
        )

    @property
    def n_examples(self) -> int:
        return sum(entry.n for entry in self.shards)

    def shard_path(self, entry: ShardEntry) -> Path:
        if self.root is None:
            raise FormatError("this index has no directory: it was not read from disk")
        return self.root / entry.file

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "class_names": list(self.class_names),
            "n_examples": self.n_examples,
            "n_frames": self.config.n_frames,
            "crop_frames": self.config.crop_frames,
            "shards": [entry.to_dict() for entry in self.shards],
            "stats": self.stats.to_dict(),
            "failures": self.failures,
            "versions": dict(self.versions),
        }
        if self.source is not None:
            data["source"] = dict(self.source)
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: str = INDEX_FILE, root: Path | None = None) -> Index:
        """Validate every field of a parsed ``index.json``; FormatError names the first bad one."""
        problem = nesting_problem(data)
        if problem:
            raise FormatError(f"{source}: malformed index: {problem}")
        _check_format(data, source)
        config = _config(data["config"], source)
        kind = data["kind"]
        if kind not in SET_KINDS:
            raise FormatError(f"{source}: kind {kind!r} is not one of {SET_KINDS}")
        shards = _shards(data["shards"], source)
        classes, class_names = _classes(data, config.n_classes, source)
        stats = BinStats.from_dict(data["stats"], source=f"{source} stats")
        if len(stats.mean) != config.n_mels:
            raise FormatError(
                f"{source} stats mean: {len(stats.mean)} bins, expected {config.n_mels} "
                "(one per mel band, the config's n_mels)"
            )
        versions, origin = _provenance(data, source)
        index = cls(
            fingerprint=as_text(data["fingerprint"], f"{source} fingerprint"),
            kind=kind,
            config=config,
            classes=tuple(int(c) for c in classes),
            shards=shards,
            stats=stats,
            failures=as_count(data["failures"], f"{source} failures"),
            versions={str(k): str(v) for k, v in versions.items()},
            source=origin,
            root=root,
            class_names=tuple(class_names),
        )
        _check_derived(index, data, source)
        return index


# Every field ``Index.from_dict`` needs; ``versions``, ``source``, ``n_frames`` and
# ``crop_frames`` are optional.
REQUIRED_FIELDS = (
    "format",
    "fingerprint",
    "kind",
    "config",
    "classes",
    "class_names",
    "n_examples",
    "shards",
    "stats",
    "failures",
)


def _check_format(data: Any, source: str) -> None:
    """FormatError unless ``data`` is an index of this format and version with every required field."""
    fmt = data.get("format") if isinstance(data, dict) else None
    if not isinstance(fmt, dict) or fmt.get("name") != FORMAT_NAME:
        raise FormatError(f"{source}: not a {FORMAT_NAME} index (format={fmt!r})")
    version = fmt.get("version")
    if version != FORMAT_VERSION:
        older = is_int(version) and 0 < version < FORMAT_VERSION
        hint = "; run the same precompute command again to rebuild it" if older else ""
        raise FormatError(
            f"{source}: format version {version!r} is unknown; this reader knows "
            f"version {FORMAT_VERSION}{hint}"
        )
    missing = sorted(set(REQUIRED_FIELDS) - set(data))
    if missing:
        raise FormatError(f"{source}: malformed index: missing {', '.join(missing)}")


def _config(value: Any, source: str) -> FeatureConfig:
    """An index's ``config``; any problem with it is a FormatError."""
    config_data = as_mapping(value, f"{source} config")
    for name, item in config_data.items():
        if item is not None and not isinstance(item, str | int | float):
            raise FormatError(
                f"{source} config {name}: expected a number, a string or null, got {short(item)}"
            )
    try:
        return FeatureConfig.from_dict(config_data, source=source)
    except (ConfigError, TypeError, ValueError, OverflowError) as err:
        raise FormatError(f"{source}: malformed index config: {err}") from None


def _shards(value: Any, source: str) -> tuple[ShardEntry, ...]:
    """An index's ``shards``: a list of entries, no file listed twice."""
    if not isinstance(value, list):
        raise FormatError(f"{source}: shards must be a list, got {type(value).__name__}")
    shards = tuple(ShardEntry.from_dict(item, source=f"{source} shards[{i}]") for i, item in enumerate(value))
    if len({entry.file for entry in shards}) != len(shards):
        raise FormatError(f"{source}: a shard file is listed twice")
    return shards


def _provenance(data: Mapping[str, Any], source: str) -> tuple[dict, dict | None]:
    """An index's optional ``versions`` (default {}) and ``source`` (default None) mappings."""
    versions = data.get("versions", {})
    if not isinstance(versions, dict):
        raise FormatError(f"{source}: versions must be a mapping")
    origin = data.get("source")
    if origin is not None and not isinstance(origin, dict):
        raise FormatError(f"{source}: source must be a mapping")
    return versions, origin


def _check_derived(index: Index, data: Mapping[str, Any], source: str) -> None:
    """The derived fields written for readers without this code must agree with the index."""
    n_examples = as_count(data["n_examples"], f"{source} n_examples")
    if index.n_examples != n_examples:
        raise FormatError(f"{source}: shards hold {index.n_examples} examples but n_examples is {n_examples}")
    for name in ("n_frames", "crop_frames"):
        if name in data and data[name] != getattr(index.config, name):
            raise FormatError(
                f"{source}: {name} {data[name]!r} disagrees with the config's {getattr(index.config, name)}"
            )


# A class name becomes a CSV column (submissions) and a picture title: one printable line,
# no comma or quote, of a readable length.
MAX_CLASS_NAME = 100


def default_class_names(n_classes: int) -> tuple[str, ...]:
    """``s0, s1, ...``: the names of numeric class ids (RFCX's submission columns)."""
    return tuple(f"s{k}" for k in range(n_classes))


def class_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a class, or None."""
    if not isinstance(name, str):
        return f"class name {short(name)} is not a string"
    if not name or name != name.strip():
        return f"class name {name!r} is empty or has spaces at an end"
    if len(name) > MAX_CLASS_NAME:
        return f"class name {short(name)} is longer than {MAX_CLASS_NAME} characters"
    if not name.isprintable() or any(c in name for c in ',"'):
        return f"class name {name!r} has a comma, a quote or a control character"
    return None


def class_names_problem(names: Any, n_classes: int) -> str | None:
    """Why ``names`` cannot be the class list of ``n_classes`` classes, or None."""
    if not isinstance(names, list | tuple):
        return f"expected a list of {n_classes} names, got {short(names)}"
    if len(names) != n_classes:
        return f"{len(names)} names, but the config has n_classes {n_classes}"
    for name in names:
        problem = class_name_problem(name)
        if problem:
            return problem
    if len(set(names)) != len(names):
        repeated = next(n for k, n in enumerate(names) if n in names[:k])
        return f"class name {repeated!r} appears twice"
    return None


def _classes(data: Mapping[str, Any], n_classes: int, source: str) -> tuple[list[int], list[str]]:
    """An index's ``classes`` (integers) and ``class_names``, checked against ``n_classes``."""
    classes = data["classes"]
    if not isinstance(classes, list) or not all(is_int(c) for c in classes):
        raise FormatError(f"{source}: classes must be a list of integers")
    if len(classes) != n_classes:
        raise FormatError(f"{source}: {len(classes)} classes, but the config has n_classes {n_classes}")
    class_names = data["class_names"]
    problem = class_names_problem(class_names, n_classes)
    if problem:
        raise FormatError(f"{source}: class_names: {problem}")
    return classes, class_names


def read_index(root: str | os.PathLike, *, cache_root: Path | None = None) -> Index:
    """Read and validate ``root/index.json``; ``root`` may be a URL (``melshards.remote``),
    whose shards are then read from their local copies in ``cache_root``.

    Raises FormatError when the index is missing, unparsable, of another format or version,
    malformed, or names a file outside the feature directory.
    """
    if remote.is_url(root):
        return _read_remote_index(str(root), cache_root=cache_root)
    root = remote.local_path(root)
    path = root / INDEX_FILE
    if not path.is_file():
        hint = " (is a precompute run still going, or did it fail?)" if root.is_dir() else ""
        raise FormatError(f"{path}: no index; not a finished feature set{hint}")
    return Index.from_dict(_parse(path.read_bytes, str(path)), source=str(path), root=root)


def _parse(read: Callable[[], bytes], shown: str) -> Any:
    """``index.json`` parsed (``read`` gives its bytes); FormatError naming ``shown`` when it
    cannot be read or parsed."""
    try:
        return json.loads(read())
    except RecursionError:
        # json's parser recurses once per level: a file nested thousands deep exhausts it.
        raise FormatError(f"{shown}: malformed index: {TOO_DEEP}") from None
    except (OSError, ValueError) as err:
        raise FormatError(f"{shown}: unreadable index: {err}") from err


def _read_remote_index(url: str, *, cache_root: Path | None) -> Index:
    where = remote.join(url, INDEX_FILE)
    shown = remote.redact(where)
    text = remote.read_bytes_if_present(where)
    if text is None:
        raise FormatError(f"{shown}: no index; not a finished feature set (is a precompute run still going?)")
    data = _parse(lambda: text, shown)
    root = cache_root if cache_root is not None else shard_cache.ShardCache.at().set_dir(url)
    return Index.from_dict(data, source=shown, root=root)


def write_index(root: str | os.PathLike, index: Index) -> None:
    """Write ``root/index.json`` atomically; the last step of every run."""
    atomic_write_text(Path(root) / INDEX_FILE, json.dumps(index.to_dict(), indent=1) + "\n")
