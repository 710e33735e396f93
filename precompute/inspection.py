"""``precompute inspect``: the summary a user reads before training, at most ``WIDTH`` columns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from melshards import codec, remote, shard_cache
from melshards.config import PARAMETERS, FeatureConfig
from melshards.index import BinStats, Index, read_index
from melshards.names import (
    FAILURES_FILE,
    FORMAT_VERSION,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    LABEL_UNKNOWN,
    LABELS,
    RECORDING_ID,
    SET_LABELLED,
)
from melshards.shard_check import check_shard
from melshards.shard_open import open_listed
from melshards.shard_read import read_checked

WIDTH = 100  # columns: inspect's lines fit a terminal this wide


def clip_line(text: str, width: int = WIDTH) -> str:
    """``text`` cut to ``width`` columns, with "..." in the middle where something was cut."""
    if len(text) <= width:
        return text
    keep = width - 3
    return text[: keep - keep // 3] + "..." + text[len(text) - keep // 3 :]


def _labels_and_recordings(
    index: Index, *, url: str | None, cache: shard_cache.ShardCache | None
) -> tuple[np.ndarray, list[str]]:
    """Every example's stored labels and recording, from the shards of ``index`` (at ``url``
    through ``cache`` for a set at a URL).

    Each shard is checked against its entry first (``check_shard``: size, fingerprint, shapes),
    so an index of another set, or shards swapped, is a FormatError naming the shard. The
    fingerprint covers everything that shapes a shard's bytes; ``precompute verify`` hashes them.
    """
    labels, recordings = [], []
    for entry in index.shards:
        with open_listed(index, entry, url=url, cache=cache) as h5:
            check_shard(h5, entry, index.config, path=index.shard_path(entry), size=url is None)
            labels.append(read_checked(h5, LABELS))
            recordings += list(read_checked(h5, RECORDING_ID))
    n_classes = index.config.n_classes
    return (np.concatenate(labels) if labels else np.zeros((0, n_classes), np.int8)), recordings


def _value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_lines(config: FeatureConfig, *, indent: str = "  ") -> list[str]:
    """One line per parameter: name, value, unit, meaning (each fits ``WIDTH`` columns)."""
    values = {name: _value_text(value) for name, value in config.to_dict().items()}
    width = max(8, *(len(text) for text in values.values()))
    lines = []
    for name, text in values.items():
        unit, meaning = PARAMETERS[name]
        lines.append(clip_line(f"{indent}{name:<12} {text:>{width}}  {unit:<8}  {meaning}"))
    return lines


def _value_summary(stats: BinStats, config: FeatureConfig) -> str:
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    what = (
        "normalized log-mel in [0, 1] (per-slice min-max)"
        if config.normalize == "minmax"
        else "log-mel in dB"
    )
    if mean.size == 0 or mean.size != std.size:
        return what
    # Every bin has the same number of values, so the pooled moments are plain averages.
    overall = float(mean.mean())
    pooled = float(np.sqrt(max(float((std**2 + mean**2).mean()) - overall**2, 0.0)))
    return f"{what}; mean {overall:.3f}, std {pooled:.3f}"


def inspect_lines(root: str | Path, *, cache_dir: str | Path | None = None) -> list[str]:
    """The summary a user wants before training, as lines of at most ``WIDTH`` columns.

    ``root`` may be a URL: the metadata is read from cached shards, or with range requests.
    """
    url = str(root).rstrip("/") if remote.is_url(root) else None
    cache = shard_cache.ShardCache.at(cache_dir) if url is not None else None
    index = read_index(root, cache_root=None if cache is None else cache.set_dir(url))
    cfg = index.config
    labels, recordings = _labels_and_recordings(index, url=url, cache=cache)
    if url is None:
        root = Path(root)
        disk = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
        failures_file, shown = root / FAILURES_FILE, str(root)
    else:
        disk = sum(entry.bytes for entry in index.shards)
        failures_file, shown = remote.redact(remote.join(url, FAILURES_FILE)), remote.redact(url)
    raw = index.n_examples * cfg.n_mels * cfg.n_frames * np.dtype(cfg.dtype).itemsize
    failures = f"{index.failures}" + (f" (see {failures_file})" if index.failures else "")
    lines = [
        f"feature set  {shown}",
        f"kind         {index.kind}, format v{FORMAT_VERSION}, fingerprint {index.fingerprint}",
        f"examples     {index.n_examples} from {len(set(recordings))} recordings in {len(index.shards)} shards",
        f"disk         {disk / 1e6:.1f} MB ({raw / 1e6:.1f} MB of mel arrays)",
        f"example      mel ({cfg.n_mels}, {cfg.n_frames}) {codec.describe(cfg)}: {cfg.n_mels} mel bands x "
        f"{cfg.n_frames} frames ({cfg.window_seconds:g} s)",
        f"model input  ({cfg.n_mels}, {cfg.crop_frames}, 1): {cfg.duration:g} s, cropped inside "
        f"{cfg.context:g} s of context on each side",
        f"values       {_value_summary(index.stats, cfg)}",
        f"failures     {failures}",
        *_annotation_lines(index),
        "",
        f"config (preset {cfg.preset}; change with --preset, --config FILE or --set key=value)",
        *config_lines(cfg),
    ]
    if index.kind == SET_LABELLED and len(labels):
        lines += ["", *_class_table(labels, np.array(recordings), index.class_names)]
    return [clip_line(line) for line in lines]


def _annotation_lines(index: Index) -> list[str]:
    """Where the labels came from: the classes, the annotation inputs, the columns ignored."""
    names = index.class_names
    source = index.source or {}
    how = f" ({source['classes']})" if isinstance(source.get("classes"), str) else ""
    start = f"classes      {len(names)}{how}: "
    lines = [start + _names_fitting(names, WIDTH - len(start))]
    inputs = source.get("annotations")
    if isinstance(inputs, list) and inputs:
        described = [
            f"{item.get('format')} {Path(str(item.get('path'))).name}"
            + (" (FP)" if item.get("kind") == "fp" else "")
            for item in inputs
            if isinstance(item, dict)
        ]
        lines.append(f"annotations  {', '.join(described)}")
    ignored = source.get("ignored_columns")
    if isinstance(ignored, dict) and ignored:
        columns = sorted({str(c) for cols in ignored.values() if isinstance(cols, list) for c in cols})
        lines.append(f"ignored      column(s) {', '.join(columns)} of {len(ignored)} table(s): not stored")
    return lines


def _names_fitting(names: tuple[str, ...], room: int) -> str:
    """As many of ``names`` as fit ``room`` columns, then ``... <last>``."""
    if len(", ".join(names)) <= room:
        return ", ".join(names)
    tail = f", ... {names[-1]}"
    shown = []
    for name in names[:-1]:
        if len(", ".join([*shown, name])) + len(tail) > room:
            break
        shown.append(name)
    return ", ".join(shown) + tail


def _class_table(labels: np.ndarray, recordings: np.ndarray, names: tuple[str, ...]) -> list[str]:
    """Label counts per class, two classes per line when their names are short enough."""
    width = min(max(5, *(len(n) for n in names)), 30)
    head = f"  # {'class':<{width}}   pos    FP  unknown  recs"
    cells = []
    for c, name in enumerate(names):
        pos = labels[:, c] == LABEL_POSITIVE
        shown = name if len(name) <= width else name[: width - 3] + "..."
        cells.append(
            f"{c:>3} {shown:<{width}} {int(pos.sum()):>5} {int((labels[:, c] == LABEL_NEGATIVE).sum()):>5} "
            f"{int((labels[:, c] == LABEL_UNKNOWN).sum()):>8} {len(set(recordings[pos])):>5}"
        )
    columns = 2 if 2 * len(head) + 4 <= WIDTH else 1
    rows = [
        "labels per class (pos: a TP counts in the centred crop; FP: only a confirmed false positive does;",
        "unknown: neither; recs: recordings with a positive)",
        f"{head}    {head}" if columns == 2 else head,
    ]
    half = math.ceil(len(cells) / columns)
    for i in range(half):
        right = cells[i + half] if columns == 2 and i + half < len(cells) else ""
        rows.append(f"{cells[i]}    {right}".rstrip())
    multi = int(((labels == LABEL_POSITIVE).sum(axis=1) > 1).sum())
    rows.append(f"examples with more than one positive class: {multi} of {labels.shape[0]}")
    return rows
