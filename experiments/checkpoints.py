"""Checkpoints of a training run and going on from them: the run directory, its files and ``run.json``.

``LoaderCheckpoint`` is a Keras callback that saves the model, its optimizer and the loader's
position together; ``experiments.train`` uses it for ``--checkpoint-every`` and ``--resume``, and
any ``model.fit`` over a ``loader.ShardSequence`` (or ``PairedSequence``) can use it alike. The
loader's side of a position is ``loader.state.LoaderState``.

The rest is the run directory's bookkeeping: the names of its files, ``start_run`` (a fresh
directory with the options in ``run.json``), ``read_run_options`` and ``check_resumable`` (may
this run go on, with these options?), ``restore_run`` (the last checkpoint back into a model
and the training sequence, the logs cut back to it) and ``remove_checkpoints`` (once the run is
done).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from experiments.errors import ExperimentError
from experiments.train_options import FREE_ON_RESUME, RECORDED
from loader.state import read_state, write_state
from melshards.errors import ConfigError
from melshards.files import atomic_write_text

CHECKPOINT_STATE = "checkpoint.loader.json"
CHECKPOINT_PREFIX = "checkpoint-"
# What a run directory holds besides its checkpoint (the module docstring of experiments.train).
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
RUN_FILE = "run.json"
BATCH_LOG_FILE = "batches.log"


class LoaderCheckpoint(keras.callbacks.Callback):
    """Save the model, its optimizer and the loader's position together while ``fit`` runs.

    Every ``every`` batches of an epoch (0: never mid-epoch) and at the end of every epoch,
    writes into ``directory``:

    - ``checkpoint-e<epoch>-b<batch>.keras``: the model with its optimizer state (``model.save``,
      to a temp name then renamed into place);
    - ``checkpoint.loader.json`` (``loader.state.write_state``, atomically, after the model): the
      sequence's position, the name of the model file it goes with, what ``.keras`` does not
      hold (the dropout seed generators, the running metrics of the epoch) and ``extra()``;
    - then removes the older model files.

    A kill at any moment leaves the last ``checkpoint.loader.json`` naming a complete model file.
    ``restore(model)`` loads them back into a freshly built, compiled model and the sequence.

    seq : the training ``ShardSequence`` or ``PairedSequence`` passed to ``fit``
    extra : called at each save; a JSON-able dict written under ``"fit"`` (the run's bookkeeping)
    """

    def __init__(self, seq, directory: str | os.PathLike, *, every: int = 0, extra=None) -> None:
        super().__init__()
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ConfigError(f"checkpoint every must be an integer >= 0 (batches), got {every!r}")
        self.seq, self.directory, self.every, self.extra = seq, Path(directory), every, extra
        self._epoch, self._first = 0, 0
        self._metrics: list | None = None  # running metrics to put back at the loaded epoch's start

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        # Keras has moved the sequence to this epoch already (on_epoch_end before fit's first).
        self._epoch, self._first = self.seq.epoch, self.seq.start_batch
        if self._metrics is not None:  # fit reset the metrics just before this call
            _assign(self.model.metrics_variables, self._metrics)
            self._metrics = None

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        done = self._first + batch + 1
        if self.every and done % self.every == 0 and done < len(self.seq):
            self.save(done)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.save(len(self.seq))

    def save(self, next_batch: int) -> None:
        """Checkpoint with the sequence at batch ``next_batch`` of the current epoch."""
        state = replace(self.seq.loader_state(next_batch=0), epoch=self._epoch, batch=next_batch).normalized()
        name = f"{CHECKPOINT_PREFIX}e{state.epoch:05d}-b{state.batch:06d}.keras"
        partial = self.directory / f".partial-{os.getpid()}-{name}"  # Keras wants the .keras suffix
        self.model.save(partial)
        _fsync(partial)
        os.replace(partial, self.directory / name)
        variables = {
            "seed_generators": _values(_seed_variables(self.model)),
            "metrics": _values(self.model.metrics_variables),
        }
        extra = {} if self.extra is None else {"fit": self.extra()}
        write_state(self.directory / CHECKPOINT_STATE, state, model=name, variables=variables, **extra)
        for old in self.directory.glob(f"{CHECKPOINT_PREFIX}*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def restore(self, model: keras.Model) -> dict | None:
        """Load the checkpoint of ``directory`` into ``model`` (built and compiled as for the
        saved run) and the sequence; returns its ``"fit"`` entry ({} without one), or None when
        ``directory`` holds no checkpoint. ConfigError when the loader state does not fit."""
        path = self.directory / CHECKPOINT_STATE
        if not path.exists():
            return None
        state, extra = read_state(path)
        try:
            self.seq.load_state_dict(state)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        try:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(self.directory / extra["model"])
            variables = extra["variables"]
            _assign(_seed_variables(model), variables["seed_generators"])
        except (KeyError, TypeError, ValueError, OSError) as err:
            raise ExperimentError(f"{path}: cannot restore the checkpoint: {err}") from None
        self._metrics = variables["metrics"]
        if len(model.metrics_variables) < len(self._metrics):
            _build_metrics(model, self.seq[0])
        self.clean(self.directory)
        return extra.get("fit", {})

    @staticmethod
    def clean(directory: Path) -> None:
        """Remove the partial files a save killed half-way left in ``directory``."""
        for pattern in (f".partial-*-{CHECKPOINT_PREFIX}*.keras", f".{CHECKPOINT_STATE}.*.tmp"):
            for partial in Path(directory).glob(pattern):
                partial.unlink(missing_ok=True)


def _seed_variables(model: keras.Model) -> list:
    """The model's variables that ``model.save`` does not keep: its seed generators' states."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _build_metrics(model: keras.Model, batch: tuple) -> None:
    """Create the compiled metrics' variables (``fit`` makes them in its first step), so that
    a restored epoch's running values can go into them before that step."""
    x, y, *weight = batch
    model.compute_metrics(x, y, model(x, training=False), sample_weight=weight[0] if weight else None)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _values(variables) -> list:
    return [keras.ops.convert_to_numpy(v).tolist() for v in variables]


def _assign(variables, values) -> None:
    if len(variables) != len(values):
        raise ValueError(f"{len(values)} saved values for {len(variables)} variables")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


# -- the run directory --------------------------------------------------------------------------


def start_run(out: Path, options: dict[str, Any]) -> None:
    """Make the run directory, clear what an earlier run left there, record the options
    (``TrainOptions.to_kwargs()``) in ``run.json``."""
    out.mkdir(parents=True, exist_ok=True)
    # A stale metrics.json would mark this run finished before it is; the logs are appended to.
    for name in (METRICS_FILE, HISTORY_FILE, BATCH_LOG_FILE):
        (out / name).unlink(missing_ok=True)
    remove_checkpoints(out)
    atomic_write_text(out / RUN_FILE, json.dumps({"train": options}, indent=1) + "\n")


def remove_checkpoints(out: Path) -> None:
    """Remove a run's checkpoint: the loader state, its model files, partial ones."""
    (out / CHECKPOINT_STATE).unlink(missing_ok=True)
    for path in out.glob(f"{CHECKPOINT_PREFIX}*.keras"):
        path.unlink(missing_ok=True)
    LoaderCheckpoint.clean(out)


def read_run_options(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``train()`` options a run recorded in ``run.json`` when it started."""
    path = Path(run_dir) / RUN_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{run_dir}: no {RUN_FILE}, so no run to resume there") from None
    except (OSError, ValueError) as err:
        raise ExperimentError(f"{path}: cannot read the run's options: {err}") from None
    options = document.get("train") if isinstance(document, dict) else None
    known = {*RECORDED, "resume"}  # train()'s keywords
    if not isinstance(options, dict) or "features" not in options or not set(options) <= known:
        raise ExperimentError(f"{path}: not the options of a run of this version of experiments.train")
    return options


def check_resumable(out: Path, options: dict[str, Any]) -> None:
    """Refuse to resume a finished run, or with options (``TrainOptions.to_kwargs()``) other than
    those the run started with."""
    recorded = read_run_options(out)
    if (out / METRICS_FILE).exists():
        raise ExperimentError(f"{out}: the run is finished ({METRICS_FILE} is there), nothing to resume")
    for name, value in options.items():
        # The feature set may be spelt another way: the checkpoint's fingerprint checks it.
        if name not in FREE_ON_RESUME and name != "features" and recorded.get(name) != value:
            raise ConfigError(
                f"{out / RUN_FILE}: the run started with {name} {recorded.get(name)!r}, not {value!r}"
            )
    if not (out / CHECKPOINT_STATE).exists():
        raise _no_checkpoint(out)


def _no_checkpoint(out: Path) -> ExperimentError:
    return ExperimentError(
        f"{out}: no checkpoint to resume from (no {CHECKPOINT_STATE}); start the run again"
    )


def restore_run(out: Path, checkpoint: LoaderCheckpoint, net: keras.Model) -> dict[str, Any]:
    """Load the run's last checkpoint into ``net`` and the training sequence; its ledger state.

    What the killed process logged after the checkpoint is dropped: it is trained again.
    """
    fit_state = checkpoint.restore(net)
    if fit_state is None:
        raise _no_checkpoint(out)
    state = read_state(out / CHECKPOINT_STATE)[0].normalized()
    epochs_done = len(fit_state.get("history", {}).get("loss", []))
    truncate_run_logs(out, epochs_done=epochs_done, epoch=state.epoch, batch=state.batch)
    return fit_state


def truncate_run_logs(out: Path, *, epochs_done: int, epoch: int, batch: int) -> None:
    """Drop what a killed run logged after its last checkpoint: ``history.csv`` rows beyond the
    first ``epochs_done`` epochs, ``batches.log`` lines at or after (``epoch``, ``batch``)."""
    history = out / HISTORY_FILE
    if history.exists():
        lines = history.read_text(encoding="utf-8").splitlines(keepends=True)
        atomic_write_text(history, "".join(lines[: 1 + epochs_done]) if epochs_done else "")
    log_file = out / BATCH_LOG_FILE
    if log_file.exists():
        kept = [
            line
            for line in log_file.read_text(encoding="utf-8").splitlines(keepends=True)
            if tuple(int(v) for v in line.split()[:2]) < (epoch, batch)
        ]
        atomic_write_text(log_file, "".join(kept))
