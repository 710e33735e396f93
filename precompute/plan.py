"""Planning a run: validated rows grouped by recording, packed into shard jobs.

One job is one shard. A recording never spans two shards, so each recording is decoded once.
Every job carries a fingerprint of everything that shapes its bytes (feature config, format
version, library versions, the exact rows, the identity of the audio files), so a resumed
run reuses a finished shard exactly when it would come out the same.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from loader.errors import AudioError, ConfigError
from loader.format import FORMAT_VERSION, SHARD_PATTERN, FeatureConfig, fingerprint_of
from precompute.audio import AUDIO_EXTENSIONS, file_identity, find_audio
from precompute.manifest import Row
from precompute.shards import library_versions

KIND_LABELLED = "labelled"
KIND_WINDOWS = "windows"


@dataclass(frozen=True)
class RecordingTask:
    """One recording and the windows to cut from it.

    For labelled runs, ``rows`` are all of the recording's valid manifest rows: each anchors
    one window and all of them label every window. Sliding-window runs have no rows.

    ``path`` is None when the file could not be located (``locate_error`` says why); the
    worker then records the failure, so a shard remembers what it lacks.
    """

    recording_id: str
    path: str | None
    locate_error: str | None
    identity: tuple
    rows: tuple[Row, ...]
    n_windows: int


@dataclass(frozen=True)
class ShardJob:
    index: int
    file: str
    kind: str
    recordings: tuple[RecordingTask, ...]
    step: float | None
    fingerprint: str

    @property
    def n_windows(self) -> int:
        return sum(r.n_windows for r in self.recordings)


def _locate(audio_dir: Path, recording_id: str, path: str | None) -> tuple[str | None, str | None]:
    try:
        return str(find_audio(audio_dir, recording_id, path)), None
    except AudioError as err:
        return None, str(err)


def _pack(
    tasks: list[RecordingTask], *, config: FeatureConfig, kind: str, step: float | None
) -> list[ShardJob]:
    groups: list[list[RecordingTask]] = [[]]
    count = 0
    for task in tasks:
        if count >= config.shard_size:
            groups.append([])
            count = 0
        groups[-1].append(task)
        count += task.n_windows
    versions = library_versions()
    jobs = []
    for k, group in enumerate(g for g in groups if g):
        described = [[t.recording_id, list(t.identity), [_row_key(r) for r in t.rows]] for t in group]
        fingerprint = fingerprint_of(
            {
                "format": FORMAT_VERSION,
                "config": config.to_dict(),
                "versions": versions,
                "kind": kind,
                "step": step,
                "recordings": described,
            }
        )
        jobs.append(ShardJob(k, SHARD_PATTERN.format(k), kind, tuple(group), step, fingerprint))
    return jobs


def _row_key(row: Row) -> list:
    return [*row.key(), row.source, row.line]


def plan_labelled(rows: list[Row], *, audio_dir: Path, config: FeatureConfig) -> list[ShardJob]:
    """Shard jobs for one window per TP and FP row, recordings in sorted order."""
    by_recording: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_recording[row.recording_id].append(row)
    tasks = []
    for recording_id in sorted(by_recording):
        recording_rows = sorted(
            by_recording[recording_id], key=lambda r: (r.t_min, r.t_max, -r.kind, r.species_id)
        )
        paths = {r.path for r in recording_rows}
        if len(paths) > 1:
            raise ConfigError(
                f"recording {recording_id}: rows name different paths {sorted(map(str, paths))}"
            )
        path, error = _locate(audio_dir, recording_id, recording_rows[0].path)
        tasks.append(
            RecordingTask(
                recording_id,
                path,
                error,
                tuple(file_identity(Path(path) if path else None)),
                tuple(recording_rows),
                len(recording_rows),
            )
        )
    return _pack(tasks, config=config, kind=KIND_LABELLED, step=None)


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
        tasks.append(RecordingTask(path.stem, str(path), None, tuple(file_identity(path)), (), n))
    return _pack(tasks, config=config, kind=KIND_WINDOWS, step=step)
