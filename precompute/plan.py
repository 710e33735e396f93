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
from melshards.errors import AudioError, ConfigError, MelShardsError
from melshards.files import fingerprint_of
from melshards.names import EVENT_FP, EVENT_TP, FORMAT_VERSION, SET_LABELLED, SET_WINDOWS, SHARD_PATTERN
from precompute.audio import AUDIO_EXTENSIONS, file_identity, find_audio
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


def plan_manifests(
    tp: Path, fp: Path | None, *, audio_dir: Path, config: FeatureConfig, on_error: str = "skip"
) -> tuple[list[ShardJob], list[RowFailure]]:
    """Read, validate and deduplicate the manifests as a stream, then plan the shard jobs.

    Reads no audio (only the audio files' size and mtime). Returns the jobs and the rejected
    rows (bad rows of ``tp``, then of ``fp``, then duplicates, each in file order).
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
    if not len(rows):
        raise MelShardsError(f"{tp}: no valid rows to precompute ({len(row_failures)} rejected)")
    return plan_labelled(rows, audio_dir=audio_dir, config=config), row_failures


def list_audio(audio_dir: Path) -> list[Path]:
    """Audio files directly inside ``audio_dir``, sorted by name."""
    if not audio_dir.is_dir():
        raise ConfigError(f"{audio_dir}: audio directory not found")
    files = sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ConfigError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def plan_windows(audio_dir: Path, *, config: FeatureConfig, step: float) -> list[ShardJob]:
    """Shard jobs for sliding windows every ``step`` seconds over every recording in ``audio_dir``."""
    from precompute.windows import sliding_starts

    if not step > 0:
        raise ConfigError(f"--step must be positive seconds, got {step}")
    tasks = []
    for path in list_audio(audio_dir):
        try:
            info = sf.info(str(path))
            seconds = info.frames / info.samplerate
            n = len(sliding_starts(seconds, length=config.window_seconds, step=step))
        except (sf.LibsndfileError, RuntimeError):
            n = 1  # the worker decodes it, fails and records why
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
