"""Planning a run: validated rows grouped by recording, packed into shard jobs.

One job is one shard. A recording never spans two shards, so each recording is decoded once.
Every job carries a fingerprint of everything that shapes its bytes (feature config, format
version, the versions of the libraries that compute the numbers, the exact rows, the identity
of the audio files), so a resumed run reuses a finished shard exactly when it would come out
the same.

Planning reads no audio: a recording's identity is its size and mtime (``os.stat``). It is
linear in the manifest apart from sorting, and keeps rows as numpy records (``RowTable``):
each job holds its own rows, the plan holds nothing per row besides them.

Shards stay put as data grows: given the shard each recording was in (``previous``), a
recording keeps its shard and only new recordings are packed into new shards
(``precompute.packing``). Without ``previous`` recordings are packed in sorted order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from melshards.config import FeatureConfig
from melshards.errors import ConfigError
from melshards.files import fingerprint_of
from melshards.names import EVENT_FP, FORMAT_VERSION, SET_LABELLED, SET_WINDOWS, SHARD_PATTERN
from precompute.audio import MAX_SECONDS, check_inside, file_identity, find_audio
from precompute.errors import AudioError, NoValidRows
from precompute.inputs.annotations import Annotations, iter_annotations
from precompute.inputs.audio_files import list_audio
from precompute.inputs.classes import ClassCoder, ClassSpec
from precompute.inputs.row_table import (
    ROW_DTYPE,
    Row,
    RowFailure,
    RowTable,
    drop_duplicates,
    drop_mixed_paths,
)
from precompute.mel import ARITHMETIC
from precompute.packing import assign_shards

NO_ROWS = RowTable(np.zeros(0, dtype=ROW_DTYPE), (), (), (None,))

# The libraries that decode, resample and compute the stored numbers: their versions are part of
# every job's fingerprint, so a new release of one of them rebuilds every shard. numba compiles
# the fast path's mel kernel (precompute.mel_kernels).
COMPUTING_LIBRARIES = ("numpy", "scipy", "librosa", "soundfile", "soxr", "numba")
# The versions recorded in the index, for provenance: those above, and h5py, which only writes
# the container (the numbers are cast by numpy before it sees them), so that installing an
# extra that moves h5py (TensorFlow caps it) rebuilds nothing.
VERSIONED_LIBRARIES = (*COMPUTING_LIBRARIES, "h5py")
# This project's own arithmetic, recorded and fingerprinted beside the libraries' versions.
ARITHMETIC_KEY = "precompute.mel"


def library_versions() -> dict[str, str]:
    """Versions of the libraries recorded in the index ("absent" when missing)."""
    import importlib.metadata as md

    versions = {}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    versions[ARITHMETIC_KEY] = ARITHMETIC
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
    """One shard to write.

    ``setup`` is the fingerprint of what every shard of the plan shares (format, config,
    library versions, kind, step; ``setup_key``); ``digests`` holds, per recording, short
    fingerprints of its rows and of its audio file's identity, which tell what changed when
    the shard has to be rebuilt.
    """

    index: int
    file: str
    kind: str
    recordings: tuple[RecordingTask, ...]
    step: float | None
    fingerprint: str
    rows: RowTable = NO_ROWS
    setup: str = ""
    digests: tuple[tuple[str, str], ...] = ()

    @property
    def n_windows(self) -> int:
        return sum(r.n_windows for r in self.recordings)

    @property
    def recording_ids(self) -> tuple[str, ...]:
        return tuple(task.recording_id for task in self.recordings)

    def recording_rows(self, task: RecordingTask) -> tuple[Row, ...]:
        """The manifest rows of one of this job's recordings, sorted by event time."""
        return tuple(self.rows[i] for i in task.rows)


def _locate(audio_dir: Path, recording_id: str, path: str | None) -> tuple[str | None, str | None]:
    try:
        return str(find_audio(audio_dir, recording_id, path)), None
    except AudioError as err:
        return None, str(err)


def computing_versions(versions: Mapping[str, str]) -> dict[str, str]:
    """The part of recorded ``versions`` that fingerprints hold: the ``COMPUTING_LIBRARIES``."""
    return {name: versions.get(name, "absent") for name in (*COMPUTING_LIBRARIES, ARITHMETIC_KEY)}


def setup_key(*, config: dict, versions: Mapping[str, str], kind: str, step: float | None) -> str:
    """The fingerprint of what all shards of a plan share: when it changes, a run plans afresh.

    versions : the recorded library versions (``library_versions`` or an index's); only those
        of the ``COMPUTING_LIBRARIES`` count
    """
    versions = computing_versions(versions)
    return fingerprint_of(
        {"format": FORMAT_VERSION, "config": config, "versions": versions, "kind": kind, "step": step}
    )


def _digest(value) -> str:
    return fingerprint_of(value)[:16]


def _job(
    index: int,
    tasks: list[RecordingTask],
    *,
    rows: RowTable,
    config: dict,
    versions: dict,
    kind: str,
    step,
    setup: str,
) -> ShardJob:
    keys = rows.keys()
    described = [[t.recording_id, list(t.identity), [keys[i] for i in t.rows]] for t in tasks]
    fingerprint = fingerprint_of(
        {
            "format": FORMAT_VERSION,
            "config": config,
            "versions": computing_versions(versions),
            "kind": kind,
            "step": step,
            "recordings": described,
        }
    )
    digests = tuple((_digest(row_keys), _digest(identity)) for _, identity, row_keys in described)
    return ShardJob(
        index, SHARD_PATTERN.format(index), kind, tuple(tasks), step, fingerprint, rows, setup, digests
    )


def _sorted_runs(rows: RowTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows in planning order, and where each recording's run of them starts and stops.

    Recordings come sorted by id; a recording's rows by ``(t_min, t_max, TP before FP,
    species_id)``, then by reading order. Raises ConfigError when one recording's rows name
    different paths.
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
    return order, starts, stops


def plan_labelled(
    rows: RowTable, *, audio_dir: Path, config: FeatureConfig, previous: Mapping[str, int] | None = None
) -> list[ShardJob]:
    """Shard jobs for one window per TP and FP row, recordings in sorted order.

    (The job makes one example of rows with the same times and kind: ``n_windows`` counts rows.)

    rows : the valid, deduplicated manifest rows (``precompute.inputs.row_table.drop_duplicates``)
    previous : the shard index each recording was in before
        (``precompute.packing.assign_shards``); None packs every recording afresh

    A recording's rows are ordered by ``(t_min, t_max, TP before FP, species_id)``, then by
    reading order. Raises ConfigError when one recording's rows name different paths.
    """
    order, starts, stops = _sorted_runs(rows)
    first_rows = order[starts]
    ids = [rows.recording_ids[c] for c in rows.data["recording"][first_rows].tolist()]
    paths = [rows.paths[c] for c in rows.data["path"][first_rows].tolist()]
    sizes = (stops - starts).tolist()
    config_dict, versions = config.to_dict(), library_versions()
    setup = setup_key(config=config_dict, versions=versions, kind=SET_LABELLED, step=None)
    jobs = []
    for index, group in assign_shards(ids, sizes, shard_size=config.shard_size, previous=previous):
        if isinstance(group, range):  # consecutive recordings: their rows are consecutive too
            positions = order[int(starts[group.start]) : int(stops[group.stop - 1])]
        else:
            positions = np.concatenate([order[int(starts[k]) : int(stops[k])] for k in group])
        tasks, offset = [], 0
        for k in group:
            path, error = _locate(audio_dir, ids[k], paths[k])
            identity = tuple(file_identity(Path(path) if path else None))
            tasks.append(
                RecordingTask(ids[k], path, error, identity, range(offset, offset + sizes[k]), sizes[k])
            )
            offset += sizes[k]
        jobs.append(
            _job(
                index,
                tasks,
                rows=rows.take(positions),
                config=config_dict,
                versions=versions,
                kind=SET_LABELLED,
                step=None,
                setup=setup,
            )
        )
    return jobs


def plan_manifests(
    tp: Path,
    fp: Path | None,
    *,
    audio_dir: Path,
    config: FeatureConfig,
    on_error: str = "skip",
    previous: Mapping[str, int] | None = None,
) -> tuple[list[ShardJob], list[RowFailure]]:
    """Read, validate and deduplicate RFCX manifests as a stream, then plan the shard jobs.

    Species ids must lie in ``0..config.n_classes - 1``; ``plan_annotations`` (which this
    calls) says the rest. Returns the jobs and the rejected rows.
    """
    inputs = [Annotations("rfcx", tp)] + ([Annotations("rfcx", fp, kind=EVENT_FP)] if fp is not None else [])
    planned = plan_annotations(
        inputs,
        audio_dir=audio_dir,
        config=config,
        classes=ClassSpec(count=config.n_classes),
        on_error=on_error,
        previous=previous,
    )
    return planned.jobs, planned.failures


@dataclass(frozen=True)
class Planned:
    """A labelled run's plan: jobs, rejected rows, classes, and the config with their count.

    ``ignored`` maps each table to the columns it has that no field uses.
    """

    jobs: list[ShardJob]
    failures: list[RowFailure]
    class_names: tuple[str, ...]
    config: FeatureConfig
    ignored: dict[str, list[str]]


def plan_annotations(
    inputs: Sequence[Annotations],
    *,
    audio_dir: Path,
    config: FeatureConfig,
    classes: ClassSpec | None = None,
    on_error: str = "skip",
    previous: Mapping[str, int] | Callable[[FeatureConfig], Mapping[str, int] | None] | None = None,
) -> Planned:
    """Read, validate and deduplicate annotations of any format as a stream, then plan the jobs.

    inputs : the annotation inputs (``precompute.inputs.annotations``), read in order
    classes : where the class list comes from (default: the data); the returned config's
        ``n_classes`` is its length
    previous : ``plan_labelled``'s, or a function of the returned config that gives it

    Reads no audio besides the headers of clips (their length) and the audio files' size and
    mtime. The rejected rows come in this order: bad rows of each input in reading order, then
    duplicates, then every row of each recording whose rows name different paths (which one
    is right cannot be told). Each job's fingerprint covers the class names. Raises
    ``NoValidRows`` (with the failures) when no row is left.
    """
    coder = ClassCoder(classes)
    failures: list[RowFailure] = []
    ignored: dict[str, list[str]] = {}
    rows = RowTable.from_rows(
        iter_annotations(
            inputs,
            audio_dir=audio_dir,
            config=config,
            classes=coder,
            on_error=on_error,
            failures=failures,
            ignored=ignored,
        )
    )
    names, remap = coder.finish()
    if remap is not None and len(rows):
        rows.data["species_id"] = remap[rows.data["species_id"]]
    rows, duplicates = drop_duplicates(rows, on_error=on_error)
    rows, mixed = drop_mixed_paths(rows, on_error=on_error)
    failures += duplicates + mixed
    if not len(rows):
        what = ", ".join(str(item.path) for item in inputs)
        reasons = "; ".join(f.to_record()["message"] for f in failures[:3])
        more = f"; ... ({len(failures)} in all)" if len(failures) > 3 else ""
        raise NoValidRows(
            f"{what}: no valid rows to precompute ({len(failures)} rejected): {reasons}{more}", failures
        )
    config = dataclasses.replace(config, n_classes=len(names))
    assigned = previous(config) if callable(previous) else previous
    jobs = [
        dataclasses.replace(job, fingerprint=fingerprint_of([job.fingerprint, list(names)]))
        for job in plan_labelled(rows, audio_dir=audio_dir, config=config, previous=assigned)
    ]
    return Planned(jobs, failures, names, config, ignored)


def plan_windows(
    audio_dir: Path,
    *,
    config: FeatureConfig,
    step: float,
    files: Path | None = None,
    previous: Mapping[str, int] | None = None,
) -> list[ShardJob]:
    """Shard jobs for sliding windows every ``step`` seconds over recordings
    (``precompute.inputs.audio_files.list_audio``).

    files : a list of the files to read (``read_file_list`` there); None reads every audio file
        under ``audio_dir``
    previous : the shard index each recording was in before
        (``precompute.packing.assign_shards``); None packs every recording afresh

    A file that resolves outside ``audio_dir`` (a link) is not read: its task carries the
    reason, and the worker records it as a failure, as ``features`` does.
    """
    hop_seconds = config.hop_length / config.sample_rate
    if not step >= hop_seconds:
        raise ConfigError(f"--step must be at least one STFT hop ({hop_seconds:.4f} s), got {step}")
    tasks = [
        _window_task(audio_dir, recording_id, path, config=config, step=step)
        for recording_id, path in list_audio(audio_dir, files=files)
    ]
    config_dict, versions = config.to_dict(), library_versions()
    setup = setup_key(config=config_dict, versions=versions, kind=SET_WINDOWS, step=step)
    ids, sizes = [t.recording_id for t in tasks], [t.n_windows for t in tasks]
    return [
        _job(
            index,
            [tasks[k] for k in group],
            rows=NO_ROWS,
            config=config_dict,
            versions=versions,
            kind=SET_WINDOWS,
            step=step,
            setup=setup,
        )
        for index, group in assign_shards(ids, sizes, shard_size=config.shard_size, previous=previous)
    ]


def _window_task(
    audio_dir: Path, recording_id: str, path: Path, *, config: FeatureConfig, step: float
) -> RecordingTask:
    try:
        if not path.is_file():
            raise AudioError(f"{path}: broken symbolic link (its target does not exist)")
        check_inside(audio_dir, path)
    except AudioError as err:
        return RecordingTask(recording_id, None, str(err), tuple(file_identity(None)), range(0), 1)
    n = _header_windows(path, length=config.window_seconds, step=step)
    return RecordingTask(recording_id, str(path), None, tuple(file_identity(path)), range(0), n)


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
