"""Feature sets at a URL: precompute to a real S3-compatible server and train from it, HTTP
range reads, the shared verified cache, and what kills and failures leave behind."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from object_stores import assert_same_batches, batches, http_server, s3_endpoint_fixture, s3_fixture  # noqa: F401

from audio_fixtures import TINY, run_tiny
from loader.batches import ShardBatches
from loader.feature_set import FeatureSet
from melshards import remote, shard_cache
from melshards.errors import ConfigError, FormatError, IntegrityError, StorageError
from melshards.index import read_index
from melshards.names import INDEX_FILE
from melshards.verify import verify

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- round trip --------------------------------------------------------------------------------


def test_precompute_to_s3_then_read_the_same_batches_as_the_local_set(tiny_run, s3, tmp_path):
    url = f"{s3}/tiny"
    summary = run_tiny(tiny_run.paths, url, stage=tmp_path / "stage")
    assert summary.line().startswith("wrote 9 examples in 3 shards") and f"to {url} in" in summary.line()
    names = remote.list_names(url)
    assert {INDEX_FILE, "failures.jsonl", "shard-00000.h5", "shard-00002.h5"} <= set(names)
    index = read_index(url)
    assert index.fingerprint == read_index(tiny_run.out).fingerprint
    cache = tmp_path / "cache"
    assert_same_batches(batches(url, cache_dir=cache), batches(tiny_run.out))
    # the cache holds one verified copy of each shard, nothing partial
    copies = sorted(p.name for p in cache.glob("*/shard-*.h5"))
    assert copies == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert not list(cache.rglob("*.part"))
    # a second run has nothing to do, even from an empty stage: it takes the shards back
    again = run_tiny(tiny_run.paths, url, stage=tmp_path / "other-stage")
    assert again.shards_built == 0 and again.shards_reused == 3


def test_training_reads_a_set_at_a_url_as_it_reads_the_local_copy(s3, tmp_path):
    from experiments.sequences import make_sequences
    from experiments.train import train
    from synthetic_features import make_feature_set

    local = make_feature_set(tmp_path / "set", n_recordings=10, per_recording=3, n_classes=3, seed=2)
    remote.filesystem(s3)[0].put(str(local), f"{s3[5:]}/set", recursive=True)
    url = f"{s3}/set"
    common = {"fold": 0, "n_folds": 5, "batch_size": 4, "seed": 0, "workers": 1, "augment": True}
    common |= {"mixup": 0.5, "in_memory": False}
    for a, b in zip(make_sequences(url, **common), make_sequences(local, **common), strict=True):
        assert_same_batches([a[i] for i in range(len(a))], [b[i] for i in range(len(b))])
    metrics = train(url, out=tmp_path / "run", model="tiny", epochs=1, batch_size=8, quiet=True)
    assert metrics["config"]["features_path"] == url
    assert metrics["fingerprint"] == read_index(local).fingerprint


def test_verify_inspect_and_preview_take_a_url(tiny_run, s3, tmp_path):
    from precompute.cli import main
    from precompute.inspection import inspect_lines

    url = f"{s3}/tiny"
    run_tiny(tiny_run.paths, url, stage=tmp_path / "stage")
    assert verify(url, cache_dir=tmp_path / "c") == []
    lines = inspect_lines(url, cache_dir=tmp_path / "c2")
    assert lines[0] == f"feature set  {url}"
    assert lines[2].startswith("examples     9 from 4 recordings in 3 shards")
    assert main(["preview", url, "--out", str(tmp_path / "p.png"), "--no-augment", "--quiet"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    # one flipped byte in the object: verify names it, a reader with an empty cache refuses it
    shard = f"{url}/shard-00001.h5"
    data = bytearray(remote.read_bytes(shard))
    data[len(data) // 2] ^= 0xFF
    remote.write_bytes(shard, bytes(data))
    problems = verify(url, cache_dir=tmp_path / "c")
    assert len(problems) == 1 and problems[0].startswith(f"{shard}: downloaded {len(data)} bytes with sha256")
    with pytest.raises(IntegrityError, match=r"shard-00001\.h5: downloaded .* the index says"):
        batches(url, cache_dir=tmp_path / "c3")
    assert not list((tmp_path / "c3").glob("*/shard-00001.h5"))


def test_dask_workers_upload_their_shards(tiny_run, s3, tmp_path):
    pytest.importorskip("distributed")
    url = f"{s3}/dask"
    summary = run_tiny(tiny_run.paths, url, stage=tmp_path / "stage", backend="dask", jobs=2)
    assert summary.shards_built == 3
    assert_same_batches(batches(url, cache_dir=tmp_path / "c"), batches(tiny_run.out))


# -- kills and failures --------------------------------------------------------------------------

KILLED_UPLOAD = """
    import dataclasses, os, signal
    from pathlib import Path
    import precompute.publish as publish
    from audio_fixtures import TINY, write_dataset
    from precompute.run import run_features
    original, done = publish.upload_shard, []
    def upload_then_die(*args):
        original(*args)
        done.append(1)
        if len(done) == 2:  # the second shard uploaded, not yet recorded; the third not built
            os.kill(os.getpid(), signal.SIGKILL)
    publish.upload_shard = upload_then_die
    paths = {k: Path(v) for k, v in PATHS.items()}
    run_features(audio_dir=paths["audio"], tp=paths["tp"], fp=paths["fp"], out=URL, config=CONFIG,
                 jobs=1, progress=False, stage=Path(STAGE))
"""


def test_a_killed_upload_leaves_no_index_naming_a_missing_shard(tiny_run, s3, tmp_path):
    url = f"{s3}/tiny"
    run_tiny(tiny_run.paths, url, stage=tmp_path / "first")  # a finished set is there
    changed = dataclasses.replace(TINY, n_mels=TINY.n_mels // 2)  # every shard changes
    code = KILLED_UPLOAD.replace("PATHS", repr({k: str(v) for k, v in tiny_run.paths.items()}))
    code = code.replace("URL", repr(url)).replace("STAGE", repr(str(tmp_path / "stage")))
    code = code.replace("CONFIG", f"dataclasses.replace(TINY, n_mels={changed.n_mels})")
    result = run_python(code)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    names = remote.list_names(url)
    assert INDEX_FILE not in names and {"shard-00000.h5", "shard-00001.h5"} <= set(names)
    with pytest.raises(FormatError, match=rf"{url}/index.json: no index; not a finished feature set"):
        FeatureSet(url, cache_dir=tmp_path / "c")
    # resumed on "another machine" (an empty stage): the recorded shard comes back; the one
    # uploaded but never recorded is built again, as is the third
    resumed = run_tiny(tiny_run.paths, url, stage=tmp_path / "elsewhere", config=changed)
    assert (resumed.shards_built, resumed.shards_reused) == (2, 1)
    local = run_tiny(tiny_run.paths, tmp_path / "local", config=changed)
    assert local.shards_built == 3
    assert_same_batches(batches(url, cache_dir=tmp_path / "c"), batches(tmp_path / "local"))


KILLED_DOWNLOAD = """
    from melshards.index import read_index
    from melshards.shard_cache import ShardCache
    entry = read_index(URL).shards[0]
    ShardCache.at(CACHE).fetch(URL, entry.file, entry.sha256, entry.bytes)
    print("finished")
"""


def test_a_killed_download_never_becomes_a_cached_shard(tiny_run, tmp_path):
    cache = shard_cache.ShardCache.at(tmp_path / "cache")
    with http_server(tiny_run.out.parent, delay=0.05, block=2048) as server:
        url = f"{server}/{tiny_run.out.name}"
        entry = read_index(url).shards[0]
        directory = cache.set_dir(url)
        code = KILLED_DOWNLOAD.replace("URL", repr(url)).replace("CACHE", repr(str(cache.root)))
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while not list(directory.glob(".*.part")):
            assert proc.poll() is None and time.monotonic() < deadline, "the download ended before the kill"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        assert [p.name for p in directory.glob(".*.part")]  # killed midway: a partial file, no marker
        assert cache.cached(url, entry.file, entry.sha256, entry.bytes) is None
        assert not (directory / entry.file).exists()
        path = cache.fetch(url, entry.file, entry.sha256, entry.bytes)  # fetched again, whole
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
        assert not list(directory.glob(".*.part"))
        # and the whole set read over HTTP range requests equals the local one
        assert_same_batches(batches(url, cache_dir=cache.root), batches(tiny_run.out))


def test_a_download_cut_off_midway_is_one_line_naming_the_url(tiny_run, tmp_path, monkeypatch):
    cache = shard_cache.ShardCache.at(tmp_path / "cache")
    with http_server(tiny_run.out.parent) as server:
        url = f"{server}/{tiny_run.out.name}"
        entry = read_index(url).shards[0]
        fs, _ = remote.filesystem(url)

        def cut_off(*args, **kwargs):
            raise ConnectionResetError("connection reset by peer")

        monkeypatch.setattr(fs, "cat_file", cut_off)
        with pytest.raises(StorageError) as err:
            cache.fetch(url, entry.file, entry.sha256, entry.bytes)
    assert str(err.value) == f"{url}/{entry.file}: cannot download: connection reset by peer"
    assert cache.cached(url, entry.file, entry.sha256, entry.bytes) is None
    assert not list(cache.set_dir(url).glob(".*.part")) and not (cache.set_dir(url) / entry.file).exists()


SHARED_READER = """
    import hashlib
    from loader.batches import ShardBatches
    seq = ShardBatches(URL, cache_dir=CACHE, split="all", batch_size=3, seed=1, augment=True, prefetch=True)
    digest = hashlib.sha256()
    for i in range(len(seq)):
        for a in seq.batch(i, epoch=0):
            digest.update(a.tobytes())
    print(digest.hexdigest())
"""


def test_two_processes_share_one_cache_directory(tiny_run, s3, tmp_path):
    url = f"{s3}/tiny"
    run_tiny(tiny_run.paths, url, stage=tmp_path / "stage")
    cache = tmp_path / "shared"
    code = textwrap.dedent(SHARED_READER.replace("URL", repr(url)).replace("CACHE", repr(str(cache))))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    digests = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    expected = hashlib.sha256()
    with ShardBatches(tiny_run.out, split="all", batch_size=3, seed=1, augment=True) as seq:
        for i in range(len(seq)):
            for a in seq.batch(i, epoch=0):
                expected.update(a.tobytes())
    assert digests == [expected.hexdigest()] * 2
    entries = shard_cache.ShardCache.at(cache).entries()
    assert sorted(p.name for _, _, p in entries) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert not list(cache.rglob("*.part"))


def test_a_size_limit_evicts_the_least_recently_used_shards(tiny_run, tmp_path):
    index = read_index(tiny_run.out)
    sizes = [e.bytes for e in index.shards]
    limit = sizes[0] + sizes[1] + sizes[2] - 1  # room for two of the three, never all
    with http_server(tiny_run.out.parent) as server:
        url = f"{server}/{tiny_run.out.name}"
        cache = shard_cache.ShardCache.at(tmp_path / "cache", limit=limit)
        for entry in index.shards:  # 0, 1, 2: the oldest, 0, goes
            cache.fetch(url, entry.file, entry.sha256, entry.bytes)
            time.sleep(0.02)
        assert [p.name for _, _, p in cache.entries()] == ["shard-00001.h5", "shard-00002.h5"]
        e0, e1 = index.shards[0], index.shards[1]
        cache.fetch(url, e1.file, e1.sha256, e1.bytes)  # used again: now 2 is the oldest
        time.sleep(0.02)
        cache.fetch(url, e0.file, e0.sha256, e0.bytes)
        assert [p.name for _, _, p in cache.entries()] == ["shard-00001.h5", "shard-00000.h5"]
        # reading everything through a cache too small for the set: same batches, within the limit
        tiny = shard_cache.ShardCache.at(tmp_path / "tiny", limit=max(sizes))
        assert_same_batches(batches(url, cache_dir=tiny.root, cache_limit=max(sizes)), batches(tiny_run.out))
        assert sum(size for _, size, _ in tiny.entries()) <= max(sizes)


def test_storage_errors_are_one_line_naming_the_url(s3, tmp_path, monkeypatch):
    with pytest.raises(StorageError) as missing:
        FeatureSet("s3://no-such-bucket-here/set", cache_dir=tmp_path)
    assert str(missing.value) == (
        "s3://no-such-bucket-here/set/index.json: bucket 'no-such-bucket-here' does not exist at "
        f"{os.environ['AWS_ENDPOINT_URL']} (create it, or check AWS_ENDPOINT_URL and the credentials)"
    )
    with pytest.raises(FormatError, match=rf"^{s3}/set/index.json: no index"):
        FeatureSet(f"{s3}/set", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^http://host/set: HTTP URLs are read-only"):
        run_tiny({"audio": tmp_path, "tp": tmp_path / "tp.csv", "fp": None}, "http://host/set")
    # the network gone: the endpoint no longer answers
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MELSHARDS_REMOTE_ATTEMPTS", "1")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(StorageError) as err:
        remote.read_bytes(f"{s3}/set/index.json")
    message = str(err.value)
    assert message.startswith(f"{s3}/set/index.json: cannot read: ") and "\n" not in message
    fsspec.filesystem("s3").clear_instance_cache()


def test_urls_in_messages_hide_credentials():
    assert remote.redact("https://user:pw@host:8080/a/b?X-Amz-Signature=abc#f") == "https://host:8080/a/b"
    assert remote.redact("features/demo") == "features/demo"
    assert remote.local_path("file:///data/set") == Path("/data/set")
    assert remote.is_url("gs://b/x") and not remote.is_url("file:///x") and not remote.is_url("a/b")
    with pytest.raises(StorageError) as err:
        remote.read_bytes("https://user:secret-pw@127.0.0.1:9/set/index.json")
    assert "secret-pw" not in str(err.value) and str(err.value).startswith(
        "https://127.0.0.1:9/set/index.json"
    )
    assert (
        shard_cache.parse_size("1.5G") == int(1.5 * (1 << 30))
        and shard_cache.parse_size("500MB") == 500 << 20
    )
    with pytest.raises(ConfigError, match="cache size limit 'lots'"):
        shard_cache.parse_size("lots")
    assert json.loads(json.dumps(remote.set_name("s3://b/p/demo"))).startswith("demo-")
