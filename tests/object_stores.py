"""Real servers for the object-storage tests: an S3-compatible one (moto's standalone server)
and a plain HTTP server that answers range requests, each started by the tests and stopped
after them; the fixtures ``s3_endpoint`` and ``s3`` (a new bucket per test), and the batches a
set yields, to compare a set at a URL with its local copy."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from loader.batches import ShardBatches
from melshards import shard_cache

# What s3fs (through botocore) reads to reach the local server.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's S3 server on a free local port; yields its endpoint URL. RuntimeError when it does
    not answer within 30 s (the caller skips, naming why)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start: {log.read_text()[-300:]}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.kill()
        proc.wait()


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` answered by 206 Partial Content (the standard
    library's handler always sends the whole file). ``delay`` seconds between blocks of ``block``
    bytes
    make a download slow enough to be killed midway."""

    delay = 0.0
    block = 65536

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_head(self):
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, last = 0, size - 1
        if found:
            first = int(found.group(1))
            last = min(int(found.group(2)), size - 1) if found.group(2) else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        fh = open(path, "rb")
        fh.seek(first)
        self._left = last - first + 1
        return fh

    def copyfile(self, source, outputfile) -> None:
        left = getattr(self, "_left", None)
        while left is None or left > 0:
            block = source.read(self.block if left is None else min(self.block, left))
            if not block:
                break
            outputfile.write(block)
            if left is not None:
                left -= len(block)
            if self.delay:
                time.sleep(self.delay)


@contextlib.contextmanager
def http_server(directory: Path, *, delay: float = 0.0, block: int = 65536) -> Iterator[str]:
    """An HTTP server of ``directory`` (range requests answered) on a free port; yields its URL."""
    handler = type("Handler", (RangeHandler,), {"delay": delay, "block": block})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=os.fspath(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- fixtures and comparisons ------------------------------------------------------------------


# Imported by the test modules under these names; the tests ask for ``s3_endpoint`` and ``s3``.
@pytest.fixture(scope="module", name="s3_endpoint")
def s3_endpoint_fixture(tmp_path_factory):
    server = s3_server(tmp_path_factory.mktemp("moto") / "server.log")
    try:
        endpoint = server.__enter__()
    except RuntimeError as err:
        pytest.skip(f"no local S3 server: {err}")
    yield endpoint
    server.__exit__(None, None, None)


@pytest.fixture(name="s3")
def s3_fixture(s3_endpoint, monkeypatch, tmp_path, request):
    """A new empty bucket on the local server, as ``s3://NAME``; the AWS variables point s3fs
    (and any subprocess) at the server; the cache lives in the test's directory."""
    import fsspec

    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(shard_cache.CACHE_ENV, str(tmp_path / "default-cache"))
    fsspec.filesystem("s3").clear_instance_cache()  # clients made for another server
    bucket = "b" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}"


def batches(source, *, epochs=(0, 1), **options) -> list[tuple[np.ndarray, ...]]:
    """Every batch of ``epochs`` (augmented, shuffled) of a set, local or at a URL."""
    options = {"split": "all", "batch_size": 4, "seed": 3, "augment": True, "shuffle": True, **options}
    with ShardBatches(source, **options) as seq:
        return [seq.batch(i, epoch=e) for e in epochs for i in range(len(seq))]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b) > 0
    for left, right in zip(a, b, strict=True):
        for u, v in zip(left, right, strict=True):
            np.testing.assert_array_equal(u, v)
