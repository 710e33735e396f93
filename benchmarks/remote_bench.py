"""A feature set in object storage: the loader's epochs from a local S3 server (moto) against
the local-disk loader and a plain download, all on the same bytes in one run.

- warm: the second epoch of ``ShardBatches(s3://...)`` (every shard already verified in the
  cache) against the same epoch from the local directory, in alternating rounds, best of each;
- cold: the first epoch from an empty cache (index, metadata by range requests, every shard
  fetched and hashed as the epoch first reads it, or all up front with ``prefetch=True``) in
  samples/s and MB/s, beside a plain ``fs.get`` of the same objects with s3fs into a
  temporary directory (what this machine's network path allows).

Run alone: ``python -m benchmarks.remote_bench [--features features/demo]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent


@contextlib.contextmanager
def _local_s3(work: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    from object_stores import S3_ENV, s3_server

    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    with s3_server(work / "moto.log") as endpoint:
        os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _epoch(seq, epoch: int) -> float:
    started = time.perf_counter()
    for i in range(len(seq)):
        seq.batch(i, epoch=epoch)
    return time.perf_counter() - started


def run(features: Path, *, rounds: int = 3, batch_size: int = 32) -> dict:
    import fsspec

    from loader.batches import ShardBatches
    from melshards.index import read_index

    index = read_index(features)
    n_bytes = sum(e.bytes for e in index.shards)
    options = {"split": "all", "batch_size": batch_size, "seed": 0, "augment": True, "shuffle": True}
    with tempfile.TemporaryDirectory() as tmp, _local_s3(Path(tmp)):
        work = Path(tmp)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench")
        fs.put(str(features), "bench/set", recursive=True)
        url = "s3://bench/set"
        started = time.perf_counter()
        fs.get("bench/set/", str(work / "plain") + "/", recursive=True)
        download_s = time.perf_counter() - started

        started = time.perf_counter()
        ahead = ShardBatches(url, cache_dir=work / "prefetched", prefetch=True, **options)
        prefetch_s = time.perf_counter() - started + _epoch(ahead, 0)
        ahead.close()
        started = time.perf_counter()
        remote_seq = ShardBatches(url, cache_dir=work / "cache", **options)
        open_s = time.perf_counter() - started
        cold_s = open_s + _epoch(remote_seq, 0)
        local_seq = ShardBatches(features, **options)
        _epoch(local_seq, 0)  # the local set's first epoch warms its maps and page cache too
        warm, local = [], []
        for r in range(rounds):
            warm.append(_epoch(remote_seq, 1 + r))
            local.append(_epoch(local_seq, 1 + r))
        n = remote_seq.n_examples
        remote_seq.close()
        local_seq.close()
    return {
        "examples": n,
        "bytes": n_bytes,
        "plain_download_s": round(download_s, 3),
        "plain_download_mb_s": round(n_bytes / 1e6 / download_s, 1),
        "cold_open_s": round(open_s, 3),
        "cold_epoch_s": round(cold_s, 3),
        "cold_samples_per_s": round(n / cold_s, 1),
        "cold_mb_s": round(n_bytes / 1e6 / cold_s, 1),
        "cold_vs_plain_download": round(download_s / cold_s, 3),
        "prefetch_epoch_s": round(prefetch_s, 3),
        "prefetch_mb_s": round(n_bytes / 1e6 / prefetch_s, 1),
        "prefetch_samples_per_s": round(n / prefetch_s, 1),
        "prefetch_vs_plain_download": round(download_s / prefetch_s, 3),
        "warm_epoch_s": round(min(warm), 4),
        "local_epoch_s": round(min(local), 4),
        "warm_samples_per_s": round(n / min(warm), 1),
        "local_samples_per_s": round(n / min(local), 1),
        "warm_vs_local": round(min(local) / min(warm), 3),
    }


def table(fig: dict) -> list[str]:
    mb = fig["bytes"] / 1e6
    return [
        f"feature set in object storage (local S3 server, {fig['examples']} examples, {mb:.0f} MB)",
        f"  plain download of the shards          {fig['plain_download_s']:>8.2f} s  {fig['plain_download_mb_s']:>7.1f} MB/s",
        f"  first epoch, cold cache (open+fetch)  {fig['cold_epoch_s']:>8.2f} s  {fig['cold_mb_s']:>7.1f} MB/s"
        f"  {fig['cold_samples_per_s']:>8.0f} samples/s  ({fig['cold_vs_plain_download']:.2f}x the download)",
        f"  first epoch, cold cache, prefetch=True{fig['prefetch_epoch_s']:>8.2f} s  {fig['prefetch_mb_s']:>7.1f} MB/s"
        f"  {fig['prefetch_samples_per_s']:>8.0f} samples/s  ({fig['prefetch_vs_plain_download']:.2f}x the download)",
        f"  epoch from the warm cache             {fig['warm_epoch_s']:>8.3f} s  {fig['warm_samples_per_s']:>17.0f} samples/s",
        f"  epoch from the local directory        {fig['local_epoch_s']:>8.3f} s  {fig['local_samples_per_s']:>17.0f} samples/s",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    fig = run(args.features, rounds=args.rounds)
    print("\n".join(table(fig)))
    print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
