"""ResNet-18 in PyTorch fed three ways: the device path, the CPU path, batches already on the GPU.

One command on a machine with CUDA::

    python -m benchmarks.device_train --device cuda --json benchmarks/gpu/h200-torch-device-path.json

trains a ResNet-18 (written out below: torchvision is not needed) with masked BCE and AdamW on
shuffled batches of 32 x 128 x 938 of ``features/demo`` with the training augmentation
(``Augment(mixup_p=0.5)``), from, in turn, round after round:

- ``gpu_resident``: the CPU path's batches made once and kept in GPU memory (no input cost);
- ``cpu_path``: ``ShardDataset`` through its ``DataLoader`` (``num_workers=0``, the look-ahead
  thread, ``pin_memory``), each float32 batch copied to the GPU with ``non_blocking=True``;
- ``device_path``: ``ShardDataset(on_device=True)`` through the same ``DataLoader``: the stored
  values and draws are pinned and copied, and ``to_device`` decodes and augments them with
  torch operations on the GPU.

Printed per input: samples/s over whole epochs after an untimed first one, and host CPU
seconds per 1000 samples (this process's user + system time: the training loop, the loader and
its look-ahead thread, the CUDA driver; with ``--workers N`` the workers' time is added through
psutil). ``--device cpu --quick`` runs the same code on the CPU in seconds (a short crop, a few
batches of 4), to check the script, not to measure anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loader import Augment
from loader.torch import ShardDataset

ROOT = Path(__file__).parent.parent
AUGMENT = Augment(mixup_p=0.5)


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.skip = nn.Identity()
        if stride != 1 or inputs != width:
            self.skip = nn.Sequential(
                nn.Conv2d(inputs, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout on one input channel, taking (B, n_mels, frames, 1)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        inputs = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(inputs, width, stride), BasicBlock(width, width, 1)]
            inputs = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.permute(0, 3, 1, 2).float()))


def masked_bce(logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def host_cpu_seconds() -> float:
    """User + system CPU of this process and, where psutil is there, of its live children."""
    times = os.times()
    total = times.user + times.system
    try:
        import psutil
    except ImportError:
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            cpu = child.cpu_times()
        except psutil.Error:
            continue
        total += cpu.user + cpu.system
    return total


def train(model, optimizer, epoch_batches, *, epochs: int, device: torch.device) -> tuple[float, float]:
    """(samples/s, host CPU s per 1000 samples) over epochs after an untimed first one.

    epoch_batches(epoch) : the batches of one epoch, each ``(x, y, known)`` on ``device``
    """
    samples, seconds, cpu = 0, 0.0, 0.0
    for epoch in range(epochs):
        started, cpu_started, count = time.perf_counter(), host_cpu_seconds(), 0
        for x, y, known in epoch_batches(epoch):
            loss = masked_bce(model(x), y, known)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:
            samples += count
            seconds += time.perf_counter() - started
            cpu += host_cpu_seconds() - cpu_started
    return samples / seconds, 1000 * cpu / samples


def inputs(args, device: torch.device) -> tuple[dict, ShardDataset]:
    """Each input as a function of the epoch giving that epoch's batches on ``device``."""
    options = {"split": "all", "batch_size": args.batch_size, "seed": 0, "shuffle": True}
    options |= {"augment": AUGMENT, "drop_remainder": True, "crop_frames": args.crop_frames}
    pin = device.type == "cuda"
    cpu_data = ShardDataset(args.features, **options)
    stored_data = ShardDataset(args.features, **options, on_device=True)
    loader_args = {"num_workers": args.workers, "pin_memory": pin, "persistent_workers": args.workers > 0}
    cpu_loader, stored_loader = cpu_data.loader(**loader_args), stored_data.loader(**loader_args)
    n = len(cpu_data) if args.batches is None else min(args.batches, len(cpu_data))
    resident = [tuple(t.clone().to(device) for t in cpu_data[(0, i)]) for i in range(n)]

    def first(loader, data, epoch):
        data.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i == n:
                return
            yield batch

    def cpu_path(epoch):
        for batch in first(cpu_loader, cpu_data, epoch):
            yield tuple(t.to(device, non_blocking=True) for t in batch)

    def device_path(epoch):
        for item in first(stored_loader, stored_data, epoch):
            yield stored_data.to_device(item, device)

    return {
        "gpu_resident": lambda epoch: resident,
        "cpu_path": cpu_path,
        "device_path": device_path,
    }, cpu_data


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    paths, data = inputs(args, device)
    model = ResNet18(len(data.batches.classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    figures: dict[str, dict[str, list[float]]] = {name: {"rate": [], "cpu": []} for name in paths}
    for _ in range(args.rounds):
        for name, epoch_batches in paths.items():
            rate, cpu = train(model, optimizer, epoch_batches, epochs=args.epochs, device=device)
            figures[name]["rate"].append(rate)
            figures[name]["cpu"].append(cpu)
    resident = figures["gpu_resident"]["rate"]
    config = data.batches.config
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load": os.getloadavg(),
        "batch": [args.batch_size, config.n_mels, data.batches.crop_frames, 1],
        "workers": args.workers,
        "epochs_timed": args.epochs - 1,
        "rounds": args.rounds,
        "inputs": {
            name: {
                "samples_per_s": float(np.median(fig["rate"])),
                "vs_gpu_resident": float(np.median(np.divide(fig["rate"], resident))),
                "host_cpu_s_per_1000_samples": float(np.median(fig["cpu"])),
            }
            for name, fig in figures.items()
        },
    }


def table(result: dict) -> list[str]:
    lines = [
        f"ResNet-18, PyTorch {result['torch']} on {result['device']}, batch "
        f"{'x'.join(map(str, result['batch']))}, DataLoader num_workers={result['workers']}, "
        f"{result['epochs_timed']} timed epochs, median of {result['rounds']} rounds, "
        f"load {result['load'][0]:.2f} on {result['cores']} cores",
        f"{'input':<16}{'samples/s':>12}{'vs resident':>13}{'host CPU s / 1000 samples':>28}",
    ]
    for name, fig in result["inputs"].items():
        lines.append(
            f"{name:<16}{fig['samples_per_s']:>12.1f}{fig['vs_gpu_resident']:>13.2f}"
            f"{fig['host_cpu_s_per_1000_samples']:>28.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    parser.add_argument(
        "--device", default="cuda", help="cuda (what this measures), or cpu to check the script"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement, the first untimed")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-frames", type=int, help="frames per crop (default: the feature set's)")
    parser.add_argument("--batches", type=int, help="batches per epoch (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="a few small batches, one round: checks the script"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.batch_size = 1, 2, 4
        args.batches = args.batches or 3
        args.crop_frames = args.crop_frames or 64
    result = run(args)
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
