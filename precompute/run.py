"""The driver of a precompute run: lock, resume, parallel shard jobs, failures, the index last.

Parallelism and progress live here and nowhere else: shard jobs (``precompute.job``) go to
joblib (``return_as="generator_unordered"``, on the backend ``precompute.backends`` sets up)
under one tqdm bar counting slices. A finished shard whose job fingerprint matches the plan
is reused; anything else is rebuilt. The index is written last, so a reader never trusts a
directory in the middle of a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from melshards import codec
from melshards.config import FeatureConfig
from melshards.console import log
from melshards.errors import ConfigError, FormatError, LockedError
from melshards.files import append_line, atomic_write_text, sha256_file
from melshards.index import Index, ShardEntry, read_index, write_index
from melshards.names import (
    BUILT_FILE,
    EVENT_TP,
    FAILURES_FILE,
    INDEX_FILE,
    LOCK_FILE,
    SET_LABELLED,
    SET_WINDOWS,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    TEMP_SUFFIX,
)
from melshards.shard import ShardStats, read_shard_summary, regular_file_problem
from precompute.backends import LOCAL_BACKENDS, check_backend, joblib_backend
from precompute.job import ON_ERROR, ShardResult, build_shard
from precompute.plan import ShardJob, library_versions, plan_manifests, plan_windows


@dataclass
class Summary:
    """What a run did; printed by the CLI."""

    out: Path
    examples: int = 0
    shards: int = 0
    shards_built: int = 0
    shards_reused: int = 0
    bytes: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    slices_built: int = 0

    @property
    def rate(self) -> float:
        return self.slices_built / self.seconds if self.seconds > 0 else 0.0

    @property
    def failures_path(self) -> Path:
        return self.out / FAILURES_FILE

    def line(self) -> str:
        """The one-line summary the command prints at the end."""
        reused = f", {self.shards_reused} reused" if self.shards_reused else ""
        rate = f", {self.rate:.1f} slices/s" if self.slices_built else ""
        failures = (
            f"{len(self.failures)} failure(s) recorded in {self.failures_path}"
            if self.failures
            else "0 failures"
        )
        what = f"{self.examples} examples in {self.shards} shards ({self.bytes / 1e6:.1f} MB"
        if not self.shards_built:
            return f"{self.out} is up to date: {what}, {self.shards_reused} reused); {failures}"
        return (
            f"wrote {what}; {self.shards_built} built{reused}) to {self.out} in {self.seconds:.1f} s"
            f"{rate}; {failures}"
        )


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


def _recorded_entries(out: Path) -> dict[str, ShardEntry]:
    """What earlier runs recorded of the shards they finished: the index's entries, then ``BUILT_FILE``'s.

    A line cut short by a crash, or an index of another version, records nothing.
    """
    records: dict[str, ShardEntry] = {}
    with contextlib.suppress(FormatError):
        records.update((entry.file, entry) for entry in read_index(out).shards)
    path = out / BUILT_FILE
    if regular_file_problem(path) is None:
        for k, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            try:
                entry = ShardEntry.from_dict(json.loads(line), source=f"{path} line {k + 1}")
            except (ValueError, FormatError):
                continue
            records[entry.file] = entry
    return records


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
    return ShardResult(record, summary.stats, summary.failures, reused=True)


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
        _clean_strays(out, keep={job.file for job in plan})
        results, todo = _reuse_or_rebuild(out, plan)
        # The record keeps what is reused; each shard built from here on is added as it finishes.
        atomic_write_text(out / BUILT_FILE, "".join(json.dumps(r.entry.to_dict()) + "\n" for r in results))
        if todo:
            # From here on the directory changes: no reader may trust the old index.
            (out / INDEX_FILE).unlink(missing_ok=True)
        _log_plan(plan, reused=len(results), todo=todo, jobs=jobs, backend=backend, scheduler=scheduler)
        results += _build_shards(
            todo,
            out=out,
            config=config,
            on_error=on_error,
            jobs=jobs,
            backend=backend,
            scheduler=scheduler,
            progress=progress,
        )
        results.sort(key=lambda r: r.entry.file)
        failures = list(prior_failures or []) + [f for r in results for f in r.failures]
        index = _write_failures_and_index(out, results, failures, config=config, kind=kind, source=source)
    built = [r for r in results if not r.reused]
    return Summary(
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
    out: Path, results: list[ShardResult], failures: list[dict], *, config: FeatureConfig, kind: str, source
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
    )
    write_index(out, index)
    return index


def _reuse_or_rebuild(out: Path, plan: list[ShardJob]) -> tuple[list[ShardResult], list[ShardJob]]:
    """The results of the finished shards the plan would write again, and the jobs left to run."""
    results: list[ShardResult] = []
    todo: list[ShardJob] = []
    records = _recorded_entries(out)
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
) -> list[ShardResult]:
    """Run the jobs ``todo`` on ``backend``, one tqdm bar counting slices; results as they finish."""
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
            for result in parallel(
                delayed(build_shard)(job, out=where, config=config, on_error=on_error) for job in todo
            ):
                append_line(out / BUILT_FILE, json.dumps(result.entry.to_dict()))
                results.append(result)
                bar.update(result.entry.n + sum(f.get("slices", 1) for f in result.failures))
    return results


def run_features(
    *,
    audio_dir: Path,
    tp: Path,
    fp: Path | None,
    out: Path,
    config: FeatureConfig,
    on_error: str = "skip",
    **options,
) -> Summary:
    """Labelled slices (one window per TP and FP row) -> a feature set in ``out``.

    ``options`` are ``run_plan``'s: ``jobs``, ``backend``, ``scheduler``, ``progress``.
    """
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    # Absolute, because the workers may run on other machines (with the same mounts).
    audio_dir, out = Path(os.path.abspath(audio_dir)), Path(out)
    if not audio_dir.is_dir():
        raise ConfigError(f"{audio_dir}: audio directory not found")
    plan, row_failures = plan_manifests(tp, fp, audio_dir=audio_dir, config=config, on_error=on_error)
    n_rows = sum(len(job.rows) for job in plan)
    n_tp = sum(int((job.rows.data["kind"] == EVENT_TP).sum()) for job in plan)
    log.info(
        f"manifests: {n_tp} TP rows from {tp}"
        + (f", {n_rows - n_tp} FP rows from {fp}" if fp is not None else "")
        + f"; {len(row_failures)} rejected"
    )
    manifests = {"tp": str(tp), "fp": None if fp is None else str(fp), "audio_dir": str(audio_dir)}
    return run_plan(
        plan,
        out=out,
        config=config,
        kind=SET_LABELLED,
        on_error=on_error,
        prior_failures=[f.to_record() for f in row_failures],
        source=manifests,
        **options,
    )


def run_windows(*, audio_dir: Path, out: Path, config: FeatureConfig, step: float, **options) -> Summary:
    """Sliding windows every ``step`` seconds over unlabelled recordings -> a feature set."""
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    audio_dir, out = Path(os.path.abspath(audio_dir)), Path(out)
    plan = plan_windows(audio_dir, config=config, step=step)
    return run_plan(
        plan,
        out=out,
        config=config,
        kind=SET_WINDOWS,
        source={"audio_dir": str(audio_dir), "step": step},
        **options,
    )
