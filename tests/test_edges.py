"""Edges of a recording: calls at its very start or end, clips shorter than the stored window,
the frames that hold audio (``valid``), crops that stay on them, and shards opened while a
plain h5py handle on the same file is open in this process."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import HEADER, TINY, tone_recording
from loader import ShardBatches
from loader.augment import Augment
from loader.feature_set import FeatureSet
from loader.reader import MelReader
from melshards.config import FeatureConfig, center_offset, crop_span
from melshards.errors import FormatError
from melshards.index import read_index
from melshards.names import VALID
from melshards.verify import verify
from precompute.inspection import inspect_lines
from precompute.windows import event_window_start, place_window, valid_frames, window_set_starts

SR = 16000
HOP = TINY.hop_length
# TINY stores 157 frames (2.5 s); the model sees the centred 126 (2 s) from frame 15 (0.24 s).
N_FRAMES, CROP, OFFSET = TINY.n_frames, TINY.crop_frames, center_offset(TINY)

# recording -> (seconds, [(species, t_min, t_max)]): every row is a TP, species k sounds at
# 500 * (k + 1) Hz.
RECORDINGS = {
    "edges": (8.0, [(0, 0.02, 0.2), (1, 7.8, 7.98), (2, 2.5, 5.0), (3, 6.0, 6.5)]),
    "clip15": (1.5, [(3, 0.3, 1.0)]),  # shorter than the crop
    "clip23": (2.3, [(0, 2.1, 2.25)]),  # between the crop and the stored window
}


def write_edge_dataset(root):
    audio = root / "audio"
    audio.mkdir(parents=True)
    lines = [HEADER]
    for k, (rid, (seconds, rows)) in enumerate(RECORDINGS.items()):
        tones = [(t0, t1, 500.0 * (sp + 1)) for sp, t0, t1 in rows]
        y = tone_recording(seconds, sr=SR, tones=tones, seed=k)
        sf.write(audio / f"{rid}.flac", y, SR, subtype="PCM_16")
        lines += [
            f"{rid},{sp},1,{t0},{500 * (sp + 1) - 50},{t1},{500 * (sp + 1) + 50}\n" for sp, t0, t1 in rows
        ]
    (root / "tp.csv").write_text("".join(lines))
    return audio


def run_edges(root, config):
    from precompute.run import run_features

    audio = write_edge_dataset(root)
    out = root / "out"
    summary = run_features(
        audio_dir=audio, tp=root / "tp.csv", fp=None, out=out, config=config, jobs=1, progress=False
    )
    assert summary.failures == [] and summary.examples == 6
    return out


def examples(out):
    """Every example of a feature set as a dict of its values, keyed by (recording, species)."""
    found = {}
    for entry in read_index(out).shards:
        with h5py.File(out / entry.file, "r", locking=False) as h5:
            for i, rid in enumerate(h5["recording_id"].asstr()[()]):
                key = (rid, int(h5["anchor/species_id"][i]))
                found[key] = {
                    "mel": h5["mel"][i].astype(np.float32),
                    "labels": h5["labels"][i],
                    "start": float(h5["start"][i]),
                    "valid": tuple(h5[VALID][i].tolist()),
                }
    return found


SHARED = TINY
ALONE = dataclasses.replace(TINY, share_frames=False)


@pytest.fixture(scope="module", params=[SHARED, ALONE], ids=["share_frames", "alone"])
def edge_run(request, tmp_path_factory):
    config = request.param
    out = run_edges(tmp_path_factory.mktemp("edges"), config)
    return config, examples(out), out


def event_frames(start: float, t_min: float, t_max: float) -> tuple[int, int]:
    """First and last stored frame whose centre lies within the event."""
    spf = HOP / SR
    return math.ceil((t_min - start) / spf - 1e-6), math.floor((t_max - start) / spf + 1e-6)


# (recording, species) -> (window start in samples, valid frames), per STFT path: windows start
# on the hop grid with share_frames, on any sample without.
EXPECTED = {
    True: {
        # the crop moved the least to start at or before the call at 0.02 s: 14 hops early
        ("edges", 0): (-14 * HOP, (14, N_FRAMES)),
        # the crop's last frame at or after 7.98 s: 359 hops, the window ends 0.064 s past 8 s
        ("edges", 1): (359 * HOP, (0, (8 * SR - 359 * HOP) // HOP + 1)),
        # 1.5 s, shorter than the crop: the crop starts with the clip, 94 frame centres on it
        ("clip15", 3): (-OFFSET * HOP, (OFFSET, OFFSET + 94)),
        # 2.3 s: centred (-6 hops), then moved 7 hops so that the call ending at 2.25 s is in
        ("clip23", 0): (HOP, (0, (36800 - HOP) // HOP + 1)),
    },
    False: {
        ("edges", 0): (320 - OFFSET * HOP, (14, N_FRAMES)),
        ("edges", 1): (91840, (0, (8 * SR - 91840) // HOP + 1)),
        ("clip15", 3): (-OFFSET * HOP, (OFFSET, OFFSET + 94)),
        ("clip23", 0): (160, (0, (36800 - 160) // HOP + 1)),
    },
}


# -- placement -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "species"),
    [("edges", 0), ("edges", 1), ("clip15", 3), ("clip23", 0)],
    ids=["first 0.25 s", "last 0.25 s", "clip 1.5 s", "clip 2.3 s, call at its end"],
)
def test_a_call_at_an_edge_is_positive_and_inside_the_centred_crop(edge_run, rid, species):
    config, found, _ = edge_run
    ex = found[rid, species]
    seconds, rows = RECORDINGS[rid]
    _, t_min, t_max = next(r for r in rows if r[0] == species)
    assert ex["labels"][species] == 1
    t0, t1 = crop_span(config, ex["start"], OFFSET, CROP)
    assert t0 <= t_min + 1e-6 and t_max <= t1 + 1e-6
    first, last = event_frames(ex["start"], t_min, t_max)
    assert OFFSET <= first <= last < OFFSET + CROP
    start, valid = EXPECTED[config.share_frames][rid, species]
    assert ex["start"] == start / SR and ex["valid"] == valid
    if seconds >= config.duration:  # the crop stays on the recording: only context is padding
        assert t0 >= 0 and t1 <= seconds


def test_windows_whose_event_lies_in_the_crop_keep_their_place(edge_run):
    config, found, _ = edge_run
    # A call in the middle: centred as before; a call longer than the crop (2.5 s) stays centred
    # and covers the whole crop.
    for species, t_min, t_max in ((3, 6.0, 6.5), (2, 2.5, 5.0)):
        ex = found["edges", species]
        placed = place_window(t_min, t_max, length=config.window_seconds, recording_seconds=8.0)
        grid = HOP if config.share_frames else 1
        assert ex["start"] == round(placed * SR / grid) * grid / SR
        assert ex["valid"] == (0, N_FRAMES) and ex["labels"][species] == 1
    t0, t1 = crop_span(config, found["edges", 2]["start"], OFFSET, CROP)
    assert t0 >= 2.5 and t1 <= 5.0


def test_short_clips_are_padded_with_silence(edge_run):
    _, found, _ = edge_run
    near = TINY.n_fft // 2 // HOP  # frames within n_fft / 2 of a frame's centre
    for ex in (found["clip15", 3], found["clip23", 0], found["edges", 0], found["edges", 1]):
        mel, (first, stop) = ex["mel"], ex["valid"]
        floor = mel.min()
        assert floor == 0.0 and mel.max() == 1.0  # min-max: the floor value is 0
        # frames whose n_fft samples all lie outside the recording hold the floor value
        silent = [k for k in range(N_FRAMES) if k < first - near or k >= stop + near]
        assert (mel[:, silent] == floor).all()
        assert (mel[:, first + near : stop - near].max(axis=0) > 0.3).all()  # audio: noise or tones
    # 1.5 s: silence from just after the clip's end to the window's end, 47 frames
    assert found["clip15", 3]["valid"][1] + near + 47 == N_FRAMES


def test_placement_rules_on_the_default_config():
    config = FeatureConfig()  # 60 s at 48 kHz: a window of 11 s, the crop 0.501 s into it
    n = 60 * 48000
    offset = center_offset(config) * config.hop_length / 48000
    # The demo's call at 0.0912..0.8852 s: the crop starts at or before it, on the hop grid.
    start = event_window_start(0.0912, 0.8852, n_samples=n, config=config)
    assert start == -39 * 512 / 48000 and start + offset <= 0.0912 < start + offset + 512 / 48000
    assert valid_frames(start, n_samples=n, config=config) == (39, config.n_frames)
    # A call in the middle keeps the centred window, on the grid.
    assert (
        event_window_start(29.0, 31.0, n_samples=n, config=config) == round(24.5 * 48000 / 512) * 512 / 48000
    )
    # A recording of 4 s (shorter than the 10 s crop): the crop starts with it.
    assert event_window_start(1.0, 2.0, n_samples=4 * 48000, config=config) == -47 * 512 / 48000
    # 10.5 s: centred, (10.5 - 11) / 2 = -0.25 s, on the grid.
    assert event_window_start(5.0, 6.0, n_samples=504000, config=config) == -23 * 512 / 48000


# -- sliding windows --------------------------------------------------------------------------------


def test_windows_set_gives_a_short_recording_one_padded_window(tmp_path):
    from precompute.run import run_windows

    audio = write_edge_dataset(tmp_path)
    out = tmp_path / "windows"
    summary = run_windows(audio_dir=audio, out=out, config=TINY, step=1.0, jobs=1, progress=False)
    assert summary.failures == []
    starts, valid = {}, {}
    for entry in read_index(out).shards:
        with h5py.File(out / entry.file, "r", locking=False) as h5:
            for rid, start, v in zip(
                h5["recording_id"].asstr()[()], h5["start"][()], h5[VALID][()], strict=True
            ):
                starts.setdefault(rid, []).append(float(start))
                valid.setdefault(rid, []).append(tuple(v.tolist()))
    assert starts["clip15"] == [-OFFSET * HOP / SR] and valid["clip15"] == [(OFFSET, OFFSET + 94)]
    assert starts["clip23"] == [-6 * HOP / SR] and valid["clip23"] == [(6, (36800 + 6 * HOP) // HOP + 1)]
    assert len(starts["edges"]) == 7 and set(valid["edges"]) == {(0, N_FRAMES)}
    assert window_set_starts(8 * SR, config=TINY, step=1.0) == sorted(starts["edges"])


# -- crops on the valid frames ----------------------------------------------------------------------


def test_random_crops_stay_on_the_valid_frames(edge_run):
    config, _, out = edge_run
    seq = ShardBatches(
        out, split="all", batch_size=6, augment=Augment(freq_masks=0, time_masks=0), lookahead=False
    )
    valid = seq.features.valid
    np.testing.assert_array_equal(seq.valid, valid[seq.example_ids])
    assert (valid[:, 0] > 0).sum() == 2 and (valid[:, 1] < N_FRAMES).sum() == 3  # 4 padded examples
    seen = {}
    for epoch in range(400):
        for index in range(len(seq)):
            ids = seq.batch_example_ids(index, epoch=epoch)
            starts = seq.batch_params(index, ids.size, epoch=epoch).crop_start
            for i, s in zip(ids.tolist(), starts.tolist(), strict=True):
                seen.setdefault(i, set()).add(s)
    for i, starts in seen.items():
        first, stop = valid[i]
        if stop - first >= CROP:
            assert first <= min(starts) and max(starts) + CROP <= stop, i
        else:  # fewer valid frames than the crop: every crop holds all of them
            assert max(starts) <= first and stop <= min(starts) + CROP, i
        lo, hi = (first, stop - CROP) if stop - first >= CROP else (max(stop - CROP, 0), first)
        assert starts == set(range(lo, min(hi, N_FRAMES - CROP) + 1)), i  # each allowed start drawn
    seq.close()


def test_crops_of_examples_without_padding_are_drawn_as_before():
    augment = Augment(freq_masks=0, time_masks=0, gain=(1.0, 1.0))
    full = np.tile([0, N_FRAMES], (64, 1))
    plain = augment.sample_params(
        np.random.default_rng(7), 64, n_mels=32, n_frames=N_FRAMES, crop_frames=CROP
    )
    with_valid = augment.sample_params(
        np.random.default_rng(7), 64, n_mels=32, n_frames=N_FRAMES, crop_frames=CROP, valid=full
    )
    np.testing.assert_array_equal(plain.crop_start, with_valid.crop_start)
    # One padded row: the others keep their draws; it lands inside its valid frames.
    padded = full.copy()
    padded[5] = (20, N_FRAMES)
    moved = augment.sample_params(
        np.random.default_rng(7), 64, n_mels=32, n_frames=N_FRAMES, crop_frames=CROP, valid=padded
    )
    keep = np.arange(64) != 5
    np.testing.assert_array_equal(moved.crop_start[keep], plain.crop_start[keep])
    assert 20 <= moved.crop_start[5] <= N_FRAMES - CROP


def test_crops_on_valid_frames_are_uniform():
    augment = Augment(freq_masks=0, time_masks=0, gain=(1.0, 1.0))
    b = 12000
    valid = np.tile([20, N_FRAMES], (b, 1))  # allowed starts 20..31
    starts = augment.sample_params(
        np.random.default_rng(3), b, n_mels=32, n_frames=N_FRAMES, crop_frames=CROP, valid=valid
    ).crop_start
    counts = np.bincount(starts, minlength=N_FRAMES - CROP + 1)
    assert counts[:20].sum() == 0 and (counts[20:] > 0).all()
    assert np.abs(counts[20:] / b * 12 - 1).max() < 0.15
    # A short clip (valid 15..50, fewer than the crop): crops covering all of it, starts 0..15;
    # max_shift_frames 3 around the centre (15) leaves 12..15.
    valid = np.tile([15, 50], (b, 1))
    limited = Augment(max_shift_frames=3, freq_masks=0, time_masks=0).sample_params(
        np.random.default_rng(4), b, n_mels=32, n_frames=N_FRAMES, crop_frames=CROP, valid=valid
    )
    assert set(limited.crop_start.tolist()) == {12, 13, 14, 15}


# -- the valid dataset in the format -----------------------------------------------------------------


def test_valid_outside_the_stored_frames_is_refused(edge_run, tmp_path):
    import shutil

    _, _, out = edge_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / read_index(copy).shards[0].file
    with h5py.File(shard, "r+", locking=False) as h5:
        h5[VALID][0] = [40, 30]
    assert any(
        f"{VALID} of example 0 is [40, 30), outside 0 <= first < stop <= 157" in p for p in verify(copy)
    )
    with pytest.raises(FormatError, match=r"valid of example 0 is \[40, 30\)"):
        FeatureSet(copy)


# -- a plain h5py handle open in the same process -----------------------------------------------------


@pytest.mark.parametrize(
    "flags", [{}, {"locking": True}, {"locking": False}], ids=["default", "locking", "no-locking"]
)
def test_loader_works_while_a_user_holds_a_plain_handle(edge_run, flags):
    _, _, out = edge_run
    shard = out / read_index(out).shards[0].file
    with h5py.File(shard, "r", **flags) as user:
        expected = user["mel"][1].astype(np.float32)
        features = FeatureSet(out)
        for direct in (True, False):
            x = np.empty((1, TINY.n_mels, N_FRAMES, 1), np.float32)
            MelReader(features, direct=direct).read(np.array([1]), np.array([0]), x)
            np.testing.assert_array_equal(x[0, :, :, 0], expected)
        assert verify(out) == []
        assert any("examples" in line for line in inspect_lines(out))
        np.testing.assert_array_equal(user["mel"][1].astype(np.float32), expected)  # still readable


def test_a_user_can_open_a_shard_the_loader_holds_open(edge_run):
    _, _, out = edge_run
    shard = out / read_index(out).shards[0].file
    features = FeatureSet(out)
    reader = MelReader(features, direct=False)  # the h5py path keeps its handle between reads
    first = np.empty((1, TINY.n_mels, N_FRAMES, 1), np.float32)
    reader.read(np.array([2]), np.array([0]), first)
    with h5py.File(shard, "r") as user:
        np.testing.assert_array_equal(user["mel"][2].astype(np.float32), first[0, :, :, 0])
        again = np.empty_like(first)
        reader.read(np.array([2]), np.array([0]), again)
        np.testing.assert_array_equal(again, first)
        assert verify(out) == []
    reader.close()


def test_preview_hatches_the_padding_beyond_the_recording(edge_run):
    pytest.importorskip("matplotlib")
    from experiments.pictures import preview_figure

    config, found, out = edge_run
    spf = config.seconds_per_frame
    fig = preview_figure(out, per_class=4)
    by_title = {}
    for (rid, _), ex in found.items():
        by_title[f"{rid} @ {ex['start']:.1f} s"] = ex["valid"]
    shown = padded = 0
    for ax in fig.axes:
        title = ax.get_title().split(" · ")[-1]
        if title not in by_title:
            continue
        shown += 1
        first, stop = by_title[title]
        expected = [(0.0, first * spf)] if first > 0 else []
        expected += [(stop * spf, N_FRAMES * spf)] if stop < N_FRAMES else []
        hatched = sorted(
            (round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6))
            for p in ax.patches
            if p.get_hatch() == "///"
        )
        assert hatched == [(round(a, 6), round(b, 6)) for a, b in expected], title
        padded += bool(expected)
    assert shown == 6 and padded >= 3  # the two edge calls and both clips are padded
