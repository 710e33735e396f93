"""Synthesize the embedded default dataset in the layout of the RFCX species audio data.

``synthesize(out)`` writes::

    out/train/<recording_id>.flac    48 kHz mono 16-bit FLAC, 60 s each
    out/train_tp.csv                 labelled calls (RFCX columns)
    out/train_fp.csv                 confusable calls, labelled with the species they mimic
    out/test/<recording_id>.flac     unlabelled recordings for scoring
    out/test_ground_truth.csv        recording_id,s0..s23: 1 where the species calls
    out/test_events.csv              every species call placed in a test recording
    out/README.txt                   seed and counts

Each recording is a rainforest-like background (coloured noise, rain bursts, insect buzz
bands, unlabelled distractor calls) with a few bouts of species calls on top. The 24 species
are fixed templates (shape, band, duration range) that differ in shape and band; some pairs
share a shape in neighbouring bands so the task is not trivial. Every call is drawn with
jitter in pitch, duration, rate and in-band SNR, and its label box is its exact extent.

Everything is a function of the seed: each recording draws from its own generator, seeded by
``(seed, stream, split, index)``, so recordings can be made in any order and in parallel
with identical results.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from joblib import Parallel, delayed
from scipy.fft import next_fast_len
from tqdm.auto import tqdm

from loader.errors import ConfigError

COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
SHAPES = (
    "whistle",  # tone with sinusoidal vibrato spanning the band; rate = vibrato Hz
    "upsweep",  # exponential glide from the band's bottom to its top
    "downsweep",  # exponential glide from the top to the bottom
    "trill",  # rapid short down-chirped notes across the band; rate = notes per second
    "harmonic",  # stack of `harmonics` partials whose fundamental arches up slightly
    "clicks",  # train of short band-limited noise clicks; rate = clicks per second
    "buzz",  # band of noise, amplitude modulated at `rate` Hz
    "warble",  # random piecewise glide; rate = turning points per second (distractors)
    "croak",  # pulsed low harmonic stack; rate = pulses per second (distractors)
    "chip",  # very short fast down-chirp (distractors)
)
_RATED = ("whistle", "trill", "clicks", "buzz", "warble", "croak")
_STACKED = ("harmonic", "croak")


@dataclass(frozen=True)
class CallTemplate:
    """A kind of call: its shape, band and duration before per-call jitter.

    Parameters
    ----------
    name : str
        Readable label (used in README.txt only).
    shape : str
        One of ``SHAPES``.
    band : tuple of float
        ``(low, high)`` in Hz: the call's full frequency extent, which becomes its label box.
        For stacked shapes ``high / harmonics`` is the fundamental at the top of its arch.
    duration : tuple of float
        ``(shortest, longest)`` in seconds.
    rate : float
        Shape-specific rate in Hz (see ``SHAPES``); 0 where the shape has none.
    harmonics : int
        Number of partials of stacked shapes.
    songtype : int
        RFCX ``songtype_id``.
    confuser : float
        Band scale of this species' confusable look-alike (written to ``train_fp.csv``);
        1 for distractors, which have none.
    """

    name: str
    shape: str
    band: tuple[float, float]
    duration: tuple[float, float]
    rate: float = 0.0
    harmonics: int = 1
    songtype: int = 1
    confuser: float = 1.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"call template {self.name}: shape {self.shape!r} not in {SHAPES}")
        low, high = self.band
        if not 100.0 <= low < high <= 15000.0:
            raise ConfigError(f"call template {self.name}: band {self.band} outside 100..15000 Hz")
        if not 0.02 <= self.duration[0] <= self.duration[1] <= 4.0:
            raise ConfigError(f"call template {self.name}: duration {self.duration} not in 0.02..4 s")
        if self.shape in _RATED and self.rate <= 0:
            raise ConfigError(f"call template {self.name}: shape {self.shape} needs rate > 0")
        if self.shape in _STACKED and not low < high / self.harmonics <= 1.1 * low:
            raise ConfigError(
                f"call template {self.name}: band {self.band} with {self.harmonics} harmonics "
                "needs a fundamental arch of 0..10 %"
            )
        if self.confuser <= 0:
            raise ConfigError(f"call template {self.name}: confuser {self.confuser} must be > 0")


# Pairs that share a shape in neighbouring bands (1/2, 3/4, 5/6, 7/8, 9/10, 13/22, 11/21)
# keep the task from being solvable by band or shape alone. Every confuser scale moves the
# look-alike at least 15 % away from every species of the same shape (tested).
SPECIES: tuple[CallTemplate, ...] = (
    CallTemplate("whistle 2 kHz", "whistle", (1800, 2200), (0.8, 1.6), rate=6, confuser=1.3),
    CallTemplate("whistle 3.6 kHz", "whistle", (3300, 3900), (0.6, 1.2), rate=9, confuser=0.75),
    CallTemplate("whistle 4.6 kHz", "whistle", (4250, 4950), (0.6, 1.2), rate=12, confuser=1.2),
    CallTemplate("short upsweep", "upsweep", (2500, 4500), (0.3, 0.6), confuser=1.3),
    CallTemplate("long upsweep", "upsweep", (1200, 3000), (1.5, 2.5), confuser=0.7),
    CallTemplate("steep downsweep", "downsweep", (3500, 7000), (0.3, 0.6), confuser=1.3),
    CallTemplate("slow downsweep", "downsweep", (3000, 5000), (0.8, 1.5), confuser=0.7),
    CallTemplate("fast trill", "trill", (5200, 6200), (1.0, 2.0), rate=22, confuser=1.25),
    CallTemplate("slow trill", "trill", (4200, 5000), (1.0, 2.5), rate=12, confuser=0.78),
    CallTemplate("stack 600 Hz", "harmonic", (600, 3100), (0.5, 1.0), harmonics=5, confuser=0.8),
    CallTemplate("stack 800 Hz", "harmonic", (800, 3300), (0.5, 1.0), harmonics=4, confuser=1.25),
    CallTemplate("clicks 2-6 kHz", "clicks", (2000, 6000), (1.0, 2.5), rate=8, confuser=1.3),
    CallTemplate("clicks 6-11 kHz", "clicks", (6000, 11000), (0.8, 2.0), rate=15, confuser=0.75),
    CallTemplate("low buzz", "buzz", (1000, 1600), (0.5, 1.5), rate=50, confuser=1.3),
    CallTemplate("high buzz", "buzz", (8000, 10000), (0.8, 2.0), rate=70, confuser=0.8),
    CallTemplate("whistle 9.5 kHz", "whistle", (9000, 10000), (0.4, 0.9), rate=16, confuser=0.8),
    CallTemplate("high upsweep", "upsweep", (8000, 12000), (0.3, 0.7), confuser=0.75),
    CallTemplate("low downsweep", "downsweep", (700, 1500), (0.6, 1.2), songtype=4, confuser=1.35),
    CallTemplate("low trill", "trill", (1200, 1600), (1.0, 3.0), rate=10, confuser=1.3),
    CallTemplate("stack 2 kHz", "harmonic", (2000, 6300), (0.4, 0.8), harmonics=3, confuser=0.75),
    CallTemplate("tone 6.6 kHz", "whistle", (6450, 6750), (1.0, 2.0), rate=2.5, confuser=0.82),
    CallTemplate("slow clicks", "clicks", (800, 2500), (1.5, 3.0), rate=4, confuser=1.3),
    CallTemplate("mid buzz", "buzz", (4000, 5000), (0.6, 1.4), rate=35, confuser=1.25),
    CallTemplate("high trill", "trill", (10000, 12500), (0.5, 1.5), rate=18, songtype=4, confuser=0.78),
)
N_SPECIES = len(SPECIES)

# Unlabelled calls whose shapes no species uses.
DISTRACTORS: tuple[CallTemplate, ...] = (
    CallTemplate("warble", "warble", (1500, 7000), (0.5, 2.0), rate=4),
    CallTemplate("croak", "croak", (150, 1300), (0.3, 1.0), rate=25, harmonics=8),
    CallTemplate("chip", "chip", (3000, 9000), (0.04, 0.12)),
)

TICKS = 10_000  # label times live on a 0.1 ms grid, so the CSV's 4 decimals are exact
PITCH_JITTER = 0.06  # each call's frequencies are scaled by U(1 - j, 1 + j)
RATE_JITTER = 0.08
CALL_SNR_DB = (5.0, 20.0)  # call power over background power in the call's band
DISTRACTOR_SNR_DB = (3.0, 15.0)
INSECT_SNR_DB = (4.0, 14.0)  # insect band power over the coloured noise in that band
BACKGROUND_DBFS = -60.0  # coloured-noise rms; it sets the FLAC size (bits per sample)
SNR_MIN_BAND_HZ = 500.0  # SNR of narrow calls is measured against at least this much band
OVERLAP_SHARE = 0.15  # share of recordings in which two calls of different species overlap
CALLS_PER_BOUT = 2.5  # mean TP calls per (recording, species); 1 to 4
MAX_CALLS_PER_BOUT = 4
SPECIES_PER_RECORDING = {1: 0.3, 2: 0.4, 3: 0.3}
CONFUSERS_PER_RECORDING = {0: 0.4, 1: 0.45, 2: 0.15}
_SPLITS = {"train": 0, "test": 1}
_STREAM_IDS, _STREAM_PLAN, _STREAM_RECORDING = 0, 1, 2


@dataclass(frozen=True)
class _Call:
    """One sampled call; times in ticks, frequencies already rounded as written."""

    kind: str  # "tp", "fp" or "distractor"
    species_id: int  # -1 for distractors
    songtype: int
    shape: str
    duration: int
    f_min: float
    f_max: float
    rate: float
    harmonics: int
    snr_db: float  # call power over background power in its band
    seed: int
    contour: tuple[float, ...] = ()
    start: int = -1
    power: float = 0.0  # mean power of the call in the mix, full scale = 1

    @property
    def stop(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class _Insect:
    f_min: float
    f_max: float
    level: float  # rms, full scale = 1
    wobble_hz: float
    wobble_depth: float
    pulse_hz: float  # 0: continuous
    pulse_sharpness: int
    phase: float


@dataclass(frozen=True)
class _Rain:
    start: int  # samples
    length: int
    level: float
    attack: float  # seconds
    decay: float
    seed: int


@dataclass(frozen=True)
class _Scene:
    """Everything one recording contains, sampled before any audio is made."""

    level: float
    slope: float  # coloured noise power falls as f ** -slope
    seed: int
    insects: tuple[_Insect, ...]
    rains: tuple[_Rain, ...]
    calls: tuple[_Call, ...]


@dataclass(frozen=True)
class _Plan:
    """The labelled content of one recording, planned across its split for balance."""

    bouts: tuple[tuple[int, int], ...]  # (species_id, number of calls)
    confusers: tuple[int, ...]  # species whose look-alikes appear


@dataclass(frozen=True)
class _Task:
    """What a worker needs to make one recording: plain values, no handles."""

    split: str
    index: int
    recording_id: str
    plan: _Plan
    seed: int
    sample_rate: int
    seconds: float
    path: str


def synthesize(
    out: str | Path,
    *,
    seed: int = 0,
    recordings: int = 96,
    test_recordings: int = 24,
    sample_rate: int = 48000,
    seconds: float = 60.0,
    jobs: int = 1,
    progress: bool = True,
) -> dict:
    """Write a synthetic RFCX-style dataset into ``out``.

    Parameters
    ----------
    out : str or Path
        Output directory; created if missing. Files of an earlier run are overwritten.
    seed : int
        Everything written is a function of the seed and the other parameters (not of
        ``jobs``).
    recordings, test_recordings : int
        Number of train recordings (at least 1) and of test recordings (0 or more).
    sample_rate : int
        Samples per second, 32000..192000.
    seconds : float
        Length of every recording, 5..600 s; ``seconds * sample_rate`` must be whole.
    jobs : int
        Worker processes (joblib); -1 for all cores.
    progress : bool
        Show one tqdm bar over all recordings.

    Returns
    -------
    summary : dict
        ``train_recordings``, ``test_recordings``, ``tp_rows``, ``fp_rows``,
        ``test_events``, ``tp_per_species`` and ``fp_per_species`` (lists of 24 counts),
        ``seconds`` (length of each recording), ``bytes`` (size of everything written) and
        ``elapsed_s``.

    Raises
    ------
    ConfigError
        An argument is out of range.
    """
    began = time.perf_counter()
    _check_int("seed", seed, minimum=0)
    _check_int("recordings", recordings, minimum=1)
    _check_int("test_recordings", test_recordings, minimum=0)
    _check_int("sample_rate", sample_rate, minimum=32000, maximum=192000)
    _check_int("jobs", jobs, minimum=-1)
    if jobs == 0:
        raise ConfigError("jobs 0: use a positive number of workers, or -1 for all cores")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigError(f"seconds {seconds!r} is not a number")
    if not 5.0 <= seconds <= 600.0:
        raise ConfigError(f"seconds {seconds} is outside 5..600")
    if abs(seconds * sample_rate - round(seconds * sample_rate)) > 1e-6:
        raise ConfigError(f"seconds {seconds} times sample_rate {sample_rate} is not a whole count")

    out = Path(out)
    ids = _recording_ids(seed=seed, count=recordings + test_recordings)
    split_ids = {"train": ids[:recordings], "test": ids[recordings:]}
    _refuse_foreign_recordings(out, split_ids)
    tasks = []
    for split, names in split_ids.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        plans = _plan_split(seed=seed, split=split, count=len(names)) if names else []
        for index, (recording_id, plan) in enumerate(zip(names, plans, strict=True)):
            tasks.append(
                _Task(
                    split=split,
                    index=index,
                    recording_id=recording_id,
                    plan=plan,
                    seed=seed,
                    sample_rate=sample_rate,
                    seconds=float(seconds),
                    path=str(out / split / f"{recording_id}.flac"),
                )
            )

    calls: dict[tuple[str, int], tuple[str, list[_Call]]] = {}
    for task, made in _run(tasks, jobs=jobs, progress=progress):
        calls[(task.split, task.index)] = (task.recording_id, made)

    def rows(split: str, kind: str) -> list[tuple]:
        found = []
        for (where, _), (recording_id, made) in calls.items():
            if where == split:
                found += [(recording_id, c) for c in made if c.kind == kind]
        found.sort(key=lambda item: (item[0], item[1].start, item[1].species_id))
        return [
            (
                rid,
                c.species_id,
                c.songtype,
                f"{c.start / TICKS:.4f}",
                f"{c.f_min:.2f}",
                f"{c.stop / TICKS:.4f}",
                f"{c.f_max:.2f}",
            )
            for rid, c in found
        ]

    tp, fp, events = rows("train", "tp"), rows("train", "fp"), rows("test", "tp")
    _write_csv(out / "train_tp.csv", COLUMNS, tp)
    _write_csv(out / "train_fp.csv", COLUMNS, fp)
    present = {(row[0], row[1]) for row in events}
    truth = [
        (rid, *(int((rid, s) in present) for s in range(N_SPECIES))) for rid in sorted(split_ids["test"])
    ]
    _write_csv(out / "test_events.csv", COLUMNS, events)
    _write_csv(out / "test_ground_truth.csv", ("recording_id", *(f"s{s}" for s in range(N_SPECIES))), truth)

    summary = {
        "train_recordings": recordings,
        "test_recordings": test_recordings,
        "tp_rows": len(tp),
        "fp_rows": len(fp),
        "test_events": len(events),
        "tp_per_species": [sum(1 for r in tp if r[1] == s) for s in range(N_SPECIES)],
        "fp_per_species": [sum(1 for r in fp if r[1] == s) for s in range(N_SPECIES)],
        "seconds": float(seconds),
    }
    _write_readme(out / "README.txt", seed=seed, sample_rate=sample_rate, summary=summary)
    summary["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary["elapsed_s"] = time.perf_counter() - began
    return summary


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} {value!r} is not an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name} {value} is out of range (expected {bound})")


def _refuse_foreign_recordings(out: Path, split_ids: dict[str, list[str]]) -> None:
    """Refuse an output directory holding recordings this run would not write: left next to
    the new ones they would be taken for part of the dataset."""
    for split, names in split_ids.items():
        folder = out / split
        if not folder.is_dir():
            continue
        wanted = set(names)
        foreign = sorted(p.name for p in folder.glob("*.flac") if p.stem not in wanted)
        if foreign:
            raise ConfigError(
                f"{folder} holds {len(foreign)} recording(s) of another run (first: {foreign[0]}); "
                "write to an empty directory or remove it"
            )


def _run(tasks: list[_Task], *, jobs: int, progress: bool):
    """Yield ``(task, calls)`` as recordings finish, in any order, with one progress bar."""
    if jobs == 1:
        results = map(_make_recording, tasks)
    else:
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_make_recording)(task) for task in tasks
        )
    with tqdm(total=len(tasks), desc="demo-data", unit="rec", disable=not progress) as bar:
        for result in results:
            bar.update(1)
            yield result


def _recording_ids(*, seed: int, count: int) -> list[str]:
    """Distinct 9-digit hex ids (the RFCX form), train ids first."""
    rng = np.random.default_rng([seed, _STREAM_IDS])
    values = rng.choice(16**9, size=count, replace=False)
    return [f"{int(v):09x}" for v in values]


def _plan_split(*, seed: int, split: str, count: int) -> list[_Plan]:
    """Which species call in each recording, how often, and which species' look-alikes
    appear.

    Species are dealt from reshuffled decks of all 24, so every species appears in nearly
    the same number of recordings; each species then gets ``ceil(2.5 * appearances)`` calls
    (20 with the default 96 recordings) spread over its appearances, 1 to 4 per bout.
    Look-alikes are dealt from decks of their own.
    """
    rng = np.random.default_rng([seed, _STREAM_PLAN, _SPLITS[split]])
    sizes = []
    for size, share in SPECIES_PER_RECORDING.items():
        sizes += [size] * round(share * count)
    sizes = (sizes + [2] * count)[:count]
    sizes = [int(s) for s in rng.permutation(sizes)]
    deck: list[int] = []
    chosen = [_deal(deck, size, rng=rng) for size in sizes]

    calls = [dict.fromkeys(picked, 1) for picked in chosen]
    for species in range(N_SPECIES):
        slots = [i for i, picked in enumerate(chosen) if species in picked]
        extra = math.ceil(CALLS_PER_BOUT * len(slots)) - len(slots)
        for _ in range(extra):
            open_slots = [i for i in slots if calls[i][species] < MAX_CALLS_PER_BOUT]
            calls[open_slots[int(rng.integers(len(open_slots)))]][species] += 1

    shares = list(CONFUSERS_PER_RECORDING.values())
    lookalike_deck: list[int] = []
    plans = []
    for i, picked in enumerate(chosen):
        n_confusers = list(CONFUSERS_PER_RECORDING)[int(rng.choice(len(shares), p=shares))]
        plans.append(
            _Plan(
                bouts=tuple((s, calls[i][s]) for s in picked),
                confusers=tuple(_deal(lookalike_deck, n_confusers, rng=rng)),
            )
        )
    return plans


def _deal(deck: list[int], size: int, *, rng: np.random.Generator) -> list[int]:
    """Take ``size`` distinct species from the front of ``deck``, adding a freshly shuffled
    set of all species whenever the deck runs short."""
    picked: list[int] = []
    while len(picked) < size:
        if not any(s not in picked for s in deck):
            deck += [int(s) for s in rng.permutation(N_SPECIES)]
        species = next(s for s in deck if s not in picked)
        deck.remove(species)
        picked.append(species)
    return picked


def _make_recording(task: _Task) -> tuple[_Task, list[_Call]]:
    """Sample, render and write one recording; returns its labelled calls (TP and FP)."""
    rng = np.random.default_rng([task.seed, _STREAM_RECORDING, _SPLITS[task.split], task.index])
    n_samples = round(task.seconds * task.sample_rate)
    scene = _sample_scene(task.plan, rng=rng, sample_rate=task.sample_rate, n_samples=n_samples)
    audio = _render_scene(scene, sample_rate=task.sample_rate, n_samples=n_samples)
    path = Path(task.path)
    partial = path.with_name(f".{path.name}.partial")
    sf.write(partial, audio, task.sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(partial, path)
    return task, [c for c in scene.calls if c.kind != "distractor"]


# -- sampling ---------------------------------------------------------------------------------


def _sample_scene(plan: _Plan, *, rng: np.random.Generator, sample_rate: int, n_samples: int) -> _Scene:
    """Draw the background and place every call of ``plan``; calls get their mix power from
    their SNR and the background power in their band."""
    seconds = n_samples / sample_rate
    limit = math.floor(seconds * TICKS + 1e-6)
    level = 10 ** ((BACKGROUND_DBFS + rng.uniform(-3, 3)) / 20)
    slope = float(rng.uniform(0.9, 1.5))

    grid = np.arange(2.5, sample_rate / 2, 5.0)
    cumulative = np.concatenate([[0.0], np.cumsum(_coloured_psd(grid, slope=slope))])
    cumulative /= cumulative[-1]

    def band_power(lo: float, hi: float) -> float:
        """Power of the coloured noise between ``lo`` and ``hi`` Hz."""
        first, last = np.searchsorted(grid, [lo, hi])
        return level**2 * float(cumulative[last] - cumulative[first])

    insects = []
    for _ in range(int(rng.integers(1, 4))):
        centre = float(rng.uniform(2500, 11000))
        width = float(rng.uniform(150, 900))
        lo, hi = centre - width / 2, centre + width / 2
        pulsed = rng.random() < 0.5
        insects.append(
            _Insect(
                f_min=lo,
                f_max=hi,
                level=math.sqrt(band_power(lo, hi) * 10 ** (rng.uniform(*INSECT_SNR_DB) / 10)),
                wobble_hz=float(rng.uniform(0.03, 0.5)),
                wobble_depth=float(rng.uniform(0.2, 0.8)),
                pulse_hz=float(rng.uniform(2, 12)) if pulsed else 0.0,
                pulse_sharpness=int(rng.integers(1, 4)),
                phase=float(rng.uniform(0, 2 * np.pi)),
            )
        )

    rains = []
    for _ in range(int(rng.choice(3, p=[0.5, 0.3, 0.2]))):
        length = min(rng.uniform(3, 15), seconds)
        rains.append(
            _Rain(
                start=int(rng.uniform(0, seconds - length) * sample_rate),
                length=int(length * sample_rate),
                level=level * 10 ** (rng.uniform(-3, 6) / 20),
                attack=float(rng.uniform(0.3, min(2.0, length / 3))),
                decay=float(rng.uniform(0.5, min(4.0, length / 3))),
                seed=int(rng.integers(2**63)),
            )
        )

    def snr_power(call: _Call) -> float:
        """Background power in the call's band, widened to at least SNR_MIN_BAND_HZ."""
        centre, width = (call.f_min + call.f_max) / 2, max(call.f_max - call.f_min, SNR_MIN_BAND_HZ)
        lo, hi = max(centre - width / 2, 20.0), centre + width / 2
        power = band_power(lo, hi)
        for insect in insects:
            overlap = min(hi, insect.f_max) - max(lo, insect.f_min)
            if overlap > 0:
                power += insect.level**2 * overlap / (insect.f_max - insect.f_min)
        return power

    tp = [
        _sample_call(SPECIES[species], rng=rng, kind="tp", species_id=species)
        for species, n_calls in plan.bouts
        for _ in range(n_calls)
    ]
    tp = [tp[i] for i in rng.permutation(len(tp))]
    placed: list[_Call] = []
    force_overlap = len(plan.bouts) > 1 and rng.random() < OVERLAP_SHARE / _share_with_two_species()
    if force_overlap:
        first = tp[0]
        second = next(c for c in tp if c.species_id != first.species_id)
        first = replace(first, start=int(rng.integers(0, limit - first.duration + 1)))
        lo = max(0, first.start - second.duration + 1, first.start - int(0.6 * second.duration))
        hi = min(limit - second.duration, first.stop - 1, first.stop - int(0.4 * second.duration))
        if lo <= hi:
            placed = [first, replace(second, start=int(rng.integers(lo, hi + 1)))]
            tp = [c for c in tp if c is not second][1:]
        else:
            placed = [first]
            tp = tp[1:]
    for call in tp:
        start = _place(call, rng=rng, limit=limit, calls=placed)
        if start is not None:
            placed.append(replace(call, start=start))

    confusers = []
    for species in plan.confusers:
        call = _sample_call(SPECIES[species], rng=rng, kind="fp", species_id=species)
        start = _place(call, rng=rng, limit=limit, calls=placed + confusers)
        if start is not None:
            confusers.append(replace(call, start=start))

    distractors = []
    for _ in range(int(rng.integers(2, 6))):
        template = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        call = _sample_call(template, rng=rng, kind="distractor", species_id=-1)
        distractors.append(replace(call, start=int(rng.integers(0, limit - call.duration + 1))))

    calls = placed + confusers + distractors
    calls = [replace(c, power=snr_power(c) * 10 ** (c.snr_db / 10)) for c in calls]
    return _Scene(level, slope, int(rng.integers(2**63)), tuple(insects), tuple(rains), tuple(calls))


def _share_with_two_species() -> float:
    return sum(share for size, share in SPECIES_PER_RECORDING.items() if size > 1)


def _sample_call(template: CallTemplate, *, rng: np.random.Generator, kind: str, species_id: int) -> _Call:
    """Draw one call of ``template``; an ``fp`` call uses the species' confuser band."""
    scale = rng.uniform(1 - PITCH_JITTER, 1 + PITCH_JITTER)
    if kind == "fp":
        scale *= template.confuser
    duration = round(rng.uniform(*template.duration) * TICKS)
    snr = DISTRACTOR_SNR_DB if kind == "distractor" else CALL_SNR_DB
    f_min, f_max = (round(f * scale, 2) for f in template.band)
    contour: tuple[float, ...] = ()
    if template.shape == "warble":
        # a random sub-band of the template's band, visited through random turning points
        width = rng.uniform(0.2, 0.5) * (f_max - f_min)
        lo = rng.uniform(f_min, f_max - width)
        knots = max(3, round(template.rate * duration / TICKS) + 1)
        points = np.round(rng.uniform(lo, lo + width, size=knots), 2)
        contour = tuple(float(p) for p in points)
        f_min, f_max = min(contour), max(contour)
    return _Call(
        kind=kind,
        species_id=species_id,
        songtype=template.songtype,
        shape=template.shape,
        duration=duration,
        f_min=float(f_min),
        f_max=float(f_max),
        rate=template.rate * rng.uniform(1 - RATE_JITTER, 1 + RATE_JITTER),
        harmonics=template.harmonics,
        snr_db=float(rng.uniform(*snr)),
        seed=int(rng.integers(2**63)),
        contour=contour,
    )


def _place(call: _Call, *, rng: np.random.Generator, limit: int, calls: list[_Call]) -> int | None:
    """A start tick for ``call``: clear of every placed labelled call if possible, else only
    clear of calls labelled with the same species; None when neither fits."""
    gap = TICKS // 4
    latest = limit - call.duration
    same = [(c.start, c.stop) for c in calls if c.species_id == call.species_id]
    every = [(c.start - gap, c.stop + gap) for c in calls]
    for avoid in (every, same):
        for _ in range(100):
            start = int(rng.integers(0, latest + 1))
            if all(start >= b or start + call.duration <= a for a, b in avoid):
                return start
    return None


def _coloured_psd(freqs: np.ndarray, *, slope: float) -> np.ndarray:
    """Power spectrum shape of the background: ``f ** -slope`` above 40 Hz, nothing below
    20 Hz, rolled off above 16 kHz like a recorder's anti-alias filter."""
    f = np.maximum(freqs, 40.0)
    psd = f**-slope / (1 + (freqs / 16000.0) ** 8)
    return np.where(freqs < 20.0, 0.0, psd)


# -- rendering --------------------------------------------------------------------------------


def _render_scene(scene: _Scene, *, sample_rate: int, n_samples: int) -> np.ndarray:
    """Mix the scene into int16 samples, shape (n_samples,)."""
    rng = np.random.default_rng(scene.seed)
    size = next_fast_len(n_samples, real=True)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate).astype(np.float32)
    amplitude = np.sqrt(_coloured_psd(freqs, slope=scene.slope))
    spectrum = rng.standard_normal((2, freqs.size), dtype=np.float32)
    x = np.fft.irfft((spectrum[0] + 1j * spectrum[1]) * amplitude, size)[:n_samples]
    x *= scene.level / x.std()

    t = np.arange(n_samples, dtype=np.float32) / np.float32(sample_rate)
    for insect in scene.insects:
        x += _render_insect(insect, rng=rng, t=t, sample_rate=sample_rate, size=size)
    for rain in scene.rains:
        x[rain.start : rain.start + rain.length] += _render_rain(rain, sample_rate=sample_rate)
    for call in scene.calls:
        first = (call.start * sample_rate + TICKS // 2) // TICKS
        last = (call.stop * sample_rate + TICKS // 2) // TICKS
        wave = _render_call(call, n=last - first, sample_rate=sample_rate)
        x[first:last] += wave * np.float32(math.sqrt(call.power))

    peak = float(np.abs(x).max())
    if peak > 0.98:  # loud scenes are scaled down as a whole, never clipped
        x *= 0.98 / peak
    return np.round(x * 32767).astype(np.int16)


def _render_insect(
    insect: _Insect, *, rng: np.random.Generator, t: np.ndarray, sample_rate: int, size: int
) -> np.ndarray:
    """A continuous narrow noise band, slowly wobbling and optionally pulsing; ``t`` holds
    the sample times, float32, ``size`` is the FFT length (at least ``t.size``)."""
    first, last = (math.ceil(f * size / sample_rate) for f in (insect.f_min, insect.f_max))
    spectrum = np.zeros(size // 2 + 1, dtype=np.complex64)
    parts = rng.standard_normal((2, last - first), dtype=np.float32)
    spectrum[first:last] = parts[0] + 1j * parts[1]
    band = np.fft.irfft(spectrum, size)[: t.size]
    # in-place float32 arithmetic: this runs over every sample of the recording
    envelope = np.float32(2 * np.pi * insect.wobble_hz) * t
    envelope += np.float32(insect.phase)
    np.sin(envelope, out=envelope)
    envelope *= np.float32(insect.wobble_depth)
    envelope += np.float32(1)
    if insect.pulse_hz:
        pulse = np.float32(np.pi * insect.pulse_hz) * t
        np.sin(pulse, out=pulse)
        pulse *= pulse
        for _ in range(insect.pulse_sharpness):
            envelope *= pulse
    band *= envelope
    band *= insect.level / band.std()
    return band


def _render_rain(rain: _Rain, *, sample_rate: int) -> np.ndarray:
    """Broadband hiss plus drop impulses under an attack-plateau-decay envelope."""
    rng = np.random.default_rng(rain.seed)
    n = rain.length
    t = np.arange(n, dtype=np.float32) / np.float32(sample_rate)
    hiss = rng.standard_normal(n, dtype=np.float32)
    drops = rng.integers(0, n, size=int(40 * n / sample_rate))
    np.add.at(hiss, drops, rng.exponential(6.0, size=drops.size).astype(np.float32))
    envelope = np.minimum(1.0, np.minimum(t / rain.attack, (t[-1] - t) / rain.decay))
    envelope *= 1 + 0.3 * np.sin(np.float32(2 * np.pi * rng.uniform(0.1, 0.5)) * t)
    size = next_fast_len(n, real=True)
    spectrum = np.fft.rfft(hiss * envelope.astype(np.float32), size)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    colour = np.where(freqs < 300, 0.0, np.maximum(freqs, 300) ** -0.25 / (1 + (freqs / 14000) ** 6))
    wave = np.fft.irfft(spectrum * colour.astype(np.float32), size)[:n]
    return wave * np.float32(rain.level / wave.std())


def _render_call(call: _Call, *, n: int, sample_rate: int) -> np.ndarray:
    """One call as float32 samples of unit mean power, shape (n,)."""
    rng = np.random.default_rng(call.seed)
    t = np.arange(n) / sample_rate
    span = n / sample_rate
    lo, hi = call.f_min, call.f_max
    if call.shape == "whistle":
        freq = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * np.pi * call.rate * t + rng.uniform(0, 6.3))
        wave = np.sin(_phase(freq, sample_rate))
    elif call.shape in ("upsweep", "downsweep"):
        rise = t / span if call.shape == "upsweep" else 1 - t / span
        wave = np.sin(_phase(lo * (hi / lo) ** rise, sample_rate))
    elif call.shape == "trill":
        position = (t * call.rate) % 1 / 0.6  # each note fills 60 % of its period
        note = position < 1
        freq = hi - (hi - lo) * np.minimum(position, 1)
        wave = np.sin(_phase(freq, sample_rate)) * np.where(note, np.sin(np.pi * position), 0)
    elif call.shape in _STACKED:
        top = hi / call.harmonics
        base = lo + (top - lo) * np.sin(np.pi * t / span)
        phase = _phase(base, sample_rate)
        wave = sum(k**-0.7 * np.sin(k * phase + rng.uniform(0, 6.3)) for k in range(1, call.harmonics + 1))
        if call.shape == "croak":
            wave = wave * np.sin(np.pi * call.rate * t) ** 4
    elif call.shape == "clicks":
        position = (t * call.rate + rng.uniform(0, 1)) % 1
        width = 0.0015 * call.rate  # 1.5 ms gaussian clicks
        wave = _band_noise(n, lo, hi, rng=rng, sample_rate=sample_rate)
        wave = wave * np.exp(-0.5 * ((position - 0.5) / width) ** 2)
    elif call.shape == "buzz":
        wave = _band_noise(n, lo, hi, rng=rng, sample_rate=sample_rate)
        wave = wave * (0.55 + 0.45 * np.sin(2 * np.pi * call.rate * t))
    elif call.shape == "warble":
        knots = np.linspace(0, span, len(call.contour))
        wave = np.sin(_phase(np.interp(t, knots, call.contour), sample_rate))
    else:  # chip
        wave = np.sin(_phase(hi - (hi - lo) * t / span, sample_rate))
    wave = wave * _fade(n, sample_rate=sample_rate)
    return (wave / np.sqrt(np.mean(wave**2))).astype(np.float32)


def _phase(freq: np.ndarray, sample_rate: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sample_rate


def _fade(n: int, *, sample_rate: int, seconds: float = 0.015) -> np.ndarray:
    """Raised-cosine ramps at both ends, so a call starts and stops without a click."""
    k = max(1, min(round(seconds * sample_rate), n // 2))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
    envelope = np.ones(n)
    envelope[:k] = ramp
    envelope[n - k :] = ramp[::-1]
    return envelope


def _band_noise(n: int, lo: float, hi: float, *, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Gaussian noise holding only the frequencies between ``lo`` and ``hi``, shape (n,)."""
    size = next_fast_len(n, real=True)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    parts = rng.standard_normal((2, freqs.size))
    spectrum = np.where((freqs >= lo) & (freqs < hi), parts[0] + 1j * parts[1], 0)
    return np.fft.irfft(spectrum, size)[:n]


# -- writing ----------------------------------------------------------------------------------


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(partial, path)


def _write_readme(path: Path, *, seed: int, sample_rate: int, summary: dict) -> None:
    lines = [
        "Synthetic stand-in for the Rainforest Connection species audio detection data,",
        "written by `precompute demo-data` (precompute/demo.py). Same layout as RFCX:",
        "",
        "  train/<recording_id>.flac   train recordings",
        "  train_tp.csv                labelled species calls (true positives)",
        "  train_fp.csv                confusable look-alikes, labelled with the species they mimic",
        "  test/<recording_id>.flac    test recordings",
        "  test_ground_truth.csv       1 where a species calls in a test recording",
        "  test_events.csv             every species call in the test recordings",
        "",
        f"seed {seed}, {sample_rate} Hz mono 16-bit FLAC, {summary['seconds']:g} s per recording",
        f"train recordings {summary['train_recordings']}, TP rows {summary['tp_rows']}, "
        f"FP rows {summary['fp_rows']}",
        f"test recordings {summary['test_recordings']}, test events {summary['test_events']}",
        "",
        "species (id: name, shape, band Hz, duration s, songtype):",
    ]
    lines += [
        f"  {i}: {s.name}, {s.shape}, {s.band[0]:g}-{s.band[1]:g}, "
        f"{s.duration[0]:g}-{s.duration[1]:g}, {s.songtype}"
        for i, s in enumerate(SPECIES)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
