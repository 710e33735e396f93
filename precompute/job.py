"""One shard job, run in a worker: decode each recording once, cut its windows, write the shard.

A job gets paths and a config, never open handles, and writes its own shard file, so it runs
the same in a local process pool or on a cluster worker with the output on shared storage.
The driver receives only a ``ShardResult`` (index entry, statistics, failures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melshards.config import FeatureConfig
from melshards.errors import AudioError
from melshards.index import ShardEntry
from melshards.names import EVENT_NONE, LABEL_UNKNOWN, SET_WINDOWS
from melshards.shard import ShardExample, ShardStats, write_shard
from precompute.audio import decode
from precompute.mel import log_mel
from precompute.plan import RecordingTask, ShardJob
from precompute.windows import event_arrays, place_window, sliding_starts, window_events

ON_ERROR = ("skip", "fail")

# The anchor of a sliding window: no manifest row.
NO_ANCHOR = {
    "species_id": -1,
    "songtype_id": -1,
    "t_min": np.nan,
    "t_max": np.nan,
    "f_min": np.nan,
    "f_max": np.nan,
    "kind": EVENT_NONE,
    "line": -1,
}


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


def build_shard(job: ShardJob, *, out: str, config: FeatureConfig, on_error: str) -> ShardResult:
    """Compute and write the shard of ``job`` into directory ``out``. Runs in a worker process.

    Numeric libraries run single-threaded here: parallelism is across shards (``--jobs``), and
    a BLAS pool per worker would oversubscribe the cores.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _build_shard(job, out=out, config=config, on_error=on_error)


def _build_shard(job: ShardJob, *, out: str, config: FeatureConfig, on_error: str) -> ShardResult:
    examples: list[ShardExample] = []
    failures: list[dict] = []
    for task in job.recordings:
        try:
            examples += _recording_examples(
                task, job=job, config=config, on_error=on_error, failures=failures
            )
        except MemoryError:
            # A file whose decoded size is beyond this worker costs that recording, not the run.
            err = AudioError(f"{task.path}: out of memory while decoding or computing its features")
            if on_error == "fail":
                raise err from None
            failures.append(failure_record(task.recording_id, task.path, err, slices=task.n_windows))
        except AudioError as err:
            if on_error == "fail":
                raise
            failures.append(failure_record(task.recording_id, task.path, err, slices=task.n_windows))
    entry, stats = write_shard(
        Path(out) / job.file,
        examples,
        config=config,
        fingerprint=job.fingerprint,
        kind=job.kind,
        failures=failures,
    )
    return ShardResult(entry, stats, failures)


def _recording_examples(
    task: RecordingTask, *, job: ShardJob, config: FeatureConfig, on_error: str, failures: list[dict]
) -> list[ShardExample]:
    if task.path is None:
        raise AudioError(task.locate_error or f"{task.recording_id}: audio file not found")
    y = decode(Path(task.path), sample_rate=config.sample_rate)
    seconds = y.size / config.sample_rate
    length = config.window_seconds
    if seconds + 1e-9 < length:
        raise AudioError(f"{task.path}: recording is {seconds:.3f} s, shorter than the {length:g} s window")
    n_samples = int(round(length * config.sample_rate))
    if job.kind == SET_WINDOWS:
        examples = []
        for start in sliding_starts(seconds, length=length, step=job.step):
            mel, start = _window_mel(y, start, config=config, n_samples=n_samples, path=task.path)
            labels = np.full(config.n_classes, LABEL_UNKNOWN, dtype=np.int8)
            examples.append(ShardExample(mel, labels, task.recording_id, start, anchor=NO_ANCHOR))
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
            failures.append(failure_record(task.recording_id, task.path, err, slices=1, line=row.line))
            continue
        start = place_window(row.t_min, row.t_max, length=length, recording_seconds=seconds)
        mel, start = _window_mel(y, start, config=config, n_samples=n_samples, path=task.path)
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
        examples.append(ShardExample(mel, labels, task.recording_id, start, anchor=anchor, events=stored))
    return examples


def _window_mel(
    y: np.ndarray, start: float, *, config: FeatureConfig, n_samples: int, path: str
) -> tuple[np.ndarray, float]:
    """Log-mel of the window starting at ``start`` seconds, and its start rounded to a sample.

    Raises AudioError when the stored values would not all be finite (samples so large that
    their power overflows, for instance): the recording becomes a recorded failure instead of
    NaN in the shard.
    """
    first = min(int(round(start * config.sample_rate)), y.size - n_samples)
    window = y[first : first + n_samples]
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below, with the file named
        mel = log_mel(window, config=config)
    if not np.isfinite(mel.astype(config.dtype)).all():
        peak = float(np.max(np.abs(window))) if window.size else 0.0
        raise AudioError(
            f"{path}: the log-mel of the window at {first / config.sample_rate:.3f} s is not finite "
            f"(sample peak {peak:.3g}; audio is expected within [-1, 1])"
        )
    return mel, first / config.sample_rate
