"""The field checks of ``index.json``: each returns a field's value, or FormatError naming the
field and what it should hold.

``melshards.index`` reads every field of the index and of its shard entries and statistics
through these, so a foreign, damaged or hand-edited index is refused with a message such as
``index.json shards[3] n: expected a count (integer in 0..2**53), got -1``. (Options given by a
user are checked by ``melshards.checks``, with ConfigError.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from melshards.errors import FormatError

# Lists and mappings nest at most this deep in an index (its own deepest, an annotation input
# under ``source``, is 4). Deeper is no index, and would exhaust Python's recursion in whatever
# walks it (printing, hashing, comparing).
MAX_NESTING = 32
TOO_DEEP = f"lists or mappings nested more than {MAX_NESTING} deep"


def nesting_problem(value: Any) -> str | None:
    """Why ``value`` (parsed JSON) nests too deeply to be an index, or None; walked without
    recursion."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return TOO_DEEP
        children = item.values() if isinstance(item, dict) else item
        stack.extend([(child, depth + 1) for child in children if isinstance(child, dict | list)])
    return None


def as_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def check_keys(data: Mapping[str, Any], names: set[str], where: str) -> None:
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
    if missing or unknown:
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise FormatError(f"{where}: malformed: {'; '.join(what)}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Counts in an index (examples, bytes, frames) fit an int64 with room to add them up.
MAX_COUNT = 1 << 53


def as_count(value: Any, where: str) -> int:
    if not is_int(value) or not 0 <= value <= MAX_COUNT:
        raise FormatError(f"{where}: expected a count (integer in 0..2**53), got {short(value)}")
    return value


def as_hex(value: Any, where: str, *, digits: int) -> str:
    if not isinstance(value, str) or len(value) != digits or value.strip("0123456789abcdef"):
        raise FormatError(f"{where}: expected {digits} lowercase hex digits, got {short(value)}")
    return value


def short(value: Any) -> str:
    """``repr(value)``, cut to a readable length for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def as_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a string, got {short(value)}")
    return value


def as_texts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"{where}: expected a list of strings, got {short(value)}")
    return tuple(value)


def as_floats(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise FormatError(f"{where}: expected a list of numbers")
    bad = [i for i, v in enumerate(value) if not math.isfinite(v)]
    if bad:
        raise FormatError(f"{where}: value {bad[0]} is {value[bad[0]]!r}, not a finite number")
    return tuple(float(v) for v in value)
