"""Tests for the synthetic RFCX dataset (the precompute/demo package)."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melshards.errors import ConfigError
from precompute import demo
from precompute.demo.render import _render_call
from precompute.demo.scene import PITCH_JITTER, TICKS, _sample_call, sample_scene
from precompute.demo.splits import MAX_CALLS_PER_BOUT, plan_split

SMALL = {"recordings": 6, "test_recordings": 2, "seconds": 20.0, "progress": False}
HEADER = "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max"
CSV_FILES = ("train_tp.csv", "train_fp.csv", "test_events.csv", "test_ground_truth.csv", "README.txt")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    return out, demo.synthesize(out, seed=3, jobs=1, **SMALL)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_audio(path: Path) -> np.ndarray:
    samples, _ = sf.read(path, dtype="int16")
    return samples


def band_energy_db(samples: np.ndarray, *, sample_rate: int, row: dict, others: list[dict]) -> float:
    """Mean power in the row's box over the same band in the second before and after, dB.

    Frames inside the boxes of ``others`` (the recording's other labelled calls) do not count
    as "outside": a bout puts calls of one species a fraction of a second apart.
    """
    n_fft, hop = 1024, 256
    x = samples.astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    times = (np.arange(power.shape[0]) * hop + n_fft / 2) / sample_rate
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    t_min, t_max = float(row["t_min"]), float(row["t_max"])
    band = (freqs >= float(row["f_min"])) & (freqs <= float(row["f_max"]))
    inside = (times >= t_min) & (times <= t_max)
    before = (times >= t_min - 1) & (times < t_min - 0.05)
    after = (times > t_max + 0.05) & (times <= t_max + 1)
    for other in others:
        after &= (times < float(other["t_min"])) | (times > float(other["t_max"]))
        before &= (times < float(other["t_min"])) | (times > float(other["t_max"]))
    if not (before | after).any():
        return math.nan
    e_in = power[np.ix_(inside, band)].mean()
    e_out = power[np.ix_(before | after, band)].mean()
    return 10 * math.log10(e_in / e_out)


def test_layout_and_summary(small):
    out, summary = small
    train = sorted(p.stem for p in (out / "train").glob("*.flac"))
    test = sorted(p.stem for p in (out / "test").glob("*.flac"))
    assert len(train) == 6 and len(test) == 2
    assert all(re.fullmatch(r"[0-9a-f]{9}", rid) for rid in train + test)
    assert not set(train) & set(test)
    assert not list(out.rglob("*.partial"))
    tp = read_rows(out / "train_tp.csv")
    fp = read_rows(out / "train_fp.csv")
    assert summary["tp_rows"] == len(tp) > 0
    assert summary["fp_rows"] == len(fp)
    assert summary["test_events"] == len(read_rows(out / "test_events.csv"))
    assert summary["tp_per_species"] == [
        sum(int(r["species_id"]) == s for r in tp) for s in range(demo.N_SPECIES)
    ]
    assert summary["seconds"] == 20.0
    assert summary["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert {r["recording_id"] for r in tp} <= set(train)
    readme = (out / "README.txt").read_text()
    assert "seed 3" in readme and f"TP rows {len(tp)}" in readme


def test_csv_headers_are_exact(small):
    out, _ = small
    for name in ("train_tp.csv", "train_fp.csv", "test_events.csv"):
        assert (out / name).read_text().splitlines()[0] == HEADER
    truth_header = (out / "test_ground_truth.csv").read_text().splitlines()[0]
    assert truth_header == "recording_id," + ",".join(f"s{i}" for i in range(24))


def test_rows_are_valid_boxes(small):
    out, _ = small
    for name in ("train_tp.csv", "train_fp.csv", "test_events.csv"):
        for row in read_rows(out / name):
            t_min, t_max = float(row["t_min"]), float(row["t_max"])
            f_min, f_max = float(row["f_min"]), float(row["f_max"])
            assert 0 <= t_min < t_max <= 20.0
            assert 0 < f_min < f_max < 24000
            assert re.fullmatch(r"\d+\.\d{4}", row["t_min"]) and re.fullmatch(r"\d+\.\d{2}", row["f_max"])
            species = demo.SPECIES[int(row["species_id"])]
            assert int(row["songtype_id"]) == species.songtype
            scale = species.confuser if name == "train_fp.csv" else 1.0
            low, high = (f * scale for f in species.band)
            assert low * (1 - PITCH_JITTER) - 0.01 <= f_min <= low * (1 + PITCH_JITTER) + 0.01
            assert high * (1 - PITCH_JITTER) - 0.01 <= f_max <= high * (1 + PITCH_JITTER) + 0.01
            length = t_max - t_min
            assert species.duration[0] - 1e-4 <= length <= species.duration[1] + 1e-4


def test_audio_is_48k_mono_int16(small):
    out, _ = small
    for path in sorted(out.rglob("*.flac")):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (48000, 1, "FLAC", "PCM_16")
        samples = read_audio(path)
        assert samples.dtype == np.int16 and samples.shape == (20 * 48000,)
        assert 10 < np.abs(samples).max() < 32767  # audible, never clipped
        assert 5 < samples.astype(np.float64).std() < 3000


def test_labelled_calls_stand_out_of_their_band(small):
    out, _ = small
    gains = []
    for split, name in (("train", "train_tp.csv"), ("test", "test_events.csv")):
        by_recording = defaultdict(list)
        for row in read_rows(out / name):
            by_recording[row["recording_id"]].append(row)
        for recording_id, rows in by_recording.items():
            samples = read_audio(out / split / f"{recording_id}.flac")
            for row in rows:
                others = [r for r in rows if r is not row]
                gains.append(band_energy_db(samples, sample_rate=48000, row=row, others=others))
    gains = np.array(gains)
    gains = gains[~np.isnan(gains)]
    assert gains.size > 20
    assert np.mean(gains > 3.0) >= 0.85
    assert np.median(gains) > 8.0


def test_false_positives_never_overlap_a_true_call_of_their_species(small):
    out, _ = small
    tp = defaultdict(list)
    for row in read_rows(out / "train_tp.csv"):
        tp[(row["recording_id"], row["species_id"])].append((float(row["t_min"]), float(row["t_max"])))
    for row in read_rows(out / "train_fp.csv"):
        a, b = float(row["t_min"]), float(row["t_max"])
        for c, d in tp[(row["recording_id"], row["species_id"])]:
            assert b <= c or a >= d


def test_ground_truth_matches_test_events(small):
    out, _ = small
    present = {(r["recording_id"], int(r["species_id"])) for r in read_rows(out / "test_events.csv")}
    truth = read_rows(out / "test_ground_truth.csv")
    assert sorted(r["recording_id"] for r in truth) == sorted(p.stem for p in (out / "test").glob("*.flac"))
    for row in truth:
        flags = [int(row[f"s{s}"]) for s in range(24)]
        assert flags == [int((row["recording_id"], s) in present) for s in range(24)]
        assert 1 <= sum(flags) <= 3


def test_same_seed_gives_same_bytes_with_any_jobs(small, tmp_path):
    out, _ = small
    again = tmp_path / "again"
    demo.synthesize(again, seed=3, jobs=2, **SMALL)
    for name in CSV_FILES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    files = sorted(p.relative_to(out) for p in out.rglob("*.flac"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.flac"))
    for rel in files:
        np.testing.assert_array_equal(read_audio(again / rel), read_audio(out / rel))


def test_other_seed_gives_other_data(small, tmp_path):
    out, _ = small
    other = tmp_path / "other"
    demo.synthesize(other, seed=4, recordings=2, test_recordings=1, seconds=20.0, progress=False)
    ids = {p.stem for p in out.rglob("*.flac")}
    assert not ids & {p.stem for p in other.rglob("*.flac")}
    first = read_audio(next((out / "train").glob("*.flac")))
    second = read_audio(next((other / "train").glob("*.flac")))
    assert not np.array_equal(first, second)
    assert (other / "train_tp.csv").read_bytes() != (out / "train_tp.csv").read_bytes()


@pytest.mark.parametrize(
    ("argument", "value", "match"),
    [
        ("recordings", 0, "recordings must be an integer >= 1, got 0"),
        ("recordings", 2.5, "recordings must be an integer >= 1, got 2.5"),
        ("test_recordings", -1, "test_recordings must be an integer >= 0, got -1"),
        ("seed", -3, "seed must be an integer >= 0, got -3"),
        ("seconds", 2.0, "seconds 2.0"),
        ("seconds", 10.00001, "seconds 10.00001"),
        ("sample_rate", 16000, r"sample_rate must be an integer in \[32000, 192000\], got 16000"),
        ("jobs", 0, "jobs 0"),
    ],
)
def test_invalid_arguments_raise_config_error(tmp_path, argument, value, match):
    with pytest.raises(ConfigError, match=match):
        demo.synthesize(tmp_path / "x", progress=False, **{argument: value})
    assert not (tmp_path / "x").exists()


def test_species_table_is_varied_and_confusers_stay_apart():
    assert len(demo.SPECIES) == 24
    assert len({s.name for s in demo.SPECIES}) == 24
    shapes = Counter(s.shape for s in demo.SPECIES)
    assert set(shapes) == {"whistle", "upsweep", "downsweep", "trill", "harmonic", "clicks", "buzz"}
    assert {s.songtype for s in demo.SPECIES} == {1, 4}
    for species in demo.SPECIES:
        assert species.band[0] >= 500 and species.band[1] * (1 + PITCH_JITTER) <= 14000
        assert 0.3 <= species.duration[0] <= species.duration[1] <= 3.0

    def centre(band, scale=1.0):
        return math.sqrt(band[0] * band[1]) * scale

    for i, species in enumerate(demo.SPECIES):
        lookalike = centre(species.band, species.confuser)
        for j, other in enumerate(demo.SPECIES):
            if other.shape != species.shape:
                continue
            # a look-alike sits at least 15 % away from every species of its shape
            assert abs(math.log(lookalike / centre(other.band))) >= math.log(1.15), (i, j)
            if j != i:  # and species sharing a shape are apart, so the task is learnable
                assert abs(math.log(centre(species.band) / centre(other.band))) >= math.log(1.15)


@pytest.mark.parametrize("index", range(len(demo.SPECIES) + len(demo.DISTRACTORS)))
def test_call_energy_lies_inside_its_label_band(index):
    templates = demo.SPECIES + demo.DISTRACTORS
    rng = np.random.default_rng(index)
    call = _sample_call(templates[index], rng=rng, kind="tp", species_id=index)
    n = call.duration * 48000 // TICKS
    wave = _render_call(call, n=n, sample_rate=48000)
    assert wave.dtype == np.float32 and wave.shape == (n,)
    assert np.mean(wave.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
    power = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(n, 1 / 48000)
    inside = (freqs >= call.f_min - 150) & (freqs <= call.f_max + 150)
    assert power[inside].sum() / power.sum() > 0.95
    # and the call reaches both ends of its band (the box is not wider than the call)
    for edge in (call.f_min, call.f_max):
        near = np.abs(freqs - edge) < max(0.1 * (call.f_max - call.f_min), 150)
        assert power[near].sum() / power.sum() > 0.002


def test_default_plan_gives_every_species_twenty_calls():
    plans = plan_split(seed=0, split="train", count=96)
    calls = Counter()
    appearances = Counter()
    for plan in plans:
        assert 1 <= len(plan.bouts) <= 3
        assert len({s for s, _ in plan.bouts}) == len(plan.bouts)
        for species, n_calls in plan.bouts:
            assert 1 <= n_calls <= MAX_CALLS_PER_BOUT
            calls[species] += n_calls
            appearances[species] += 1
    assert min(calls[s] for s in range(24)) >= 20
    assert max(appearances.values()) - min(appearances.values()) <= 1
    lookalikes = Counter(s for plan in plans for s in plan.confusers)
    assert 0.5 <= sum(lookalikes.values()) / 96 <= 1.0
    assert max(lookalikes.values()) - min(lookalikes[s] for s in range(24)) <= 1


def test_default_scenes_place_every_call_and_overlap_some():
    plans = plan_split(seed=0, split="train", count=96)
    overlapping = 0
    for index, plan in enumerate(plans):
        rng = np.random.default_rng(index)
        scene = sample_scene(plan, rng=rng, sample_rate=48000, n_samples=60 * 48000)
        tp = [c for c in scene.calls if c.kind == "tp"]
        fp = [c for c in scene.calls if c.kind == "fp"]
        assert len(tp) == sum(n for _, n in plan.bouts)
        assert len(fp) == len(plan.confusers)
        assert all(c.start >= 0 and c.stop <= 60 * TICKS for c in scene.calls)
        overlapping += any(
            a.start < b.stop and b.start < a.stop for a in tp for b in tp if a.species_id < b.species_id
        )
    assert 0.05 <= overlapping / len(plans) <= 0.3


def test_rerun_overwrites_but_another_run_is_refused(tmp_path):
    out = tmp_path / "data"
    arguments = {"recordings": 1, "test_recordings": 0, "seconds": 5.0, "progress": False}
    demo.synthesize(out, seed=1, **arguments)
    first = {name: (out / name).read_bytes() for name in CSV_FILES}
    demo.synthesize(out, seed=1, **arguments)
    assert {name: (out / name).read_bytes() for name in CSV_FILES} == first
    assert first["test_ground_truth.csv"].decode().splitlines() == [
        "recording_id," + ",".join(f"s{i}" for i in range(24))
    ]
    assert first["test_events.csv"].decode() == HEADER + "\n"
    with pytest.raises(ConfigError, match="another run"):
        demo.synthesize(out, seed=2, **arguments)


# -- sparse labels (label_fraction) ------------------------------------------------------------


@pytest.fixture(scope="module")
def sparse(tmp_path_factory, small) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sparse") / "data"
    return out, demo.synthesize(out, seed=3, jobs=1, label_fraction=0.3, **SMALL)


def test_sparse_demo_labels_exactly_the_fraction_asked(sparse, small):
    (out, summary), (full, full_summary) = sparse, small
    events = read_rows(out / "train_events.csv")
    labelled = read_rows(out / "train_tp.csv")
    assert len(events) == full_summary["tp_rows"] == summary["train_calls"]
    assert len(labelled) == summary["tp_rows"] == round(0.3 * len(events))
    # the labelled rows are some of the calls, in file order, at least one per recording
    keys = [tuple(r.values()) for r in events]
    positions = [keys.index(tuple(r.values())) for r in labelled]
    assert positions == sorted(positions)
    assert {r["recording_id"] for r in labelled} == {r["recording_id"] for r in events}
    # with every label, train_tp.csv lists every call
    assert read_rows(full / "train_tp.csv") == read_rows(full / "train_events.csv")


def test_sparse_demo_keeps_every_call_in_audio_and_ground_truth(sparse, small):
    (out, _), (full, _) = sparse, small
    for name in ("test_ground_truth.csv", "test_events.csv", "train_events.csv", "train_fp.csv"):
        assert read_rows(out / name) == read_rows(full / name), name
    for path in sorted((full / "train").glob("*.flac"))[:2]:
        assert np.array_equal(read_audio(out / "train" / path.name), read_audio(path))


def test_sparse_labels_is_deterministic_by_seed():
    rows = [(f"r{k % 4}", k) for k in range(40)]
    a = demo.dataset.sparse_labels(rows, fraction=0.25, seed=1)
    assert a == demo.dataset.sparse_labels(rows, fraction=0.25, seed=1)
    assert a != demo.dataset.sparse_labels(rows, fraction=0.25, seed=2)
    assert len(a) == 10 and {r[0] for r in a} == {"r0", "r1", "r2", "r3"}
    assert len(demo.dataset.sparse_labels(rows, fraction=0.05, seed=1)) == 2  # fewer than recordings


@pytest.mark.parametrize("fraction", [0.0, 1.5, "half"])
def test_label_fraction_out_of_range_is_refused(tmp_path, fraction):
    with pytest.raises(ConfigError, match="label_fraction"):
        demo.synthesize(tmp_path, label_fraction=fraction, **SMALL)
