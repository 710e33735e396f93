"""The kinds of call in the demo data: the 24 species and the unlabelled distractors."""

from __future__ import annotations

from dataclasses import dataclass

from melshards.errors import ConfigError

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
STACKED = ("harmonic", "croak")


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
        if self.shape in STACKED and not low < high / self.harmonics <= 1.1 * low:
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
