"""Resuming a run: what earlier runs left in an output directory, and what can be reused.

Every run records in ``BUILT_FILE`` (``.built.jsonl``) the plan it starts (one line per
shard: recordings, fingerprint, per-recording digests) and then each shard as it finishes, so
a run killed at any moment, or one over grown data, knows what it may keep:

- ``read_prior`` reads that record (and the index, for a directory copied without it);
- ``previous_assignment`` keeps each recording in the shard it was in, when the setup is the same;
- ``reuse_or_rebuild`` reuses a finished shard whose fingerprint and bytes match the plan;
- ``rebuild_reason`` says why any other shard is built (``REASONS``), for the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from commandline.console import log
from melshards.config import FeatureConfig
from melshards.errors import ConfigError, FormatError
from melshards.files import append_line, atomic_write_text, sha256_file
from melshards.index import Index, ShardEntry, read_index
from melshards.names import (
    BUILT_FILE,
    INDEX_FILE,
    SET_WINDOWS,
    SHARD_PATTERN,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    TEMP_SUFFIX,
)
from melshards.shard import read_shard_summary
from melshards.shard_open import regular_file_problem
from precompute.plan import ShardJob, library_versions, setup_key
from precompute.shard_result import ShardResult

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
class Rebuilt:
    """A shard a run built, and why: one of ``REASONS``, and the recordings it concerns."""

    file: str
    why: str
    recordings: tuple[str, ...] = ()


def named_recordings(recordings: tuple[str, ...], *, limit: int = 3) -> str:
    """`` (a b c +2 more)``: the first ``limit`` of ``recordings``; empty for none."""
    if not recordings:
        return ""
    more = f" +{len(recordings) - limit} more" if len(recordings) > limit else ""
    return f" ({' '.join(recordings[:limit])}{more})"


# -- what earlier runs left: finished shards, the last plan ---------------------------------------


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
        """Nothing finished is recorded, nor an index of another version: a run here builds
        every shard, as a first run does (an earlier run that stopped before finishing a
        shard, such as one that could not write its output, leaves only its plan)."""
        return not self.built and (self.setup is None or bool(self.planned))

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


def previous_assignment(
    out: Path, *, config: FeatureConfig, kind: str, step: float | None
) -> dict[str, int] | None:
    """The shard of each recording in the last plan started in ``out``, if it had the same
    config, library versions, kind and step (``Prior.assignment``); else None: plan afresh."""
    setup = setup_key(config=config.to_dict(), versions=library_versions(), kind=kind, step=step)
    return read_prior(out).assignment(setup)


# -- the record a run keeps as it goes -------------------------------------------------------------


def start_record(out: Path, plan: list[ShardJob], reused: list[ShardEntry]) -> None:
    """Write ``BUILT_FILE`` anew: the plan (so that a resumed run plans the same shards) and the
    shards reused; each shard built from here on is added as it finishes (``record_built``)."""
    atomic_write_text(
        out / BUILT_FILE,
        "".join(_plan_line(job) + "\n" for job in plan)
        + "".join(json.dumps(entry.to_dict()) + "\n" for entry in reused),
    )


def record_built(out: Path, entry: ShardEntry) -> None:
    """Add a shard just finished to ``BUILT_FILE``: a run killed from here on reuses it."""
    append_line(out / BUILT_FILE, json.dumps(entry.to_dict()))


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


# -- what to reuse, what to build, and why ---------------------------------------------------------


def rebuild_reason(job: ShardJob, prior: Prior) -> tuple[str, tuple[str, ...]]:
    """Why ``job``'s shard must be built: one of ``REASONS``, and the recordings it concerns."""
    if prior.empty:
        return NEW, job.recording_ids
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


def explain_rebuilds(todo: list[ShardJob], prior: Prior) -> list[Rebuilt]:
    """Why each job of ``todo`` runs, logged: a line per shard when there are a few, else only
    at debug level (a first run, a new config)."""
    rebuilt = [Rebuilt(job.file, *rebuild_reason(job, prior)) for job in todo]
    detail = log.info if not prior.empty and len(rebuilt) <= 10 else log.debug
    for item in rebuilt:
        detail(f"  {item.file}: {item.why}{named_recordings(item.recordings, limit=20)}")
    return rebuilt


def reuse_or_rebuild(
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


# -- the directory itself: its kind, files no plan names ------------------------------------------


def check_kind(out: Path, kind: str, *, overwrite: bool) -> None:
    """ConfigError when ``out`` holds a feature set of another kind and ``overwrite`` is not set."""
    existing = _existing_kind(out)
    if existing not in (None, kind) and not overwrite:
        raise ConfigError(
            f"{out}: holds a {existing} feature set; writing {kind} features there would replace "
            "it (pass --overwrite, or choose another --out)"
        )


def _existing_kind(out: Path) -> str | None:
    """The kind of feature set ``out`` holds (from its index, else from a shard), or None."""
    try:
        return str(json.loads((out / INDEX_FILE).read_text(encoding="utf-8")).get("kind")) or None
    except (OSError, ValueError, AttributeError, RecursionError):  # a hostile index tells nothing
        pass
    for path in sorted(out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")):
        try:
            return read_shard_summary(path).kind or None
        except (OSError, KeyError, ValueError):
            continue
    return None


def clean_strays(out: Path, keep: set[str]) -> None:
    """Delete what no run will finish: temp files of killed writers, shards not in ``keep``."""
    for path in out.iterdir():
        stray_temp = path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)
        stale_shard = (
            path.name.startswith(SHARD_PREFIX) and path.suffix == SHARD_SUFFIX and path.name not in keep
        )
        if stray_temp or stale_shard:
            path.unlink(missing_ok=True)
