"""Augmentations: validated settings, seeded draws, exact effects on the buffer and labels."""

from __future__ import annotations

import numpy as np
import pytest

from loader.augment import Augment, AugmentParams
from melshards.errors import ConfigError

B, M, C, T = 6, 16, 50, 80  # batch, mel bins, crop frames, stored frames


def params(b=B, **changes) -> AugmentParams:
    base = AugmentParams(
        crop_start=np.zeros(b, dtype=np.int64),
        gain=None,
        freq=np.zeros((b, 0, 2), dtype=np.int64),
        time=np.zeros((b, 0, 2), dtype=np.int64),
        partner=np.full(b, -1, dtype=np.int64),
        weight=np.ones(b, dtype=np.float32),
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def batch(dtype=np.float32):
    return np.random.default_rng(0).uniform(0.1, 0.9, (B, M, C, 1)).astype(dtype)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"freq_masks": -1}, "freq_masks must be an integer >= 0"),
        ({"time_mask_max": 2.5}, "time_mask_max must be an integer"),
        ({"gain": (1.2, 0.8)}, "gain needs 0 < low <= high"),
        ({"gain": (0.0, 1.0)}, "gain needs"),
        ({"gain": 3}, "gain must be a pair"),
        ({"mixup_p": 1.5}, r"mixup_p must be in \[0, 1\]"),
        ({"mixup_alpha": 0}, "mixup_alpha must be positive"),
        ({"mixup_labels": "sum"}, "mixup_labels must be one of"),
        ({"mask_value": "noise"}, "mask_value must be one of"),
        ({"shift": "yes"}, "shift must be true or false"),
        ({"max_shift_frames": -3}, "max_shift_frames must be an integer >= 0"),
    ],
)
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        Augment(**changes)


def test_coerce_and_round_trip():
    assert Augment.coerce(True) == Augment()
    assert Augment.coerce(False) == Augment.off() == Augment.coerce(None)
    assert not Augment.off().enabled and Augment().enabled
    custom = Augment(mixup_p=0.3, gain=(0.5, 2.0))
    assert Augment.from_dict(custom.to_dict()) == custom
    assert Augment.coerce({"time_masks": 1}) == Augment(time_masks=1)
    with pytest.raises(ConfigError, match="unknown parameter"):
        Augment.from_dict({"speed": 2})
    with pytest.raises(ConfigError, match="augment must be"):
        Augment.coerce("on")


def draw(augment, seed=0, b=B):
    return augment.sample_params(np.random.default_rng(seed), b, n_mels=M, n_frames=T, crop_frames=C)


def test_draws_are_a_function_of_the_generator():
    augment = Augment(mixup_p=0.5)
    a, b, c = draw(augment), draw(augment), draw(augment, seed=1)
    for name in ("crop_start", "gain", "freq", "time", "partner", "weight"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.crop_start, c.crop_start)


def test_shift_covers_the_stored_context_and_off_is_centred():
    starts = draw(Augment(), b=4000).crop_start
    assert starts.min() == 0 and starts.max() == T - C
    limited = draw(Augment(max_shift_frames=5), b=4000).crop_start
    center = (T - C) // 2
    assert limited.min() == center - 5 and limited.max() == center + 5
    off = draw(Augment.off())
    assert (off.crop_start == center).all() and off.gain is None
    assert off.freq.shape == (B, 0, 2) and (off.partner == -1).all()


def test_default_draw_ranges():
    p = draw(Augment(), b=2000)
    assert p.gain.dtype == np.float32 and p.gain.min() >= 0.8 and p.gain.max() <= 1.2
    assert p.freq.shape == (2000, 2, 2) and p.freq[..., 1].max() == 12 and p.freq[..., 1].min() == 0
    assert (p.freq[..., 0] + p.freq[..., 1] <= M).all() and (p.freq[..., 0] >= 0).all()
    assert p.time[..., 1].max() == 40 and (p.time[..., 0] + p.time[..., 1] <= C).all()
    assert (p.partner == -1).all()  # mixup is off by default


def test_masks_cover_exactly_their_width():
    x = batch()
    before = x.copy()
    fill = np.linspace(0.2, 0.3, M).astype(np.float32)
    freq = np.zeros((B, 1, 2), dtype=np.int64)
    time = np.zeros((B, 1, 2), dtype=np.int64)
    freq[2] = (3, 5)  # bins 3..7 of example 2
    time[4] = (10, 7)  # frames 10..16 of example 4
    Augment().apply(x, params(freq=freq, time=time), fill=fill)
    changed = x != before
    want = np.zeros_like(changed)
    want[2, 3:8] = True
    want[4, :, 10:17] = True
    assert np.array_equal(changed, want)
    assert np.array_equal(x[2, 3:8, :, 0], np.repeat(fill[3:8, None], C, axis=1))
    assert np.array_equal(x[4, :, 10:17, 0], np.repeat(fill[:, None], 7, axis=1))


def test_zero_width_masks_change_nothing_and_zero_fill():
    x = batch(np.float16)
    before = x.copy()
    bands = np.zeros((B, 2, 2), dtype=np.int64)
    Augment().apply(x, params(freq=bands, time=bands))
    assert np.array_equal(x, before)
    bands[1, 0] = (0, 2)
    Augment().apply(x, params(time=bands))
    assert (x[1, :, :2] == 0).all() and np.array_equal(x[1, :, 2:], before[1, :, 2:])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gain_scales_and_clips(dtype):
    x = batch(dtype)
    before = x.astype(np.float32)
    gain = np.array([0.5, 1.0, 1.2, 2.0, 0.8, 1.1], dtype=np.float32)
    Augment().apply(x, params(gain=gain), clip=(0.0, 1.0))
    want = np.clip(before * gain[:, None, None, None], 0, 1).astype(dtype)
    assert np.array_equal(x, want)
    assert x[3].max() == 1.0
    y = batch(dtype)
    Augment().apply(y, params(gain=gain), gain=False)  # the reader already applied it
    assert np.array_equal(y, batch(dtype))


def test_mixup_mixes_pixels_and_labels():
    x = batch()
    before = x.copy()
    partner = np.array([-1, 3, -1, -1, 1, -1])
    weight = np.array([1, 0.7, 1, 1, 0.6, 1], dtype=np.float32)
    p = params(partner=partner, weight=weight)
    Augment(mixup_p=0.5).apply(x, p)
    lam = np.float32(0.7)
    assert np.array_equal(x[1], lam * before[1] + (1 - lam) * before[3])
    # partners are taken before mixing: example 4 mixes with the original example 1
    lam = np.float32(0.6)
    assert np.array_equal(x[4], lam * before[4] + (1 - lam) * before[1])
    assert np.array_equal(x[[0, 2, 3, 5]], before[[0, 2, 3, 5]])

    # classes:      0  1  2  3
    y = np.array([[0, 0, 0, 0]] * 6, dtype=np.float32)
    known = np.zeros_like(y)
    y[1] = [1, 0, 0, 0]
    known[1] = [1, 1, 1, 0]  # positive 0; negative 1 and 2; 3 unknown
    y[3] = [0, 0, 1, 0]
    known[3] = [0, 1, 1, 1]  # positive 2; negative 1 and 3; 0 unknown
    y_max, known_max = Augment(mixup_p=0.5).mix_labels(y, known, p)
    assert y_max[1].tolist() == [1, 0, 1, 0]
    assert known_max[1].tolist() == [1, 1, 1, 0]  # positives known; negative only if both know
    y_w, known_w = Augment(mixup_p=0.5, mixup_labels="weighted").mix_labels(y, known, p)
    assert np.allclose(y_w[1], [0.7, 0, 0.3, 0])
    assert known_w[1].tolist() == [0, 1, 1, 0]
    assert np.array_equal(y_max[0], y[0]) and y_max is not y


def test_mixup_draws():
    p = draw(Augment(mixup_p=0.5, mixup_alpha=0.4), b=4000)
    mixed = p.partner >= 0
    assert 0.45 < mixed.mean() < 0.55
    assert (p.partner[mixed] != np.flatnonzero(mixed)).all()
    assert (p.weight[mixed] >= 0.5).all() and (p.weight[mixed] <= 1).all()
    assert (p.weight[~mixed] == 1).all()
    single = draw(Augment(mixup_p=1.0), b=1)
    assert single.partner[0] == -1
