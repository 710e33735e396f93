"""Training curves and sweep comparisons as PNGs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

BEST_LABEL = "best epoch"
# Metrics that are scores in [0, 1]: their axis is always [0, 1] (``value_limits``).
SCORE_SUFFIXES = ("lwlrap", "top1")
MIN_SPAN = 0.1


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
    return _write_png(curves_figure(history, title=title), out)


def comparison_title(what: str, metric: str, seeds: Sequence[int]) -> str:
    """``"<what>: <metric> over 3 seeds (0, 1, 2)"``: what a comparison picture compares."""
    n = len(seeds)
    return f"{what}: {metric} over {n} seed{'' if n == 1 else 's'} ({', '.join(str(s) for s in seeds)})"


def value_limits(values: Sequence[float], metric: str) -> tuple[float, float]:
    """The value axis of a comparison, wide enough to judge a difference by eye.

    A score in [0, 1] (LWLRAP, top-1) spans [0, 1.02]; any other metric starts at 0 (or at its
    lowest value, when negative) and ends past its highest, at least ``MIN_SPAN`` wide. A
    difference of 0.003 then looks as small as it is.
    """
    if metric.endswith(SCORE_SUFFIXES):
        return 0.0, 1.02
    finite = [v for v in values if not math.isnan(v)]
    low = min([0.0, *finite])
    high = max([low, *finite])
    span = max(high - low, MIN_SPAN / 1.05)
    return low, low + 1.05 * span


def comparison_figure(rows: Sequence[Mapping], metric: str, *, title: str):
    """Each row's ``metric`` as a Figure: a dot per seed, the mean (a diamond) and its spread
    (a bar of one standard deviation each side), one line per configuration, best on top.

    rows : ``experiments.sweep.compare`` rows: ``configuration``, ``_values`` (the metric of each
        seed), ``<metric>_mean`` and ``<metric>_std`` (NaN or absent: not drawn)

    The mean and spread are also written beside each name; the value axis is ``value_limits``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(rows)), layout="constrained")
    values, labels = [], []
    for y, row in enumerate(rows):
        seeds = [v for v in row.get("_values", []) if not math.isnan(v)]
        values += seeds
        # Seeds sit just above their mean, spread a little, so that equal values stay countable.
        offsets = [-0.38 + 0.2 * k / max(len(seeds) - 1, 1) for k in range(len(seeds))]
        ax.plot(seeds, [y + o for o in offsets], "o", color="0.55", markersize=4, zorder=2)
        mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
        label = str(row["configuration"])
        if not math.isnan(mean):
            ax.errorbar(mean, y, xerr=0 if math.isnan(std) else std, fmt="D", color="C0", capsize=4, zorder=3)
            label += f"\n{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
        labels.append(label)
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(*value_limits(values, metric))
    ax.set_xlabel(f"{metric} (dots: seeds; diamond and bar: mean ± spread)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_comparison(rows: Sequence[Mapping], metric: str, out: str | Path, *, title: str) -> Path:
    """Write ``comparison_figure(rows, metric, title=title)`` to ``out`` as a PNG."""
    return _write_png(comparison_figure(rows, metric, title=title), out)


def _write_png(fig, out: str | Path) -> Path:
    """Save ``fig`` to ``out`` as a PNG and close it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
