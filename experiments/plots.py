"""Training curves as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

BEST_LABEL = "best epoch"


def read_history(path: str | Path) -> dict[str, list[float]]:
    """Columns of a Keras ``CSVLogger`` file as float lists, keyed by header name."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(float(value) if value not in ("", None) else float("nan"))
    return columns


def best_epoch(history: Mapping[str, Sequence[float]], *, monitor: str = "val_lwlrap") -> int | None:
    """Index (0-based) of the epoch with the highest ``monitor``, NaN ignored; None without one.

    The same choice as ``ModelCheckpoint(mode="max")`` and ``np.argmax``: the first maximum.
    """
    values = list(history.get(monitor, []))
    finite = [(v, -i) for i, v in enumerate(values) if not math.isnan(v)]
    return -max(finite)[1] if finite else None


def curves_figure(history: Mapping[str, Sequence[float]], *, title: str = ""):
    """Loss and LWLRAP per epoch, train and validation, the best epoch marked, as a Figure.

    history : mapping from metric name (``loss``, ``val_loss``, ``lwlrap``, ``val_lwlrap``,
        optionally ``epoch`` counted from 0) to one value per epoch, as in ``History.history``
        or a ``CSVLogger`` file read by ``read_history``.

    The best epoch (highest ``val_lwlrap``, the one ``train`` saves) is a dotted vertical line
    labelled ``"best epoch"`` in both panels, a star on the validation curve, and its values in
    the panel titles. Epochs are numbered from 1 on the x axis. Training metrics are measured on
    augmented (mixed, masked) batches, so they sit below the validation ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(next(iter(history.values()), []))
    epochs = [int(e) + 1 for e in history["epoch"]] if "epoch" in history else list(range(1, n + 1))
    best = best_epoch(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    panels = (
        (axes[0], "loss", "loss (masked BCE)", "loss: lower is better"),
        (axes[1], "lwlrap", "LWLRAP", "LWLRAP: higher is better"),
    )
    for ax, key, ylabel, heading in panels:
        for prefix, style, name in (("", "-", "train"), ("val_", "--", "validation")):
            values = history.get(prefix + key)
            if values is not None:
                ax.plot(epochs, values, style, marker="o", ms=3, label=name)
        if best is not None:
            ax.axvline(epochs[best], color="tab:green", lw=1.2, ls=":", label=BEST_LABEL)
            val = history.get("val_" + key)
            if val is not None:
                ax.plot([epochs[best]], [val[best]], "*", color="tab:green", ms=12)
                heading += f" · val {val[best]:.3f} at epoch {epochs[best]}"
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(heading, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right" if key == "loss" else "lower right", fontsize=9)
    axes[1].set_ylim(0.0, 1.02)
    if n:
        for ax in axes:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(history: Mapping[str, Sequence[float]], out: str | Path, *, title: str = "") -> Path:
    """Write ``curves_figure(history, title=title)`` to ``out`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = curves_figure(history, title=title)
    out = Path(out)
    try:
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
