"""Object storage that is honest, bounded and verified: a missing bucket named, a retry that
tells the truth, the cache's place said, every request bounded in time, shards in use kept
from eviction, and bytes compared by hash wherever a remote shard is trusted."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from object_stores import (  # noqa: F401 (the fixtures s3_endpoint, s3)
    assert_same_batches,
    batches,
    free_port,
    http_server,
    s3_endpoint_fixture,
    s3_fixture,
)

from audio_fixtures import run_tiny
from loader.feature_set import FeatureSet
from melshards import remote, shard_cache
from melshards.errors import ConfigError, IntegrityError, StorageError
from melshards.index import read_index
from melshards.names import BUILT_FILE, INDEX_FILE
from melshards.remote_limits import Limits
from precompute import resume

ROOT = Path(__file__).resolve().parent.parent
CHANGED = (
    "the object changed since its index was written, or is damaged: run again the "
    "`precompute features ... --out {where}` that wrote it (it checks every shard's sha256 and "
    "uploads a damaged one anew)"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def log_lines(caplog, monkeypatch):
    """The ``melshards`` log lines of the test, info and up (whatever a command line before it
    did to that logger)."""
    monkeypatch.setattr(logging.getLogger("melshards"), "propagate", True)
    caplog.set_level(logging.INFO, logger="melshards")
    return lambda prefix="": [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


# -- a missing bucket, and the run after it --------------------------------------------------------


def test_a_missing_bucket_is_named_and_records_no_plan(tiny_run, s3, tmp_path):
    url = "s3://melshards-missing-bucket/set"
    stage = tmp_path / "stage"
    with pytest.raises(StorageError) as err:
        run_tiny(tiny_run.paths, url, stage=stage)
    assert str(err.value) == (
        f"{url}: bucket 'melshards-missing-bucket' does not exist at {os.environ['AWS_ENDPOINT_URL']} "
        "(create it, or check AWS_ENDPOINT_URL and the credentials)"
    )
    assert not (stage / BUILT_FILE).exists()  # nothing recorded: the retry is a first run
    remote.filesystem(url)[0].mkdir("melshards-missing-bucket")
    summary = run_tiny(tiny_run.paths, url, stage=stage)
    assert {r.why for r in summary.rebuilt} == {resume.NEW}
    assert re.fullmatch(
        rf"wrote 9 examples in 3 shards \([0-9.]+ MB; 3 built\) to {url} in .*; 0 failures", summary.line()
    )


def test_a_plan_left_by_a_run_that_built_nothing_is_not_called_unfinished(tiny_run, tmp_path):
    out = tmp_path / "set"
    run_tiny(tiny_run.paths, out)
    # What a run that stopped right after planning leaves: its plan, no shard, no index.
    plan = [line for line in (out / BUILT_FILE).read_text().splitlines() if '"planned"' in line]
    (out / BUILT_FILE).write_text("\n".join(plan) + "\n")
    (out / INDEX_FILE).unlink()
    for shard in out.glob("shard-*.h5"):
        shard.unlink()
    summary = run_tiny(tiny_run.paths, out)
    assert [(r.file, r.why) for r in summary.rebuilt] == [
        ("shard-00000.h5", resume.NEW),
        ("shard-00001.h5", resume.NEW),
        ("shard-00002.h5", resume.NEW),
    ]
    assert "unfinished" not in summary.line() and "; 3 built) to " in summary.line()


# -- where the cache is --------------------------------------------------------------------------------


def test_the_cache_and_the_stage_are_named_once(tiny_run, s3, tmp_path, log_lines):
    url = f"{s3}/tiny"
    stage = tmp_path / "stage"
    run_tiny(tiny_run.paths, url, stage=stage)
    assert log_lines("staging") == [
        f"staging the shards of {url} in {stage} (a copy of each, kept to resume; --stage or "
        "$MELSHARDS_CACHE moves it, and it may be deleted once the run is done)"
    ]
    cache = tmp_path / "cache"
    batches(url, cache_dir=cache, cache_limit="1G")
    batches(url, cache_dir=cache, cache_limit="1G")  # opened again: said once per process
    assert log_lines("caching") == [
        f"caching the shards of {url} in {shard_cache.ShardCache.at(cache).set_dir(url)} (the cache "
        "holds 0.0 MB, limit 1073.7 MB; move it with cache_dir or $MELSHARDS_CACHE, bound it with "
        "cache_limit or $MELSHARDS_CACHE_LIMIT)"
    ]


# -- bounded calls ----------------------------------------------------------------------------------


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a stopped server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_an_endpoint_that_never_answers_is_an_error_in_bounded_time(kind, silent_server, monkeypatch, capsys):
    from precompute.cli import main

    monkeypatch.setenv("MELSHARDS_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("MELSHARDS_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("MELSHARDS_REMOTE_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_server)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    url = f"{silent_server}/set" if kind == "http" else "s3://quiet-bucket/set"
    started = time.monotonic()
    assert main(["inspect", url, "--quiet"]) == 2
    assert time.monotonic() - started < 15
    assert capsys.readouterr().err == (
        f"precompute inspect: error: {url}/index.json: cannot read: no answer in time (2 attempt(s), "
        "0.5 s to connect, 0.5 s to read); the server is down, unreachable or slow: check it, or wait "
        "longer with MELSHARDS_READ_TIMEOUT, MELSHARDS_CONNECT_TIMEOUT, MELSHARDS_REMOTE_ATTEMPTS\n"
    )


def test_the_limits_come_from_the_environment(monkeypatch):
    assert Limits.from_env() == Limits(connect=10.0, read=60.0, attempts=3)
    assert Limits().storage_options("s3") == {
        "config_kwargs": {
            "connect_timeout": 10.0,
            "read_timeout": 60.0,
            "retries": {"total_max_attempts": 3, "mode": "standard"},
        }
    }
    monkeypatch.setenv("MELSHARDS_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("MELSHARDS_REMOTE_ATTEMPTS", "1")
    assert Limits.from_env() == Limits(connect=10.0, read=2.5, attempts=1)
    monkeypatch.setenv("MELSHARDS_READ_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"^MELSHARDS_READ_TIMEOUT='soon': give a number of seconds > 0$"):
        Limits.from_env()
    monkeypatch.setenv("MELSHARDS_READ_TIMEOUT", "1")
    monkeypatch.setenv("MELSHARDS_REMOTE_ATTEMPTS", "0")
    with pytest.raises(ConfigError, match=r"^MELSHARDS_REMOTE_ATTEMPTS='0': give a whole number >= 1$"):
        remote.read_bytes("s3://b/set/index.json")


# -- shards in use are kept from eviction --------------------------------------------------------

# Reads every batch through a cache that holds one shard; the first shard it finds is held
# between finding it and opening it until another process has filled the cache.
HELD_READER = """
    import hashlib, time
    from pathlib import Path
    import loader.feature_set as feature_set
    from loader.batches import ShardBatches
    original, calls = feature_set.FeatureSet.local_shard, []
    def slow_local_shard(self, s):
        path = original(self, s)
        if not calls:
            calls.append(s)
            Path(READY).write_text(path.name)
            while not Path(DONE).exists():
                time.sleep(0.01)
        return path
    feature_set.FeatureSet.local_shard = slow_local_shard
    seq = ShardBatches(
        URL, cache_dir=CACHE, cache_limit=LIMIT, split="all", batch_size=3, seed=1, augment=False, shuffle=True
    )
    digest = hashlib.sha256()
    for i in range(len(seq)):
        for a in seq.batch(i, epoch=0):
            digest.update(a.tobytes())
    print(digest.hexdigest())
"""


def test_a_shard_between_fetch_and_open_survives_another_process_filling_the_cache(tiny_run, tmp_path):
    index = read_index(tiny_run.out)
    limit = max(e.bytes for e in index.shards)  # room for one shard
    cache, ready, done = tmp_path / "cache", tmp_path / "ready", tmp_path / "done"
    with http_server(tiny_run.out.parent) as server:
        url = f"{server}/{tiny_run.out.name}"
        code = HELD_READER
        for name, value in {"URL": url, "CACHE": str(cache), "READY": str(ready), "DONE": str(done)}.items():
            code = code.replace(name, repr(value))
        code = code.replace("LIMIT", str(limit))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
        reader = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            while not ready.exists():
                assert reader.poll() is None and time.monotonic() < deadline, reader.stderr.read()[-2000:]
                time.sleep(0.02)
            held = ready.read_text()
            # another process fetches the other shards through the same small cache
            other = subprocess.run(
                [sys.executable, "-c", FILL.format(url=url, cache=str(cache), limit=limit, held=held)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert other.returncode == 0, other.stderr[-2000:]
            assert (cache / shard_cache.set_name(url) / held).is_file()  # pinned: not evicted
            done.write_text("")
            out, err = reader.communicate(timeout=120)
        finally:
            reader.kill()
    assert reader.returncode == 0, err[-2000:]
    expected = hashlib.sha256()
    for batch in batches(tiny_run.out, epochs=(0,), batch_size=3, seed=1, augment=False, shuffle=True):
        for a in batch:
            expected.update(a.tobytes())
    assert out.strip() == expected.hexdigest()


FILL = """
from melshards.index import read_index
from melshards.shard_cache import ShardCache
cache = ShardCache.at({cache!r}, limit={limit})
for entry in read_index({url!r}).shards:
    if entry.file != {held!r}:
        cache.fetch({url!r}, entry.file, entry.sha256, entry.bytes)
"""


def test_eviction_skips_a_pinned_shard_and_takes_it_once_released(tiny_run, tmp_path):
    index = read_index(tiny_run.out)
    first, second = index.shards[0], index.shards[1]
    with http_server(tiny_run.out.parent) as server:
        url = f"{server}/{tiny_run.out.name}"
        cache = shard_cache.ShardCache.at(tmp_path / "cache", limit=max(e.bytes for e in index.shards))
        path = cache.use(url, first.file, first.sha256, first.bytes)  # pinned by this thread
        held = os.open(path, os.O_RDONLY)
        try:
            time.sleep(0.02)
            code = f"from melshards.shard_cache import ShardCache\nprint(ShardCache.at({str(cache.root)!r}, limit=1).evict())"
            other = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert other.stdout.strip() == "[]" and path.is_file()
            cache.use(url, second.file, second.sha256, second.bytes)  # the pin moves on: the first goes
            assert [p.name for _, _, p in cache.entries()] == [second.file] and not path.exists()
            assert sha256(os.pread(held, first.bytes, 0)) == first.sha256  # an open file stays whole
        finally:
            os.close(held)


# -- bytes compared by hash ------------------------------------------------------------------------


def flip_a_byte(url: str) -> bytes:
    data = bytearray(remote.read_bytes(url))
    data[len(data) // 2] ^= 0xFF
    remote.write_bytes(url, bytes(data))
    return bytes(data)


def test_a_damaged_object_is_uploaded_again_by_the_next_run(tiny_run, s3, tmp_path, log_lines):
    url = f"{s3}/tiny"
    stage = tmp_path / "stage"
    run_tiny(tiny_run.paths, url, stage=stage)
    shard = f"{url}/shard-00001.h5"
    flip_a_byte(shard)  # the same size, other bytes
    again = run_tiny(tiny_run.paths, url, stage=stage)
    assert (again.shards_built, again.shards_reused) == (0, 3)
    assert log_lines(s3) == [f"{shard}: not the bytes of the shard built; uploading it again"]
    entry = read_index(url).shards[1]
    assert sha256(remote.read_bytes(shard)) == entry.sha256 == sha256((stage / entry.file).read_bytes())


def test_holds_compares_hashes_when_the_store_reports_no_md5(tiny_run, s3, tmp_path, monkeypatch):
    local = tiny_run.out / "shard-00000.h5"
    url = f"{s3}/x/shard-00000.h5"
    remote.upload(local, url)
    assert remote.holds(url, local) and not remote.holds(f"{s3}/x/none.h5", local)
    info_of = remote.info_of
    monkeypatch.setattr(remote, "info_of", lambda u: {**info_of(u), "ETag": '"abc-2"'})  # a multipart ETag
    assert remote.holds(url, local)
    flip_a_byte(url)
    assert not remote.holds(url, local)


def test_a_replaced_object_is_named_with_both_sizes(tiny_run, s3, tmp_path):
    url = f"{s3}/tiny"
    run_tiny(tiny_run.paths, url, stage=tmp_path / "stage")
    index = read_index(url)
    small, large = (
        sorted(index.shards, key=lambda e: e.bytes)[0],
        sorted(index.shards, key=lambda e: e.bytes)[-1],
    )
    assert small.bytes < large.bytes
    # the small shard's object replaced by a larger shard's bytes
    remote.write_bytes(f"{url}/{small.file}", remote.read_bytes(f"{url}/{large.file}"))
    with pytest.raises(IntegrityError) as err:
        FeatureSet(url, cache_dir=tmp_path / "cache")
    assert str(err.value) == (
        f"{url}/{small.file}: the object holds {large.bytes} bytes, the index says {small.bytes} "
        "bytes; " + CHANGED.format(where=url)
    )


def test_a_damaged_cached_copy_is_fetched_again_once(tiny_run, tmp_path, log_lines):
    cache = tmp_path / "cache"
    with http_server(tiny_run.out.parent) as server:
        url = f"{server}/{tiny_run.out.name}"
        expected = batches(tiny_run.out)
        assert_same_batches(batches(url, cache_dir=cache), expected)
        entry = read_index(url).shards[1]
        copy = shard_cache.ShardCache.at(cache).set_dir(url) / entry.file
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF  # a byte of a mel chunk; the size and the marker unchanged
        copy.write_bytes(bytes(data))
        assert_same_batches(batches(url, cache_dir=cache), expected)
        assert log_lines(str(copy)) == [
            f"{copy}: the cached copy of {url}/{entry.file} is damaged (sha256 {sha256(bytes(data))[:12]}..., "
            f"the index says {entry.sha256[:12]}...); fetching it again"
        ]
        assert sha256(copy.read_bytes()) == entry.sha256


def test_a_damaged_copy_of_a_damaged_object_is_one_line_with_the_way_out(tiny_run, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(tiny_run.out, served)
    cache = tmp_path / "cache"
    with http_server(tmp_path) as server:
        url = f"{server}/served"
        batches(url, cache_dir=cache)
        entry = read_index(url).shards[0]
        for path in (served / entry.file, shard_cache.ShardCache.at(cache).set_dir(url) / entry.file):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        with pytest.raises(IntegrityError) as err:
            batches(url, cache_dir=cache)
    assert str(err.value) == (
        f"{url}/{entry.file}: downloaded {entry.bytes} bytes with sha256 {sha256(bytes(data))[:12]}..., "
        f"the index says {entry.bytes} bytes, {entry.sha256[:12]}...; " + CHANGED.format(where=url)
    )


# -- the recipe of docs/cluster.md -----------------------------------------------------------------


def test_the_local_object_storage_recipe_in_the_docs_runs_as_written(tmp_path):
    pytest.importorskip("moto")
    if shutil.which("curl") is None:
        pytest.skip("the recipe waits for its server with curl")
    doc = (ROOT / "docs" / "cluster.md").read_text()
    recipe = re.search(r"<!-- local-s3-recipe -->\n```bash\n(.*?)```", doc, flags=re.DOTALL).group(1)
    # verbatim but for its folder and port
    port = free_port()
    script = recipe.replace("/tmp/s3-try", str(tmp_path / "try")).replace("5000", str(port))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    for key in ("AWS_ENDPOINT_URL", shard_cache.CACHE_ENV, shard_cache.CACHE_LIMIT_ENV):
        env.pop(key, None)
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=280)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the server, if the recipe stopped early
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "wrote 51 examples in 2 shards" in out and "feature set  s3://demo/features" in out
    assert re.search(rf"caching the shards of s3://demo/features in {tmp_path}/try/cache/features-", out)
    assert re.search(r"tiny: val_lwlrap [0-9.]+", out)
