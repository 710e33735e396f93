"""Running a plan: parallel shard jobs, progress, resume, failures, the index last.

Parallelism and progress live here and nowhere else: shard jobs go to joblib
(``return_as="generator_unordered"``) under one tqdm bar counting slices. Workers get
paths and configs, never open handles, and write their own shard, so the same code runs
on a cluster through joblib's Dask or Ray backend with the output on shared storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loader.console import log
from loader.errors import AudioError, ConfigError, LockedError
from loader.format import (
    FAILURES_FILE,
    INDEX_FILE,
    KIND_NONE,
    KIND_TP,
    LABEL_UNKNOWN,
    FeatureConfig,
    ShardEntry,
    atomic_write_text,
    sha256_file,
)
from precompute.audio import decode
from precompute.mel import log_mel
from precompute.plan import KIND_LABELLED, KIND_WINDOWS, RecordingTask, ShardJob, plan_manifests, plan_windows
from precompute.shards import TEMP_SUFFIX, Example, ShardStats, read_shard_summary, write_index, write_shard
from precompute.windows import event_arrays, place_window, sliding_starts, window_events

LOCK_FILE = ".lock"
BACKENDS = ("loky", "threading", "dask", "ray")
ON_ERROR = ("skip", "fail")


@dataclass
class ShardResult:
    entry: ShardEntry
    stats: ShardStats
    failures: list[dict]
    reused: bool = False


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


def _failure(
    recording_id: str, path: str | None, error: Exception | str, *, slices: int, line: int | None = None
) -> dict:
    name = type(error).__name__ if isinstance(error, Exception) else "AudioError"
    record = {"id": recording_id, "path": path, "error": name, "message": str(error), "slices": slices}
    if line is not None:
        record["line"] = line
    return record


# ---------------------------------------------------------------------------------------------
# The worker side: one job -> one shard file.


def build_shard(job: ShardJob, *, out: str, config: FeatureConfig, on_error: str) -> ShardResult:
    """Compute and write the shard of ``job``. Runs in a worker process.

    Numeric libraries run single-threaded here: parallelism is across shards (``--jobs``), and
    a BLAS pool per worker would oversubscribe the cores.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _build_shard(job, out=out, config=config, on_error=on_error)


def _build_shard(job: ShardJob, *, out: str, config: FeatureConfig, on_error: str) -> ShardResult:
    examples: list[Example] = []
    failures: list[dict] = []
    for task in job.recordings:
        try:
            examples += _recording_examples(
                task, job=job, config=config, on_error=on_error, failures=failures
            )
        except AudioError as err:
            if on_error == "fail":
                raise
            failures.append(_failure(task.recording_id, task.path, err, slices=task.n_windows))
    attrs = {"failures": json.dumps(failures), "kind": job.kind}
    entry, stats = write_shard(
        Path(out) / job.file, examples, config=config, fingerprint=job.fingerprint, attrs=attrs
    )
    return ShardResult(entry, stats, failures)


def _recording_examples(
    task: RecordingTask, *, job: ShardJob, config: FeatureConfig, on_error: str, failures: list[dict]
) -> list[Example]:
    if task.path is None:
        raise AudioError(task.locate_error or f"{task.recording_id}: audio file not found")
    y = decode(Path(task.path), sample_rate=config.sample_rate)
    seconds = y.size / config.sample_rate
    length = config.window_seconds
    if seconds + 1e-9 < length:
        raise AudioError(f"{task.path}: recording is {seconds:.3f} s, shorter than the {length:g} s window")
    n_samples = int(round(length * config.sample_rate))
    if job.kind == KIND_WINDOWS:
        examples = []
        for start in sliding_starts(seconds, length=length, step=job.step):
            mel, start = _window_mel(y, start, config=config, n_samples=n_samples)
            labels = np.full(config.n_classes, LABEL_UNKNOWN, dtype=np.int8)
            examples.append(Example(mel, labels, task.recording_id, start, anchor=NO_ANCHOR))
        return examples
    rows = job.recording_rows(task)
    events = event_arrays(rows)
    examples = []
    for row in rows:
        if row.t_max > seconds + 1e-6:
            err = AudioError(
                f"{row.where}: event ends at {row.t_max} s, beyond the end of {task.path} ({seconds:.3f} s)"
            )
            if on_error == "fail":
                raise err
            failures.append(_failure(task.recording_id, task.path, err, slices=1, line=row.line))
            continue
        start = place_window(row.t_min, row.t_max, length=length, recording_seconds=seconds)
        mel, start = _window_mel(y, start, config=config, n_samples=n_samples)
        labels, stored = window_events(events, start, config=config)
        anchor = {
            "species_id": row.species_id,
            "songtype_id": row.songtype_id,
            "t_min": row.t_min,
            "t_max": row.t_max,
            "f_min": row.f_min,
            "f_max": row.f_max,
            "kind": row.kind,
            "line": row.line,
        }
        examples.append(Example(mel, labels, task.recording_id, start, anchor=anchor, events=stored))
    return examples


# The anchor of a sliding window: no manifest row.
NO_ANCHOR = {
    "species_id": -1,
    "songtype_id": -1,
    "t_min": np.nan,
    "t_max": np.nan,
    "f_min": np.nan,
    "f_max": np.nan,
    "kind": KIND_NONE,
    "line": -1,
}


def _window_mel(
    y: np.ndarray, start: float, *, config: FeatureConfig, n_samples: int
) -> tuple[np.ndarray, float]:
    """Log-mel of the window starting at ``start`` seconds, and its start rounded to a sample."""
    first = min(int(round(start * config.sample_rate)), y.size - n_samples)
    return log_mel(y[first : first + n_samples], config=config), first / config.sample_rate


# ---------------------------------------------------------------------------------------------
# The driver side.


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run; released even when the process is killed."""
    fh = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise LockedError(
            f"{out}: another precompute run (pid {holder}) is writing here; wait for it or stop it"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _reusable(path: Path, job: ShardJob) -> ShardResult | None:
    if not path.is_file():
        return None
    try:
        fingerprint, n, stats, failures = read_shard_summary(path)
    except (OSError, KeyError, ValueError):
        return None
    if fingerprint != job.fingerprint:
        return None
    entry = ShardEntry(
        file=path.name, n=n, sha256=sha256_file(path), fingerprint=fingerprint, bytes=path.stat().st_size
    )
    return ShardResult(entry, stats, json.loads(failures), reused=True)


def _clean_strays(out: Path, keep: set[str]) -> None:
    for path in out.iterdir():
        stray_temp = path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)
        stale_shard = path.name.startswith("shard-") and path.suffix == ".h5" and path.name not in keep
        if stray_temp or stale_shard:
            path.unlink(missing_ok=True)


# The module each cluster backend imports, and the package that provides it.
_BACKEND_PACKAGES = {"dask": ("dask.distributed", "dask[distributed]"), "ray": ("ray.util.joblib", "ray")}


def check_backend(backend: str, *, scheduler: str | None = None) -> None:
    """Refuse an unknown backend, a cluster address without a cluster backend, a missing package.

    Called before planning, so a run fails in a second and not after reading a large manifest.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scheduler and backend not in _BACKEND_PACKAGES:
        raise ConfigError(f"--scheduler/--address {scheduler!r} needs --backend dask or ray, not {backend!r}")
    if backend in _BACKEND_PACKAGES:
        module, package = _BACKEND_PACKAGES[backend]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"backend {backend!r} needs {package}, which is not installed here: "
                f"pip install '{package}'  (the project's [{backend}] extra)"
            ) from None


@contextlib.contextmanager
def _backend(backend: str, *, jobs: int | None, tasks: int, scheduler: str | None) -> Iterator[int]:
    """Make ``backend`` joblib's current backend; yields the ``n_jobs`` to pass to ``Parallel``.

    ``jobs``: parallel shard jobs, None for every core of this machine (local backends) or
    of the cluster joined; never more than ``tasks``.
    """
    from joblib import parallel_config

    check_backend(backend, scheduler=scheduler)
    local = max(1, min(jobs or os.cpu_count() or 1, tasks))
    if backend == "dask":
        with _dask_client(scheduler, workers=local), parallel_config(backend="dask"):
            # joblib's dask backend runs on every worker thread of the cluster, whatever n_jobs says.
            yield -1
    elif backend == "ray":
        with _ray_cluster(scheduler, cpus=local) as cluster_cpus, parallel_config(backend=_RAY_BACKEND):
            yield max(1, min(jobs or cluster_cpus, tasks))
    else:
        with parallel_config(backend=backend, n_jobs=local):
            yield local


@contextlib.contextmanager
def _dask_client(scheduler: str | None, *, workers: int) -> Iterator[None]:
    """A Dask client, current in this context: joined to ``scheduler``, or to a ``LocalCluster``
    of ``workers`` single-threaded processes that is stopped on exit."""
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler is None:
        # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which turns off
        # glibc's adaptive thresholds: every large numpy temporary is then a fresh mmap, and a
        # shard takes twice the CPU (measured: 1.7 s against 0.8 s). Unset it for our own
        # workers, and undo the variables the nannies leave in this process's environment.
        environ = dict(os.environ)
        try:
            with (
                dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
                ) as cluster,
                Client(cluster),
            ):
                yield
        finally:
            for key in set(os.environ) - set(environ):
                del os.environ[key]
            os.environ.update(environ)
        return
    try:
        client = Client(scheduler)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({err})") from None
    with client:
        yield


@contextlib.contextmanager
def _ray_cluster(address: str | None, *, cpus: int) -> Iterator[int]:
    """Ray joined at ``address``, or started here with ``cpus`` CPUs; yields the cluster's CPUs.

    Ray is shut down on exit unless it was already running in this process.
    """
    import ray

    _register_streaming_ray()
    started = not ray.is_initialized()
    if started and address is None:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    elif started:
        try:
            ray.init(address=address)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--address {address}: cannot join a Ray cluster there ({err})") from None
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()


_RAY_BACKEND = "melshards-ray"


def _register_streaming_ray() -> None:
    """Register Ray's joblib backend, declaring that it can stream results.

    joblib refuses ``return_as="generator_unordered"`` for backends built on
    ``multiprocessing.Pool``, because the standard library pool's callback thread can
    deadlock; Ray's joblib backend inherits that refusal, although its pool is a pool of Ray
    actors with its own result thread. Streaming is what lets the progress bar count finished
    slices, so this subclass declares it (tested: results arrive as shards finish, and a
    worker's exception stops the run).
    """
    from joblib import register_parallel_backend
    from ray.util.joblib.ray_backend import RayBackend

    class StreamingRayBackend(RayBackend):
        supports_return_generator = True

    register_parallel_backend(_RAY_BACKEND, StreamingRayBackend)


def execute(
    jobs_planned: list[ShardJob],
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
    extra_index: dict | None = None,
) -> Summary:
    """Build every shard of the plan that is missing or stale, then write the index.

    Parameters
    ----------
    jobs_planned : the plan (``plan_labelled`` / ``plan_windows``), one job per shard
    out : feature set directory; with a cluster backend it must be on storage that every
        worker sees at the same path, as must the audio
    jobs : parallel shard jobs; None for every core (local backends) or every worker (a
        cluster joined with ``scheduler``)
    backend : ``loky``, ``threading``, ``dask`` or ``ray`` (see ``_backend``)
    scheduler : address of a running Dask scheduler or Ray cluster; None starts a local one
    on_error : ``skip`` records failures and goes on, ``fail`` stops at the first

    Every backend runs the same ``build_shard`` per job and writes the same bytes; the driver
    only receives each shard's ``ShardResult`` (entry, statistics, failures).
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    check_backend(backend, scheduler=scheduler)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out=out)
    with output_lock(out):
        _clean_strays(out, keep={job.file for job in jobs_planned})
        results: list[ShardResult] = []
        todo: list[ShardJob] = []
        for job in jobs_planned:
            reused = _reusable(out / job.file, job)
            if reused is None:
                todo.append(job)
            else:
                results.append(reused)
        if todo:
            # From here on the directory changes: no reader may trust the old index.
            (out / INDEX_FILE).unlink(missing_ok=True)
        total = sum(job.n_windows for job in todo)
        planned = sum(job.n_windows for job in jobs_planned)
        recordings = len({task.recording_id for job in jobs_planned for task in job.recordings})
        local = backend in ("loky", "threading") and scheduler is None
        workers = min(jobs if jobs and jobs > 0 else (os.cpu_count() or 1), len(todo))
        log.info(
            f"{planned} slices from {recordings} recordings in {len(jobs_planned)} shards: "
            f"{len(results)} up to date, {len(todo)} to build"
            + (
                (f" with {workers} {backend} worker(s)" if local else f" on the {backend} cluster")
                if todo
                else ""
            )
        )
        with tqdm(total=total, unit="slice", desc=f"features -> {out.name}", disable=not progress) as bar:
            if todo:
                n_jobs = jobs if jobs and jobs > 0 else None
                with _backend(backend, jobs=n_jobs, tasks=len(todo), scheduler=scheduler) as parallel_jobs:
                    # One task is one shard (no automatic batching), and no argument is
                    # memory-mapped: a worker on another machine cannot see this one's /dev/shm.
                    run = Parallel(
                        n_jobs=parallel_jobs, return_as="generator_unordered", batch_size=1, max_nbytes=None
                    )
                    # Workers may run elsewhere, with another working directory.
                    where = os.path.abspath(out)
                    for result in run(
                        delayed(build_shard)(job, out=where, config=config, on_error=on_error) for job in todo
                    ):
                        results.append(result)
                        summary.slices_built += result.entry.n
                        bar.update(result.entry.n + sum(f.get("slices", 1) for f in result.failures))
        results.sort(key=lambda r: r.entry.file)
        failures = list(prior_failures or [])
        stats = ShardStats.empty(config.n_mels)
        for result in results:
            failures += result.failures
            stats.merge(result.stats)
        entries = [r.entry for r in results if r.entry.n > 0]
        atomic_write_text(out / FAILURES_FILE, "".join(json.dumps(f) + "\n" for f in failures))
        write_index(
            out,
            config=config,
            entries=entries,
            stats=stats,
            failures=len(failures),
            kind=kind,
            extra=extra_index,
        )
    summary.examples = sum(e.n for e in entries)
    summary.shards = len(entries)
    summary.shards_built = sum(not r.reused for r in results)
    summary.shards_reused = sum(r.reused for r in results)
    summary.bytes = sum(e.bytes for e in entries)
    summary.failures = failures
    summary.seconds = time.perf_counter() - started
    return summary


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
    """Labelled slices (one window per TP and FP row) -> a feature set in ``out``."""
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    # Absolute, because the workers may run on other machines (with the same mounts).
    audio_dir, out = Path(os.path.abspath(audio_dir)), Path(out)
    if not audio_dir.is_dir():
        raise ConfigError(f"{audio_dir}: audio directory not found")
    jobs, row_failures = plan_manifests(tp, fp, audio_dir=audio_dir, config=config, on_error=on_error)
    n_rows = sum(len(job.rows) for job in jobs)
    n_tp = sum(int((job.rows.data["kind"] == KIND_TP).sum()) for job in jobs)
    log.info(
        f"manifests: {n_tp} TP rows from {tp}"
        + (f", {n_rows - n_tp} FP rows from {fp}" if fp is not None else "")
        + f"; {len(row_failures)} rejected"
    )
    manifests = {"tp": str(tp), "fp": None if fp is None else str(fp), "audio_dir": str(audio_dir)}
    return execute(
        jobs,
        out=out,
        config=config,
        kind=KIND_LABELLED,
        on_error=on_error,
        prior_failures=[f.to_record() for f in row_failures],
        extra_index={"source": manifests},
        **options,
    )


def run_windows(*, audio_dir: Path, out: Path, config: FeatureConfig, step: float, **options) -> Summary:
    """Sliding windows every ``step`` seconds over unlabelled recordings -> a feature set."""
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    audio_dir, out = Path(os.path.abspath(audio_dir)), Path(out)
    jobs = plan_windows(audio_dir, config=config, step=step)
    return execute(
        jobs,
        out=out,
        config=config,
        kind=KIND_WINDOWS,
        extra_index={"source": {"audio_dir": str(audio_dir), "step": step}},
        **options,
    )
