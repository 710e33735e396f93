"""Synthesize the embedded default dataset in the layout of the RFCX species audio data.

``synthesize(out)`` writes::

    out/train/<recording_id>.flac    48 kHz mono 16-bit FLAC, 60 s each
    out/train_tp.csv                 labelled calls (RFCX columns)
    out/train_fp.csv                 confusable calls, labelled with the species they mimic
    out/train_events.csv             every species call in the train recordings (labelled or not)
    out/test/<recording_id>.flac     unlabelled recordings for scoring
    out/test_ground_truth.csv        recording_id,s0..s23: 1 where the species calls
    out/test_events.csv              every species call placed in a test recording
    out/README.txt                   seed and counts

Each recording is a rainforest-like background (coloured noise, rain bursts, insect buzz
bands, unlabelled distractor calls) with a few bouts of species calls on top. The 24 species
are fixed templates (shape, band, duration range) that differ in shape and band; some pairs
share a shape in neighbouring bands so the task is not trivial. Every call is drawn with
jitter in pitch, duration, rate and in-band SNR, and its label box is its exact extent.

With ``label_fraction`` below 1, ``train_tp.csv`` lists only that share of the calls (at
least one per recording while the count allows), as in RFCX where most calls were never
annotated; the audio and ``train_events.csv`` keep every call, and the test ground truth
counts every call.

Everything is a function of the seed: each recording draws from its own generator, seeded by
``(seed, stream, split, index)``, so recordings can be made in any order and in parallel
with identical results.

Modules: ``species`` (the call templates), ``splits`` (which species each recording of a
split holds), ``scene`` (sampling one recording's content), ``render`` (its audio) and
``dataset`` (``synthesize``: running the recordings and writing every file).
"""

from precompute.demo.dataset import COLUMNS, synthesize
from precompute.demo.species import DISTRACTORS, N_SPECIES, SHAPES, SPECIES, CallTemplate

__all__ = ["COLUMNS", "DISTRACTORS", "N_SPECIES", "SHAPES", "SPECIES", "CallTemplate", "synthesize"]
