"""Sampling a recording's scene: background, insects, rain and every call with its place.

A scene is plain numbers drawn from the recording's generator before any audio is made;
``precompute.demo.render`` turns it into samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from precompute.demo.species import DISTRACTORS, SPECIES, CallTemplate
from precompute.demo.splits import SPECIES_PER_RECORDING, Plan

TICKS = 10_000  # label times live on a 0.1 ms grid, so the CSV's 4 decimals are exact
PITCH_JITTER = 0.06  # each call's frequencies are scaled by U(1 - j, 1 + j)
RATE_JITTER = 0.08
CALL_SNR_DB = (5.0, 20.0)  # call power over background power in the call's band
DISTRACTOR_SNR_DB = (3.0, 15.0)
INSECT_SNR_DB = (4.0, 14.0)  # insect band power over the coloured noise in that band
BACKGROUND_DBFS = -60.0  # coloured-noise rms; it sets the FLAC size (bits per sample)
SNR_MIN_BAND_HZ = 500.0  # SNR of narrow calls is measured against at least this much band
OVERLAP_SHARE = 0.15  # share of recordings in which two calls of different species overlap


@dataclass(frozen=True)
class Call:
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
class Insect:
    f_min: float
    f_max: float
    level: float  # rms, full scale = 1
    wobble_hz: float
    wobble_depth: float
    pulse_hz: float  # 0: continuous
    pulse_sharpness: int
    phase: float


@dataclass(frozen=True)
class Rain:
    start: int  # samples
    length: int
    level: float
    attack: float  # seconds
    decay: float
    seed: int


@dataclass(frozen=True)
class Scene:
    """Everything one recording contains, sampled before any audio is made."""

    level: float
    slope: float  # coloured noise power falls as f ** -slope
    seed: int
    insects: tuple[Insect, ...]
    rains: tuple[Rain, ...]
    calls: tuple[Call, ...]


def sample_scene(plan: Plan, *, rng: np.random.Generator, sample_rate: int, n_samples: int) -> Scene:
    """Draw the background and place every call of ``plan``; calls get their mix power from
    their SNR and the background power in their band."""
    seconds = n_samples / sample_rate
    limit = math.floor(seconds * TICKS + 1e-6)
    level = 10 ** ((BACKGROUND_DBFS + rng.uniform(-3, 3)) / 20)
    slope = float(rng.uniform(0.9, 1.5))
    background = _Background.of(level, slope=slope, sample_rate=sample_rate)
    insects = _sample_insects(rng, background=background)
    rains = _sample_rains(rng, level=level, seconds=seconds, sample_rate=sample_rate)
    placed = _place_species_calls(plan, rng=rng, limit=limit)
    confusers = _place_confusers(plan, rng=rng, limit=limit, placed=placed)
    distractors = _sample_distractors(rng, limit=limit)
    calls = [
        replace(c, power=_noise_power(c, background=background, insects=insects) * 10 ** (c.snr_db / 10))
        for c in placed + confusers + distractors
    ]
    return Scene(level, slope, int(rng.integers(2**63)), tuple(insects), tuple(rains), tuple(calls))


@dataclass(frozen=True, eq=False)
class _Background:
    """The coloured noise of a scene, for the power it has in a band: its rms ``level`` and the
    cumulative share of its spectrum on a 5 Hz ``grid``."""

    level: float
    grid: np.ndarray
    cumulative: np.ndarray

    @classmethod
    def of(cls, level: float, *, slope: float, sample_rate: int) -> _Background:
        grid = np.arange(2.5, sample_rate / 2, 5.0)
        cumulative = np.concatenate([[0.0], np.cumsum(coloured_psd(grid, slope=slope))])
        cumulative /= cumulative[-1]
        return cls(level, grid, cumulative)

    def band_power(self, lo: float, hi: float) -> float:
        """Power of the coloured noise between ``lo`` and ``hi`` Hz."""
        first, last = np.searchsorted(self.grid, [lo, hi])
        return self.level**2 * float(self.cumulative[last] - self.cumulative[first])


def _sample_insects(rng: np.random.Generator, *, background: _Background) -> list[Insect]:
    """One to three insect bands, each louder than the coloured noise in its band."""
    insects = []
    for _ in range(int(rng.integers(1, 4))):
        centre = float(rng.uniform(2500, 11000))
        width = float(rng.uniform(150, 900))
        lo, hi = centre - width / 2, centre + width / 2
        pulsed = rng.random() < 0.5
        insects.append(
            Insect(
                f_min=lo,
                f_max=hi,
                level=math.sqrt(background.band_power(lo, hi) * 10 ** (rng.uniform(*INSECT_SNR_DB) / 10)),
                wobble_hz=float(rng.uniform(0.03, 0.5)),
                wobble_depth=float(rng.uniform(0.2, 0.8)),
                pulse_hz=float(rng.uniform(2, 12)) if pulsed else 0.0,
                pulse_sharpness=int(rng.integers(1, 4)),
                phase=float(rng.uniform(0, 2 * np.pi)),
            )
        )
    return insects


def _sample_rains(rng: np.random.Generator, *, level: float, seconds: float, sample_rate: int) -> list[Rain]:
    """Up to two rain bursts of 3 to 15 s, around the background's ``level``."""
    rains = []
    for _ in range(int(rng.choice(3, p=[0.5, 0.3, 0.2]))):
        length = min(rng.uniform(3, 15), seconds)
        rains.append(
            Rain(
                start=int(rng.uniform(0, seconds - length) * sample_rate),
                length=int(length * sample_rate),
                level=level * 10 ** (rng.uniform(-3, 6) / 20),
                attack=float(rng.uniform(0.3, min(2.0, length / 3))),
                decay=float(rng.uniform(0.5, min(4.0, length / 3))),
                seed=int(rng.integers(2**63)),
            )
        )
    return rains


def _place_species_calls(plan: Plan, *, rng: np.random.Generator, limit: int) -> list[Call]:
    """The calls of ``plan``'s bouts (TP), each placed where it fits (``_place``); in a share of
    the recordings with two species or more, two calls of different species overlap."""
    tp = [
        _sample_call(SPECIES[species], rng=rng, kind="tp", species_id=species)
        for species, n_calls in plan.bouts
        for _ in range(n_calls)
    ]
    tp = [tp[i] for i in rng.permutation(len(tp))]
    placed: list[Call] = []
    force_overlap = len(plan.bouts) > 1 and rng.random() < OVERLAP_SHARE / _share_with_two_species()
    if force_overlap:
        placed, tp = _overlapping_pair(tp, rng=rng, limit=limit)
    for call in tp:
        start = _place(call, rng=rng, limit=limit, calls=placed)
        if start is not None:
            placed.append(replace(call, start=start))
    return placed


def _overlapping_pair(
    tp: list[Call], *, rng: np.random.Generator, limit: int
) -> tuple[list[Call], list[Call]]:
    """The first call placed, and a call of another species overlapping it by 40-60 % of its
    length when that fits; returns the calls placed and those left to place."""
    first = tp[0]
    second = next(c for c in tp if c.species_id != first.species_id)
    first = replace(first, start=int(rng.integers(0, limit - first.duration + 1)))
    lo = max(0, first.start - second.duration + 1, first.start - int(0.6 * second.duration))
    hi = min(limit - second.duration, first.stop - 1, first.stop - int(0.4 * second.duration))
    if lo <= hi:
        return [first, replace(second, start=int(rng.integers(lo, hi + 1)))], [
            c for c in tp if c is not second
        ][1:]
    return [first], tp[1:]


def _place_confusers(plan: Plan, *, rng: np.random.Generator, limit: int, placed: list[Call]) -> list[Call]:
    """A look-alike call (FP) of each of ``plan``'s confusers, where it fits among the others."""
    confusers: list[Call] = []
    for species in plan.confusers:
        call = _sample_call(SPECIES[species], rng=rng, kind="fp", species_id=species)
        start = _place(call, rng=rng, limit=limit, calls=placed + confusers)
        if start is not None:
            confusers.append(replace(call, start=start))
    return confusers


def _sample_distractors(rng: np.random.Generator, *, limit: int) -> list[Call]:
    """Two to five unlabelled calls of other animals, anywhere."""
    distractors = []
    for _ in range(int(rng.integers(2, 6))):
        template = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        call = _sample_call(template, rng=rng, kind="distractor", species_id=-1)
        distractors.append(replace(call, start=int(rng.integers(0, limit - call.duration + 1))))
    return distractors


def _noise_power(call: Call, *, background: _Background, insects: list[Insect]) -> float:
    """Background power in the call's band, widened to at least SNR_MIN_BAND_HZ."""
    centre, width = (call.f_min + call.f_max) / 2, max(call.f_max - call.f_min, SNR_MIN_BAND_HZ)
    lo, hi = max(centre - width / 2, 20.0), centre + width / 2
    power = background.band_power(lo, hi)
    for insect in insects:
        overlap = min(hi, insect.f_max) - max(lo, insect.f_min)
        if overlap > 0:
            power += insect.level**2 * overlap / (insect.f_max - insect.f_min)
    return power


def _share_with_two_species() -> float:
    return sum(share for size, share in SPECIES_PER_RECORDING.items() if size > 1)


def _sample_call(template: CallTemplate, *, rng: np.random.Generator, kind: str, species_id: int) -> Call:
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
    return Call(
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


def _place(call: Call, *, rng: np.random.Generator, limit: int, calls: list[Call]) -> int | None:
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


def coloured_psd(freqs: np.ndarray, *, slope: float) -> np.ndarray:
    """Power spectrum shape of the background: ``f ** -slope`` above 40 Hz, nothing below
    20 Hz, rolled off above 16 kHz like a recorder's anti-alias filter."""
    f = np.maximum(freqs, 40.0)
    psd = f**-slope / (1 + (freqs / 16000.0) ** 8)
    return np.where(freqs < 20.0, 0.0, psd)
