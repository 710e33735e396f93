"""The driver of a precompute run: lock, resume, parallel shard jobs, failures, the index last.

Parallelism and progress live here and nowhere else: shard jobs (``precompute.job``) go to
joblib (``return_as="generator_unordered"``, on the backend ``precompute.backends`` sets up)
under one tqdm bar counting slices. A finished shard whose job fingerprint matches the plan
is reused; anything else is rebuilt. The index is written last, so a reader never trusts a
directory in the middle of a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from commandline.console import log
from melshards import codec, remote
from melshards.config import FeatureConfig
from melshards.errors import ConfigError, FormatError
from melshards.files import append_line, atomic_write_text, sha256_file
from melshards.index import Index, ShardEntry, read_index, write_index
from melshards.names import (
    BUILT_FILE,
    EVENT_FP,
    EVENT_TP,
    FAILURES_FILE,
    INDEX_FILE,
    LOCK_FILE,
    SET_LABELLED,
    SET_WINDOWS,
    SHARD_PATTERN,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    TEMP_SUFFIX,
)
from melshards.shard import ShardStats, read_shard_summary, regular_file_problem
from precompute.annotations import Annotations
from precompute.backends import LOCAL_BACKENDS, check_backend, joblib_backend
from precompute.classes import ClassSpec
from precompute.errors import LockedError, ManifestError
from precompute.job import ON_ERROR, ShardResult, build_shard
from precompute.manifest import NoValidRows
from precompute.plan import ShardJob, library_versions, plan_annotations, plan_windows, setup_key
from precompute.publish import RemoteOutput


@dataclass(frozen=True)
class Rebuilt:
    """A shard a run built, and why: one of ``REASONS``, and the recordings it concerns."""

    file: str
    why: str
    recordings: tuple[str, ...] = ()


def _named(recordings: tuple[str, ...], *, limit: int = 3) -> str:
    """`` (a b c +2 more)``: the first ``limit`` of ``recordings``; empty for none."""
    if not recordings:
        return ""
    more = f" +{len(recordings) - limit} more" if len(recordings) > limit else ""
    return f" ({' '.join(recordings[:limit])}{more})"


@dataclass
class Summary:
    """What a run did; printed by the CLI.

    ``rebuilt`` says why each built shard was built; ``explained`` is False when the output
    directory held nothing of an earlier run (every shard is new, which goes without saying).
    """

    out: Path
    examples: int = 0
    shards: int = 0
    shards_built: int = 0
    shards_reused: int = 0
    bytes: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    slices_built: int = 0
    rebuilt: list[Rebuilt] = field(default_factory=list)
    explained: bool = False
    shown: str | None = None  # where the set was written, when not ``out`` (a URL)

    @property
    def rate(self) -> float:
        return self.slices_built / self.seconds if self.seconds > 0 else 0.0

    @property
    def failures_path(self) -> Path:
        return self.out / FAILURES_FILE

    def reasons(self) -> str:
        """Why shards were built, counted by reason: ``2 for new recordings, 1 for rows changed (rec_017)``."""
        parts = []
        for why in REASONS:
            items = [item for item in self.rebuilt if item.why == why]
            if items:
                named = _named(tuple(r for item in items for r in item.recordings))
                parts.append(f"{len(items)} for {why}{named}")
        return ", ".join(parts)

    def line(self) -> str:
        """The one-line summary the command prints at the end."""
        rate = f", {self.rate:.1f} slices/s" if self.slices_built else ""
        failures = (
            f"{len(self.failures)} failure(s) recorded in {self.failures_path}"
            if self.failures
            else "0 failures"
        )
        what = f"{self.examples} examples in {self.shards} shards ({self.bytes / 1e6:.1f} MB"
        where = self.shown or self.out
        if not self.shards_built:
            return f"{where} is up to date: {what}, {self.shards_reused} reused); {failures}"
        built = f"{self.shards_built} built"
        reused = f", {self.shards_reused} reused" if self.shards_reused else ""
        if self.explained and self.rebuilt:
            built += f": {self.reasons()}"
            reused = f"; {self.shards_reused} reused" if self.shards_reused else ""
        return f"wrote {what}; {built}{reused}) to {where} in {self.seconds:.1f} s{rate}; {failures}"


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run; released even when the process is killed.

    The lock file is opened without following a symbolic link and must be a regular file: a
    link planted at ``OUT/.lock`` cannot make the run overwrite another file, nor a FIFO hang it.
    """
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(
                f"{path}: is a symbolic link; refusing to write through it (remove it)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: is not a regular file; refusing to use it as the lock (remove it)")
    with os.fdopen(fd, "r+", encoding="ascii", errors="replace") as fh:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read(32).strip() or "unknown"
            raise LockedError(
                f"{out}: another precompute run (pid {holder}) is writing here; wait for it or stop it"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


# -- what earlier runs left: finished shards, the last plan, why a shard is built again ----------

# Why a shard is built, in the order the summary lists them.
NEW = "new recordings"
REMOVED = "recordings removed"
ROWS = "rows changed"
AUDIO = "audio file changed"
CHANGED = "rows or audio changed"
SETUP = "config/versions changed"
DAMAGED = "shard missing or bytes disagree"
UNFINISHED = "left unfinished by an earlier run"
REASONS = (NEW, REMOVED, ROWS, AUDIO, CHANGED, SETUP, DAMAGED, UNFINISHED)


@dataclass(frozen=True)
class PlannedShard:
    """A shard of the last plan started in an output directory.

    ``digests`` maps each recording to short fingerprints of its rows and of its audio file's
    identity (``ShardJob.digests``); None when unknown (a plan read from an index).
    """

    fingerprint: str
    recordings: tuple[str, ...]
    digests: dict[str, tuple[str, str]] | None = None


@dataclass
class Prior:
    """What an output directory records of earlier runs (``read_prior``).

    built : the finished shards by file: the index's entries, then those of ``BUILT_FILE``
    planned : the shards of the last plan by file: ``BUILT_FILE``'s plan lines, or else the
        index's entries that list their recordings
    setup : that plan's ``setup_key`` (or the index's); None when nothing tells
    """

    built: dict[str, ShardEntry] = field(default_factory=dict)
    planned: dict[str, PlannedShard] = field(default_factory=dict)
    setup: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.built or self.planned)

    def assignment(self, setup: str) -> dict[str, int] | None:
        """The shard index of each recording of the last plan, or None unless that plan had ``setup``.

        A config, library version, kind or step of its own makes a plan start afresh.
        """
        if setup != self.setup:
            return None
        assigned: dict[str, int] = {}
        for file, shard in sorted(self.planned.items()):
            number = _shard_number(file)
            if number is not None:
                for recording_id in shard.recordings:
                    assigned.setdefault(recording_id, number)
        return assigned or None


def _shard_number(file: str) -> int | None:
    """The index in a shard's file name (``shard-00012.h5``: 12), or None for another name."""
    digits = file.removeprefix(SHARD_PREFIX).removesuffix(SHARD_SUFFIX)
    if not (digits.isascii() and digits.isdigit()) or SHARD_PATTERN.format(int(digits)) != file:
        return None
    return int(digits)


def read_prior(out: Path) -> Prior:
    """What earlier runs left in ``out``: ``BUILT_FILE`` (written by every run as it goes) first,
    then the index (for a directory copied without its hidden files). Anything unreadable, a
    line cut short by a crash, tells nothing; an index of another version (or damaged) says
    that every shard is built afresh ("config/versions changed")."""
    prior = Prior()
    try:
        index = read_index(out)
    except FormatError:
        index = None
        if (out / INDEX_FILE).is_file():
            # Another format version (or a damaged index): its shards are built afresh, and
            # say why.
            prior.setup = "unreadable index"
    if index is not None:
        prior.built.update((entry.file, entry) for entry in index.shards)
        prior.setup = _index_setup(index)
        prior.planned.update(
            (entry.file, PlannedShard(entry.fingerprint, entry.recordings))
            for entry in index.shards
            if entry.recordings is not None
        )
    planned: dict[str, tuple[str, PlannedShard]] = {}
    path = out / BUILT_FILE
    if regular_file_problem(path) is None:
        for k, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            with contextlib.suppress(ValueError, FormatError):
                data = json.loads(line)
                if isinstance(data, dict) and "planned" in data:
                    shard = _planned_shard(data)
                    if shard is not None:
                        planned[data["planned"]] = (data["setup"], shard)
                    continue
                entry = ShardEntry.from_dict(data, source=f"{path} line {k + 1}")
                prior.built[entry.file] = entry
    if planned:
        # One run writes every plan line with one setup; the last line's is the newest.
        prior.setup = list(planned.values())[-1][0]
        prior.planned = {file: shard for file, (setup, shard) in planned.items() if setup == prior.setup}
    return prior


def _index_setup(index: Index) -> str:
    step = (index.source or {}).get("step") if index.kind == SET_WINDOWS else None
    return setup_key(config=index.config.to_dict(), versions=dict(index.versions), kind=index.kind, step=step)


def _plan_line(job: ShardJob) -> str:
    """The line of ``BUILT_FILE`` that records one shard of the plan a run starts."""
    return json.dumps(
        {
            "planned": job.file,
            "setup": job.setup,
            "fingerprint": job.fingerprint,
            "recordings": list(job.recording_ids),
            "digests": [list(pair) for pair in job.digests],
        }
    )


def _planned_shard(data: dict) -> PlannedShard | None:
    """A plan line of ``BUILT_FILE`` (``_plan_line``) read back, or None when malformed."""
    texts = [data.get(key) for key in ("planned", "setup", "fingerprint")]
    recordings, digests = data.get("recordings"), data.get("digests")
    if not all(isinstance(v, str) for v in texts) or not _strings(recordings):
        return None
    if not (isinstance(digests, list) and len(digests) == len(recordings)):
        return PlannedShard(texts[2], tuple(recordings))
    if not all(isinstance(pair, list) and len(pair) == 2 and _strings(pair) for pair in digests):
        return PlannedShard(texts[2], tuple(recordings))
    return PlannedShard(
        texts[2], tuple(recordings), {r: tuple(d) for r, d in zip(recordings, digests, strict=True)}
    )


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def rebuild_reason(job: ShardJob, prior: Prior) -> tuple[str, tuple[str, ...]]:
    """Why ``job``'s shard must be built: one of ``REASONS``, and the recordings it concerns."""
    if prior.setup is not None and prior.setup != job.setup:
        return SETUP, ()
    planned, record = prior.planned.get(job.file), prior.built.get(job.file)
    if planned is None or planned.fingerprint == job.fingerprint:
        if record is not None and record.fingerprint == job.fingerprint:
            return DAMAGED, ()
        if planned is not None:
            return UNFINISHED, ()
        return (NEW, job.recording_ids) if record is None else (CHANGED, ())
    ids, before = job.recording_ids, set(planned.recordings)
    added = tuple(r for r in ids if r not in before)
    if added:
        return NEW, added
    now = set(ids)
    removed = tuple(r for r in planned.recordings if r not in now)
    if removed:
        return REMOVED, removed
    if planned.digests is None:
        return CHANGED, ()
    was = [planned.digests.get(r, ("", "")) for r in ids]
    rows = tuple(r for r, old, new in zip(ids, was, job.digests, strict=True) if old[0] != new[0])
    audio = tuple(r for r, old, new in zip(ids, was, job.digests, strict=True) if old[1] != new[1])
    if rows:
        return ROWS, rows
    # Same recordings, rows and audio: what changed is shared by every shard (class names, say).
    return (AUDIO, audio) if audio else (SETUP, ())


def _reasons(todo: list[ShardJob], prior: Prior) -> list[Rebuilt]:
    """Why each job of ``todo`` runs, logged: a line per shard when there are a few, else only
    at debug level (a first run, a new config)."""
    rebuilt = [Rebuilt(job.file, *rebuild_reason(job, prior)) for job in todo]
    detail = log.info if not prior.empty and len(rebuilt) <= 10 else log.debug
    for item in rebuilt:
        detail(f"  {item.file}: {item.why}{_named(item.recordings, limit=20)}")
    return rebuilt


def _reusable(path: Path, job: ShardJob, record: ShardEntry | None) -> ShardResult | None:
    """The result of a finished shard that this job would write again, or None to rebuild it.

    A shard is reused only when its bytes hash to what was recorded when it was built: a file
    changed since (a flipped byte, a truncation) is rebuilt, never given a new hash.
    """
    if record is None or record.fingerprint != job.fingerprint or regular_file_problem(path):
        return None
    if path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
        log.warning(f"{path}: its bytes disagree with the sha256 recorded when it was built; rebuilding it")
        return None
    try:
        summary = read_shard_summary(path)
    except (OSError, KeyError, ValueError):
        return None
    if summary.fingerprint != job.fingerprint or summary.n != record.n:
        return None
    entry = dataclasses.replace(record, recordings=job.recording_ids)
    return ShardResult(entry, summary.stats, summary.failures, reused=True)


def _existing_kind(out: Path) -> str | None:
    """The kind of feature set ``out`` holds (from its index, else from a shard), or None."""
    try:
        return str(json.loads((out / INDEX_FILE).read_text(encoding="utf-8")).get("kind")) or None
    except (OSError, ValueError, AttributeError):
        pass
    for path in sorted(out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")):
        try:
            return read_shard_summary(path).kind or None
        except (OSError, KeyError, ValueError):
            continue
    return None


def _clean_strays(out: Path, keep: set[str]) -> None:
    for path in out.iterdir():
        stray_temp = path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)
        stale_shard = (
            path.name.startswith(SHARD_PREFIX) and path.suffix == SHARD_SUFFIX and path.name not in keep
        )
        if stray_temp or stale_shard:
            path.unlink(missing_ok=True)


def run_plan(
    plan: list[ShardJob],
    *,
    out: Path,
    config: FeatureConfig,
    kind: str,
    jobs: int | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
    on_error: str = "skip",
    prior_failures: list[dict] | None = None,
    progress: bool = True,
    source: dict | None = None,
    overwrite: bool = False,
    class_names: Sequence[str] | None = None,
    remote_out: RemoteOutput | None = None,
) -> Summary:
    """Build every shard of ``plan`` that is missing or stale, then write the index.

    Parameters
    ----------
    plan : the shard jobs (``plan_manifests`` / ``plan_windows``), one per shard
    out : feature set directory; with a cluster backend it must be on storage that every
        worker sees at the same path, as must the audio
    kind : ``SET_LABELLED`` or ``SET_WINDOWS``
    jobs : parallel shard jobs; None for every core (local backends) or every worker (a
        cluster joined with ``scheduler``)
    backend : ``loky``, ``threading``, ``dask`` or ``ray`` (``precompute.backends``)
    scheduler : address of a running Dask scheduler or Ray cluster; None starts a local one
    on_error : ``skip`` records failures and goes on, ``fail`` stops at the first
    prior_failures : failures found before any job ran (rejected manifest rows)
    source : where the inputs came from, recorded in the index
    overwrite : replace a feature set of another kind in ``out`` (refused otherwise)
    class_names : the name of each class, recorded in the index (default ``s0``, ``s1``, ...)
    remote_out : the URL ``out`` mirrors (``precompute.publish``): each shard is uploaded as it
        is finished, the index last

    Every backend runs the same ``build_shard`` per job and writes the same bytes; the driver
    only receives each shard's ``ShardResult`` (entry, statistics, failures).
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    check_backend(backend, scheduler=scheduler)
    codec.register_filters(config)  # a missing plugin package is one line now, not one per shard
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        _check_kind(out, kind, overwrite=overwrite)
        prior = read_prior(out)
        _clean_strays(out, keep={job.file for job in plan})
        results, todo = _reuse_or_rebuild(out, plan, prior.built)
        _start_record(out, plan, results, changing=bool(todo), remote_out=remote_out)
        _log_plan(plan, reused=len(results), todo=todo, jobs=jobs, backend=backend, scheduler=scheduler)
        rebuilt = _reasons(todo, prior)
        results += _build_shards(
            todo,
            out=out,
            config=config,
            on_error=on_error,
            jobs=jobs,
            backend=backend,
            scheduler=scheduler,
            progress=progress,
            remote_out=remote_out,
        )
        results.sort(key=lambda r: r.entry.file)
        failures = list(prior_failures or []) + [f for r in results for f in r.failures]
        index = _write_failures_and_index(
            out, results, failures, config=config, kind=kind, source=source, class_names=class_names
        )
        if remote_out is not None:
            remote_out.publish({r.entry.file for r in results})
    summary = _summary(
        results, index, rebuilt=rebuilt, prior=prior, failures=failures, out=out, started=started
    )
    summary.shown = None if remote_out is None else remote_out.shown
    return summary


def _start_record(
    out: Path,
    plan: list[ShardJob],
    results: list[ShardResult],
    *,
    changing: bool,
    remote_out: RemoteOutput | None,
) -> None:
    """Write ``BUILT_FILE`` anew: the plan (so that a resumed run plans the same shards) and the
    shards reused; each shard built from here on is added as it finishes. When shards are
    about to change, the index goes first: no reader may trust the directory (or URL) meanwhile."""
    atomic_write_text(
        out / BUILT_FILE,
        "".join(_plan_line(job) + "\n" for job in plan)
        + "".join(json.dumps(r.entry.to_dict()) + "\n" for r in results),
    )
    if changing:
        (out / INDEX_FILE).unlink(missing_ok=True)
    if remote_out is not None:
        if changing:
            remote_out.unpublish()
        remote_out.upload_missing([r.entry.file for r in results], [r.entry.bytes for r in results])
        remote_out.record()


def _summary(results, index, *, rebuilt, prior: Prior, failures, out: Path, started: float) -> Summary:
    built = [r for r in results if not r.reused]
    return Summary(
        rebuilt=rebuilt,
        explained=not prior.empty,
        out=out,
        examples=index.n_examples,
        shards=len(index.shards),
        shards_built=len(built),
        shards_reused=len(results) - len(built),
        bytes=sum(e.bytes for e in index.shards),
        failures=failures,
        seconds=time.perf_counter() - started,
        slices_built=sum(r.entry.n for r in built),
    )


def _check_kind(out: Path, kind: str, *, overwrite: bool) -> None:
    """ConfigError when ``out`` holds a feature set of another kind and ``overwrite`` is not set."""
    existing = _existing_kind(out)
    if existing not in (None, kind) and not overwrite:
        raise ConfigError(
            f"{out}: holds a {existing} feature set; writing {kind} features there would replace "
            "it (pass --overwrite, or choose another --out)"
        )


def _write_failures_and_index(
    out: Path,
    results: list[ShardResult],
    failures: list[dict],
    *,
    config: FeatureConfig,
    kind: str,
    source,
    class_names: Sequence[str] | None = None,
) -> Index:
    """``failures.jsonl``, then the index (last): the statistics of every shard, merged."""
    stats = ShardStats.empty(config.n_mels)
    for result in results:
        stats.merge(result.stats)
    atomic_write_text(out / FAILURES_FILE, "".join(json.dumps(f) + "\n" for f in failures))
    index = Index.build(
        config=config,
        entries=[r.entry for r in results],
        stats=stats.bin_stats(),
        failures=len(failures),
        kind=kind,
        versions=library_versions(),
        source=source,
        class_names=class_names,
    )
    write_index(out, index)
    return index


def _reuse_or_rebuild(
    out: Path, plan: list[ShardJob], records: dict[str, ShardEntry]
) -> tuple[list[ShardResult], list[ShardJob]]:
    """The results of the finished shards the plan would write again, and the jobs left to run."""
    results: list[ShardResult] = []
    todo: list[ShardJob] = []
    for job in plan:
        reused = _reusable(out / job.file, job, records.get(job.file))
        if reused is None:
            todo.append(job)
        else:
            results.append(reused)
    return results, todo


def _log_plan(
    plan: list[ShardJob],
    *,
    reused: int,
    todo: list[ShardJob],
    jobs: int | None,
    backend: str,
    scheduler: str | None,
) -> None:
    planned = sum(job.n_windows for job in plan)
    recordings = len({task.recording_id for job in plan for task in job.recordings})
    where = ""
    if todo and backend in LOCAL_BACKENDS and scheduler is None:
        workers = min(jobs if jobs and jobs > 0 else (os.cpu_count() or 1), len(todo))
        where = f" with {workers} {backend} worker(s)"
    elif todo:
        where = f" on the {backend} cluster"
    log.info(
        f"{planned} slices from {recordings} recordings in {len(plan)} shards: "
        f"{reused} up to date, {len(todo)} to build{where}"
    )


def _build_shards(
    todo: list[ShardJob],
    *,
    out: Path,
    config: FeatureConfig,
    on_error: str,
    jobs: int | None,
    backend: str,
    scheduler: str | None,
    progress: bool,
    remote_out: RemoteOutput | None = None,
) -> list[ShardResult]:
    """Run the jobs ``todo`` on ``backend``, one tqdm bar counting slices; results as they finish
    (each shard uploaded by its worker, and recorded at ``remote_out``, when given)."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    results: list[ShardResult] = []
    total = sum(job.n_windows for job in todo)
    with tqdm(total=total, unit="slice", desc=f"features -> {out.name}", disable=not progress) as bar:
        if not todo:
            return results
        n_jobs = jobs if jobs and jobs > 0 else None
        with joblib_backend(backend, jobs=n_jobs, tasks=len(todo), scheduler=scheduler) as parallel_jobs:
            # One task is one shard (no automatic batching), and no argument is memory-mapped:
            # a worker on another machine cannot see this one's /dev/shm.
            parallel = Parallel(
                n_jobs=parallel_jobs, return_as="generator_unordered", batch_size=1, max_nbytes=None
            )
            # Workers may run elsewhere, with another working directory.
            where = os.path.abspath(out)
            ids = {job.file: job.recording_ids for job in todo}
            upload = None if remote_out is None else remote_out.url
            for result in parallel(
                delayed(build_shard)(job, out=where, config=config, on_error=on_error, upload=upload)
                for job in todo
            ):
                result.entry = dataclasses.replace(result.entry, recordings=ids[result.entry.file])
                append_line(out / BUILT_FILE, json.dumps(result.entry.to_dict()))
                if remote_out is not None:
                    remote_out.record()
                results.append(result)
                bar.update(result.entry.n + sum(f.get("slices", 1) for f in result.failures))
    return results


def run_features(
    *,
    audio_dir: Path,
    out: Path,
    config: FeatureConfig,
    tp: Path | None = None,
    fp: Path | None = None,
    annotations: Sequence[Annotations] = (),
    classes: ClassSpec | None = None,
    on_error: str = "skip",
    stage: Path | None = None,
    **options,
) -> Summary:
    """Labelled slices (one window per annotated event) -> a feature set in ``out``.

    Parameters
    ----------
    tp, fp : RFCX manifests of calls and of confirmed false positives
    annotations : more inputs, of any format (``precompute.annotations.Annotations``)
    classes : where the class list comes from; None keeps ``config.n_classes`` numeric ids
        (``ClassSpec(count=config.n_classes)``), ``ClassSpec()`` takes the classes from the data
    out : a directory, or a URL (``s3://``, ``gs://``; built in ``stage``, see
        ``precompute.publish``)
    options : ``run_plan``'s: ``jobs``, ``backend``, ``scheduler``, ``progress``, ``overwrite``

    When every row is rejected, ``failures.jsonl`` in ``out`` lists why, and ManifestError
    names the first reasons.
    """
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    # Absolute, because the workers may run on other machines (with the same mounts).
    audio_dir = Path(os.path.abspath(audio_dir))
    if not audio_dir.is_dir():
        raise ConfigError(f"{audio_dir}: audio directory not found")
    inputs = [Annotations("rfcx", tp)] if tp is not None else []
    inputs += [Annotations("rfcx", fp, kind=EVENT_FP)] if fp is not None else []
    inputs += list(annotations)
    if not inputs:
        raise ConfigError("no annotations to precompute: give --tp, --raven, --clips or --class-folders")
    out, options["remote_out"] = _output(out, stage)
    classes = ClassSpec(count=config.n_classes) if classes is None else classes
    try:
        planned = plan_annotations(
            inputs,
            audio_dir=audio_dir,
            config=config,
            classes=classes,
            on_error=on_error,
            previous=lambda final: _previous(out, config=final, kind=SET_LABELLED, step=None),
        )
    except NoValidRows as err:
        written = _write_rejected(out, err.failures)
        raise ManifestError(f"{err} (every rejected row in {written})") from None
    _log_annotations(planned, inputs, classes)
    source = {
        "tp": None if tp is None else str(tp),
        "fp": None if fp is None else str(fp),
        "audio_dir": str(audio_dir),
        **_annotation_source(inputs, classes, ignored=planned.ignored),
    }
    return run_plan(
        planned.jobs,
        out=out,
        config=planned.config,
        kind=SET_LABELLED,
        on_error=on_error,
        prior_failures=[f.to_record() for f in planned.failures],
        source=source,
        class_names=planned.class_names,
        **options,
    )


def _annotation_source(inputs: Sequence[Annotations], classes: ClassSpec, *, ignored: dict) -> dict:
    """What the index's ``source`` records of the annotations: inputs, classes, ignored columns."""
    source = {
        "annotations": [item.describe() for item in inputs],
        "classes": classes.describe(),
        "class_scheme": classes.scheme,
    }
    if ignored:
        source["ignored_columns"] = ignored
    return source


# Where a fully rejected run lists its rows when the output already holds a finished set.
REJECTED_FILE = "rejected.jsonl"


def _write_rejected(out: Path, failures: list) -> Path:
    """Write the rows of a run whose every row was rejected; returns the file (nothing else is written).

    ``failures.jsonl``, or ``rejected.jsonl`` where ``out`` holds a finished feature set: its
    own ``failures.jsonl`` stays as its index counts it.
    """
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        path = out / (REJECTED_FILE if (out / INDEX_FILE).exists() else FAILURES_FILE)
        atomic_write_text(path, "".join(json.dumps(f.to_record()) + "\n" for f in failures))
    return path


def _log_annotations(planned, inputs: Sequence[Annotations], classes: ClassSpec) -> None:
    """One line for the rows and classes, and one per set of columns the inputs do not use."""
    kinds = [job.rows.data["kind"] for job in planned.jobs]
    n_tp = sum(int((k == EVENT_TP).sum()) for k in kinds)
    n_fp = sum(k.size for k in kinds) - n_tp
    tp = ", ".join(str(item.path) for item in inputs if item.kind == EVENT_TP)
    fp = ", ".join(str(item.path) for item in inputs if item.kind == EVENT_FP)
    names = planned.class_names
    shown = ", ".join(names[:6]) + (f", ... {names[-1]}" if len(names) > 6 else "")
    log.info(
        f"annotations: {n_tp} TP rows from {tp}"
        + (f", {n_fp} FP rows from {fp}" if fp else "")
        + f"; {len(planned.failures)} rejected; {len(names)} classes ({classes.describe()}): {shown}"
    )
    by_columns: dict[tuple[str, ...], list[str]] = {}
    for table, columns in planned.ignored.items():
        by_columns.setdefault(tuple(columns), []).append(table)
    for columns, tables in by_columns.items():
        more = f" and {len(tables) - 1} more table(s)" if len(tables) > 2 else ""
        more = f" and {tables[1]}" if len(tables) == 2 else more
        log.info(f"ignoring column(s) {', '.join(columns)} of {tables[0]}{more} (not used by precompute)")


def run_windows(
    *,
    audio_dir: Path,
    out: Path | str,
    config: FeatureConfig,
    step: float,
    files: Path | None = None,
    stage: Path | None = None,
    **options,
) -> Summary:
    """Sliding windows every ``step`` seconds over unlabelled recordings -> a feature set.

    ``files`` lists the files to read (``precompute.plan.read_file_list``); None reads every
    audio file under ``audio_dir``, sub-folders included. ``out`` may be a URL (``run_features``).
    """
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    audio_dir = Path(os.path.abspath(audio_dir))
    out, options["remote_out"] = _output(out, stage)
    previous = _previous(out, config=config, kind=SET_WINDOWS, step=step)
    plan = plan_windows(audio_dir, config=config, step=step, files=files, previous=previous)
    source = {"audio_dir": str(audio_dir), "step": step}
    if files is not None:
        source["files"] = str(files)
    return run_plan(plan, out=out, config=config, kind=SET_WINDOWS, source=source, **options)


def _output(out: Path | str, stage: Path | None) -> tuple[Path, RemoteOutput | None]:
    """The local directory a run writes, and the URL it mirrors (after taking from it what
    earlier runs left there), when ``out`` is a URL."""
    target = RemoteOutput.of(out, stage=stage)
    if target is None:
        return remote.local_path(out), None
    target.stage.mkdir(parents=True, exist_ok=True)
    with output_lock(target.stage):
        target.pull()
    return target.stage, target


def _previous(out: Path, *, config: FeatureConfig, kind: str, step: float | None) -> dict[str, int] | None:
    """The shard of each recording in the last plan started in ``out``, if it had the same
    config, library versions, kind and step (``Prior.assignment``); else None: plan afresh."""
    setup = setup_key(config=config.to_dict(), versions=library_versions(), kind=kind, step=step)
    return read_prior(out).assignment(setup)
