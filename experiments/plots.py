"""Training curves as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path


def read_history(path: str | Path) -> dict[str, list[float]]:
    """Columns of a Keras ``CSVLogger`` file as float lists, keyed by header name."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(float(value) if value not in ("", None) else float("nan"))
    return columns


def plot_curves(history: Mapping[str, Sequence[float]], out: str | Path, *, title: str = "") -> Path:
    """Loss and LWLRAP per epoch, train and validation side by side.

    history : mapping from metric name (``loss``, ``val_loss``, ``lwlrap``, ``val_lwlrap``,
        optionally ``epoch``) to one value per epoch, as in ``History.history`` or a
        ``CSVLogger`` file read by ``read_history``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(next(iter(history.values()), []))
    epochs = [int(e) + 1 for e in history["epoch"]] if "epoch" in history else list(range(1, n + 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss (masked BCE)"), (axes[1], "lwlrap", "LWLRAP")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values is not None:
                ax.plot(epochs, values, style, marker="o", ms=3, label=(prefix or "train_").rstrip("_"))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if "val_lwlrap" in history and len(history["val_lwlrap"]):
        best = max(range(n), key=lambda i: history["val_lwlrap"][i])
        axes[1].axvline(epochs[best], color="grey", lw=0.8)
        axes[1].set_title(f"best val {history['val_lwlrap'][best]:.3f} at epoch {epochs[best]}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
