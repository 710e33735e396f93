"""Planning a run: validated rows grouped by recording, packed into shard jobs.

One job is one shard. A recording never spans two shards, so each recording is decoded once.
Every job carries a fingerprint of everything that shapes its bytes (feature config, format
version, library versions, the exact rows, the identity of the audio files), so a resumed
run reuses a finished shard exactly when it would come out the same.

Planning reads no audio: a recording's identity is its size and mtime (``os.stat``). It is
linear in the manifest apart from sorting, and keeps rows as numpy records (``RowTable``):
each job holds its own rows, the plan holds nothing per row besides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from melshards.config import FeatureConfig
from melshards.errors import AudioError, ConfigError, ManifestError, MelShardsError
from melshards.files import fingerprint_of
from melshards.names import EVENT_FP, EVENT_TP, FORMAT_VERSION, SET_LABELLED, SET_WINDOWS, SHARD_PATTERN
from precompute.audio import AUDIO_EXTENSIONS, MAX_SECONDS, check_inside, file_identity, find_audio
from precompute.manifest import ROW_DTYPE, Row, RowFailure, RowTable, drop_duplicates, iter_manifest

NO_ROWS = RowTable(np.zeros(0, dtype=ROW_DTYPE), (), (), (None,))

# The libraries whose versions can change the stored numbers: part of every job's fingerprint.
VERSIONED_LIBRARIES = ("numpy", "librosa", "soundfile", "soxr", "h5py", "scipy")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose numbers end up in the arrays ("absent" when missing)."""
    import importlib.metadata as md

    versions = {}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass(frozen=True, slots=True)
class RecordingTask:
    """One recording and the windows to cut from it.

    For labelled runs, ``rows`` are the positions in the job's ``rows`` table of all the
    recording's valid manifest rows: each anchors one window and all of them label every
    window. Sliding-window runs have no rows.

    ``path`` is None when the file could not be located (``locate_error`` says why); the
    worker then records the failure, so a shard remembers what it lacks.
    """

    recording_id: str
    path: str | None
    locate_error: str | None
    identity: tuple
    rows: range
    n_windows: int


@dataclass(frozen=True)
class ShardJob:
    index: int
    file: str
    kind: str
    recordings: tuple[RecordingTask, ...]
    step: float | None
    fingerprint: str
    rows: RowTable = NO_ROWS

    @property
    def n_windows(self) -> int:
        return sum(r.n_windows for r in self.recordings)

    def recording_rows(self, task: RecordingTask) -> tuple[Row, ...]:
        """The manifest rows of one of this job's recordings, sorted by event time."""
        return tuple(self.rows[i] for i in task.rows)


def _locate(audio_dir: Path, recording_id: str, path: str | None) -> tuple[str | None, str | None]:
    try:
        return str(find_audio(audio_dir, recording_id, path)), None
    except AudioError as err:
        return None, str(err)


def _groups(sizes: list[int], *, shard_size: int) -> list[range]:
    """Consecutive tasks per shard: whole recordings until a shard holds ``shard_size`` windows."""
    groups, first, count = [], 0, 0
    for k, size in enumerate(sizes):
        if count >= shard_size and k > first:
            groups.append(range(first, k))
            first, count = k, 0
        count += size
    if first < len(sizes):
        groups.append(range(first, len(sizes)))
    return groups


def _job(
    index: int, tasks: list[RecordingTask], *, rows: RowTable, config: dict, versions: dict, kind: str, step
) -> ShardJob:
    keys = rows.keys()
    described = [[t.recording_id, list(t.identity), [keys[i] for i in t.rows]] for t in tasks]
    fingerprint = fingerprint_of(
        {
            "format": FORMAT_VERSION,
            "config": config,
            "versions": versions,
            "kind": kind,
            "step": step,
            "recordings": described,
        }
    )
    return ShardJob(index, SHARD_PATTERN.format(index), kind, tuple(tasks), step, fingerprint, rows)


def plan_labelled(rows: RowTable, *, audio_dir: Path, config: FeatureConfig) -> list[ShardJob]:
    """Shard jobs for one window per TP and FP row, recordings in sorted order.

    rows : the valid, deduplicated manifest rows (``manifest.drop_duplicates``)

    A recording's rows are ordered by ``(t_min, t_max, TP before FP, species_id)``, then by
    reading order. Raises ConfigError when one recording's rows name different paths.
    """
    d = rows.data
    names = np.array(rows.recording_ids, dtype=object)
    by_name = np.empty(names.shape[0], dtype=np.int64)
    by_name[np.argsort(names, kind="stable")] = np.arange(names.shape[0])
    rank = by_name[d["recording"]]
    # lexsort is stable: equal keys keep reading order. Last key first.
    order = np.lexsort((d["species_id"], -d["kind"].astype(np.int16), d["t_max"], d["t_min"], rank))
    rank = rank[order]
    starts = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]]) if rank.size else np.zeros(0, np.int64)
    stops = np.r_[starts[1:], rank.size].astype(np.int64)
    path_codes = d["path"][order]
    if starts.size:
        mixed = np.flatnonzero(
            np.minimum.reduceat(path_codes, starts) != np.maximum.reduceat(path_codes, starts)
        )
        if mixed.size:
            k = mixed[0]
            named = sorted({str(rows.paths[c]) for c in path_codes[starts[k] : stops[k]].tolist()})
            recording_id = rows.recording_ids[d["recording"][order[starts[k]]]]
            raise ConfigError(f"recording {recording_id}: rows name different paths {named}")
    sizes = (stops - starts).tolist()
    config_dict, versions = config.to_dict(), library_versions()
    jobs = []
    for index, group in enumerate(_groups(sizes, shard_size=config.shard_size)):
        first = int(starts[group.start])
        job_rows = rows.take(order[first : int(stops[group.stop - 1])])
        tasks = []
        for k in group:
            recording_id = rows.recording_ids[d["recording"][order[starts[k]]]]
            path, error = _locate(audio_dir, recording_id, rows.paths[path_codes[starts[k]]])
            span = range(int(starts[k]) - first, int(stops[k]) - first)
            identity = tuple(file_identity(Path(path) if path else None))
            tasks.append(RecordingTask(recording_id, path, error, identity, span, sizes[k]))
        jobs.append(
            _job(
                index,
                tasks,
                rows=job_rows,
                config=config_dict,
                versions=versions,
                kind=SET_LABELLED,
                step=None,
            )
        )
    return jobs


def drop_mixed_paths(table: RowTable, *, on_error: str = "skip") -> tuple[RowTable, list[RowFailure]]:
    """Drop every row of each recording whose rows name different files (``path`` column).

    A row without a path names ``<recording_id>.<ext>``, which differs from any explicit path.
    Returns the kept rows, in their order, and one failure per dropped row, in reading order.
    """
    d = table.data
    recording, path = d["recording"], d["path"].astype(np.int64)
    lowest = np.full(len(table.recording_ids), np.iinfo(np.int64).max)
    highest = np.full(len(table.recording_ids), -1)
    np.minimum.at(lowest, recording, path)
    np.maximum.at(highest, recording, path)
    mixed = (highest >= 0) & (lowest != highest)
    if not mixed.any():
        return table, []
    dropped = np.flatnonzero(mixed[recording])
    messages = {}
    for k in np.flatnonzero(mixed).tolist():
        first_use: dict[int, int] = {}
        for i in dropped[recording[dropped] == k].tolist():
            first_use.setdefault(int(path[i]), i)
        named = [f"{table.paths[c] or '(no path)'} ({table[i].where})" for c, i in first_use.items()]
        listed = ", ".join(named[:-1]) + f" and {named[-1]}"
        messages[k] = f"recording {table.recording_ids[k]}: rows name different paths {listed}"
    failures = []
    for i in dropped.tolist():
        row = table[i]
        message = messages[int(recording[i])]
        if on_error == "fail":
            raise ManifestError(f"{row.where}: {message}")
        failures.append(RowFailure(row.source, row.line, row.recording_id, message))
    return table.take(np.flatnonzero(~mixed[recording])), failures


def plan_manifests(
    tp: Path, fp: Path | None, *, audio_dir: Path, config: FeatureConfig, on_error: str = "skip"
) -> tuple[list[ShardJob], list[RowFailure]]:
    """Read, validate and deduplicate the manifests as a stream, then plan the shard jobs.

    Reads no audio (only the audio files' size and mtime). Returns the jobs and the rejected
    rows: bad rows of ``tp``, then of ``fp``, then duplicates, each in file order, then every
    row of each recording whose rows name different paths (which one is right cannot be told),
    in reading order.
    """
    row_failures: list[RowFailure] = []
    sources = [(tp, EVENT_TP)] + ([(fp, EVENT_FP)] if fp is not None else [])
    rows = RowTable.from_rows(
        row
        for path, kind in sources
        for row in iter_manifest(
            path, kind=kind, n_classes=config.n_classes, on_error=on_error, failures=row_failures
        )
    )
    rows, duplicates = drop_duplicates(rows, on_error=on_error)
    row_failures += duplicates
    rows, mixed = drop_mixed_paths(rows, on_error=on_error)
    row_failures += mixed
    if not len(rows):
        raise MelShardsError(f"{tp}: no valid rows to precompute ({len(row_failures)} rejected)")
    return plan_labelled(rows, audio_dir=audio_dir, config=config), row_failures


def list_audio(audio_dir: Path) -> list[Path]:
    """Audio files directly inside ``audio_dir``, sorted by name.

    Raises ConfigError when there are none, or when two files share a recording id (their
    name without the extension: ``a.flac`` and ``a.wav``).
    """
    if not audio_dir.is_dir():
        raise ConfigError(f"{audio_dir}: audio directory not found")
    # Links that lead nowhere are listed too: the run records them instead of skipping them silently.
    files = sorted(
        p
        for p in audio_dir.iterdir()
        if p.suffix.lower() in AUDIO_EXTENSIONS and (p.is_file() or p.is_symlink())
    )
    if not files:
        raise ConfigError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    by_id: dict[str, list[Path]] = {}
    for path in files:
        by_id.setdefault(path.stem, []).append(path)
    shared = [paths for paths in by_id.values() if len(paths) > 1]
    if shared:
        more = f" ({len(shared) - 1} more id(s) have several files)" if len(shared) > 1 else ""
        raise ConfigError(
            f"{audio_dir}: recordings {' and '.join(p.name for p in shared[0])} share the id "
            f"{shared[0][0].stem!r}{more}; rename or remove one"
        )
    return files


def plan_windows(audio_dir: Path, *, config: FeatureConfig, step: float) -> list[ShardJob]:
    """Shard jobs for sliding windows every ``step`` seconds over every recording in ``audio_dir``.

    A file that resolves outside ``audio_dir`` (a link) is not read: its task carries the
    reason, and the worker records it as a failure, as ``features`` does.
    """
    hop_seconds = config.hop_length / config.sample_rate
    if not step >= hop_seconds:
        raise ConfigError(f"--step must be at least one STFT hop ({hop_seconds:.4f} s), got {step}")
    tasks = []
    for path in list_audio(audio_dir):
        try:
            if not path.is_file():
                raise AudioError(f"{path}: broken symbolic link (its target does not exist)")
            check_inside(audio_dir, path)
        except AudioError as err:
            tasks.append(RecordingTask(path.stem, None, str(err), tuple(file_identity(None)), range(0), 1))
            continue
        n = _header_windows(path, length=config.window_seconds, step=step)
        tasks.append(RecordingTask(path.stem, str(path), None, tuple(file_identity(path)), range(0), n))
    config_dict, versions = config.to_dict(), library_versions()
    groups = _groups([t.n_windows for t in tasks], shard_size=config.shard_size)
    return [
        _job(
            k,
            tasks[g.start : g.stop],
            rows=NO_ROWS,
            config=config_dict,
            versions=versions,
            kind=SET_WINDOWS,
            step=step,
        )
        for k, g in enumerate(groups)
    ]


def _header_windows(path: Path, *, length: float, step: float) -> int:
    """How many windows the header of ``path`` promises; 1 for a file that the worker will
    refuse when it decodes it (unreadable, or a header promising more than ``MAX_SECONDS``,
    whose windows could take more memory to count than the machine has)."""
    from precompute.windows import sliding_starts

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return 1
    if not 0 < info.frames <= MAX_SECONDS * info.samplerate:
        return 1
    return len(sliding_starts(info.frames / info.samplerate, length=length, step=step))
