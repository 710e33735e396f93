"""Frame targets (``targets="frames"``): per-step labels against a slow reference built from the
manifest rows, through every crop, shift, mixup, soft labels, resume and adapter.

The set here is precomputed from rows written in this file: a TP and an FP of one class that
overlap, short calls, a chorus longer than the crop, calls at the recordings' ends, and two
recordings shorter than the stored window (their windows reach past the recording: padding).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import HEADER, TINY, run_tiny, tone_recording
from loader.augment import Augment
from loader.batches import ShardBatches
from loader.feature_set import FeatureSet
from loader.frame_targets import FrameTargets, step_spans
from loader.options import BatchOptions
from loader.state import LoaderState
from melshards.errors import ConfigError
from synthetic_features import make_feature_set

# recording -> (seconds, rows (species, t_min, t_max, is_tp)); one window per row.
ROWS = {
    "recA": (
        8.0,
        [
            (0, 1.0, 2.412, 1),  # ends 4 ms into the step of one frame (16 ms) at 2.416 s
            (0, 2.2, 3.0, 0),  # an FP over the end of a TP of its class
            (1, 2.9, 3.05, 1),  # shorter than min_overlap
            (3, 3.5, 3.54, 1),  # shorter than a step of 4 frames, across step boundaries
            (1, 3.7, 3.71, 1),  # shorter than a frame
            (2, 4.0, 4.3, 0),
            (2, 4.25, 4.4, 1),  # a TP inside the end of an FP of its class
            (3, 5.0, 7.9, 1),  # a chorus longer than the crop
            (1, 7.7, 8.0, 0),  # at the recording's end
        ],
    ),
    "recB": (1.5, [(1, 0.1, 0.6, 1), (2, 0.9, 1.4, 0), (0, 1.3, 1.5, 1)]),  # shorter than the crop
    "recC": (2.2, [(0, 0.0, 0.3, 1), (2, 1.9, 2.2, 1), (0, 1.0, 1.2, 0)]),  # shorter than the window
}
SPF = TINY.hop_length / TINY.sample_rate
CROP = TINY.crop_frames  # 126 of 157 stored frames
SHIFTS = range(TINY.n_frames - CROP + 1)


@pytest.fixture(scope="module")
def rows_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frame-rows")
    (root / "audio").mkdir()
    lines = {1: [HEADER], 0: [HEADER]}
    for k, (rid, (seconds, rows)) in enumerate(ROWS.items()):
        tones = [(t0, t1, 500.0 * (sp + 1)) for sp, t0, t1, _ in rows]
        audio = tone_recording(seconds, sr=TINY.sample_rate, tones=tones, seed=k)
        sf.write(root / "audio" / f"{rid}.flac", audio, TINY.sample_rate, subtype="PCM_16")
        for sp, t0, t1, is_tp in rows:
            lines[is_tp].append(f"{rid},{sp},1,{t0},{500.0 * (sp + 1) - 50},{t1},{500.0 * (sp + 1) + 50}\n")
    paths = {"audio": root / "audio", "tp": root / "train_tp.csv", "fp": root / "train_fp.csv"}
    paths["tp"].write_text("".join(lines[1]))
    paths["fp"].write_text("".join(lines[0]))
    run_tiny(paths, root / "feat")
    return root


@pytest.fixture(scope="module")
def features(rows_set) -> FeatureSet:
    return FeatureSet(rows_set / "feat")


@pytest.fixture(scope="module")
def manifest(rows_set) -> dict[str, list[tuple[int, float, float, bool]]]:
    """The manifest rows as read back from the CSV files: recording -> (species, t_min, t_max, is_tp)."""
    out: dict[str, list] = {}
    for name, is_tp in (("train_tp.csv", True), ("train_fp.csv", False)):
        with open(rows_set / name, newline="") as f:
            for row in csv.DictReader(f):
                event = (int(row["species_id"]), float(row["t_min"]), float(row["t_max"]), is_tp)
                out.setdefault(row["recording_id"], []).append(event)
    return out


# -- the reference: one step, one row at a time ------------------------------------------------


def counts(t_min: float, t_max: float, w0: float, w1: float, min_overlap: float) -> bool:
    """melshards.labels' rule, written out: overlap of at least min_overlap, or inside."""
    overlap = min(t_max, w1) - max(t_min, w0)
    inside = t_min >= w0 - 1e-6 and t_max <= w1 + 1e-6
    return overlap > 0 and (overlap >= min_overlap - 1e-6 or inside)


def reference(rows, start: float, crop_start: int, target_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, known) [shape=(steps, n_classes)] of one crop, from the recording's manifest rows."""
    m, n_classes = TINY.min_overlap, TINY.n_classes
    t0 = start + crop_start * SPF
    t1 = t0 + (CROP - 1) * SPF
    steps = math.ceil(CROP / target_step)
    y, known = np.zeros((steps, n_classes), np.float32), np.zeros((steps, n_classes), np.float32)
    for j in range(steps):
        a, b = j * target_step, min((j + 1) * target_step, CROP) - 1
        s0 = t0 + max((a - 0.5) * SPF, 0.0)
        s1 = t0 + min((b + 0.5) * SPF, (CROP - 1) * SPF)
        positive, negative, touched = set(), set(), set()
        for species, t_min, t_max, is_tp in rows:
            if not counts(t_min, t_max, t0, t1, m):
                continue
            visible = min(t_max, t1) - max(t_min, t0)
            if counts(t_min, t_max, s0, s1, min(m, (s1 - s0) / 2, visible / 2)):
                (positive if is_tp else negative).add(species)
            if is_tp and min(t_max, s1) - max(t_min, s0) > 0:
                touched.add(species)
        for species in positive:
            y[j, species] = known[j, species] = 1
        for species in negative - touched:
            known[j, species] = 1
    return y, known


def reference_batch(features, manifest, ids, crop_start, target_step):
    pairs = [
        reference(manifest[features.recording_id[i]], features.start[i], int(c), target_step)
        for i, c in zip(ids, crop_start, strict=True)
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def mixed(y, known, params, how):
    """Mixup of labels as the docs state it, row by row."""
    y, known = y.copy(), known.copy()
    y0, k0 = y.copy(), known.copy()
    for row, partner in enumerate(params.partner):
        if partner < 0:
            continue
        if how == "max":
            y[row] = np.maximum(y0[row], y0[partner])
            known[row] = np.maximum(y[row], k0[row] * k0[partner])
        else:
            lam = params.weight[row]
            y[row] = lam * y0[row] + (1 - lam) * y0[partner]
            known[row] = k0[row] * k0[partner]
    return y, known


# -- every crop of every example ---------------------------------------------------------------


def test_the_set_holds_the_cases(features):
    # Padded windows (recordings shorter than the stored window), and one TP and FP of a class
    # that overlap within a window.
    valid = features.valid
    assert ((valid[:, 0] > 0) | (valid[:, 1] < TINY.n_frames)).sum() == 7
    assert features.recording_id[9:].tolist() == ["recB"] * 3 + ["recC"] * 3


@pytest.mark.parametrize("target_step", [1, 4, 7, CROP, 1000])
def test_frame_targets_equal_the_reference_after_every_shift(features, manifest, target_step):
    targets = FrameTargets(features, CROP, target_step)
    ids = np.arange(features.n_examples)
    positives = 0
    for shift in SHIFTS:
        crop_start = np.full(ids.shape[0], shift)
        y, known = targets(ids, crop_start)
        want_y, want_known = reference_batch(features, manifest, ids, crop_start, target_step)
        assert y.shape == (ids.shape[0], math.ceil(CROP / target_step), TINY.n_classes)
        assert y.dtype == known.dtype == np.float32
        np.testing.assert_array_equal(y, want_y, err_msg=f"y, crop start {shift}")
        np.testing.assert_array_equal(known, want_known, err_msg=f"known, crop start {shift}")
        positives += int(y.sum())
    assert positives > 0


def test_steps_tile_the_crop_span():
    begin, end = step_spans(TINY, CROP, 4)
    assert begin[0] == 0.0 and end[-1] == (CROP - 1) * SPF
    np.testing.assert_array_equal(begin[1:], end[:-1])
    assert end[0] == pytest.approx(3.5 * SPF) and end[-2] - begin[-2] == pytest.approx(4 * SPF)
    assert end[-1] - begin[-1] == pytest.approx(1.5 * SPF)  # frames 124, 125: the crop ends at 125


def test_an_fp_is_negative_where_no_counting_tp_of_its_class_overlaps(features):
    # recA: a TP of species 0 (1.0-2.412 s) and an FP of species 0 over its end (2.2-3.0 s), one
    # step per frame, every crop where the TP counts and that holds the FP's end. The step of
    # 2.408-2.424 s holds 4 ms of the TP (less than half the step): not positive, and unknown,
    # since the TP overlaps it.
    targets = FrameTargets(features, CROP, 1)
    checked = 0
    for i in np.flatnonzero(features.recording_id == "recA"):
        for shift in SHIFTS:
            t = features.start[i] + (shift + np.arange(CROP)) * SPF  # each step's frame time
            if not (t[0] <= 2.2 and t[-1] >= 3.0):
                continue
            y, known = targets(np.array([i]), np.array([shift]))
            tp, blocked = (t > 1.008) & (t < 2.401), np.isclose(t, 2.416)
            fp_only = (t > 2.42) & (t < 2.995)
            assert y[0, tp, 0].all() and known[0, tp, 0].all()
            assert not y[0, blocked | fp_only, 0].any() and not known[0, blocked, 0].any()
            assert known[0, fp_only, 0].all()
            assert not known[0, t > 3.01, 0].any()  # after both: unknown
            checked += 1
    assert checked > 0


# -- batches: shifts, mixup, soft labels -------------------------------------------------------


@pytest.mark.parametrize("how", ["max", "weighted"])
def test_batches_follow_the_shift_and_the_mixup(features, manifest, how):
    augment = Augment(mixup_p=0.6, mixup_labels=how, freq_masks=1, time_masks=1)
    kwargs = {"split": "all", "batch_size": 5, "seed": 3, "augment": augment, "return_mask": True}
    frames = ShardBatches(features, targets="frames", target_step=4, **kwargs)
    clip = ShardBatches(features, **kwargs)
    mixes = 0
    for epoch in range(3):
        for index in range(len(frames)):
            x, y, known = frames.batch(index, epoch=epoch)
            ids = frames.batch_example_ids(index, epoch=epoch)
            params = frames.batch_params(index, ids.shape[0], epoch=epoch)
            want = reference_batch(features, manifest, ids, params.crop_start, 4)
            want_y, want_known = mixed(*want, params, how)
            np.testing.assert_allclose(y, want_y, rtol=1e-6)
            np.testing.assert_array_equal(known, want_known)
            x_clip, y_clip, known_clip = clip.batch(index, epoch=epoch)
            np.testing.assert_array_equal(x, x_clip)  # the same crops and masks
            if how == "max":  # the clip labels are the maximum over steps, known where both are
                np.testing.assert_array_equal(y.max(axis=1), y_clip)
                assert (known.max(axis=1) <= known_clip).all()
            mixes += int((params.partner >= 0).sum())
    assert mixes > 0


def test_clip_labels_are_the_maximum_over_steps(features):
    for step in (1, 3, 50):
        clip = ShardBatches(features, split="all", batch_size=4, return_mask=True, augment=True)
        frames = ShardBatches(
            features,
            split="all",
            batch_size=4,
            return_mask=True,
            augment=True,
            targets="frames",
            target_step=step,
        )
        for index in range(len(clip)):
            _, y_clip, known_clip = clip.batch(index, epoch=2)
            _, y, known = frames.batch(index, epoch=2)
            np.testing.assert_array_equal(y.max(axis=1), y_clip)
            np.testing.assert_array_equal(known.max(axis=1), known_clip)


def test_soft_labels_fill_the_classes_a_crop_leaves_unknown(features):
    soft = np.full((features.n_examples, TINY.n_classes), 0.25, np.float32)
    soft[:, 3] = np.nan
    kwargs = {"split": "all", "batch_size": 15, "shuffle": False, "return_mask": True, "soft_labels": soft}
    _, y, known = ShardBatches(features, targets="frames", target_step=2, **kwargs).batch(0)
    _, plain_y, plain_known = ShardBatches(
        features, targets="frames", target_step=2, **{**kwargs, "soft_labels": None}
    ).batch(0)
    _, y_clip, _ = ShardBatches(features, **kwargs).batch(0)
    np.testing.assert_array_equal(known, plain_known)
    unknown = plain_known.max(axis=1) == 0  # (examples, classes): the crop's label is unknown
    fill = unknown & ~np.isnan(soft)
    assert fill.any() and (~unknown).any()
    np.testing.assert_array_equal(
        y.transpose(0, 2, 1)[fill], np.full((fill.sum(), y.shape[1]), 0.25, np.float32)
    )
    np.testing.assert_array_equal(y.transpose(0, 2, 1)[~fill], plain_y.transpose(0, 2, 1)[~fill])
    np.testing.assert_array_equal(y.max(axis=1), y_clip)


# -- options, state, adapters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": "frame"}, "targets must be one of ('clip', 'frames'), got 'frame'"),
        ({"target_step": 0}, "target_step must be an integer >= 1, got 0"),
        ({"target_step": 2.5}, "target_step must be an integer"),
    ],
)
def test_bad_target_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        BatchOptions(**kwargs)


def test_a_state_round_trip_gives_the_same_batches(features):
    kwargs = {
        "split": "all",
        "batch_size": 3,
        "seed": 5,
        "augment": Augment(mixup_p=0.5),
        "return_mask": True,
    }
    seq = ShardBatches(features, targets="frames", target_step=6, **kwargs)
    seq.set_epoch(1)
    state = seq.state_dict(next_batch=2)
    assert (state["targets"], state["target_step"]) == ("frames", 6)
    assert LoaderState.from_dict(state).to_dict() == state
    resumed = ShardBatches(features, targets="frames", target_step=6, **kwargs)
    resumed.load_state_dict(state)
    got = list(resumed.iter_numpy())
    assert len(got) == len(seq) - 2
    for index, batch in enumerate(got, start=2):
        for u, v in zip(batch, seq.batch(index, epoch=1), strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"targets": "clip"}, "loader state: saved with targets 'frames', this loader has 'clip'"),
        ({"target_step": 3}, "loader state: saved with target_step 6, this loader has 3"),
    ],
)
def test_a_state_of_other_targets_is_refused(features, change, message):
    kwargs = {"split": "all", "batch_size": 3, "targets": "frames", "target_step": 6}
    saved = ShardBatches(features, **kwargs).state_dict(next_batch=1)
    with pytest.raises(ConfigError) as info:
        ShardBatches(features, **{**kwargs, **change}).load_state_dict(saved)
    assert str(info.value) == message


def test_a_state_without_targets_is_a_clip_state(features):
    seq = ShardBatches(features, split="all", batch_size=3, target_step=9)  # clip: the step is moot
    state = seq.state_dict(next_batch=1)
    assert (state["targets"], state["target_step"]) == ("clip", 1)
    older = {k: v for k, v in state.items() if k not in ("targets", "target_step")}
    seq.load_state_dict(older)
    assert seq.start_batch == 1


def adapter_batches(features, kind: str, kwargs: dict) -> list[tuple[np.ndarray, ...]]:
    if kind == "keras":
        import keras

        from loader import ShardSequence

        assert keras.backend.backend() == "tensorflow"
        seq = ShardSequence(features, **kwargs)
        return [seq[i] for i in range(len(seq))]
    if kind == "tf.data":
        from loader.tfdata import as_tf_dataset

        ds = as_tf_dataset(ShardBatches(features, **kwargs))
        steps = math.ceil(CROP / kwargs["target_step"])
        assert [tuple(spec.shape) for spec in ds.element_spec] == [
            (None, TINY.n_mels, CROP, 1),
            (None, steps, TINY.n_classes),
            (None, steps, TINY.n_classes),
        ]
        return list(ds.as_numpy_iterator())
    torch = pytest.importorskip("torch")
    from loader.torch import ShardDataset

    data = ShardDataset(features, **kwargs)
    out = [tuple(t.numpy() for t in batch) for batch in data.loader(num_workers=0)]
    assert all(isinstance(t, torch.Tensor) for t in data[0])
    return out


@pytest.mark.parametrize("kind", ["keras", "tf.data", "torch"])
def test_every_adapter_gives_the_same_arrays(features, kind):
    kwargs = {"split": "all", "batch_size": 4, "seed": 2, "augment": Augment(mixup_p=0.5)}
    kwargs |= {"return_mask": True, "targets": "frames", "target_step": 5}
    want = list(ShardBatches(features, **kwargs).iter_numpy())
    got = adapter_batches(features, kind, kwargs)
    assert len(got) == len(want) == 4
    for batch, expected in zip(got, want, strict=True):
        assert batch[1].shape == (batch[0].shape[0], 26, TINY.n_classes)
        for u, v in zip(batch, expected, strict=True):
            np.testing.assert_array_equal(u, v)


def test_a_windows_set_has_no_targets(tmp_path):
    windows = make_feature_set(tmp_path / "windows", n_recordings=2, per_recording=3, kind="windows")
    _, y, known = ShardBatches(windows, split="all", batch_size=6, return_mask=True, targets="frames").batch(
        0
    )
    assert y.shape == known.shape == (6, 13, 4)  # 101 frames in steps of 8
    assert not y.any() and not known.any()


def test_paired_sequences_must_agree_on_targets(features):
    from loader.sequence import PairedSequence, ShardSequence

    first = ShardSequence(features, split="all", batch_size=4, targets="frames", target_step=5)
    for other in ({"targets": "clip"}, {"targets": "frames", "target_step": 6}):
        second = ShardSequence(features, split="all", batch_size=4, **other)
        message = "paired sequences must agree on return_mask, crop_frames, targets and target_step"
        with pytest.raises(ConfigError, match=f"^{message}$"):
            PairedSequence(first, second)
    paired = PairedSequence(
        first, ShardSequence(features, split="all", batch_size=4, targets="frames", target_step=5)
    )
    assert paired[0][1].shape == (8, 26, TINY.n_classes)
