"""Writing a feature set to a URL (``precompute features --out s3://bucket/prefix``).

A run builds its shards in a local stage directory exactly as it builds a local set (the same
lock, plan, resume and checks; ``local_output`` gives a run its directory), and the URL
mirrors that directory:

1. ``pull``: before planning, the stage takes what the URL already holds of earlier runs (the
   index, ``.built.jsonl``, and every finished shard the stage lacks, each checked against the
   sha256 recorded when it was built), so a run resumed on another machine reuses what is
   there and checks out; then it writes ``.built.jsonl`` back, so a bucket that is missing or
   refuses writes stops the run before it records a plan;
2. ``unpublish``: before the first shard changes, the URL's index is deleted, so no reader
   trusts the URL in the middle of a run;
3. each shard is uploaded by the worker that built it (a Dask or Ray worker on another
   machine included), then recorded in ``.built.jsonl``, which is uploaded after each shard; a
   shard reused from the stage is uploaded again unless the URL holds its very bytes
   (``upload_missing``: the size, then the hash);
4. ``publish``: at the end, shards no longer in the plan are deleted, then ``failures.jsonl``
   and, last, ``index.json`` are uploaded.

Object stores make an object visible only when its upload completes, so a kill at any moment
leaves the URL without an index (readers refuse it) or with the previous complete one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from commandline.console import log
from melshards import remote, shard_cache
from melshards.errors import IntegrityError
from melshards.files import write_file_atomic
from melshards.names import BUILT_FILE, FAILURES_FILE, INDEX_FILE, SHARD_PREFIX, SHARD_SUFFIX
from precompute.lock import output_lock
from precompute.resume import read_prior

STAGE_FOLDER = "out"  # under the cache directory: the default stage of each URL written to


@dataclass(frozen=True)
class RemoteOutput:
    """A feature set written to ``url`` through the local directory ``stage``."""

    url: str
    stage: Path

    @classmethod
    def of(cls, out: str | os.PathLike, *, stage: str | os.PathLike | None = None) -> RemoteOutput | None:
        """The remote output for ``out`` when it is a URL, else None (a local directory).

        ``stage`` defaults to ``<cache>/out/<set name>`` (``melshards.shard_cache``)."""
        if not remote.is_url(out):
            return None
        url = str(out).rstrip("/")
        remote.check_writable(url)
        remote.filesystem(url)  # a missing backend package is one line now, not after planning
        if stage is None:
            stage = shard_cache.default_cache_dir() / STAGE_FOLDER / remote.set_name(url)
        return cls(url, Path(stage))

    @property
    def shown(self) -> str:
        return remote.redact(self.url)

    def at(self, name: str) -> str:
        return remote.join(self.url, name)

    def pull(self) -> int:
        """Bring into the stage what the URL holds of earlier runs; the number of shards
        downloaded. A shard whose bytes disagree with its record is left out (rebuilt)."""
        self.stage.mkdir(parents=True, exist_ok=True)
        names = set(remote.list_names(self.url))
        for name in (INDEX_FILE, BUILT_FILE):
            if name in names:
                write_file_atomic(self.stage / name, remote.read_bytes(self.at(name)))
        # A bucket that is missing or refuses writes fails here, before a plan is recorded.
        record = self.stage / BUILT_FILE
        remote.write_bytes(self.at(BUILT_FILE), record.read_bytes() if record.is_file() else b"")
        fetched = 0
        for file, entry in sorted(read_prior(self.stage).built.items()):
            local = self.stage / file
            if file not in names or (local.is_file() and local.stat().st_size == entry.bytes):
                continue
            try:
                shard_cache.download(self.at(file), local, sha256=entry.sha256, size=entry.bytes)
                fetched += 1
            except IntegrityError:
                log.warning(
                    f"{remote.redact(self.at(file))}: not the bytes recorded when it was built; building it again"
                )
        if fetched:
            log.info(f"took {fetched} finished shard(s) from {self.shown}")
        return fetched

    def unpublish(self) -> None:
        """Delete the URL's index: from here on its shards change."""
        remote.remove(self.at(INDEX_FILE))

    def upload_missing(self, files: list[str], sizes: list[int]) -> None:
        """Upload the stage's shards ``files`` (checked against their recorded sha256 when
        they were reused) that the URL lacks or holds with other bytes: another size than
        ``sizes``, or another hash (``remote.holds``)."""
        for file, size in zip(files, sizes, strict=True):
            local, url = self.stage / file, self.at(file)
            if local.stat().st_size == size and remote.holds(url, local):
                continue
            if remote.size_of(url) is not None:
                log.warning(f"{remote.redact(url)}: not the bytes of the shard built; uploading it again")
            remote.upload(local, url)

    def record(self) -> None:
        """Upload ``.built.jsonl``: what a run resumed elsewhere may reuse."""
        remote.upload(self.stage / BUILT_FILE, self.at(BUILT_FILE))

    def publish(self, keep: set[str]) -> None:
        """Delete the URL's shards not in ``keep`` (its index first), upload the failures, then
        the index, last."""
        names = remote.list_names(self.url)
        stale = [
            n for n in names if n.startswith(SHARD_PREFIX) and n.endswith(SHARD_SUFFIX) and n not in keep
        ]
        if stale:
            self.unpublish()
        for name in stale:
            remote.remove(self.at(name))
        self.record()
        remote.upload(self.stage / FAILURES_FILE, self.at(FAILURES_FILE))
        remote.upload(self.stage / INDEX_FILE, self.at(INDEX_FILE))


def upload_shard(stage: str, file: str, url: str) -> None:
    """Upload a shard a worker just wrote (``precompute.job.build_shard``)."""
    remote.upload(Path(stage) / file, remote.join(url, file))


def local_output(out: Path | str, stage: Path | None) -> tuple[Path, RemoteOutput | None]:
    """The local directory a run writes, and the URL it mirrors when ``out`` is a URL (its
    stage, after taking from the URL what earlier runs left there, ``RemoteOutput.pull``)."""
    target = RemoteOutput.of(out, stage=stage)
    if target is None:
        return remote.local_path(out), None
    target.stage.mkdir(parents=True, exist_ok=True)
    with output_lock(target.stage):
        target.pull()
    log.info(
        f"staging the shards of {target.shown} in {target.stage} (a copy of each, kept to resume; "
        f"--stage or ${shard_cache.CACHE_ENV} moves it, and it may be deleted once the run is done)"
    )
    return target.stage, target
