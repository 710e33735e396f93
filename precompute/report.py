"""Looking at a finished feature set: ``inspect``, ``preview`` and ``verify``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from loader.errors import FormatError
from loader.format import (
    FAILURES_FILE,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    LABEL_UNKNOWN,
    check_shard_file,
    read_index,
    sha256_file,
)


def _labels_and_recordings(root: Path) -> tuple[np.ndarray, list[str]]:
    index = read_index(root)
    labels, recordings = [], []
    for entry in index.shards:
        with h5py.File(index.shard_path(entry), "r", locking=False) as h5:
            labels.append(h5["labels"][:])
            recordings += [r.decode() for r in h5["recording_id"][:]]
    n_classes = index.config.n_classes
    return (np.concatenate(labels) if labels else np.zeros((0, n_classes), np.int8)), recordings


def inspect_lines(root: str | Path) -> list[str]:
    """The summary a user wants before training, as printable lines."""
    root = Path(root)
    index = read_index(root)
    cfg = index.config
    labels, recordings = _labels_and_recordings(root)
    disk = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
    raw = index.n_examples * cfg.n_mels * cfg.n_frames * np.dtype(cfg.dtype).itemsize
    lines = [
        f"feature set   {root} ({index.kind}, format v{index.raw['format']['version']}, fingerprint {index.fingerprint})",
        f"examples      {index.n_examples} from {len(set(recordings))} recordings in {len(index.shards)} shards",
        f"example       mel ({cfg.n_mels}, {cfg.n_frames}) {cfg.dtype}; model sees {cfg.crop_frames} frames "
        f"({cfg.duration:g} s) + {cfg.context:g} s context each side",
        f"disk          {disk / 1e6:.1f} MB ({raw / 1e6:.1f} MB of raw arrays)",
        f"failures      {index.failures}" + (f" (see {root / FAILURES_FILE})" if index.failures else ""),
        "config        " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()),
    ]
    if index.kind == "labelled" and len(labels):
        lines.append("class  positive  negative(FP)  unknown  recordings-with-positive")
        rec = np.array(recordings)
        for c in index.classes:
            pos = labels[:, c] == LABEL_POSITIVE
            lines.append(
                f"{c:>5}  {pos.sum():>8}  {(labels[:, c] == LABEL_NEGATIVE).sum():>12}  "
                f"{(labels[:, c] == LABEL_UNKNOWN).sum():>7}  {len(set(rec[pos])):>24}"
            )
        multi = int(((labels == LABEL_POSITIVE).sum(axis=1) > 1).sum())
        lines.append(f"multi-label examples (more than one positive): {multi}")
    return lines


def verify(root: str | Path) -> list[str]:
    """Re-check every shard against the index; one line per problem (empty: all good).

    Checks the sha256 of each file, its schema and fingerprint against the index, and reads
    every ``mel`` chunk through HDF5's fletcher32 filter.
    """
    root = Path(root)
    try:
        index = read_index(root)
    except FormatError as err:
        return [str(err)]
    problems = []
    listed = {entry.file for entry in index.shards}
    for entry in index.shards:
        path = index.shard_path(entry)
        if not path.is_file():
            problems.append(f"{path}: missing (listed in the index)")
            continue
        digest = sha256_file(path)
        if digest != entry.sha256:
            problems.append(
                f"{path}: sha256 {digest[:12]}... disagrees with the index ({entry.sha256[:12]}...)"
            )
        try:
            with h5py.File(path, "r", locking=False) as h5:
                check_shard_file(h5, entry, index.config, path=path)
                mel = h5["mel"]
                buf = np.empty(mel.shape[1:], dtype=mel.dtype)
                for i in range(mel.shape[0]):
                    try:
                        mel.read_direct(buf, np.s_[i])
                    except OSError as err:
                        problems.append(f"{path}: example {i}: checksum or read error ({err})")
                if not np.all(np.isin(h5["labels"][:], (-1, 0, 1))):
                    problems.append(f"{path}: labels hold values other than -1, 0, 1")
        except FormatError as err:
            problems.append(str(err))
        except OSError as err:
            problems.append(f"{path}: unreadable HDF5: {err}")
    for path in sorted(root.glob("shard-*.h5")):
        if path.name not in listed:
            problems.append(f"{path}: not listed in the index (ignored by readers)")
    return problems


def preview(root: str | Path, *, out: str | Path, per_class: int = 3) -> Path:
    """Draw ``per_class`` example spectrograms of each class into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    index = read_index(root)
    cfg = index.config
    picks: dict[int, list[np.ndarray]] = {c: [] for c in index.classes}
    for entry in index.shards:
        with h5py.File(index.shard_path(entry), "r", locking=False) as h5:
            labels = h5["labels"][:]
            species = h5["anchor/species_id"][:]
            kind = h5["anchor/kind"][:]
            for i in range(entry.n):
                c = int(species[i])
                if (
                    c in picks
                    and kind[i] == 1
                    and labels[i, c] == LABEL_POSITIVE
                    and len(picks[c]) < per_class
                ):
                    picks[c].append(h5["mel"][i].astype(np.float32))
    shown = [c for c in index.classes if picks[c]] or list(index.classes)[:1]
    fig, axes = plt.subplots(
        len(shown), per_class, figsize=(2.4 * per_class, 1.2 * len(shown)), squeeze=False
    )
    for row, c in enumerate(shown):
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks[c]):
                ax.imshow(picks[c][col], origin="lower", aspect="auto", cmap="magma")
            if col == 0:
                ax.set_ylabel(f"class {c}", rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{root.name}: {cfg.n_mels} mels x {cfg.n_frames} frames", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
