"""End to end: samples per second inside ``model.fit``, not ``seq[i]`` in a loop.

Every input is fed to the same ``model.fit`` of the same model (by default global average
pooling and a dense layer: as cheap as a model gets, so the input path shows; ``--model``
picks a real CNN for a GPU), with the same batch shape, batch count and dtype. The reference is a zero-cost ``PyDataset`` whose ``__getitem__``
returns one ready batch. Rates come from whole epochs after a warm-up epoch; the inputs are
measured in turn, round after round, and each ratio is the median over the rounds of the
ratio to the zero-cost rate measured in the same round (this machine is shared and noisy).

Run on its own (``python -m benchmarks.fit_bench``) it prints a table; ``make bench`` runs it
in a separate process, since TensorFlow changes the timing of whatever runs after it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # another (jax, torch) where TensorFlow is missing

import keras  # noqa: E402 -- after the log level
import numpy as np  # noqa: E402

from loader import ShardSequence  # noqa: E402
from loader.buffers import BufferPool  # noqa: E402

ROOT = Path(__file__).parent.parent


class ZeroCost(keras.utils.PyDataset):
    """``n_batches`` batches that cost nothing to make: the same ready arrays every time."""

    def __init__(
        self,
        n_batches: int,
        x_shape: tuple[int, ...],
        n_classes: int,
        dtype: str,
        *,
        aligned: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.n_batches = n_batches
        x = np.random.default_rng(0).random(x_shape, dtype=np.float32).astype(dtype)
        if aligned:  # memory TensorFlow wraps without a copy, like ShardSequence's batches
            self.x = BufferPool(x_shape, dtype).take()
            self.x[...] = x
        else:
            self.x = x
        self.y = (np.random.default_rng(1).random((x_shape[0], n_classes)) < 0.1).astype(np.float32)

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


class PerSample(keras.utils.PyDataset):
    """The classic Sequence: decode, cut, mel, dB and min-max for every sample of every epoch."""

    def __init__(self, demo: Path, n_batches: int, batch_size: int, crop_frames: int, **kwargs) -> None:
        super().__init__(**kwargs)
        with open(demo / "train_tp.csv") as fh:
            self.rows = list(csv.DictReader(fh))
        self.demo, self.n_batches, self.batch_size, self.crop = demo, n_batches, batch_size, crop_frames

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from benchmarks.classic import classic_example

        rows = [self.rows[(index * self.batch_size + k) % len(self.rows)] for k in range(self.batch_size)]
        x = np.stack([classic_example(self.demo, row)[:, : self.crop] for row in rows])
        y = np.zeros((len(rows), 24), np.float32)
        for k, row in enumerate(rows):
            y[k, int(row["species_id"])] = 1
        return x, y


def build(name: str, input_shape: tuple[int, ...], n_classes: int, *, dtype: str) -> keras.Model:
    """The model every input is fed to. float16 input is cast by the model's first layer.

    ``tiny``: global average pooling and a dense layer, as cheap as a model gets, so the input
    path shows; ``baseline``: the experiments' CNN; ``efficientnetb0``: Keras' EfficientNetB0
    (random weights) on the mel image.
    """
    inputs = keras.Input(input_shape, dtype=dtype)
    if name == "tiny":
        features = keras.layers.GlobalAveragePooling2D(dtype="float32")(inputs)
    elif name == "baseline":
        from experiments.models import build_model

        body = build_model("baseline", input_shape=input_shape, n_classes=n_classes)
        model = keras.Model(inputs, body(keras.layers.Identity(dtype="float32")(inputs)))
        model.compile(optimizer="adam", loss="binary_crossentropy")
        return model
    elif name == "efficientnetb0":
        cast = keras.layers.Identity(dtype="float32")(inputs)
        net = keras.applications.EfficientNetB0(
            include_top=False, weights=None, input_shape=input_shape, pooling="avg"
        )
        features = net(cast)
    else:
        raise ValueError(f"unknown model {name!r}: tiny, baseline or efficientnetb0")
    outputs = keras.layers.Dense(n_classes, activation="sigmoid", dtype="float32")(features)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


class GpuBusy:
    """Mean GPU utilization (%) while it runs, sampled with NVML; None where there is no GPU."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.samples, self.handle = interval, [], None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except Exception:  # no NVML, no GPU: nothing to sample
            self.handle = None

    def __enter__(self) -> GpuBusy:
        if self.handle is not None:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._read())

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.seconds.append(time.perf_counter() - self._started)


class _Busy(keras.callbacks.Callback):
    """GPU utilization over every epoch but the first."""

    def __init__(self) -> None:
        super().__init__()
        self.meter: GpuBusy | None = None

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if epoch == 1:
            self.meter = GpuBusy().__enter__()

    def on_train_end(self, logs=None) -> None:
        if self.meter is not None:
            self.meter.__exit__()


def fit_rate(
    model: keras.Model, data, *, samples_per_epoch: int, epochs: int, steps: int | None = None
) -> tuple[float, float | None]:
    """Samples per second, and mean GPU busy % (None without a GPU), over every epoch but the first."""
    times, busy = _EpochTimes(), _Busy()
    model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[times, busy])
    rate = samples_per_epoch * (epochs - 1) / sum(times.seconds[1:])
    return rate, None if busy.meter is None else busy.meter.mean


def run(
    features: Path,
    demo: Path,
    *,
    model: str = "tiny",
    rounds: int = 5,
    epochs: int = 6,
    batch_size: int = 32,
    workers: int = 2,
    per_sample_workers: int = 2,
    per_sample_batches: int = 3,
    only: list[str] | None = None,
) -> dict:
    """Rates of every input (or of ``only`` those, with the zero-cost references they are
    compared with); ``per_sample_batches=0`` leaves the per-sample Sequence out."""

    def sequence(**options) -> ShardSequence:
        base = {"split": "all", "batch_size": batch_size, "shuffle": True, "drop_remainder": True}
        return ShardSequence(features, **{**base, **options})

    probe = sequence()
    n_batches, n_classes = len(probe), len(probe.classes)
    x_shape = (batch_size, probe.config.n_mels, probe.crop_frames, 1)
    samples = n_batches * batch_size
    models = {dtype: build(model, x_shape[1:], n_classes, dtype=dtype) for dtype in ("float32", "float16")}

    def zero_cost(dtype: str, **kwargs) -> ZeroCost:
        return ZeroCost(n_batches, x_shape, n_classes, dtype, **kwargs)

    inputs = _inputs(sequence, zero_cost, workers, only)
    rates: dict[str, list[float]] = {name: [] for name in inputs}
    busy: dict[str, list[float]] = {name: [] for name in inputs}
    for _ in range(rounds):
        for name, (_, dtype, make) in inputs.items():
            data = make()
            rate, gpu = fit_rate(models[dtype], data, samples_per_epoch=samples, epochs=epochs)
            rates[name].append(rate)
            if gpu is not None:
                busy[name].append(gpu)
            if isinstance(data, ShardSequence):
                data.close()

    figures = _figures(inputs, rates, busy)
    if per_sample_batches > 0:
        figures.update(
            _per_sample_figures(
                demo, models["float32"], x_shape, rates, per_sample_workers, per_sample_batches
            )
        )
    return {
        "backend": keras.backend.backend(),
        "batch": list(x_shape),
        "batches_per_epoch": n_batches,
        "epochs_timed": epochs - 1,
        "rounds": rounds,
        "model": model,
        "inputs": figures,
    }


def _inputs(sequence, zero_cost, workers: int, only: list[str] | None) -> dict[str, tuple]:
    """name -> (reference name, dtype, make the input); ShardSequence inputs use the default
    augmentation, as training does. ``only``: those inputs and the references they need."""
    inputs = {
        "zero_cost": ("zero_cost", "float32", lambda: zero_cost("float32")),
        "zero_cost_aligned": ("zero_cost", "float32", lambda: zero_cost("float32", aligned=True)),
        "shard_sequence": ("zero_cost", "float32", lambda: sequence(augment=True)),
        "shard_sequence_no_lookahead": (
            "zero_cost",
            "float32",
            lambda: sequence(augment=True, lookahead=False),
        ),
        f"shard_sequence_threads_{workers}": (
            "zero_cost",
            "float32",
            lambda: sequence(augment=True, workers=workers),
        ),
        f"shard_sequence_processes_{workers}": (
            "zero_cost",
            "float32",
            lambda: sequence(augment=True, workers=workers, use_multiprocessing=True),
        ),
        "as_tf_dataset": ("zero_cost", "float32", lambda: sequence(augment=True).as_tf_dataset()),
        "zero_cost_float16": ("zero_cost_float16", "float16", lambda: zero_cost("float16")),
        "shard_sequence_float16": (
            "zero_cost_float16",
            "float16",
            lambda: sequence(augment=True, dtype="float16"),
        ),
        "zero_cost_keras_processes_2": (
            "zero_cost",
            "float32",
            lambda: zero_cost("float32", workers=2, use_multiprocessing=True),
        ),
    }
    if keras.backend.backend() != "tensorflow":
        del inputs["as_tf_dataset"]
    if only:
        unknown = sorted(set(only) - set(inputs))
        if unknown:
            raise SystemExit(f"fit_bench: unknown input(s) {', '.join(unknown)}; known: {', '.join(inputs)}")
        keep = {*only, "zero_cost", "zero_cost_aligned", *(inputs[name][0] for name in only)}
        inputs = {name: spec for name, spec in inputs.items() if name in keep}
    return inputs


def _figures(inputs: dict, rates: dict[str, list[float]], busy: dict[str, list[float]]) -> dict:
    """Median rate and median per-round ratio to each input's zero-cost reference."""
    figures = {}
    for name, values in rates.items():
        reference = inputs[name][0]
        ratios = [v / r for v, r in zip(values, rates[reference], strict=False)]
        figures[name] = {
            "samples_per_s": float(np.median(values)),
            "ratio_to_zero_cost": float(np.median(ratios)),
            "ratios": [round(r, 3) for r in ratios],
        }
        if reference == "zero_cost":
            strict = [v / r for v, r in zip(values, rates["zero_cost_aligned"], strict=False)]
            figures[name]["ratio_to_zero_cost_aligned"] = float(np.median(strict))
        if busy[name]:
            figures[name]["gpu_busy_percent"] = float(np.median(busy[name]))
    return figures


def _per_sample_figures(demo: Path, model, x_shape, rates: dict, workers: int, n_batches: int) -> dict:
    """The classic per-sample Sequence, ~1000x slower: a few batches, with Keras' worker
    processes as its users run it; librosa imported and warm before Keras forks them."""
    from benchmarks.classic import classic_example

    classic_example(demo, PerSample(demo, 1, 1, 1).rows[0])
    batch_size = x_shape[0]
    per_sample = PerSample(demo, n_batches, batch_size, x_shape[2], workers=workers, use_multiprocessing=True)
    rate, gpu = fit_rate(model, per_sample, samples_per_epoch=n_batches * batch_size, epochs=2)
    zero = float(np.median(rates["zero_cost"]))
    figures = {
        "samples_per_s": rate,
        "ratio_to_zero_cost": rate / zero,
        "ratio_to_zero_cost_aligned": rate / float(np.median(rates["zero_cost_aligned"])),
    }
    if gpu is not None:
        figures["gpu_busy_percent"] = gpu
    return {f"per_sample_keras_processes_{workers}": figures}


def table(result: dict) -> list[str]:
    lines = [
        f"model.fit ({result['backend']}), model {result['model']}, batch {'x'.join(map(str, result['batch']))}, "
        f"{result['batches_per_epoch']} batches x {result['epochs_timed']} epochs, median of "
        f"{result['rounds']} rounds",
        f"{'input':<34}{'samples/s':>12}{'vs zero-cost':>14}{'vs aligned':>12}{'GPU busy %':>12}",
    ]
    for name, fig in result["inputs"].items():
        strict, gpu = fig.get("ratio_to_zero_cost_aligned"), fig.get("gpu_busy_percent")
        lines.append(
            f"{name:<34}{fig['samples_per_s']:>12.1f}{fig['ratio_to_zero_cost']:>14.2f}"
            + (f"{strict:>12.2f}" if strict is not None else f"{'':>12}")
            + (f"{gpu:>12.0f}" if gpu is not None else "")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=ROOT / "features" / "demo")
    parser.add_argument("--demo", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--model", default="tiny", choices=["tiny", "baseline", "efficientnetb0"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per measurement, the first untimed")
    parser.add_argument("--workers", type=int, default=2, help="threads / processes of the worker modes")
    parser.add_argument("--per-sample-workers", type=int, default=2)
    parser.add_argument("--per-sample-batches", type=int, default=3)
    parser.add_argument(
        "--inputs",
        help="comma-separated inputs to measure (default: all), e.g. shard_sequence,shard_sequence_float16",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(
        args.features,
        args.demo,
        model=args.model,
        rounds=args.rounds,
        epochs=args.epochs,
        workers=args.workers,
        per_sample_workers=args.per_sample_workers,
        per_sample_batches=args.per_sample_batches,
        only=args.inputs.split(",") if args.inputs else None,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
