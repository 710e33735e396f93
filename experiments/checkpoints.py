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

A run trusts only what it wrote: every file is written through ``experiments.run_files`` (never
through a link), a checkpoint records the name and sha256 of its model file and is restored
only from that file of the run directory with those bytes, and every entry read back is
checked (``experiments.run_fields``): a bad one is one line naming the file and the field.
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
from experiments.run_fields import (
    CHECKPOINT_PREFIX,
    batch_log_lines,
    checkpoint_entries,
    checkpoint_name,
    fit_state,
    kept_rows,
    run_options,
    variable_values,
)
from experiments.run_files import (
    file_sha256,
    read_run_file,
    remove_temp_files,
    save_through_temp,
    write_run_file,
)
from experiments.thresholds import THRESHOLDS_FILE, VALIDATION_FILE
from experiments.train_options import FREE_ON_RESUME
from loader.state import read_state, write_state
from melshards.errors import ConfigError

CHECKPOINT_STATE = "checkpoint.loader.json"
# What a run directory holds besides its checkpoint (the module docstring of experiments.train).
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
RUN_FILE = "run.json"
BATCH_LOG_FILE = "batches.log"
# What a run writes, whose temp files a new start clears.
RUN_FILES = (MODEL_FILE, HISTORY_FILE, METRICS_FILE, CURVES_FILE, RUN_FILE, BATCH_LOG_FILE)
RUN_FILES += (THRESHOLDS_FILE, VALIDATION_FILE)


class LoaderCheckpoint(keras.callbacks.Callback):
    """Save the model, its optimizer and the loader's position together while ``fit`` runs.

    Every ``every`` batches of an epoch (0: never mid-epoch) and at the end of every epoch,
    writes into ``directory``:

    - ``checkpoint-e<epoch>-b<batch>.keras``: the model with its optimizer state (``model.save``,
      to a temp name then renamed into place);
    - ``checkpoint.loader.json`` (``loader.state.write_state``, atomically, after the model): the
      sequence's position, the name and sha256 of the model file it goes with, what ``.keras``
      does not hold (the dropout seed generators, the running metrics of the epoch) and
      ``extra()``;
    - then removes the older model files.

    A kill at any moment leaves the last ``checkpoint.loader.json`` naming a complete model file.
    ``restore(model)`` loads them back into a freshly built, compiled model and the sequence,
    refusing a model file other than the one the checkpoint names in ``directory``, or with
    other bytes than it recorded.

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
        name = checkpoint_name(state.epoch, state.batch)
        digest = save_through_temp(self.directory / name, self.model.save)
        variables = {
            "seed_generators": _values(_seed_variables(self.model)),
            "metrics": _values(self.model.metrics_variables),
        }
        extra = {} if self.extra is None else {"fit": self.extra()}
        write_state(
            self.directory / CHECKPOINT_STATE,
            state,
            model=name,
            model_sha256=digest,
            variables=variables,
            **extra,
        )
        for old in self.directory.glob(f"{CHECKPOINT_PREFIX}*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def restore(self, model: keras.Model) -> dict | None:
        """Load the checkpoint of ``directory`` into ``model`` (built and compiled as for the
        saved run) and the sequence; returns its ``"fit"`` entry ({} without one), or None when
        ``directory`` holds no checkpoint. ConfigError when the loader state does not fit;
        FormatError or ExperimentError, naming the file and the entry, for a checkpoint other than
        the one the run wrote (``run_fields.checkpoint_entries``, the model file's sha256)."""
        path = self.directory / CHECKPOINT_STATE
        if read_run_file(path) is None:  # refuses a link or another kind of file
            return None
        state, extra = read_state(path)
        extra = checkpoint_entries(extra, epoch=state.epoch, batch=state.batch, where=str(path))
        model_file = self.directory / extra["model"]
        if file_sha256(model_file) != extra["model_sha256"]:
            raise ExperimentError(
                f"{model_file}: its bytes disagree with the sha256 recorded in {path}; "
                "refusing to resume from it"
            )
        try:
            self.seq.load_state_dict(state)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        variables = extra["variables"]
        seeds = variable_values(
            variables["seed_generators"], _seed_variables(model), f"{path} variables.seed_generators"
        )
        _load_weights(model, model_file)
        _assign(_seed_variables(model), seeds)
        _build_metrics(model, self.seq[0])  # all of them, to check the saved values against
        metrics = variable_values(variables["metrics"], model.metrics_variables, f"{path} variables.metrics")
        # Mid-epoch, the epoch's running metrics go on; at an epoch's start they start afresh.
        self._metrics = metrics if state.batch else None
        self.clean(self.directory)
        return extra.get("fit", {})

    @staticmethod
    def clean(directory: Path) -> None:
        """Remove the partial files a save killed half-way left in ``directory``."""
        remove_temp_files(directory, (f"{CHECKPOINT_PREFIX}*.keras", CHECKPOINT_STATE))
        # Older versions' partial model files.
        for partial in Path(directory).glob(f".partial-*-{CHECKPOINT_PREFIX}*.keras"):
            partial.unlink(missing_ok=True)


def _load_weights(model: keras.Model, path: Path) -> None:
    """The weights and optimizer state of the model file ``path`` into ``model``."""
    try:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
    except Exception as err:  # Keras raises many types for an archive that does not fit
        raise ExperimentError(
            f"{path}: cannot restore the checkpoint: not a Keras model of this run ({type(err).__name__})"
        ) from None


def _seed_variables(model: keras.Model) -> list:
    """The model's variables that ``model.save`` does not keep: its seed generators' states."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _build_metrics(model: keras.Model, batch: tuple) -> None:
    """Create the compiled metrics' variables (``fit`` makes them in its first step), so that
    a restored epoch's running values can go into them before that step."""
    x, y, *weight = batch
    model.compute_metrics(x, y, model(x, training=False), sample_weight=weight[0] if weight else None)


def _values(variables) -> list:
    return [keras.ops.convert_to_numpy(v).tolist() for v in variables]


def _assign(variables, values) -> None:
    """Checked values (``run_fields.variable_values``) into ``variables``."""
    for variable, value in zip(variables, values, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


# -- the run directory --------------------------------------------------------------------------


def start_run(out: Path, options: dict[str, Any]) -> None:
    """Make the run directory, clear what an earlier run left there, record the options
    (``TrainOptions.to_kwargs()``) in ``run.json``."""
    out.mkdir(parents=True, exist_ok=True)
    # A stale metrics.json would mark this run finished before it is; the logs are appended to.
    for name in (METRICS_FILE, HISTORY_FILE, BATCH_LOG_FILE, THRESHOLDS_FILE, VALIDATION_FILE):
        (out / name).unlink(missing_ok=True)
    remove_checkpoints(out)
    remove_temp_files(out, RUN_FILES)
    write_run_file(out / RUN_FILE, json.dumps({"train": options}, indent=1) + "\n")


def remove_checkpoints(out: Path) -> None:
    """Remove a run's checkpoint: the loader state, its model files, partial ones."""
    (out / CHECKPOINT_STATE).unlink(missing_ok=True)
    for path in out.glob(f"{CHECKPOINT_PREFIX}*.keras"):
        path.unlink(missing_ok=True)
    LoaderCheckpoint.clean(out)


def _read_json(path: Path, *, what: str) -> Any:
    """The JSON document of the run's file ``path`` (never read through a link)."""
    try:
        data = read_run_file(path)
        return None if data is None else json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as err:
        raise ExperimentError(f"{path}: cannot read {what}: {err}") from None


def read_run_options(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``train()`` options a run recorded in ``run.json`` when it started, checked
    (``run_fields.run_options``)."""
    path = Path(run_dir) / RUN_FILE
    document = _read_json(path, what="the run's options")
    if document is None:
        raise ExperimentError(f"{run_dir}: no {RUN_FILE}, so no run to resume there")
    return run_options(document, where=str(path))


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
    if not (out / CHECKPOINT_STATE).exists() and not (out / CHECKPOINT_STATE).is_symlink():
        raise _no_checkpoint(out)


def _no_checkpoint(out: Path) -> ExperimentError:
    return ExperimentError(
        f"{out}: no checkpoint to resume from (no {CHECKPOINT_STATE}); start the run again"
    )


def restore_run(out: Path, checkpoint: LoaderCheckpoint, net: keras.Model) -> dict[str, Any]:
    """Load the run's last checkpoint into ``net`` and the training sequence; its ledger state
    (checked: ``run_fields.fit_state``).

    What the killed process logged after the checkpoint is dropped: it is trained again.
    """
    saved = checkpoint.restore(net)
    if saved is None:
        raise _no_checkpoint(out)
    state = read_state(out / CHECKPOINT_STATE)[0]
    ledger = fit_state(saved, epoch=state.epoch, where=f"{out / CHECKPOINT_STATE} fit")
    epochs_done = len(ledger["history"].get("loss", []))
    truncate_run_logs(out, epochs_done=epochs_done, epoch=state.epoch, batch=state.batch)
    return ledger


def truncate_run_logs(out: Path, *, epochs_done: int, epoch: int, batch: int) -> None:
    """Drop what a killed run logged after its last checkpoint: ``history.csv`` rows beyond the
    first ``epochs_done`` epochs, ``batches.log`` lines at or after (``epoch``, ``batch``).

    The lines kept are kept byte for byte (``history.csv`` rows end in CRLF, as ``csv`` writes
    them), so that the resumed run's files are those of an uninterrupted one.
    """
    history = out / HISTORY_FILE
    data = read_run_file(history)
    if data is not None or epochs_done:
        write_run_file(history, kept_rows(data or b"", epochs=epochs_done, where=str(history)))
    log_file = out / BATCH_LOG_FILE
    data = read_run_file(log_file)
    if data is not None:
        lines = batch_log_lines(data, where=str(log_file))
        write_run_file(log_file, b"".join(line for e, i, line in lines if (e, i) < (epoch, batch)))
