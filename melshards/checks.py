"""The one check of an integer or number option, shared by every option type of the project.

Each option dataclass (``FeatureConfig``, the loader's option groups, the experiments' run
options) validates its fields in ``__post_init__`` through these two functions, so a bad value
gets the same kind of message wherever it was given: ``batch_size must be an integer >= 1,
got 0``. ``where`` prefixes the message with what the option belongs to (``"augment "``,
``"loader state: "``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from melshards.errors import ConfigError


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    if low is not None:
        return f">= {low:g}"
    return f"<= {high:g}"


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, where: str = ""
) -> int:
    """``value`` as an int, or ConfigError unless it is an integer (not a bool) in ``[low, high]``."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        bound = f" {_bounds(low, high)}" if low is not None or high is not None else ""
        raise ConfigError(f"{where}{name} must be an integer{bound}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}{name} must be an integer {_bounds(low, high)}, got {value!r}")
    return int(value)


def check_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, where: str = ""
) -> float:
    """``value`` as a float, or ConfigError unless it is a finite number (not a bool) in ``[low, high]``."""
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ConfigError(f"{where}{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}{name} must be finite, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}{name} must be {_bounds(low, high)}, got {value!r}")
    return float(value)
