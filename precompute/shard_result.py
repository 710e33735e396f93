"""What a shard job reports back to the driver: ``ShardResult`` and the failure records it carries.

A shard built by a worker (``precompute.job``) and a finished shard reused by a resumed run
(``precompute.resume``) come back alike, so the driver (``precompute.run``) merges them the
same way. Each failure is one line of ``failures.jsonl`` (``failure_record``).
"""

from __future__ import annotations

from dataclasses import dataclass

from melshards.index import ShardEntry
from melshards.shard import ShardStats


@dataclass
class ShardResult:
    """What the driver learns of a finished (or reused) shard."""

    entry: ShardEntry
    stats: ShardStats
    failures: list[dict]
    reused: bool = False


def failure_record(
    recording_id: str, path: str | None, error: Exception | str, *, slices: int, line: int | None = None
) -> dict:
    """One line of ``failures.jsonl``: what was skipped, where, and why."""
    name = type(error).__name__ if isinstance(error, Exception) else "AudioError"
    record = {"id": recording_id, "path": path, "error": name, "message": str(error), "slices": slices}
    if line is not None:
        record["line"] = line
    return record
