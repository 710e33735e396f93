"""Host CPU per batch: the device path's host side against the CPU path's whole batch.

The CPU path (``ShardBatches.batch``) decodes, crops, augments and casts every batch on the
host and hands over float32 (or float16) arrays. The device path's host side
(``ShardBatches.stored_batch``) reads the stored values of each crop and draws the same
augmentation, and leaves decoding and augmenting to the accelerator (``loader.device_torch``,
``loader.device_keras``). Both run here side by side, interleaved round after round, in this
process and its calling thread (no look-ahead, no workers), over whole epochs of shuffled
batches of 32 with the training augmentation (``Augment(mixup_p=0.5)``: time shift, gain,
SpecAugment masks and mixup; ``--mixup 0`` leaves mixup out). Each figure is the median over rounds of the process CPU time
(``time.process_time``) and the wall time per batch, with the bytes each batch hands to the
device. For scale, the last row finishes the stored batches with torch on this CPU (one
thread): the work the accelerator takes over, not a cost the host pays on the device path.

Run on its own: ``python -m benchmarks.device_bench`` (``--uint8`` also precomputes the demo
stored as uint8 codes into ``--work`` and measures it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loader import Augment, ShardBatches

ROOT = Path(__file__).parent.parent


def _epoch_cost(run: Callable[[int], object], n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per batch of ``run(i)`` for ``i`` in ``range(n)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        run(i)
    return (time.process_time() - cpu) * 1e3 / n, (time.perf_counter() - wall) * 1e3 / n


def _finish_with_torch(batches: ShardBatches) -> Callable[[int], object]:
    import torch

    from loader.device_torch import build_batch

    # One thread: on a shared machine torch's pool of two waits for a descheduled thread at
    # every operation, which measures the scheduler rather than the work.
    torch.set_num_threads(1)
    recipe = batches.device_recipe

    def run(i: int):
        stored = batches.stored_batch(i)
        return build_batch({k: torch.from_numpy(a) for k, a in stored.arrays().items()}, recipe)

    return run


def measure(features: Path, *, rounds: int, mixup: float = 0.5, torch_row: bool = True) -> dict:
    """Every path's CPU and wall ms per batch and bytes per batch, on one feature set."""
    augment = Augment(mixup_p=mixup)
    options = {"split": "all", "batch_size": 32, "seed": 0, "shuffle": True, "augment": augment}
    options |= {"return_mask": True}
    options |= {"lookahead": False, "drop_remainder": True}
    cpu32 = ShardBatches(features, **options)
    cpu16 = ShardBatches(features, **options, dtype="float16")
    device = ShardBatches(features, **options)
    paths: dict[str, tuple[Callable[[int], object], int]] = {
        "cpu_path_float32": (cpu32.batch, sum(a.nbytes for a in cpu32.batch(0))),
        "cpu_path_float16": (cpu16.batch, sum(a.nbytes for a in cpu16.batch(0))),
        "device_path_host_side": (device.stored_batch, device.stored_batch(0).nbytes),
    }
    if torch_row:
        paths["device_path_finished_by_torch_on_this_cpu"] = (_finish_with_torch(device), 0)
    n = len(cpu32)
    for run, _ in paths.values():  # warm: maps, checksums, kernels
        _epoch_cost(run, n)
    costs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (run, _) in paths.items():
            costs[name].append(_epoch_cost(run, n))
    reference = costs["cpu_path_float32"]
    figures = {}
    for name, values in costs.items():
        cpu_ms = [c for c, _ in values]
        figures[name] = {
            "cpu_ms_per_batch": float(np.median(cpu_ms)),
            "wall_ms_per_batch": float(np.median([w for _, w in values])),
            "cpu_vs_cpu_path_float32": float(
                np.median([c / r for c, (r, _) in zip(cpu_ms, reference, strict=True)])
            ),
            "bytes_to_device": paths[name][1],
        }
    config = cpu32.config
    return {
        "features": str(features),
        "stored": config.dtype,
        "batch": [32, config.n_mels, cpu32.crop_frames, 1],
        "batches_per_epoch": n,
        "mixup_p": mixup,
        "rounds": rounds,
        "paths": figures,
    }


def table(result: dict) -> list[str]:
    lines = [
        f"{result['features']} ({result['stored']} stored), batch {'x'.join(map(str, result['batch']))}, "
        f"{result['batches_per_epoch']} batches per epoch, mixup_p {result['mixup_p']}, "
        f"median of {result['rounds']} rounds",
        f"{'path':<44}{'CPU ms':>9}{'wall ms':>9}{'CPU vs fp32':>13}{'MB to device':>14}",
    ]
    for name, fig in result["paths"].items():
        mb = f"{fig['bytes_to_device'] / 1e6:.2f}" if fig["bytes_to_device"] else "-"
        lines.append(
            f"{name:<44}{fig['cpu_ms_per_batch']:>9.2f}{fig['wall_ms_per_batch']:>9.2f}"
            f"{fig['cpu_vs_cpu_path_float32']:>13.2f}{mb:>14}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    parser.add_argument("--uint8", action="store_true", help="also measure the demo stored as uint8 codes")
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mixup", type=float, default=0.5, help="mixup_p of the augmentation")
    parser.add_argument("--no-torch", action="store_true", help="skip the row finished by torch on the CPU")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    sets = [args.features]
    if args.uint8:
        from benchmarks.storage_bench import precompute

        sets.append(precompute(args.demo, args.work, {"dtype": "uint8"}, reuse=True)[0])
    load = {"before": os.getloadavg()}
    results = [
        measure(path, rounds=args.rounds, mixup=args.mixup, torch_row=not args.no_torch) for path in sets
    ]
    load["after"] = os.getloadavg()
    for result in results:
        print("\n".join(table(result)), end="\n\n")
    print(
        f"load average (1, 5, 15 min) before {load['before'][0]:.2f} {load['before'][1]:.2f} "
        f"{load['before'][2]:.2f}, after {load['after'][0]:.2f} {load['after'][1]:.2f} {load['after'][2]:.2f}; "
        f"{os.cpu_count()} cores"
    )
    if args.json:
        args.json.write_text(json.dumps({"load": load, "sets": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
