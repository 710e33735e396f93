"""What a precompute run did: ``Summary``, the line the command prints at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from melshards.names import FAILURES_FILE
from precompute.resume import REASONS, Rebuilt, named_recordings


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
                named = named_recordings(tuple(r for item in items for r in item.recordings))
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
