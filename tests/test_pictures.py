"""Preview pictures (``experiments.pictures``, ``precompute preview``) of synthetic feature sets."""

import re

import numpy as np
import pytest
from PIL import Image

from experiments.picks import choose_examples, parse_classes
from experiments.pictures import augment_figure, augment_path, preview, preview_figure
from loader import Augment
from melshards.index import read_index
from melshards.names import EVENT_TP
from precompute.cli import main
from synthetic_features import expected_mel, make_feature_set


def candidates(table, c):
    return [
        i
        for i in range(len(table["species"]))
        if table["species"][i] == c and table["kind"][i] == EVENT_TP and table["labels"][i, c] == 1
    ]


# -- choosing examples -------------------------------------------------------------------------


def test_examples_are_tp_anchored_positives_from_distinct_recordings(feats, table):
    from loader.feature_set import FeatureSet

    features = FeatureSet(feats)
    picks = choose_examples(features, classes=(0, 1, 2, 3), per_class=3)
    assert picks == choose_examples(FeatureSet(feats), classes=(0, 1, 2, 3), per_class=3)  # deterministic
    for c, chosen in picks.items():
        pool = candidates(table, c)
        assert len(chosen) == min(3, len(pool))
        assert all(e.id in pool and e.species == c for e in chosen)
        distinct = len({table["rid"][i] for i in pool})
        assert len({e.recording_id for e in chosen}) == min(len(chosen), distinct)
        for e in chosen:
            assert e.recording_id == table["rid"][e.id] and e.start == table["start"][e.id]
            assert e.box[:2] == (table["t_min"][e.id], table["t_max"][e.id])


def test_parse_classes():
    assert parse_classes("0-2,5,1", classes=tuple(range(8))) == (0, 1, 2, 5)
    assert parse_classes(None, classes=(0, 1)) == (0, 1)
    with pytest.raises(Exception, match=r"--classes '9': class 9 is not in the feature set's classes 0\.\.7"):
        parse_classes("9", classes=tuple(range(8)))
    with pytest.raises(Exception, match=r"--classes 'a-b': expected class ids like 0-5,9"):
        parse_classes("a-b", classes=tuple(range(8)))


# -- the pictures ------------------------------------------------------------------------------


def panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def test_preview_figure_draws_the_chosen_examples_on_true_axes(feats, table):
    from loader.feature_set import FeatureSet

    config = read_index(feats).config
    fig = preview_figure(feats, per_class=2)
    picks = choose_examples(FeatureSet(feats), classes=(0, 1, 2, 3), per_class=2)
    expected = [e for c in (0, 1, 2, 3) for e in picks[c]]
    shown = panels(fig)
    assert len(shown) == len(expected) == sum(min(2, len(candidates(table, c))) for c in range(4))
    for ax, ex in zip(shown, expected, strict=True):
        assert ax.get_title() == f"species {ex.species:02d} · {ex.recording_id} @ {ex.start:.1f} s"
        # The image is the stored example, every bin and frame, as float32.
        drawn = np.asarray(ax.collections[0].get_array()).reshape(config.n_mels, config.n_frames)
        np.testing.assert_array_equal(
            drawn, expected_mel(ex.id, n_mels=16, n_frames=config.n_frames).astype(np.float32)
        )
        # Axes in Hz and seconds: the filter bank's range; frames at k * hop / sr.
        assert ax.get_ylim() == (config.fmin, config.fmax)
        assert ax.get_xlim()[1] == pytest.approx(
            config.n_frames * config.hop_length / config.sample_rate, abs=0.01
        )
        # The labelled call's box, in seconds from the window start.
        box = ax.patches[0]
        assert box.get_x() == pytest.approx(ex.box[0] - ex.start)
        assert box.get_width() == pytest.approx(ex.box[1] - ex.box[0])
    rows = {ax.get_subplotspec().rowspan.start for ax in shown}
    bottom = [ax for ax in shown if ax.get_subplotspec().rowspan.start == max(rows)]
    assert {ax.get_xlabel() for ax in bottom} == {"time (s)"}
    assert {ax.get_ylabel() for ax in shown if ax.get_subplotspec().colspan.start == 0} == {"Hz (mel scale)"}
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("normalized log-mel")]
    assert len(bars) == 1  # one colour bar for the whole figure
    assert bars[0].get_ylim() == (0.0, 1.0)


def test_augment_figure_shows_the_loader_augmentation_of_the_same_examples(feats):
    from loader.feature_set import FeatureSet

    features = FeatureSet(feats)
    config = features.config
    fig = augment_figure(feats, examples=2, seed=7)
    shown = panels(fig)
    assert len(shown) == 4
    # The oracle: Augment() draws from default_rng(seed) in the sequence's order, then the crop,
    # gain (clipped to [0, 1]) and masks filled with the per-bin mean, written out by hand.
    params = Augment().sample_params(
        np.random.default_rng(7), 2, n_mels=16, n_frames=config.n_frames, crop_frames=config.crop_frames
    )
    center = (config.n_frames - config.crop_frames) // 2
    for r in range(2):
        before_ax, after_ax = shown[2 * r], shown[2 * r + 1]
        before = np.asarray(before_ax.collections[0].get_array()).reshape(16, config.crop_frames)
        after = np.asarray(after_ax.collections[0].get_array()).reshape(16, config.crop_frames)
        stored = next(
            expected_mel(i, n_mels=16, n_frames=config.n_frames).astype(np.float32)
            for i in range(40)
            if np.array_equal(
                expected_mel(i, n_mels=16, n_frames=config.n_frames)[:, center : center + config.crop_frames],
                before.astype(np.float16),
            )
        )
        s = int(params.crop_start[r])
        want = np.clip(stored[:, s : s + config.crop_frames] * params.gain[r], 0.0, 1.0)
        for first, width in params.freq[r]:
            want[first : first + width, :] = features.bin_mean[first : first + width, None]
        for first, width in params.time[r]:
            want[:, first : first + width] = features.bin_mean[:, None]
        np.testing.assert_allclose(after, want, rtol=0, atol=1e-3)
        shift = (s - center) * config.hop_length / config.sample_rate
        assert f"shift {shift:+.2f} s, gain {params.gain[r]:.2f}" in after_ax.get_title()
        assert before_ax.get_title().endswith(": centred crop")


def test_preview_writes_both_pngs_at_the_figure_size(feats, tmp_path):
    written = preview(feats, out=tmp_path / "p.png", per_class=2, classes="0-1", dpi=40)
    fig = preview_figure(feats, per_class=2, classes="0-1")
    w, h = (fig.get_size_inches() * 40).round().astype(int)
    with Image.open(tmp_path / "p.png") as image:
        assert image.format == "PNG" and image.size == (w, h) and image.mode == "P"
    assert written["size"] == (w, h)
    assert written["augment_out"] == tmp_path / "p-augment.png" == augment_path(tmp_path / "p.png")
    with Image.open(tmp_path / "p-augment.png") as image:
        assert image.size == tuple((augment_figure(feats).get_size_inches() * 40).round().astype(int))


def test_cli_preview_summary_and_options(feats, tmp_path, capsys):
    out = tmp_path / "pics" / "p.png"
    argv = ["preview", str(feats), "--out", str(out), "--per-class", "1", "--dpi", "30"]
    assert main([*argv, "--augment-out", str(tmp_path / "aug.png"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert re.fullmatch(
        rf"wrote {re.escape(str(out))} \(\d+x\d+ px, 4 rows of up to 1 example\) and "
        rf"{re.escape(str(tmp_path / 'aug.png'))} \(augmentation\) in \d+\.\d s\n",
        captured.out,
    )
    assert out.is_file() and (tmp_path / "aug.png").is_file()
    (tmp_path / "aug.png").unlink()
    assert main([*argv, "--no-augment", "--quiet"]) == 0
    assert not (tmp_path / "aug.png").exists() and not (tmp_path / "pics" / "p-augment.png").exists()
    capsys.readouterr()
    assert main([*argv, "--classes", "7"]) == 2
    assert capsys.readouterr().err.endswith(
        "error: --classes '7': class 7 is not in the feature set's classes 0..3\n"
    )


def test_preview_of_a_windows_feature_set_shows_recordings(tmp_path):
    root = make_feature_set(tmp_path / "win", n_recordings=3, per_recording=3, kind="windows")
    fig = preview_figure(root, per_class=2)
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles == [
        "rec000 @ 0.0 s",
        "rec000 @ 1.0 s",
        "rec001 @ 0.0 s",
        "rec001 @ 1.0 s",
        "rec002 @ 0.0 s",
        "rec002 @ 1.0 s",
    ]


def test_cli_preview_without_matplotlib_says_what_to_install(feats, tmp_path, capsys, monkeypatch):
    # In process: ``precompute preview`` runs experiments.preview in a child, which this
    # monkeypatch would not reach.
    import importlib.util

    from experiments import preview

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    assert preview.main([str(feats), "--out", str(tmp_path / "p.png")]) == 2
    assert capsys.readouterr().err.endswith(
        "error: precompute preview draws with matplotlib: pip install 'melshards[plots]'\n"
    )
    assert not (tmp_path / "p.png").exists()
