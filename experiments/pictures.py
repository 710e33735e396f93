"""Pictures of a feature set: example spectrograms per class, and what augmentation does.

``precompute preview`` (``python -m experiments.preview``) draws these. They live with the
experiments because they show what the loader feeds a model (its reader and its default
augmentation); matplotlib is needed only here. ``preview_figure`` and ``augment_figure`` build
matplotlib Figures (Agg backend, no display needed) of the examples ``experiments.picks``
chooses, and ``preview`` writes them as 256-colour PNG files (``save_figure``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from commandline.console import log
from experiments.picks import Pick, choose_examples, parse_classes, read_windows, window_examples
from loader.augment import Augment
from loader.feature_set import FeatureSet
from melshards.config import FeatureConfig, center_offset
from melshards.errors import ConfigError
from melshards.names import SET_LABELLED

CMAP = "magma"


def _color_range(config: FeatureConfig, arrays: np.ndarray) -> tuple[float, float, str]:
    if config.normalize == "minmax":
        return 0.0, 1.0, "normalized log-mel (0 = slice minimum, 1 = slice maximum)"
    low, high = np.percentile(arrays, [1, 99.9]) if arrays.size else (0.0, 1.0)
    return float(low), float(high), "log-mel (dB)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style_panel(ax, title: str, *, xlabel: str, bottom: bool, left: bool) -> None:
    """Title and small ticks; axis labels and tick labels only on the grid's outer panels."""
    ax.set_title(title, fontsize=7.5)
    ax.tick_params(labelsize=6.5)
    ax.set_xlabel(xlabel if bottom else "", fontsize=7)
    ax.set_ylabel("Hz (mel scale)" if left else "", fontsize=7)
    if not bottom:
        ax.tick_params(labelbottom=False)
    if not left:
        ax.tick_params(labelleft=False)


def _colorbar(fig, img, axes, label: str, *, shrink: float) -> None:
    """One colour bar for the whole grid."""
    bar = fig.colorbar(img, ax=axes.ravel().tolist(), shrink=shrink, pad=0.01)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _specshow(ax, mel: np.ndarray, config: FeatureConfig, *, vmin: float, vmax: float):
    """``mel`` on true axes: seconds from the first frame shown, Hz on a mel scale."""
    import librosa.display

    img = librosa.display.specshow(
        mel,
        x_axis="time",
        y_axis="mel",
        sr=config.sample_rate,
        hop_length=config.hop_length,
        fmin=config.fmin,
        fmax=config.fmax,
        ax=ax,
        cmap=CMAP,
        vmin=vmin,
        vmax=vmax,
    )
    # The filter bank spans fmin..fmax; specshow pads half a band on each side.
    ax.set_ylim(config.fmin, config.fmax)
    return img


def preview_figure(
    root: str | Path | FeatureSet, *, per_class: int = 3, classes: str | tuple[int, ...] | None = None
):
    """Example spectrograms per class, one row per class, as a matplotlib Figure.

    Each panel is one stored window (``duration`` plus ``context`` on each side) on true axes:
    seconds from the window's start and Hz on a mel scale (``fmin`` to ``fmax``). Dashed lines
    mark the centred crop the model sees, a box the labelled call the window was cut around,
    grey hatching the padding beyond the recording's ends (frames outside ``valid``).
    Titles read ``species NN · recording_id @ start s`` (numeric RFCX ids), or the class name in
    place of ``species NN``. One colour bar for the whole figure.
    For a windows feature set (no labels) the rows are recordings instead of classes.
    """
    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    plt = _pyplot()
    features = root if isinstance(root, FeatureSet) else FeatureSet(root)
    picks, rows = _preview_picks(features, per_class=per_class, classes=classes)
    ids = [e.id for r in rows for e in picks[r]]
    mels = dict(zip(ids, read_windows(features, ids), strict=True))
    vmin, vmax, label = _color_range(features.config, np.stack(list(mels.values())))
    fig, axes = plt.subplots(
        len(rows),
        per_class,
        figsize=(2.9 * per_class + 1.1, 1.55 * len(rows) + 0.9),
        squeeze=False,
        layout="constrained",
    )
    img = None
    for r, row in enumerate(rows):
        for col in range(per_class):
            ax = axes[r, col]
            if col >= len(picks[row]):
                ax.axis("off")
                continue
            ex = picks[row][col]
            img = _specshow(ax, mels[ex.id], features.config, vmin=vmin, vmax=vmax)
            _mark_example(ax, ex, features)
            who = f"{_class_title(features, ex.species)} · " if ex.species >= 0 else ""
            title = f"{who}{ex.recording_id} @ {ex.start:.1f} s"
            _style_panel(ax, title, xlabel="time (s)", bottom=r == len(rows) - 1, left=col == 0)
    _colorbar(fig, img, axes, label, shrink=min(1.0, 6 / len(rows) + 0.2))
    fig.suptitle(_preview_title(features), fontsize=9)
    return fig


def _preview_picks(
    features: FeatureSet, *, per_class: int, classes: str | tuple[int, ...] | None
) -> tuple[dict[int, list[Pick]], list[int]]:
    """The examples of each row, and the rows that have any: classes of a labelled set (those
    asked for), recordings of a windows set."""
    if features.kind == SET_LABELLED:
        wanted = (
            classes
            if isinstance(classes, tuple)
            else parse_classes(classes, classes=features.classes, names=features.index.class_names)
        )
        picks = choose_examples(features, classes=wanted, per_class=per_class)
        rows = [c for c in wanted if picks[c]]
    else:
        picks = window_examples(features, rows=6, per_row=per_class)
        rows = list(picks)
    if not rows:
        raise ConfigError(f"{features.root}: no example to show (no TP example of the chosen classes)")
    return picks, rows


def _mark_example(ax, ex: Pick, features: FeatureSet) -> None:
    """The crop the model sees (dashed), the padding beyond the recording, the labelled call (box)."""
    from matplotlib.patches import Rectangle

    cfg = features.config
    crop0 = center_offset(cfg) * cfg.seconds_per_frame
    for t in (crop0, crop0 + cfg.duration):
        ax.axvline(t, color="white", lw=0.7, ls="--", alpha=0.8)
    _shade_padding(ax, features.valid[ex.id], cfg)
    if ex.box is not None:
        t_min, t_max, f_min, f_max = ex.box
        ax.add_patch(
            Rectangle(
                (t_min - ex.start, max(f_min, cfg.fmin)),
                t_max - t_min,
                min(f_max, cfg.fmax) - max(f_min, cfg.fmin),
                fill=False,
                edgecolor="cyan",
                lw=0.9,
            )
        )


def _preview_title(features: FeatureSet) -> str:
    cfg = features.config
    what = "per species" if features.kind == SET_LABELLED else "per recording (windows set)"
    return (
        f"{features.root.name}: examples {what} · {cfg.n_mels} mel bands {cfg.fmin:g}-{cfg.fmax:g} Hz, "
        f"{cfg.window_seconds:g} s windows · dashed: the {cfg.duration:g} s the model sees"
        + (" · box: the labelled call" if features.kind == SET_LABELLED else "")
    )


def _shade_padding(ax, valid: np.ndarray, config: FeatureConfig) -> None:
    """Hatch the frames of a stored window that lie beyond its recording (``valid`` = [first, stop))."""
    spf = config.seconds_per_frame
    first, stop = int(valid[0]), int(valid[1])
    for lo, hi in ((0, first), (stop, config.n_frames)):
        if hi > lo:
            ax.axvspan(lo * spf, hi * spf, facecolor="0.5", alpha=0.55, hatch="///", edgecolor="0.85", lw=0)


def augment_figure(root: str | Path | FeatureSet, *, examples: int = 4, seed: int = 0, augment=None):
    """The same examples before and after the loader's augmentation, as a matplotlib Figure.

    Left column: the centred crop (what validation sees). Right column: the crop after
    ``augment`` (default ``loader.Augment()``, what ``ShardSequence(augment=True)`` applies:
    time shift inside the stored context, gain, SpecAugment masks filled with the per-bin
    mean), drawn with one generator seeded by ``seed``, as ``ShardSequence`` applies them.
    """
    plt = _pyplot()
    features = root if isinstance(root, FeatureSet) else FeatureSet(root)
    cfg = features.config
    chosen = _augment_picks(features, examples=examples)
    before, after, params = _before_after(
        features, [e.id for e in chosen], augment=Augment() if augment is None else augment, seed=seed
    )
    vmin, vmax, label = _color_range(cfg, before)
    fig, axes = plt.subplots(
        len(chosen), 2, figsize=(8.6, 1.75 * len(chosen) + 0.9), squeeze=False, layout="constrained"
    )
    img = None
    for r, ex in enumerate(chosen):
        shift = int(params.crop_start[r]) - center_offset(cfg)
        gain = 1.0 if params.gain is None else float(params.gain[r])
        n_masks = int((params.freq[r, :, 1] > 0).sum() + (params.time[r, :, 1] > 0).sum())
        who = f"{_class_title(features, ex.species)} · " if ex.species >= 0 else ""
        changed = f"shift {shift * cfg.seconds_per_frame:+.2f} s, gain {gain:.2f}, {n_masks} masks"
        for col, (mel, what) in enumerate(((before[r], "centred crop"), (after[r], changed))):
            ax = axes[r, col]
            img = _specshow(ax, mel, cfg, vmin=vmin, vmax=vmax)
            bottom = r == len(chosen) - 1
            title = f"{who}{ex.recording_id}: {what}"
            _style_panel(ax, title, xlabel="time in the crop (s)", bottom=bottom, left=col == 0)
    _colorbar(fig, img, axes, label, shrink=0.9)
    fig.suptitle(
        f"{features.root.name}: loader augmentation (loader.Augment defaults, seed {seed}): left as "
        "validation sees it, right as training does",
        fontsize=9,
    )
    return fig


def _augment_picks(features: FeatureSet, *, examples: int) -> list[Pick]:
    """Up to ``examples`` examples: the first of evenly spaced classes, so the rows differ (the
    first windows of the first recordings for a windows set)."""
    if features.kind == SET_LABELLED:
        step = max(1, len(features.classes) // examples)
        picks = choose_examples(features, classes=tuple(features.classes[::step]), per_class=1)
        chosen = [e[0] for e in picks.values() if e][:examples]
    else:
        chosen = [e[0] for e in window_examples(features, rows=examples, per_row=1).values()]
    if not chosen:
        raise ConfigError(f"{features.root}: no example to show")
    return chosen


def _before_after(features: FeatureSet, ids: list[int], *, augment: Augment, seed: int):
    """The centred crops of ``ids``, the same after ``augment`` (one generator seeded by
    ``seed``, as ``ShardSequence`` draws), and the drawn parameters."""
    cfg = features.config
    crop = cfg.crop_frames
    before = read_windows(
        features, ids, crop_start=np.full(len(ids), center_offset(cfg), np.int64), crop=crop
    )
    rng = np.random.default_rng(seed)
    params = augment.sample_params(
        rng, len(ids), n_mels=cfg.n_mels, n_frames=cfg.n_frames, crop_frames=crop, valid=features.valid[ids]
    )
    clip = (0.0, 1.0) if cfg.normalize == "minmax" else None
    after = read_windows(features, ids, crop_start=params.crop_start, crop=crop)[..., None]
    augment.apply(after, params, fill=features.bin_mean, clip=clip, gain=True)
    return before, after[..., 0], params


def _class_title(features, species: int) -> str:
    """A class as picture titles name it: ``s03`` for RFCX ids (``species 03``), else its name."""
    name = features.index.class_names[species]
    return f"species {species:02d}" if name == f"s{species}" else name


def augment_path(out: str | Path) -> Path:
    """Where ``preview --out P.png`` writes the augmentation picture by default: ``P-augment.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-augment{out.suffix or '.png'}")


def _palette() -> list[int]:
    """256 RGB colours for the PNGs: 224 steps of ``CMAP``, 24 greys (text, antialiasing) and
    the cyan and white of the boxes and lines. A spectrogram is mostly noise-like texture that
    compresses badly as true colour; as palette indices it takes a third of the bytes, with no
    visible difference (the colour map itself has 256 levels)."""
    import matplotlib

    cmap = matplotlib.colormaps[CMAP](np.linspace(0.0, 1.0, 224))[:, :3]
    grey = np.repeat(np.linspace(0.0, 1.0, 24)[:, None], 3, axis=1)
    marks = np.array([[0, 1, 1], [0, 0.8, 0.8], [0, 0.5, 0.5], [0.5, 1, 1], [0.25, 0.63, 0.63]])
    extra = np.vstack([marks, np.ones((3, 3))])
    return (np.vstack([cmap, grey, extra]) * 255).round().astype(np.uint8).ravel().tolist()


def save_figure(fig, out: str | Path, *, dpi: int) -> tuple[int, int]:
    """Write ``fig`` as a 256-colour PNG (see ``_palette``); returns its size in pixels (w, h)."""
    import io

    from PIL import Image

    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    buf.seek(0)
    palette = Image.new("P", (1, 1))
    palette.putpalette(_palette())
    with Image.open(buf) as image:
        indexed = image.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    indexed.save(out, format="PNG", optimize=True)
    return indexed.size


def preview(
    root: str | Path,
    *,
    out: str | Path,
    per_class: int = 3,
    classes: str | None = None,
    augment_out: str | Path | None = None,
    seed: int = 0,
    dpi: int = 100,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write the examples picture to ``out`` and, unless ``augment_out`` is False, the
    augmentation picture (default ``augment_path(out)``). Returns what was written.
    ``root`` may be a URL (its shards are cached in ``cache_dir``)."""
    root = FeatureSet(root, cache_dir=cache_dir)
    fig = preview_figure(root, per_class=per_class, classes=classes)
    panels = sum(1 for ax in fig.axes if ax.get_title())
    rows = len({ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_title()})
    log.info(f"rendering {panels} spectrograms in {rows} rows to {out}")
    size = save_figure(fig, out, dpi=dpi)
    written = {"out": Path(out), "size": size, "panels": panels, "rows": rows}
    if augment_out is not False:
        target = augment_path(out) if augment_out is None else Path(augment_out)
        written["augment_out"] = target
        log.info(f"rendering the augmentation picture to {target}")
        written["augment_size"] = save_figure(augment_figure(root, seed=seed), target, dpi=dpi)
    return written
