"""Where a loader is: the small state saved beside a checkpoint to resume training mid-epoch.

Every batch is a pure function of ``(seed, epoch, index, rank)`` (``loader.batches``), so a
loader's position is the whole of its state: ``LoaderState`` holds it (seed, epoch, next batch,
rank, world size) with what must not change between saving and loading it (the feature set's
fingerprint, the batch size, the batches per epoch, the targets: clip labels or frame targets
and their step)::

    state = seq.state_dict(next_batch=17)      # a plain dict
    write_state("runs/x/checkpoint.loader.json", LoaderState.from_dict(state))
    ...
    seq.load_state_dict(read_state("runs/x/checkpoint.loader.json")[0])

``ShardBatches``, ``ShardSequence``, ``PairedSequence`` and ``loader.torch.ShardDataset`` all
take and give this state. Numpy and the standard library only: no training framework here.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

from loader.frame_targets import TARGETS
from melshards.checks import check_int
from melshards.errors import ConfigError, FormatError
from melshards.files import atomic_write_text

STATE_FORMAT = "melshards-loader-state"
STATE_VERSION = 1

# Fields that describe the setup rather than the position: loading a state into a loader whose
# setup differs would yield other batches than the saved run's, so it is refused.
SETUP_FIELDS = (
    "fingerprint",
    "seed",
    "rank",
    "world_size",
    "batch_size",
    "batches",
    "targets",
    "target_step",
)


@dataclass(frozen=True)
class LoaderState:
    """A loader's position: batch ``batch`` of epoch ``epoch`` is the next one to train on.

    seed : the loader's seed (epoch orders, augmentation draws)
    epoch : epoch of the next batch
    batch : index of the next batch in that epoch, in ``[0, batches]`` (``batches``: the epoch
        is done, the next batch is the first of ``epoch + 1``)
    rank, world_size : which block of the split this loader reads
    fingerprint : the feature set's fingerprint
    batch_size : examples per batch
    batches : batches per epoch (``len`` of the loader)
    targets, target_step : ``"clip"`` or ``"frames"`` and the frames per step of frame targets
        (1 for clip labels); a state written without them is a clip state
    """

    seed: int
    epoch: int
    batch: int
    rank: int
    world_size: int
    fingerprint: str
    batch_size: int
    batches: int
    targets: str = "clip"
    target_step: int = 1

    def __post_init__(self) -> None:
        lows = {"seed": 0, "epoch": 0, "batch": 0, "rank": 0, "world_size": 1, "batch_size": 1, "batches": 0}
        for name, low in lows.items():
            value = check_int(name, getattr(self, name), low=low, where="loader state: ")
            object.__setattr__(self, name, value)  # a plain int, as JSON wants it
        if self.rank >= self.world_size:
            raise ConfigError(f"loader state: rank must be in [0, {self.world_size}), got {self.rank}")
        if self.batch > self.batches:
            raise ConfigError(
                f"loader state: batch {self.batch} is beyond the {self.batches} batches of an epoch"
            )
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise ConfigError(
                f"loader state: fingerprint must be a non-empty string, got {self.fingerprint!r}"
            )
        if self.targets not in TARGETS:
            raise ConfigError(f"loader state: targets must be one of {TARGETS}, got {self.targets!r}")
        step = check_int("target_step", self.target_step, low=1, where="loader state: ")
        object.__setattr__(self, "target_step", step if self.targets == "frames" else 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, with the format name and version first."""
        names = {"format": STATE_FORMAT, "version": STATE_VERSION}
        return names | {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "loader state") -> LoaderState:
        """The state ``to_dict`` wrote; FormatError naming ``where`` for anything else."""
        if not isinstance(data, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise FormatError(
                f"{where}: not a loader state of version {STATE_VERSION} "
                f"(format {data.get('format')!r}, version {data.get('version')!r})"
            )
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if "targets" in data and "target_step" not in data:  # written together, or neither
            missing.append("target_step")
        if missing:
            raise FormatError(f"{where}: loader state lacks {', '.join(missing)}")
        try:
            return cls(**{name: data[name] for name in names if name in data})
        except ConfigError as err:
            raise FormatError(f"{where}: {err}") from None

    @classmethod
    def coerce(cls, state: LoaderState | dict[str, Any]) -> LoaderState:
        """A ``LoaderState`` from itself or from its dict."""
        return state if isinstance(state, LoaderState) else cls.from_dict(state)

    def check_fits(self, current: LoaderState, *, where: str = "loader state") -> None:
        """Refuse this (saved) state for a loader whose setup is ``current``'s: ConfigError
        naming the first field that differs and both values."""
        for name in SETUP_FIELDS:
            saved, here = getattr(self, name), getattr(current, name)
            if saved != here:
                raise ConfigError(f"{where}: saved with {name} {saved!r}, this loader has {here!r}")

    def normalized(self) -> LoaderState:
        """The same position with a finished epoch written as the start of the next one."""
        if self.batch < self.batches or self.batches == 0:
            return self
        return replace(self, epoch=self.epoch + 1, batch=0)


def write_state(path: str | os.PathLike, state: LoaderState, **extra: Any) -> None:
    """Write ``state`` to ``path`` as JSON, atomically (temp file, fsync, rename).

    ``extra``: JSON-able entries written beside the state (the Keras checkpoint callback
    writes the name of the model file it belongs to and the fit's bookkeeping).
    """
    document = {"loader": state.to_dict(), **extra}
    atomic_write_text(Path(path), json.dumps(document, indent=1) + "\n")


def read_state(path: str | os.PathLike) -> tuple[LoaderState, dict[str, Any]]:
    """The state ``write_state`` wrote to ``path`` and its ``extra`` entries.

    Raises FormatError (missing file, not JSON, not a loader state), naming ``path``.
    """
    where = os.fspath(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{where}: no loader state there") from None
    except (OSError, ValueError) as err:
        raise FormatError(f"{where}: cannot read the loader state: {err}") from None
    if not isinstance(document, dict) or "loader" not in document:
        raise FormatError(f"{where}: not a loader state file (no 'loader' entry)")
    extra = {k: v for k, v in document.items() if k != "loader"}
    return LoaderState.from_dict(document["loader"], where=where), extra
