"""Tiny feature sets with known content, written through the real shard writer.

Every stored value says where it came from, so a test can tell exactly which example and
which stored frames a batch holds:

- mel bin 0, frame t: ``t * 2**-24`` (a float16 subnormal; ``decode_frames`` reads t back);
- mel bin 1: ``example_id / 2048`` on every frame (``decode_example``);
- other bins: ``0.5 + ((example_id * 37 + bin * 11 + t) % 1024) / 2048``, in [0.5, 1).

All of them are exact in float16. Events are drawn from a seeded generator; every example is
a window centred on one of its recording's events, stored with every event of the recording
that counts in the stored span (``melshards.labels.overlap_mask``), labelled from its centred crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melshards.config import FeatureConfig, center_offset, crop_span
from melshards.index import Index, write_index
from melshards.labels import label_rows, overlap_mask
from melshards.names import EVENT_FP, EVENT_NONE, EVENT_TP, SHARD_PATTERN
from melshards.shard import ShardExample, ShardStats, write_shard

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 100 frames per second
RECORDING_SECONDS = 10.0

# The loader tests' shared labelled set (the ``labelled_set`` fixture in conftest.py): 10
# recordings x 5 examples = 50 examples, 7 per shard. A test that needs a variant of it (another
# compression or dtype) passes these with its change to get the same examples.
LABELLED_SET = {"n_recordings": 10, "per_recording": 5, "shard_size": 7}


def synthetic_config(
    *,
    n_mels: int = 16,
    duration: float = 1.0,
    context: float = 0.25,
    n_classes: int = 4,
    shard_size: int = 8,
    compression: str | None = None,
    dtype: str = "float16",
    min_overlap: float = 0.2,
    quant_bits: int = 8,
) -> FeatureConfig:
    return FeatureConfig(
        preset="synthetic",
        sample_rate=SAMPLE_RATE,
        n_fft=512,
        hop_length=HOP_LENGTH,
        n_mels=n_mels,
        fmin=50.0,
        fmax=8000.0,
        duration=duration,
        context=context,
        min_overlap=min_overlap,
        n_classes=n_classes,
        dtype=dtype,
        quant_bits=quant_bits,
        compression=compression,
        shard_size=shard_size,
    )


def expected_mel(example_id: int, *, n_mels: int, n_frames: int) -> np.ndarray:
    """The stored mel of ``example_id``: np.ndarray [shape=(n_mels, n_frames)], float16."""
    t = np.arange(n_frames)
    m = np.arange(n_mels)[:, None]
    mel = 0.5 + ((example_id * 37 + m * 11 + t) % 1024) / 2048.0
    mel[0] = t * 2.0**-24
    if n_mels > 1:
        mel[1] = example_id / 2048.0
    return mel.astype(np.float16)


def decode_frames(x: np.ndarray) -> np.ndarray:
    """Stored frame index of every column of one example's ``x`` (n_mels, frames[, 1])."""
    return np.rint(np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)[0] * 2.0**24).astype(np.int64)


def decode_example(x: np.ndarray) -> int:
    """Example id of one example's ``x`` (n_mels, frames[, 1])."""
    return int(np.rint(float(np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)[1, 0]) * 2048))


def _recording_events(rng: np.random.Generator, n_events: int, n_classes: int) -> dict[str, np.ndarray]:
    # Skewed species frequencies so stratification has rare species to place.
    weights = 1.0 / np.arange(1, n_classes + 1)
    species = rng.choice(n_classes, size=n_events, p=weights / weights.sum())
    kind = np.where(rng.random(n_events) < 0.75, EVENT_TP, EVENT_FP)
    t_min = rng.uniform(0.5, RECORDING_SECONDS - 1.5, size=n_events)
    t_max = t_min + rng.uniform(0.05, 0.8, size=n_events)
    return {
        "species_id": species.astype(np.int16),
        "kind": kind.astype(np.int8),
        "t_min": t_min,
        "t_max": t_max,
    }


def make_feature_set(
    root: str | Path,
    *,
    n_recordings: int = 6,
    per_recording: int = 4,
    n_mels: int = 16,
    duration: float = 1.0,
    context: float = 0.25,
    n_classes: int = 4,
    shard_size: int = 8,
    seed: int = 0,
    compression: str | None = None,
    kind: str = "labelled",
    dtype: str = "float16",
    min_overlap: float = 0.2,
    quant_bits: int = 8,
) -> Path:
    """Write a feature set of ``n_recordings * per_recording`` examples under ``root``.

    ``kind="windows"`` writes an inference set: sliding windows, labels all -1, no events.
    Returns the feature set directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = synthetic_config(
        n_mels=n_mels,
        duration=duration,
        context=context,
        n_classes=n_classes,
        shard_size=shard_size,
        compression=compression,
        dtype=dtype,
        min_overlap=min_overlap,
        quant_bits=quant_bits,
    )
    rng = np.random.default_rng(seed)
    window = config.window_seconds
    examples: list[ShardExample] = []
    for r in range(n_recordings):
        recording = f"rec{r:03d}"
        events = _recording_events(rng, per_recording + 2, n_classes)
        for k in range(per_recording):
            example_id = len(examples)
            mel = expected_mel(example_id, n_mels=n_mels, n_frames=config.n_frames)
            if kind == "windows":
                start = float(k * duration)
                examples.append(
                    ShardExample(
                        mel=mel,
                        labels=np.full(n_classes, -1, dtype=np.int8),
                        recording_id=recording,
                        start=start,
                        anchor=_anchor(-1, -1.0, -1.0, EVENT_NONE, 0),
                    )
                )
                continue
            centre = 0.5 * (events["t_min"][k] + events["t_max"][k])
            start = float(np.clip(centre - window / 2, 0.0, RECORDING_SECONDS - window))
            keep = overlap_mask(
                events["t_min"], events["t_max"], start, start + window, min_overlap=min_overlap
            )
            t0, t1 = crop_span(config, start, center_offset(config), config.crop_frames)
            present = overlap_mask(events["t_min"], events["t_max"], t0, t1, min_overlap=min_overlap)
            labels = label_rows(events["species_id"], events["kind"], present, n_classes=n_classes)
            examples.append(
                ShardExample(
                    mel=mel,
                    labels=labels,
                    recording_id=recording,
                    start=start,
                    anchor=_anchor(
                        int(events["species_id"][k]),
                        float(events["t_min"][k]),
                        float(events["t_max"][k]),
                        int(events["kind"][k]),
                        example_id + 2,
                    ),
                    events={name: values[keep] for name, values in events.items()},
                )
            )
    fingerprint = config.fingerprint()
    entries = []
    stats = ShardStats.empty(n_mels)
    for s, first in enumerate(range(0, len(examples), shard_size)):
        entry, shard_stats = write_shard(
            root / SHARD_PATTERN.format(s),
            examples[first : first + shard_size],
            config=config,
            fingerprint=fingerprint,
            kind=kind,
        )
        entries.append(entry)
        stats.merge(shard_stats)
    index = Index.build(
        config=config, entries=entries, stats=stats.bin_stats(), failures=0, kind=kind, versions={}
    )
    write_index(root, index)
    return root


def _anchor(species: int, t_min: float, t_max: float, kind: int, line: int) -> dict[str, float | int]:
    return {
        "species_id": species,
        "songtype_id": 1,
        "t_min": t_min,
        "t_max": t_max,
        "f_min": 500.0,
        "f_max": 4000.0,
        "kind": kind,
        "line": line,
    }
