"""A PyTorch training loop fed by ``loader.torch.ShardDataset``, against tensors that cost nothing.

The model is the experiments' ``tiny`` CNN written in PyTorch (input pooled 4 x 8, three conv
blocks 8-16-32 with batch norm, max and mean over time, dropout, a linear head), trained with
the masked BCE of the experiments on float32 batches of 32 x 128 x 938. Inputs, in turn, round
after round:

- zero cost: the same ready tensors every step (what the model alone can do);
- ``ShardDataset`` through a ``DataLoader`` with ``num_workers=0`` and ``num_workers=2``
  (default augmentation, as training uses);
- the way PyTorch audio users write it today: a ``Dataset`` that decodes the recording and
  computes the mel of one example per item, ``num_workers=2`` (a few batches: ~1000x slower).

Each rate is whole epochs after a warm-up epoch; each ratio is the median over rounds of the
ratio to the zero-cost rate of the same round. Run on its own: ``python -m benchmarks.torch_bench``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loader.torch import ShardDataset

ROOT = Path(__file__).parent.parent


class Tiny(nn.Module):
    """The ``tiny`` CNN of ``experiments.models`` in PyTorch."""

    def __init__(self, n_mels: int, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AvgPool2d((4, 8), ceil_mode=True), nn.BatchNorm2d(1)]
        channels = 1
        for width, freq_pool in zip((8, 16, 32), (2, 2, 1), strict=True):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d((freq_pool, 2), ceil_mode=True),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        n_freq = -(-(-(-n_mels // 4) // 2) // 2)  # ceil through the poolings: 128 -> 32 -> 16 -> 8 -> 8
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * channels * n_freq, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x.permute(0, 3, 1, 2))  # (B, mels, frames, 1) -> (B, 1, mels, frames)
        x = x.flatten(1, 2)  # (B, channels * freq, time)
        x = torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1)
        return self.head(self.dropout(x))


def masked_bce(logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def resnet18(n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 on one input channel: a real model for a GPU (needs torchvision)."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=n_classes)
    model.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    return nn.Sequential(Permute(), model)


class Permute(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def train_rate(model, optimizer, batches, *, epochs: int, set_epoch=None, device: str = "cpu") -> float:
    """Samples per second of whole epochs after a first, untimed one."""
    samples, seconds = 0, 0.0
    for epoch in range(epochs):
        if set_epoch is not None:
            set_epoch(epoch)
        started, count = time.perf_counter(), 0
        for x, y, known in batches:
            x, y, known = (t.to(device, non_blocking=True) for t in (x, y, known))
            loss = masked_bce(model(x), y, known)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += x.shape[0]
        if device != "cpu":
            torch.cuda.synchronize()
        if epoch > 0:
            samples, seconds = samples + count, seconds + time.perf_counter() - started
    return samples / seconds


class PerSample(torch.utils.data.Dataset):
    """One example per item, the classic way: decode, cut, mel, dB, min-max (librosa)."""

    def __init__(self, demo: Path, n: int, crop: int) -> None:
        with open(demo / "train_tp.csv") as fh:
            self.rows = list(csv.DictReader(fh))[:n]
        self.demo, self.crop = demo, crop

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from benchmarks.classic import classic_example

        x = classic_example(self.demo, self.rows[i])[:, : self.crop]
        y = torch.zeros(24)
        y[int(self.rows[i]["species_id"])] = 1
        return torch.from_numpy(x), y, torch.ones(24)


def run(
    features: Path,
    demo: Path,
    *,
    rounds: int = 3,
    epochs: int = 3,
    per_sample_batches: int = 2,
    device: str = "cpu",
    model_name: str = "tiny",
    workers: int = 2,
) -> dict:
    torch.manual_seed(0)
    data = ShardDataset(features, split="all", batch_size=32, seed=0, augment=True, drop_remainder=True)
    config, crop = data.batches.config, data.batches.crop_frames
    n_classes = len(data.batches.classes)
    model = (Tiny(config.n_mels, n_classes) if model_name == "tiny" else resnet18(n_classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # the same batches, made once; on a GPU they already sit in its memory (no input cost at all)
    ready = [tuple(t.clone().to(device) for t in data[i]) for i in range(len(data))]
    pin = device != "cpu"
    loaders = {
        "shard_dataset_workers_0": (data.loader(num_workers=0, pin_memory=pin), data.set_epoch),
        f"shard_dataset_workers_{workers}": (
            data.loader(num_workers=workers, persistent_workers=True, pin_memory=pin),
            data.set_epoch,
        ),
    }
    rates: dict[str, list[float]] = {"zero_cost": [], **{name: [] for name in loaders}}
    for _ in range(rounds):
        rates["zero_cost"].append(train_rate(model, optimizer, ready, epochs=epochs, device=device))
        for name, (batches, set_epoch) in loaders.items():
            rates[name].append(
                train_rate(model, optimizer, batches, epochs=epochs, set_epoch=set_epoch, device=device)
            )
    per_sample = torch.utils.data.DataLoader(
        PerSample(demo, 32 * per_sample_batches, crop), batch_size=32, num_workers=workers
    )
    per_sample_rate = train_rate(model, optimizer, per_sample, epochs=2, device=device)
    figures = {
        name: {
            "samples_per_s": float(np.median(values)),
            "ratio_to_zero_cost": float(
                np.median([v / z for v, z in zip(values, rates["zero_cost"], strict=True)])
            ),
        }
        for name, values in rates.items()
    }
    figures[f"per_sample_dataset_workers_{workers}"] = {
        "samples_per_s": per_sample_rate,
        "ratio_to_zero_cost": per_sample_rate / figures["zero_cost"]["samples_per_s"],
    }
    data.close()
    return {
        "device": torch.cuda.get_device_name() if device != "cpu" else "cpu",
        "model": model_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": [32, config.n_mels, crop, 1],
        "batches_per_epoch": len(data),
        "epochs_timed": epochs - 1,
        "rounds": rounds,
        "inputs": figures,
    }


def table(result: dict) -> list[str]:
    lines = [
        f"PyTorch {result['torch']} training loop on {result.get('device', 'cpu')} ({result['threads']} "
        f"threads), {result.get('model', 'tiny')} CNN, batch "
        f"{'x'.join(map(str, result['batch']))}, {result['batches_per_epoch']} batches x "
        f"{result['epochs_timed']} epochs, median of {result['rounds']} rounds",
        f"{'input':<34}{'samples/s':>12}{'vs zero-cost':>14}",
    ]
    for name, fig in result["inputs"].items():
        lines.append(f"{name:<34}{fig['samples_per_s']:>12.1f}{fig['ratio_to_zero_cost']:>14.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement, the first untimed")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    parser.add_argument(
        "--model", default="tiny", choices=["tiny", "resnet18"], help="resnet18 needs torchvision"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second input")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    result = run(
        args.features,
        args.demo,
        rounds=args.rounds,
        epochs=args.epochs,
        device=args.device,
        model_name=args.model,
        workers=args.workers,
    )
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
