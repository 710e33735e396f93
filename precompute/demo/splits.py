"""Planning a split: which species call in each recording, how often, and which look-alikes.

The plan is made for the whole split at once, before any recording is sampled, so the
species stay balanced across it; each recording then only fills in its own plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from precompute.demo.species import N_SPECIES

CALLS_PER_BOUT = 2.5  # mean TP calls per (recording, species); 1 to 4
MAX_CALLS_PER_BOUT = 4
SPECIES_PER_RECORDING = {1: 0.3, 2: 0.4, 3: 0.3}
CONFUSERS_PER_RECORDING = {0: 0.4, 1: 0.45, 2: 0.15}

# Every generator is seeded by ``(seed, stream, split[, index])``: one stream per purpose, so
# recordings can be made in any order and in parallel with identical results.
SPLITS = {"train": 0, "test": 1}
STREAM_IDS, STREAM_PLAN, STREAM_RECORDING, STREAM_LABELS = 0, 1, 2, 3


@dataclass(frozen=True)
class Plan:
    """The labelled content of one recording, planned across its split for balance."""

    bouts: tuple[tuple[int, int], ...]  # (species_id, number of calls)
    confusers: tuple[int, ...]  # species whose look-alikes appear


def plan_split(*, seed: int, split: str, count: int) -> list[Plan]:
    """Which species call in each recording, how often, and which species' look-alikes
    appear.

    Species are dealt from reshuffled decks of all 24, so every species appears in nearly
    the same number of recordings; each species then gets ``ceil(2.5 * appearances)`` calls
    (20 with the default 96 recordings) spread over its appearances, 1 to 4 per bout.
    Look-alikes are dealt from decks of their own.
    """
    rng = np.random.default_rng([seed, STREAM_PLAN, SPLITS[split]])
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
            Plan(
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
