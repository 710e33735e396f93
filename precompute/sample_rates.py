"""The sample rates recordings were made at, and the mel bands they leave empty.

Every recording is resampled to ``config.sample_rate`` before its STFT (``precompute.audio``),
but resampling adds nothing above half the rate a recording was made at (its Nyquist
frequency): a 22.05 kHz recording holds nothing above 11.025 kHz, even at 48 kHz. Every mel
band that starts above that frequency stays at the floor in each of its windows. ``fmax``
*fits* a recording when it is at most half the recording's own rate: then every band holds
sound.

``band_limit_warning`` tells, once per run, how many of the recordings a run decodes ``fmax``
does not fit, how many bands stay empty, and the ``fmax`` that fits them all. It reads only
headers (in a few threads: on network storage each header is a round trip).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from melshards.config import FeatureConfig
from precompute.audio import probe
from precompute.errors import AudioError
from precompute.mel import hz_to_mel, mel_to_hz
from precompute.plan import ShardJob

# Threads reading headers at once.
PROBE_THREADS = 8


def native_rates(jobs: Iterable[ShardJob]) -> list[int]:
    """The sample rate in the header of each recording of ``jobs`` that has one.

    A file that cannot be opened is left out: its worker records the failure.
    """
    paths = [task.path for job in jobs for task in job.recordings if task.path is not None]
    if not paths:
        return []
    with ThreadPoolExecutor(min(PROBE_THREADS, len(paths))) as pool:
        return [rate for rate in pool.map(_rate, paths) if rate]


def _rate(path: str) -> int | None:
    try:
        return probe(Path(path))[1]
    except AudioError:
        return None


def empty_bands(nyquist: float, *, config: FeatureConfig) -> int:
    """How many of the mel bands of ``config`` start at or above ``nyquist`` Hz (the top ones)."""
    low, high = hz_to_mel(np.array([config.fmin, config.fmax]))
    edges = mel_to_hz(np.linspace(low, high, config.n_mels + 2))
    # Band m rises from edges[m], peaks at edges[m + 1] and falls to edges[m + 2].
    return int(np.count_nonzero(edges[: config.n_mels] >= nyquist))


def band_limit_warning(rates: Sequence[int], *, config: FeatureConfig) -> str | None:
    """The warning for recordings whose own rate is below ``2 * config.fmax``; None when none is.

    rates : the native sample rate of each recording (``native_rates``)
    """
    low = Counter(rate for rate in rates if rate < 2 * config.fmax)
    if not low:
        return None
    nyquist = min(low) / 2
    at = ", ".join(f"{count} at {rate} Hz" for rate, count in sorted(low.items(), reverse=True))
    fit = f"fmax = {nyquist:g} (half the lowest rate) fits every recording: --set fmax={nyquist:g}"
    if config.fmin >= nyquist:
        fit = f"fmax = {nyquist:g} (half the lowest rate), with fmin below it, fits every recording"
    return (
        f"{low.total()} of the {len(rates)} recordings this run decodes have a sample rate below "
        f"2 x fmax = {2 * config.fmax:g} Hz ({at}): they hold nothing above half their own rate, "
        f"however they are resampled, so the top {empty_bands(nyquist, config=config)} of "
        f"{config.n_mels} mel bands (above {nyquist:g} Hz) stay empty in those at {min(low)} Hz; "
        f"{fit}"
    )
