"""Training curves: the figure marks the epoch that ``train`` saves, with its values."""

import math

import numpy as np
import pytest
from PIL import Image

from experiments.plots import BEST_LABEL, best_epoch, curves_figure, plot_curves, read_history

HISTORY = {
    "epoch": [0, 1, 2, 3, 4],
    "loss": [0.6, 0.4, 0.3, 0.25, 0.2],
    "val_loss": [0.5, 0.35, 0.2, 0.22, 0.3],
    "lwlrap": [0.2, 0.4, 0.55, 0.6, 0.7],
    "val_lwlrap": [0.3, 0.6, 0.9, 0.85, 0.9],  # ties at 0.9: the first one is the saved one
}


def test_best_epoch_is_the_first_maximum_of_val_lwlrap():
    assert best_epoch(HISTORY) == int(np.argmax(HISTORY["val_lwlrap"])) == 2
    assert best_epoch({"val_lwlrap": [math.nan, 0.5, math.nan]}) == 1
    assert best_epoch({"loss": [1.0]}) is None


def test_curves_mark_the_best_epoch_in_both_panels():
    fig = curves_figure(HISTORY, title="run r: model tiny on demo, fold 0")
    loss_ax, lwlrap_ax = fig.axes
    assert fig._suptitle.get_text() == "run r: model tiny on demo, fold 0"
    for ax, key in ((loss_ax, "loss"), (lwlrap_ax, "lwlrap")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert {"train", "validation", BEST_LABEL} <= set(lines)
        np.testing.assert_array_equal(lines["train"].get_xdata(), [1, 2, 3, 4, 5])  # epochs from 1
        np.testing.assert_array_equal(lines["validation"].get_ydata(), HISTORY["val_" + key])
        # The marker line sits at epoch 3 (index 2), a star on the validation value there.
        assert list(lines[BEST_LABEL].get_xdata()) == [3, 3]
        star = next(line for line in ax.get_lines() if line.get_marker() == "*")
        assert (list(star.get_xdata()), list(star.get_ydata())) == ([3], [HISTORY["val_" + key][2]])
        assert ax.get_xlabel() == "epoch"
        assert {t.get_text() for t in ax.get_legend().get_texts()} == {"train", "validation", BEST_LABEL}
    assert loss_ax.get_ylabel() == "loss (masked BCE)" and lwlrap_ax.get_ylabel() == "LWLRAP"
    assert loss_ax.get_title() == "loss: lower is better · val 0.200 at epoch 3"
    assert lwlrap_ax.get_title() == "LWLRAP: higher is better · val 0.900 at epoch 3"
    assert lwlrap_ax.get_ylim() == (0.0, 1.02)


def test_plot_curves_writes_a_png_from_a_csv_history(tmp_path):
    lines = ["epoch,loss,lwlrap,val_loss,val_lwlrap"]
    lines += [
        f"{e},{HISTORY['loss'][e]},{HISTORY['lwlrap'][e]},{HISTORY['val_loss'][e]},{HISTORY['val_lwlrap'][e]}"
        for e in range(5)
    ]
    (tmp_path / "history.csv").write_text("\n".join(lines) + "\n")
    history = read_history(tmp_path / "history.csv")
    assert history["val_lwlrap"] == pytest.approx(HISTORY["val_lwlrap"])
    plot_curves(history, tmp_path / "curves.png", title="t")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.size == (1100, 420)
