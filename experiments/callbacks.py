"""The Keras callbacks of a training run, besides Keras' own: its time, its ledger, its files.

- ``TrainTimer``: seconds spent in the training part of each epoch;
- ``FitLedger``: what the run knows of its epochs (history, best epoch, early stopping, times),
  kept across ``fit`` calls and processes: a checkpoint records ``state()``, a resumed run starts
  from it;
- ``BestModel``: ``model.keras``, the model of the best epoch (``ModelCheckpoint`` with
  ``save_best_only``, saved through a temp name);
- ``HistoryLog``: ``history.csv``, one row per epoch (``CSVLogger``'s rows, appended to the
  run's own file);
- ``BatchLog``: ``batches.log``, the sha256 of every trained batch (``--batch-log``).

Every file is written through ``experiments.run_files``, never through a link planted in the
run directory. ``experiments.train_run.fit_run`` puts them, with ``EarlyStopping`` and
``experiments.checkpoints.LoaderCheckpoint``, into one ``fit``.
"""

from __future__ import annotations

import collections.abc
import csv
import hashlib
import io
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from experiments.run_files import AppendLog, save_through_temp

# What the best epoch is chosen by (BestModel, EarlyStopping, the ledger).
MONITOR = "val_lwlrap"


class TrainTimer(keras.callbacks.Callback):
    """Seconds spent in the training part of each epoch (validation excluded).

    ``carry``: seconds an earlier process spent on the first epoch timed here (a resumed run).
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.carry = 0.0
        self._start = 0.0
        self._open = False

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()
        self._open = True

    def running(self) -> float:
        """Seconds of the epoch in progress so far (0 between epochs)."""
        return self.carry + time.perf_counter() - self._start if self._open else 0.0

    def _stop(self) -> None:
        if self._open:
            self.seconds.append(self.running())
            self.carry = 0.0
            self._open = False

    def on_test_begin(self, logs: Any = None) -> None:
        self._stop()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._stop()


class FitLedger(keras.callbacks.Callback):
    """What a run knows of its epochs, kept across ``fit`` calls and processes.

    ``history`` holds the logs of every finished epoch (as ``keras.callbacks.History`` does);
    ``state()`` is written into each checkpoint and ``fit_state`` (a checkpoint's) starts a
    resumed run from it. At the start of every ``fit`` call the best ``val_lwlrap`` so far goes
    back into ``best_model`` (BestModel) and ``early`` (EarlyStopping: best, best epoch,
    epochs waited), which a call resets.
    """

    def __init__(
        self, *, best_model, early, timer: TrainTimer, started: float, fit_state: dict | None
    ) -> None:
        super().__init__()
        state = fit_state or {}
        self.best_model, self.early, self.timer = best_model, early, timer
        self.history: dict[str, list[float]] = {k: list(v) for k, v in state.get("history", {}).items()}
        self.stopped = bool(state.get("stopped", False))
        timer.seconds = list(state.get("train_seconds", []))
        timer.carry = float(state.get("partial_train_seconds", 0.0))
        # perf_counter readings that the run's wall and fit seconds count from, earlier processes included
        self.started = started - float(state.get("seconds", 0.0))
        self._fit_before = float(state.get("fit_seconds", 0.0))
        self.fit_started: float | None = None  # when this process's fit calls began

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("loss", []))

    def fit_seconds(self) -> float:
        return self._fit_before + (
            0.0 if self.fit_started is None else time.perf_counter() - self.fit_started
        )

    def on_train_begin(self, logs: Any = None) -> None:
        scores = self.history.get(MONITOR, [])
        if scores:  # the first best, as the callbacks' strict "greater than" keeps it
            best = int(np.argmax(scores))
            self.best_model.best = self.early.best = scores[best]
            self.early.best_epoch, self.early.wait = best, len(scores) - 1 - best

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.stopped = bool(self.model.stop_training)

    def state(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "stopped": self.stopped,
            "train_seconds": list(self.timer.seconds),
            "partial_train_seconds": self.timer.running(),
            "seconds": time.perf_counter() - self.started,
            "fit_seconds": self.fit_seconds(),
        }


def batch_digest(batch: tuple[np.ndarray, ...]) -> str:
    """sha256 of a batch's arrays, in order."""
    digest = hashlib.sha256()
    for array in batch:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class BestModel(keras.callbacks.Callback):
    """``model.keras``: the model of the epoch with the highest ``monitor`` so far.

    What ``keras.callbacks.ModelCheckpoint(path, monitor=MONITOR, mode="max",
    save_best_only=True)`` keeps, saved through a temp name (``run_files.save_through_temp``).
    ``best`` is the best value so far (None before the first epoch; ``FitLedger`` sets it on
    resume). An epoch without ``monitor`` in its logs is saved, as Keras does.
    """

    def __init__(self, path: Path, *, monitor: str = MONITOR) -> None:
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is not None:
            if self.best is not None and not current > self.best:
                return
            self.best = current
        save_through_temp(self.path, self.model.save)


def _csv_value(value: Any) -> Any:
    """A log value as ``CSVLogger`` writes it (a list in brackets, quoted)."""
    if isinstance(value, str) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value
    if isinstance(value, collections.abc.Iterable):
        return f'"[{", ".join(map(str, value))}]"'
    return value


class _AppendedLog(keras.callbacks.Callback):
    """A callback that appends to one run file (``run_files.AppendLog``), opened anew when
    training begins and closed when it ends."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._log: AppendLog | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        self.close()
        self._log = AppendLog(self.path)

    def on_train_end(self, logs: Any = None) -> None:
        self.close()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class HistoryLog(_AppendedLog):
    """``history.csv``: a row per epoch, as ``keras.callbacks.CSVLogger(path, append=True)``
    writes it (the header ``epoch`` and the logs' names sorted, rows ending in CRLF), appended
    to the run's own file (``run_files.AppendLog``) and fsynced at every epoch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._keys: list[str] | None = None
        self._header = False

    def on_train_begin(self, logs: Any = None) -> None:
        super().on_train_begin(logs)
        self._keys, self._header = None, self._log.size == 0

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        if self._keys is None:
            keys = sorted(logs)
            if keys and not any(k.startswith("val_") for k in keys):
                keys += [f"val_{k}" for k in keys]
            self._keys = keys
        text = io.StringIO()
        writer = csv.writer(text, dialect="excel")
        if self._header:
            writer.writerow(["epoch", *self._keys])
            self._header = False
        writer.writerow([epoch, *(_csv_value(logs.get(k, "NA")) for k in self._keys)])
        self._log.write(text.getvalue().encode("utf-8"))


class BatchLog(_AppendedLog):
    """``batches.log``: one line ``epoch index sha256`` per trained batch (``--batch-log``).

    ``sequence`` is what ``fit`` gets: the training sequence, noting the digest of every batch
    it hands out; a line is written (and fsynced) once the batch is trained, to the run's own
    file (``run_files.AppendLog``).
    """

    def __init__(self, seq: Any, path: Path) -> None:
        super().__init__(path)
        self.digests = {}
        self.sequence = _DigestedSequence(seq, self.digests)
        self._epoch, self._first = 0, 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        seq = self.sequence.seq
        self._epoch, self._first = seq.epoch, seq.start_batch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        index = self._first + batch
        line = f"{self._epoch} {index} {self.digests.pop((self._epoch, index))}\n"
        self._log.write(line.encode("utf-8"))


class _DigestedSequence(keras.utils.PyDataset):
    """``seq`` for ``fit``, keeping the digest of each batch by (epoch, index in the epoch)."""

    def __init__(self, seq: Any, digests: dict) -> None:
        super().__init__()
        self.seq, self.digests = seq, digests

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def num_batches(self) -> int:
        return self.seq.num_batches

    def __getitem__(self, index: int) -> tuple:
        batch = self.seq[index]
        self.digests[(self.seq.epoch, self.seq.start_batch + index)] = batch_digest(batch)
        return batch

    def on_epoch_begin(self) -> None:
        self.seq.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.seq.on_epoch_end()
