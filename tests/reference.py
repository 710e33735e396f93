"""References the tests compare against, and a way to run code in a fresh interpreter.

- ``hdf5_fletcher32``: HDF5's Fletcher-32 written out literally, the checksum every chunk carries.
- ``run_python``: run a snippet in a new ``python -c`` from the repository root, for what is
  decided once per process (Keras' backend, which modules an import loads, threads at import).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hdf5_fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 written out literally (360-word blocks, end-around-carry folds)."""
    words = [(data[i] << 8) | data[i + 1] for i in range(0, len(data) - 1, 2)]
    if len(data) % 2:
        words.append(data[-1] << 8)
    s1 = s2 = 0
    for k in range(0, len(words), 360):
        for w in words[k : k + 360]:
            s1 += w
            s2 += s1
        s1 = (s1 & 0xFFFF) + (s1 >> 16)
        s2 = (s2 & 0xFFFF) + (s2 >> 16)
    s1 = (s1 & 0xFFFF) + (s1 >> 16)
    s2 = (s2 & 0xFFFF) + (s2 >> 16)
    return (s2 << 16) | s1


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 280
) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` (dedented) from the repository root; output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )
