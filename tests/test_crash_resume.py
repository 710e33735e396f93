"""A precompute run killed with SIGKILL at any point, then re-run, equals an uninterrupted run."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from audio_fixtures import read_arrays, run_tiny
from melshards.errors import FormatError
from melshards.index import read_index
from melshards.names import INDEX_FILE

# Each snippet patches one step of a sequential (jobs=1) run so that the process kills itself
# with SIGKILL there: no cleanup handler, no finally block runs.
KILL_POINTS = {
    "before any shard": """
        import precompute.run as target
        original = target.build_shard
        def patched(*a, **k):
            die()
        target.build_shard = patched
    """,
    "mid-shard": """
        import melshards.shard as target
        calls = []
        original = target.ShardStats.add
        def patched(self, mel):
            calls.append(1)
            if len(calls) == 2:  # one example written, the temp shard half done
                die()
            original(self, mel)
        target.ShardStats.add = patched
    """,
    "between shards": """
        import melshards.shard as target
        calls = []
        original = target.write_file_atomic
        def patched(path, data, **options):
            original(path, data, **options)
            calls.append(1)
            if len(calls) == 2:  # two shards renamed into place, the third not started
                die()
        target.write_file_atomic = patched
    """,
    "while writing the index": """
        import melshards.index as target
        def patched(path, text):
            tmp = path.with_name("." + path.name + ".123.tmp")
            tmp.write_text(text[: len(text) // 2])
            die()
        target.atomic_write_text = patched
    """,
}

RUNNER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from audio_fixtures import TINY
def die():
    os.kill(os.getpid(), signal.SIGKILL)
{patch}
from precompute.run import run_features
run_features(audio_dir=Path({audio!r}), tp=Path({tp!r}), fp=Path({fp!r}), out=Path({out!r}),
             config=TINY, jobs=1, progress=False)
"""


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_run_then_rerun_equals_uninterrupted(tiny_run, tmp_path, point):
    # tiny_run (conftest.py) is the uninterrupted run of the same dataset and config.
    paths = tiny_run.paths
    expected, expected_index = read_arrays(tiny_run.out), read_index(tiny_run.out)
    out = tmp_path / "feat"
    script = RUNNER.format(
        tests=str(Path(__file__).parent),
        patch=textwrap.dedent(KILL_POINTS[point]),
        audio=str(paths["audio"]),
        tp=str(paths["tp"]),
        fp=str(paths["fp"]),
        out=str(out),
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    # Nothing a killed run leaves behind is trusted: there is no index to read.
    assert not (out / INDEX_FILE).exists()
    with pytest.raises(FormatError, match="no index"):
        read_index(out)
    strays = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    if point == "while writing the index":  # a shard is built in memory: no temp file mid-shard
        assert len(strays) == 1, strays
    summary = run_tiny(paths, out)
    # A shard is reused only when the driver recorded its sha256: killed "between shards", the
    # first shard was recorded and the second, renamed into place a moment before, is rebuilt.
    assert summary.shards_reused == {"between shards": 1, "while writing the index": 3}.get(point, 0)
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    got = read_arrays(out)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert read_index(out).fingerprint == expected_index.fingerprint
