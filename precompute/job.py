"""One shard job, run in a worker: decode each recording once, cut its windows, write the shard.

A job gets paths and a config, never open handles, and writes its own shard file, so it runs
the same in a local process pool or on a cluster worker with the output on shared storage.
The driver receives only a ``ShardResult`` (index entry, statistics, failures;
``precompute.shard_result``). Given a URL, the worker uploads the shard it wrote
(``precompute.publish.upload_shard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melshards.config import FeatureConfig
from melshards.names import EVENT_NONE, LABEL_UNKNOWN, QUANTIZED_DTYPE, SET_WINDOWS
from melshards.shard import ShardExample, write_shard
from precompute import publish
from precompute.audio import decode, probe, read_span
from precompute.errors import AudioError
from precompute.mel import log_mel, log_mel_of_power, mel_power_frames, own_edges
from precompute.plan import RecordingTask, ShardJob
from precompute.shard_result import ShardResult, failure_record
from precompute.windows import (
    event_arrays,
    event_window_start,
    grid_step,
    valid_frames,
    window_events,
    window_set_starts,
)

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


def build_shard(
    job: ShardJob, *, out: str, config: FeatureConfig, on_error: str, upload: str | None = None
) -> ShardResult:
    """Compute and write the shard of ``job`` into directory ``out``, then upload it to the
    feature set at the URL ``upload`` when given. Runs in a worker process.

    Numeric libraries run single-threaded here: parallelism is across shards (``--jobs``), and
    a BLAS pool per worker would oversubscribe the cores.
    """
    from threadpoolctl import threadpool_limits

    if upload is not None:
        # A worker on another machine writes into a stage of its own at the same path.
        Path(out).mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1):
        result = _build_shard(job, out=out, config=config, on_error=on_error)
    if upload is not None:
        publish.upload_shard(out, job.file, upload)
    return result


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
    source = Samples.open(task.path, config=config)
    seconds = source.n / config.sample_rate
    if job.kind == SET_WINDOWS:
        starts = window_set_starts(source.n, config=config, step=job.step)
        labels = np.full(config.n_classes, LABEL_UNKNOWN, dtype=np.int8)
        return [
            ShardExample(
                mel,
                labels,
                task.recording_id,
                start,
                anchor=NO_ANCHOR,
                valid=valid_frames(start, n_samples=source.n, config=config),
            )
            for mel, start in window_mels(source, starts, config=config)
        ]
    rows, spans = [], set()
    for row in job.recording_rows(task):
        if (row.t_min, row.t_max, row.kind) in spans:
            # The same window with the same labels (a clip with several labels, two classes
            # boxed alike): one example, anchored on the first of them.
            continue
        if row.t_max > seconds + 1e-6:
            err = AudioError(
                f"{row.where}: event ends at {row.t_max} s, beyond the end of {task.path} ({seconds:.3f} s)"
            )
            if on_error == "fail":
                raise err
            failures.append(failure_record(task.recording_id, task.path, err, slices=1, line=row.line))
            continue
        spans.add((row.t_min, row.t_max, row.kind))
        rows.append(row)
    events = event_arrays(job.recording_rows(task))
    starts = [event_window_start(r.t_min, r.t_max, n_samples=source.n, config=config) for r in rows]
    examples = []
    for row, (mel, start) in zip(rows, window_mels(source, starts, config=config), strict=True):
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
        valid = valid_frames(start, n_samples=source.n, config=config)
        examples.append(
            ShardExample(mel, labels, task.recording_id, start, anchor=anchor, events=stored, valid=valid)
        )
    return examples


@dataclass(frozen=True)
class Samples:
    """A recording's samples at the config's rate: decoded whole, or read span by span.

    With ``share_frames`` and a file already at the config's rate, only the spans the windows
    need are decoded (after a seek), and its last frame, so that a truncated file is refused;
    otherwise the whole file is decoded (and resampled) once.
    """

    path: str
    n: int
    y: np.ndarray | None = None  # the whole recording; None: read spans from the file

    @classmethod
    def open(cls, path: str, *, config: FeatureConfig) -> Samples:
        if config.share_frames:
            frames, rate = probe(Path(path))
            if rate == config.sample_rate:
                # A file that ends before its header says is refused, as a whole decode refuses
                # it, even where no window needs its end: decoding the last frame tells.
                read_span(Path(path), max(frames - 1, 0), frames)
                return cls(path, frames)
        y = decode(Path(path), sample_rate=config.sample_rate)
        return cls(path, y.size, y)

    def span(self, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Samples covering ``lo .. hi - 1`` (clipped to the recording), and the sample they start at."""
        if self.y is not None:
            return self.y, 0
        lo, hi = max(lo, 0), min(hi, self.n)
        return read_span(Path(self.path), lo, hi), lo


def window_mels(
    source: Samples, starts: Sequence[float], *, config: FeatureConfig
) -> list[tuple[np.ndarray, float]]:
    """The stored values of the windows starting at ``starts`` (seconds) in a recording.

    Returns, per window in the order given, its log-mel and its start as stored: rounded to a
    sample, or with ``share_frames`` to the hop grid, where overlapping windows take their
    frames from one STFT over the span they cover together (``precompute.mel.mel_power_frames``).
    A start that fits in the recording never passes its last fitting grid step; a window may
    otherwise reach beyond the recording's start or end (``precompute.windows`` decides where
    windows go, ``precompute.windows.grid_step`` rounds): the samples there are zeros, on both
    paths. Raises AudioError when a
    window's values would not all be finite (samples so large that their power overflows, for
    instance): the recording becomes a recorded failure instead of NaN in the shard.
    """
    sr, hop, n_fft = config.sample_rate, config.hop_length, config.n_fft
    out = []
    with np.errstate(over="ignore", invalid="ignore"):  # every window is checked, with the file named
        if not config.share_frames:
            y, _ = source.span(0, source.n)
            for start in starts:
                first = grid_step(start, n_samples=source.n, config=config)
                window = _window_samples(y, first, int(round(config.window_seconds * sr)))
                mel = log_mel(window, config=config)
                out.append((_finite(mel, window, 0, config, source.path, first / sr), first / sr))
            return out
        n_frames = config.n_frames
        frames = [grid_step(start, n_samples=source.n, config=config) for start in starts]
        power_of: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # first frame -> power, samples
        for first, count in frame_runs(frames, n_frames):
            # Frame k reads samples k * hop - n_fft // 2 onwards, n_fft of them; none exist
            # before 0 or from the recording's end on, where the frames see zeros.
            lo = first * hop - n_fft // 2
            y, offset = source.span(lo, lo + (count - 1) * hop + n_fft)
            power = mel_power_frames(y, first, count, config=config, offset=offset)
            for f in frames:
                if first <= f < first + count:
                    power_of[f] = (power[:, f - first : f - first + n_frames], y, offset)
        for f in frames:
            power, y, offset = power_of[f]
            power = own_edges(power, y, offset, f, config=config)
            mel = log_mel_of_power(power, config=config)
            out.append((_finite(mel, y, f * hop - offset, config, source.path, f * hop / sr), f * hop / sr))
    return out


def _window_samples(y: np.ndarray, first: int, n: int) -> np.ndarray:
    """Samples ``first .. first + n - 1`` of ``y``, zeros where ``y`` has none (padding)."""
    if first >= 0 and first + n <= y.size:
        return y[first : first + n]
    window = np.zeros(n, dtype=y.dtype)
    lo, hi = max(first, 0), min(first + n, y.size)
    if hi > lo:
        window[lo - first : hi - first] = y[lo:hi]
    return window


def frame_runs(firsts: Sequence[int], n_frames: int) -> list[tuple[int, int]]:
    """Merge windows of ``n_frames`` frames starting at ``firsts`` into runs: (first frame, count).

    Windows that overlap or touch share one run, so each of its frames is computed once.
    """
    runs: list[list[int]] = []
    for f in sorted(set(firsts)):
        if runs and f <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], f + n_frames)
        else:
            runs.append([f, f + n_frames])
    return [(a, b - a) for a, b in runs]


def _finite(
    mel: np.ndarray, y: np.ndarray, first_sample: int, config: FeatureConfig, path: str, start: float
) -> np.ndarray:
    """``mel`` as handed to the shard writer, or AudioError naming the file when a value is not finite.

    Float dtypes are cast here (a value beyond float16's range becomes inf and is caught);
    uint8 codes are made from the float32 values by the writer. ``y[first_sample:]`` are the
    window's samples (where it has any), ``start`` its start in seconds.
    """
    stored = mel.astype(np.float32 if config.dtype == QUANTIZED_DTYPE else config.dtype)
    if not np.isfinite(stored).all():
        lo = max(first_sample, 0)
        window = y[lo : first_sample + int(round(config.window_seconds * config.sample_rate))]
        peak = float(np.max(np.abs(window))) if window.size else 0.0
        raise AudioError(
            f"{path}: the log-mel of the window at {start:.3f} s is not finite "
            f"(sample peak {peak:.3g}; audio is expected within [-1, 1])"
        )
    return stored
