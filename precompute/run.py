"""The driver of a precompute run: lock, resume, parallel shard jobs, failures, the index last.

``run_features`` (labelled slices) and ``run_windows`` (sliding windows) plan a run
(``precompute.plan``) and hand it to ``run_plan``, which holds the output lock
(``precompute.lock``), reuses what earlier runs finished (``precompute.resume``), builds the
rest and writes ``failures.jsonl`` and, last, the index; with a URL for ``out`` the stage
directory is mirrored there (``precompute.publish``); its ``Summary`` (``precompute.summary``)
says what it did.

Parallelism and progress live here and nowhere else: shard jobs (``precompute.job``) go to
joblib (``return_as="generator_unordered"``, on the backend ``precompute.backends`` sets up)
under one tqdm bar counting slices. The index is written last, so a reader never trusts a
directory in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from commandline.console import log
from melshards import codec
from melshards.config import FeatureConfig
from melshards.errors import ConfigError
from melshards.files import atomic_write_text
from melshards.index import Index, write_index
from melshards.names import EVENT_FP, FAILURES_FILE, INDEX_FILE, SET_LABELLED, SET_WINDOWS
from melshards.shard import ShardStats
from precompute.annotation_report import annotation_source, log_annotations, write_rejected
from precompute.backends import LOCAL_BACKENDS, check_backend, joblib_backend
from precompute.errors import ManifestError, NoValidRows
from precompute.inputs.annotations import Annotations
from precompute.inputs.classes import ClassSpec
from precompute.job import ON_ERROR, build_shard
from precompute.lock import output_lock
from precompute.plan import ShardJob, library_versions, plan_annotations, plan_windows
from precompute.publish import RemoteOutput, local_output
from precompute.resume import (
    Prior,
    check_kind,
    clean_strays,
    explain_rebuilds,
    previous_assignment,
    read_prior,
    record_built,
    reuse_or_rebuild,
    start_record,
)
from precompute.sample_rates import band_limit_warning, native_rates
from precompute.shard_result import ShardResult
from precompute.summary import Summary


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
        prior, results, todo = _resume(out, plan, kind=kind, overwrite=overwrite, remote_out=remote_out)
        _log_plan(plan, reused=len(results), todo=todo, jobs=jobs, backend=backend, scheduler=scheduler)
        if (warning := band_limit_warning(native_rates(todo), config=config)) is not None:
            log.warning(warning)
        rebuilt = explain_rebuilds(todo, prior)
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


def _resume(
    out: Path, plan: list[ShardJob], *, kind: str, overwrite: bool, remote_out: RemoteOutput | None
) -> tuple[Prior, list[ShardResult], list[ShardJob]]:
    """What earlier runs left in ``out``, the results of the shards reused, and the jobs to run;
    strays deleted and the new plan recorded (``precompute.resume``). Called under the lock."""
    check_kind(out, kind, overwrite=overwrite)
    prior = read_prior(out)
    clean_strays(out, keep={job.file for job in plan})
    results, todo = reuse_or_rebuild(out, plan, prior.built)
    _start_record(out, plan, results, changing=bool(todo), remote_out=remote_out)
    return prior, results, todo


def _start_record(
    out: Path,
    plan: list[ShardJob],
    results: list[ShardResult],
    *,
    changing: bool,
    remote_out: RemoteOutput | None,
) -> None:
    """Record the plan and the shards reused (``precompute.resume.start_record``). When shards
    are about to change, the index goes first: no reader may trust the directory (or URL)
    meanwhile."""
    start_record(out, plan, [r.entry for r in results])
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
    if not todo:  # nothing to build: no bar
        return results
    total = sum(job.n_windows for job in todo)
    with tqdm(total=total, unit="slice", desc=f"features -> {out.name}", disable=not progress) as bar:
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
                record_built(out, result.entry)
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
    annotations : more inputs, of any format (``precompute.inputs.annotations.Annotations``)
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
    inputs = _labelled_inputs(tp, fp, annotations)
    out, options["remote_out"] = local_output(out, stage)
    classes = ClassSpec(count=config.n_classes) if classes is None else classes
    try:
        planned = plan_annotations(
            inputs,
            audio_dir=audio_dir,
            config=config,
            classes=classes,
            on_error=on_error,
            previous=lambda final: previous_assignment(out, config=final, kind=SET_LABELLED, step=None),
        )
    except NoValidRows as err:
        written = write_rejected(out, err.failures)
        raise ManifestError(f"{err} (every rejected row in {written})") from None
    log_annotations(planned, inputs, classes)
    source = {
        "tp": None if tp is None else str(tp),
        "fp": None if fp is None else str(fp),
        "audio_dir": str(audio_dir),
        **annotation_source(inputs, classes, ignored=planned.ignored),
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


def _labelled_inputs(
    tp: Path | None, fp: Path | None, annotations: Sequence[Annotations]
) -> list[Annotations]:
    """The annotation inputs of a labelled run, in reading order: ``tp``, ``fp``, then the others."""
    inputs = [Annotations("rfcx", tp)] if tp is not None else []
    inputs += [Annotations("rfcx", fp, kind=EVENT_FP)] if fp is not None else []
    inputs += list(annotations)
    if not inputs:
        raise ConfigError("no annotations to precompute: give --tp, --raven, --clips or --class-folders")
    return inputs


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

    ``files`` lists the files to read (``precompute.inputs.audio_files.read_file_list``); None reads every
    audio file under ``audio_dir``, sub-folders included. ``out`` may be a URL (``run_features``).
    """
    check_backend(options.get("backend", "loky"), scheduler=options.get("scheduler"))
    audio_dir = Path(os.path.abspath(audio_dir))
    out, options["remote_out"] = local_output(out, stage)
    previous = previous_assignment(out, config=config, kind=SET_WINDOWS, step=step)
    plan = plan_windows(audio_dir, config=config, step=step, files=files, previous=previous)
    source = {"audio_dir": str(audio_dir), "step": step}
    if files is not None:
        source["files"] = str(files)
    return run_plan(plan, out=out, config=config, kind=SET_WINDOWS, source=source, **options)
