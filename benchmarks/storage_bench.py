"""Storage codecs side by side: disk, error, and loader speed against a copy of the same bytes.

Every codec's feature set is precomputed from the same demo audio (``CODECS``), plus one stored
as float32: the exact values every codec's error is measured against (the [0, 1] scale of
``normalize = minmax``). Each loader row is ``ShardSequence`` reading shuffled float32 batches
(no augmentation) from that set; its bound is a plain ``np.copyto`` of a float32 array of the
batch's size into another, the least work that hands over such a batch, timed in the same
rounds. lilcom (Lhotse's lossy codec) runs on the same exact values where it is installed: the
compressed bytes sit in RAM and each batch decompresses its examples and crops them, so only
its decoding is timed.

Also here: the first batch in a fresh process (``first_batch``; alone with ``--first-batch
FEATURES``), in two cases: asked for right after the imports, and after building and compiling
the baseline model, as a training script does; each cold (the set's parsed metadata not kept
yet) and warm (kept by an earlier process, ``loader.meta_cache``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loader import MelReader, ShardSequence, bitshuffle_kernels, open_feature_set
from loader.decode_pool import default_threads
from melshards.config import center_offset

# name -> feature parameters changed from the default preset
CODECS: dict[str, dict[str, object]] = {
    "float16": {"dtype": "float16"},
    "uint8": {"dtype": "uint8"},
    "uint8 + zstd": {"dtype": "uint8", "compression": "zstd"},
    "uint8 + bitshuffle-lz4": {"dtype": "uint8", "compression": "bitshuffle-lz4"},
    "6-bit + zstd": {"dtype": "uint8", "quant_bits": 6, "compression": "zstd"},
    "6-bit + bitshuffle-lz4": {"dtype": "uint8", "quant_bits": 6, "compression": "bitshuffle-lz4"},
}
EXACT = {"dtype": "float32"}
LILCOM_TICKS = (-5, -10)  # Lhotse's default tick, and a finer one


def _slug(params: dict[str, object]) -> str:
    return "storage-" + "-".join(f"{k}-{v}" for k, v in sorted(params.items()))


def precompute(
    demo: Path, work: Path, params: dict[str, object], *, reuse: bool = False
) -> tuple[Path, float]:
    """A feature set of the demo with ``params``; returns its directory and the seconds it took
    (``reuse``: a complete set already there is kept, and its time is NaN)."""
    from benchmarks.precompute_bench import features_command, write_config

    root = work / _slug(params)
    if reuse and _complete(root, params):
        return root, float("nan")
    shutil.rmtree(root, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    toml = write_config(work / f"{root.name}.toml", params)
    started = time.perf_counter()
    subprocess.run(
        [*features_command(demo, root), "--config", str(toml)], check=True, stdout=subprocess.DEVNULL
    )
    return root, time.perf_counter() - started


def _complete(root: Path, params: dict[str, object]) -> bool:
    """Whether ``root`` holds a finished feature set stored with ``params``."""
    from melshards.errors import FormatError
    from melshards.index import read_index

    try:
        config = read_index(root).config
    except FormatError:
        return False
    return all(getattr(config, key) == value for key, value in params.items())


def all_values(root: Path) -> np.ndarray:
    """Every example's full stored window as float32, through the loader: (n, n_mels, n_frames)."""
    features = open_feature_set(root)
    config = features.config
    ids = np.arange(features.n_examples)
    out = np.empty((ids.size, config.n_mels, config.n_frames, 1), dtype=np.float32)
    MelReader(features).read(ids, np.zeros(ids.size, dtype=np.int64), out)
    return out[..., 0]


def _errors(values: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    diff = np.abs(values - exact)
    return {
        "max_error": float(diff.max()),
        "rms_error": float(np.sqrt(np.mean(np.square(diff, dtype=np.float64)))),
    }


def _timed(get, n_batches: int) -> float:
    started = time.perf_counter()
    for i in range(n_batches):
        get(i)
    return (time.perf_counter() - started) / n_batches


class _Lilcom:
    """Batches decoded from lilcom bytes held in RAM: decompress each example, crop, stack."""

    def __init__(self, exact: np.ndarray, tick: int, batch_size: int, crop: int, first: int) -> None:
        import lilcom

        self.lilcom = lilcom
        # lilcom rounds its input in place: compress copies, keep the exact values exact
        self.blobs = [lilcom.compress(example.copy(), tick_power=tick) for example in exact]
        self.n_bytes = sum(len(b) for b in self.blobs)
        self.decoded = np.stack([np.asarray(lilcom.decompress(b), dtype=np.float32) for b in self.blobs])
        self.order = np.random.default_rng(0).permutation(len(self.blobs))
        self.batch_size, self.crop, self.first = batch_size, crop, first
        self.out = np.empty((batch_size, exact.shape[1], crop, 1), dtype=np.float32)

    def get(self, i: int) -> np.ndarray:
        n = len(self.order)
        for row in range(self.batch_size):
            example = self.lilcom.decompress(self.blobs[self.order[(i * self.batch_size + row) % n]])
            self.out[row, :, :, 0] = example[:, self.first : self.first + self.crop]
        return self.out


def run(demo: Path, work: Path, *, batch_size: int = 32, rounds: int = 5, reuse: bool = False) -> dict:
    exact_root, _ = precompute(demo, work, EXACT, reuse=reuse)
    exact = all_values(exact_root)
    raw_float16 = exact.size * 2  # bytes of the values as float16, the unit of "disk"
    sets = _codec_sets(demo, work, exact, reuse=reuse)

    sequences = {
        name: ShardSequence(
            f["root"], split="all", batch_size=batch_size, shuffle=True, seed=0, augment=False
        )
        for name, f in sets.items()
    }
    probe = next(iter(sequences.values()))
    config, crop = probe.config, probe.crop_frames
    for seq in sequences.values():  # a first epoch: page cache warm, checksums verified once
        for i in range(len(seq)):
            seq[i]
    src = np.ones((batch_size, config.n_mels, crop, 1), dtype=np.float32)
    dst = np.empty_like(src)
    readers = {name: seq.__getitem__ for name, seq in sequences.items()}
    readers["copy bound (float32 batch)"] = lambda i: np.copyto(dst, src)
    lilcoms = _lilcom_readers(exact, batch_size, crop, center_offset(config, crop))
    readers.update({name: lil.get for name, lil in lilcoms.items()})
    # A whole epoch per reader and round (the look-ahead builds batch i + 1 of the same epoch);
    # lilcom, 30x slower, decodes two batches.
    n_batches = {name: 2 if name in lilcoms else len(probe) for name in readers}
    seconds = _timings(readers, n_batches, rounds)
    for seq in sequences.values():
        seq.close()

    def rate(name: str) -> float:
        return batch_size / float(np.median(seconds[name]))

    def ratio(a: str, b: str) -> float:  # median over rounds of the ratio within each round
        return float(np.median([sb / sa for sa, sb in zip(seconds[a], seconds[b], strict=True)]))

    bound = "copy bound (float32 batch)"
    rows: dict[str, dict] = {}
    for name, figures in sets.items():
        rows[name] = {
            **{k: v for k, v in figures.items() if k != "root"},
            "samples_per_s": rate(name),
            "vs_float16_loader": ratio(name, "float16"),
            "vs_copy_bound": ratio(name, bound),
        }
    for name, lil in lilcoms.items():
        rows[name] = {
            "mb_on_disk": lil.n_bytes / 1e6,
            "disk_vs_float16": lil.n_bytes / raw_float16,
            **_errors(lil.decoded, exact),
            "samples_per_s": rate(name),
            "vs_float16_loader": ratio(name, "float16"),
            "vs_copy_bound": ratio(name, bound),
        }
    rows[bound] = {"samples_per_s": rate(bound)}
    return {
        "batch": [batch_size, config.n_mels, crop, 1],
        "examples": int(exact.shape[0]),
        "rounds": rounds,
        "codecs": rows,
        "targets": _targets(rows, ratio),
        "decode_ms_per_batch": decode_figures(sets, batch_size, crop, rounds=rounds),
    }


def decode_figures(sets: dict[str, dict], batch_size: int, crop: int, *, rounds: int) -> dict[str, dict]:
    """Where a batch's time goes in the reader alone (no sequence, labels or look-ahead), ms per
    shuffled float32 batch, medians over rounds taken in turn: ``read_1`` (one thread) and
    ``read_pool`` (the default decoding threads), whole reads, checksums already verified; and,
    for the compressed codecs, ``decompress``: the chunks' decompression alone (the loader's
    decoder), one thread."""

    names = [n for n in sets if n == "float16" or "+" in n]
    readers, decoders, batches = {}, {}, {}
    for name in names:
        features = open_feature_set(sets[name]["root"])
        config = features.config
        order = np.random.default_rng(1).permutation(features.n_examples)
        batches[name] = [order[k : k + batch_size] for k in range(0, order.size - batch_size + 1, batch_size)]
        readers[name] = {"read_1": MelReader(features, decode_threads=1), "read_pool": MelReader(features)}
        decode = bitshuffle_kernels.chunk_decoder(config)
        if decode is not None:
            decoders[name] = (decode, _chunks(features))
    out = np.empty((batch_size, config.n_mels, crop, 1), dtype=np.float32)
    start = np.full(batch_size, center_offset(config, crop), dtype=np.int64)
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds + 1):  # the first round verifies checksums and warms the page cache
        for name in names:
            for kind, reader in readers[name].items():
                started = time.perf_counter()
                for ids in batches[name]:
                    reader.read(ids, start, out)
                seconds.setdefault((name, kind), []).append(time.perf_counter() - started)
            if name in decoders:
                decode, chunks = decoders[name]
                started = time.perf_counter()
                for ids in batches[name]:
                    for i in ids.tolist():
                        decode(chunks[i], "")
                seconds.setdefault((name, "decompress"), []).append(time.perf_counter() - started)
    for pair in readers.values():
        for reader in pair.values():
            reader.close()
    figures: dict[str, dict] = {name: {} for name in names}
    for (name, kind), times in seconds.items():
        figures[name][kind] = 1e3 * float(np.median(times[1:])) / len(batches[name])
    figures["decode_threads"] = default_threads()
    return figures


def _chunks(features) -> list[np.ndarray]:
    """Every example's stored chunk (without its checksum), in RAM."""
    chunks = []
    for layout in features.shards:
        raw = np.fromfile(layout.path, dtype=np.uint8)
        for offset, size in zip(layout.byte_offsets.tolist(), layout.chunk_sizes.tolist(), strict=True):
            chunks.append(raw[offset : offset + size - 4].copy())
    return chunks


def _codec_sets(demo: Path, work: Path, exact: np.ndarray, *, reuse: bool = False) -> dict[str, dict]:
    """Each codec's feature set of the demo: where, its size, its error against ``exact``."""
    sets: dict[str, dict] = {}
    for name, params in CODECS.items():
        root, seconds = precompute(demo, work, params, reuse=reuse)
        index = open_feature_set(root).index
        sets[name] = {
            "root": root,
            "params": params,
            "mb_on_disk": sum(s.bytes for s in index.shards) / 1e6,
            "precompute_s": seconds,
            **_errors(all_values(root), exact),
        }
    for figures in sets.values():
        figures["disk_vs_float16"] = figures["mb_on_disk"] / sets["float16"]["mb_on_disk"]
    return sets


def _timings(readers: dict, n_batches: dict[str, int], rounds: int) -> dict[str, list[float]]:
    """Seconds per batch of every reader, per round; in turn, round after round, so that a slow
    spell of the machine touches every reader."""
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(rounds):
        for name, get in readers.items():
            seconds[name].append(_timed(get, n_batches[name]))
    return seconds


def _targets(rows: dict[str, dict], ratio) -> dict[str, float]:
    """The figures ``make bench`` holds against the issue's targets."""
    compressed = [n for n in CODECS if "+" in n and n.startswith("uint8")]
    six_bit = [n for n in CODECS if n.startswith("6-bit")]
    lilcom_default = f"lilcom tick {LILCOM_TICKS[0]}"
    targets = {
        "uint8_disk_vs_float16": rows["uint8"]["disk_vs_float16"],
        "uint8_loader_vs_float16": rows["uint8"]["vs_float16_loader"],
        "float16_vs_copy_bound": rows["float16"]["vs_copy_bound"],
        "uint8_vs_copy_bound": rows["uint8"]["vs_copy_bound"],
        "compressed_disk_vs_float16": min(rows[n]["disk_vs_float16"] for n in six_bit),
        "compressed_loader_vs_float16": max(rows[n]["vs_float16_loader"] for n in compressed + six_bit),
    }
    if lilcom_default in rows:  # the fastest 6-bit codec against lilcom at its default tick
        best = max(six_bit, key=lambda n: rows[n]["samples_per_s"])
        targets["compressed_loader_vs_lilcom"] = ratio(best, lilcom_default)
    return targets


def _lilcom_readers(exact: np.ndarray, batch_size: int, crop: int, first: int) -> dict[str, _Lilcom]:
    try:
        import lilcom  # noqa: F401 -- optional: part of the dev install
    except ImportError:
        return {}
    return {f"lilcom tick {tick}": _Lilcom(exact, tick, batch_size, crop, first) for tick in LILCOM_TICKS}


FIRST_BATCH_CASES = ("right-after-imports", "after-model", "loader-first")  # see first_batch
_FIRST_BATCH = """
import json, sys, time
t0 = time.perf_counter()
if sys.argv[2] == "loader-first":  # the loader's kernels warm while Keras imports
    from loader import ShardSequence, read_kernels
import keras
from loader import ShardSequence, read_kernels
from experiments.models import build_model
imported = time.perf_counter()
if sys.argv[2] != "right-after-imports":
    model = build_model("baseline", input_shape=(128, 938, 1), n_classes=24)
    model.compile(optimizer="adam", loss="binary_crossentropy")
made = time.perf_counter()
warming = read_kernels._warming is not None and read_kernels._warming.is_alive()
seq = ShardSequence(sys.argv[1], split="all", batch_size=32, shuffle=True, seed=0)
built = time.perf_counter()
seq[0]
done = time.perf_counter()
seq[1]
second = time.perf_counter() - done
print(json.dumps({"import_s": imported - t0, "model_s": made - imported, "warming_at_sequence": warming,
                  "sequence_ms": 1e3 * (built - made), "first_batch_ms": 1e3 * (done - built),
                  "total_ms": 1e3 * (done - made), "second_batch_ms": 1e3 * second}))
"""


def first_batch(features: Path, *, repeats: int = 3) -> dict:
    """A fresh process's first batch (default augmentation): medians over ``repeats`` processes,
    ``cold`` (no parsed metadata of the set kept by an earlier process, ``loader.meta_cache``:
    every shard is read, then the cache written) and ``warm`` (the cache there). ``total_ms`` is
    the sequence's construction plus its first batch, the figure of the ``first_batch_ms``
    ceiling (warm, after the model). The cases: ``right-after-imports`` (Keras, then the loader,
    no model), ``after-model`` (the same, then a model built and compiled: the ceiling's case)
    and ``loader-first`` (the loader imported before Keras, then the model)."""
    out: dict = {"load": [os.getloadavg()[0]]}
    with tempfile.TemporaryDirectory(prefix="first-batch-") as tmp:
        warm = {**os.environ, "MELSHARDS_CACHE": f"{tmp}/warm", "MELSHARDS_META_CACHE": "1"}
        out["warm_cache"] = _warm_up(features, warm, Path(tmp) / "warm" / "meta")
        for case in FIRST_BATCH_CASES:
            out[case] = {}
            for state in ("cold", "warm"):
                runs = []
                for i in range(repeats):
                    env = warm if state == "warm" else {**warm, "MELSHARDS_CACHE": f"{tmp}/cold-{case}-{i}"}
                    done = subprocess.run(
                        [sys.executable, "-c", _FIRST_BATCH, str(features), case],
                        check=True,
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                out[case][state] = {
                    key: float(np.median([r[key] for r in runs]))
                    if key != "warming_at_sequence"
                    else [r[key] for r in runs]
                    for key in runs[0]
                }
    out["load"].append(os.getloadavg()[0])
    return out


def _warm_up(features: Path, env: dict, meta: Path) -> bool:
    """Open the set once in a process of its own, so that its metadata is kept; whether it was
    (a set written within ``RECENT_NS`` is not kept: then wait that long and open it again)."""
    from loader.meta_cache import RECENT_NS

    opening = [
        sys.executable,
        "-c",
        "import sys; from loader import open_feature_set; open_feature_set(sys.argv[1])",
    ]
    for attempt in range(2):
        if attempt:
            time.sleep(RECENT_NS / 1e9)
        subprocess.run([*opening, str(features)], check=True, capture_output=True, env=env)
        if any(meta.glob("*.meta")):
            return True
    return False


def table(result: dict) -> list[str]:
    lines = [
        f"{'storage (demo, shuffled float32 batches)':<44}{'disk/f16':>9}{'max err':>9}{'RMS err':>9}"
        f"{'samples/s':>11}{'vs f16':>8}{'vs copy':>9}",
    ]
    for name, row in result["codecs"].items():
        if "disk_vs_float16" not in row:
            lines.append(f"{name:<44}{'':>9}{'':>9}{'':>9}{row['samples_per_s']:>11.0f}")
            continue
        lines.append(
            f"{name:<44}{row['disk_vs_float16']:>9.3f}{row['max_error']:>9.4f}{row['rms_error']:>9.4f}"
            f"{row['samples_per_s']:>11.0f}{row['vs_float16_loader']:>8.2f}{row['vs_copy_bound']:>9.2f}"
        )
    decode = result.get("decode_ms_per_batch")
    if decode:
        lines.append(
            f"{'reader alone, ms per batch':<44}{'decompress':>11}{'read, 1 thread':>16}"
            f"{'read, ' + str(decode['decode_threads']) + ' threads':>16}"
        )
        for name, fig in decode.items():
            if name != "decode_threads":
                squeeze = f"{fig['decompress']:>11.2f}" if "decompress" in fig else f"{'':>11}"
                lines.append(f"{name:<44}{squeeze}{fig['read_1']:>16.2f}{fig['read_pool']:>16.2f}")
    first = result.get("first_batch")
    if first:
        lines += first_batch_table(first)
    return lines


def first_batch_table(first: dict) -> list[str]:
    """The lines of ``first_batch``'s figures: construction + first batch, cold and warm."""
    lines = [
        f"{'first batch in a fresh process (ms)':<44}{'cold':>8}{'sequence':>10}{'batch':>8}"
        f"{'warm':>8}{'sequence':>10}{'batch':>8}"
    ]
    for case in FIRST_BATCH_CASES:
        cold, warm = first[case]["cold"], first[case]["warm"]
        lines.append(
            f"{case:<44}{cold['total_ms']:>8.1f}{cold['sequence_ms']:>10.1f}{cold['first_batch_ms']:>8.1f}"
            f"{warm['total_ms']:>8.1f}{warm['sequence_ms']:>10.1f}{warm['first_batch_ms']:>8.1f}"
        )
    load = ", ".join(f"{x:.2f}" for x in first["load"])
    lines.append(f"(cache kept for warm: {first['warm_cache']}; load average before, after: {load})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """The storage section alone: ``python -m benchmarks.storage_bench [--reuse]``."""
    import argparse
    import os

    root = Path(__file__).parent
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--demo", type=Path, default=root.parent / "data" / "demo")
    parser.add_argument("--work", type=Path, default=root / "work")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep the codec sets already in --work")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--first-batch",
        type=Path,
        metavar="FEATURES",
        help="only the first batch in a fresh process, of this set",
    )
    args = parser.parse_args(argv)
    if args.first_batch:
        first = first_batch(args.first_batch)
        if args.json:
            args.json.write_text(json.dumps(first, indent=1) + "\n")
        print("\n".join(first_batch_table(first)))
        return 0
    load = os.getloadavg()[0]
    result = run(args.demo, args.work, rounds=args.rounds, reuse=args.reuse)
    result["load"] = [load, os.getloadavg()[0]]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(table(result)))
    print("targets:", json.dumps({k: round(v, 3) for k, v in result["targets"].items()}))
    print(f"load average (1 min) before {load:.2f}, after {result['load'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
