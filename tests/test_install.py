"""The installs: the Makefile's dev rule finds a torch anywhere, and the extras agree on versions."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

# A python that records each command and answers `pip show torch` and `pip install torch==...`
# as told (0: found, 1: not); every other command succeeds.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  "-m pip show torch") exit "$TORCH_INSTALLED" ;;
  "-m pip install --quiet torch=="*) exit "$CPU_SERVED" ;;
esac
exit 0
"""

SHOW = "-m pip show torch"
CPU = "-m pip install --quiet torch==2.13.0+cpu"
DEV = "-m pip install --quiet -e .[dev]"
FALLBACK = "no torch 2.13.0+cpu (a CPU build) here: the dev extra installs the index's torch"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("installed", "served", "calls", "printed"),
    [
        (0, 1, [SHOW, DEV], False),  # a torch already installed stays
        (1, 0, [SHOW, CPU, DEV], False),  # the CPU build, where pip finds it
        (1, 1, [SHOW, CPU, DEV], True),  # elsewhere the dev extra's torch, said in one line
    ],
)
def test_the_dev_install_takes_a_cpu_torch_where_there_is_one(tmp_path, installed, served, calls, printed):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    venv = tmp_path / "venv"
    venv.mkdir()
    env = {
        **os.environ,
        "CALLS": str(tmp_path / "calls"),
        "TORCH_INSTALLED": str(installed),
        "CPU_SERVED": str(served),
    }
    done = subprocess.run(
        ["make", "-C", str(ROOT), f"VENV={venv}", f"PY={python}", f"{venv}/.installed-dev"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    made = (tmp_path / "calls").read_text().splitlines()
    assert made[made.index(SHOW) :] == calls
    assert (FALLBACK in done.stdout.splitlines()) == printed
    assert (venv / ".installed-dev").is_file()


def requirement(requirements: list[str], name: str) -> Requirement:
    return next(r for r in map(Requirement, requirements) if r.name == name)


@pytest.mark.parametrize(
    ("extra", "package", "capped_by", "releases"),
    [
        (None, "h5py", "tensorflow", ["3.11.0", "3.13.0", "3.14.0", "3.14.9", "3.15.0", "3.16.0", "4.0.0"]),
        ("plots", "python-dateutil", "botocore", ["2.8.2", "2.9.0.post0", "3.0.0", "4.0.0"]),
    ],
)
def test_an_earlier_install_picks_what_a_later_extra_keeps(extra, package, capped_by, releases):
    # pip installs the newest release the requirement admits: the later extra's dependency must
    # admit it too, or installing the extra swaps it (and h5py used to rebuild every shard).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    try:
        theirs = importlib.metadata.requires(capped_by) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{capped_by} is not installed")
    newest = [v for v in releases if v in requirement(ours, package).specifier][-1]
    assert newest in requirement(theirs, package).specifier
