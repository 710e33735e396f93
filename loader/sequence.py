"""``ShardSequence``: ``ShardBatches`` as a ``keras.utils.PyDataset``, for ``model.fit``.

Every batch comes from ``loader.source.ShardBatches`` (see there: a pure function of
``(seed, epoch, index, rank)``); this class only adds what Keras needs, on every backend
(TensorFlow, JAX, PyTorch).

Epochs: Keras calls ``on_epoch_end`` once before the first epoch of ``fit`` (it resets its
epoch iterator), so the first epoch of a ``fit`` call uses epoch ``epoch + 1`` of the sequence.
Keras' ``fit(shuffle=True)`` also reorders whole batches with Python's global RNG; the batches
themselves do not change, pass ``shuffle=False`` to ``fit`` for a fully reproducible order
(and a useful look-ahead).

Resuming (``loader.state``): after ``load_state_dict(state)`` the ``on_epoch_end`` Keras calls
before the first epoch of ``fit`` keeps the loaded position. A state at the start of an epoch
needs one ``fit(seq, initial_epoch=k, epochs=n)``. A state in the middle of an epoch needs two
calls, because Keras fixes the number of steps of every epoch of a ``fit`` call when the call
starts (``num_batches``: here the batches left, ``seq[i]`` being batch ``start_batch + i``)::

    seq.load_state_dict(state)                           # batch b of the sequence's epoch
    model.fit(seq, initial_epoch=k, epochs=k + 1)        # batches b.. of that epoch
    model.fit(seq, initial_epoch=k + 1, epochs=n)        # whole epochs, as if never stopped

A single call would run every epoch that short (and the sequence cannot tell: Keras also
begins epochs it only peeks at, to build the model). Ending the short epoch by running out of
data instead is no way out on TensorFlow: the step that finds no data still applies AdamW's
weight decay and advances the optimizer's step count and the dropout seeds (measured), so the
weights drift from the uninterrupted run. The same two calls resume on JAX (checked).
``LoaderCheckpoint`` saves the model, its optimizer and the loader's position together while
``fit`` runs, and restores them.

Workers: ``workers``/``use_multiprocessing`` are not handed to Keras (its worker processes
send every batch through a pipe, its threads through a queue); the sequence builds each batch
with its own threads or shared-memory processes, and Keras iterates it in process.
"""

from __future__ import annotations

import inspect
import operator
import os
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from loader.reader import FeatureSet
from loader.source import ShardBatches
from loader.state import LoaderState, read_state, write_state
from melshards.errors import ConfigError, ExperimentError

# What Keras' PyDataset itself takes; workers and use_multiprocessing go to ShardBatches.
PYDATASET_ARGS = ("max_queue_size",)
BATCH_OPTIONS = frozenset(inspect.signature(ShardBatches.__init__).parameters) - {"self", "path"}


class ShardSequence(ShardBatches, keras.utils.PyDataset):
    """Batches ``(x, y)`` or ``(x, y, known)`` from a feature set for ``model.fit``.

    Takes every ``loader.source.ShardBatches`` option (``split``, ``fold``, ``batch_size``,
    ``shuffle``, ``seed``, ``augment``, ``dtype``, ``return_mask``, ``in_memory``,
    ``crop_frames``, ``drop_remainder``, ``lookahead``, ``rank``/``world_size``, ``workers``,
    ``use_multiprocessing``) and Keras' ``max_queue_size``.
    """

    def __init__(self, path: str | os.PathLike | FeatureSet, **options) -> None:
        unknown = sorted(set(options) - BATCH_OPTIONS - set(PYDATASET_ARGS))
        if unknown:
            raise ConfigError(f"ShardSequence got unknown argument(s) {', '.join(unknown)}")
        # Keras is told nothing about workers: the sequence splits each batch across its own
        # workers instead (``loader.batches``) and Keras builds batches in its in-process path.
        keras.utils.PyDataset.__init__(self, **{k: options.pop(k) for k in PYDATASET_ARGS if k in options})
        ShardBatches.__init__(self, path, **options)

    # True from load_state_dict (or the end of a loaded short epoch) to the on_epoch_end Keras
    # calls before the first epoch of the next fit call.
    _resume_pending = False

    def load_state_dict(self, state: LoaderState | dict) -> None:
        """Go to a saved position, for ``model.fit`` (see the module docstring)."""
        ShardBatches.load_state_dict(self, state)
        self._resume_pending = True

    def on_epoch_end(self) -> None:
        if self._resume_pending:  # Keras' call before fit's first epoch: stay where loaded
            self._resume_pending = False
            return
        short = self.start_batch > 0
        ShardBatches.on_epoch_end(self)
        # The fit call of a short epoch ends with it; the next call's first on_epoch_end keeps
        # the epoch that follows.
        self._resume_pending = short

    @property
    def num_batches(self) -> int:
        """Batches Keras takes per epoch: every batch, or those left of a loaded epoch."""
        return len(self) - self.start_batch

    def __getitem__(self, index: int) -> tuple:
        index = operator.index(index)
        return self.get(index + self.start_batch if index >= 0 else index)

    def as_tf_dataset(self, *, prefetch: int | None = -1):
        """A ``tf.data.Dataset`` of the same batches (see ``loader.tfdata.as_tf_dataset``)."""
        from loader.tfdata import as_tf_dataset

        return as_tf_dataset(self, prefetch=prefetch)


class PairedSequence(keras.utils.PyDataset):
    """Each batch of ``first`` followed by a batch of ``second``, for ``model.fit``.

    Batch ``i`` is ``first[i]`` and ``second[i % len(second)]`` concatenated along the batch
    axis (both yielding ``(x, y)`` or both ``(x, y, known)``); an epoch is ``len(first)``
    batches. ``on_epoch_end`` moves both to their next epoch. Used to train on labelled
    examples and pseudo-labelled windows together (``experiments.pseudo``).

    Its position is ``first``'s (``state_dict``, ``load_state_dict``); ``second`` follows
    ``first``'s epoch, as in a run that started both together.
    """

    def __init__(self, first: ShardSequence, second: ShardSequence) -> None:
        super().__init__()
        if first.return_mask != second.return_mask or first.crop_frames != second.crop_frames:
            raise ConfigError("paired sequences must agree on return_mask and crop_frames")
        if first.config.n_mels != second.config.n_mels or len(first.classes) != len(second.classes):
            raise ConfigError(
                f"{second.features.root} does not fit {first.features.root}: "
                f"{second.config.n_mels} mels and {len(second.classes)} classes against "
                f"{first.config.n_mels} and {len(first.classes)}"
            )
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first)

    @property
    def num_batches(self) -> int:
        return self.first.num_batches

    def __getitem__(self, index: int):
        index = operator.index(index)
        a = self.first[index]
        position = index + self.first.start_batch if index >= 0 else index
        b = self.second[position % len(self.second)]
        return tuple(np.concatenate([u, v]) for u, v in zip(a, b, strict=True))

    def on_epoch_end(self) -> None:
        pending = self.first._resume_pending  # then first keeps its epoch, and so does second
        self.first.on_epoch_end()
        if not pending:
            self.second.on_epoch_end()

    @property
    def epoch(self) -> int:
        return self.first.epoch

    @property
    def start_batch(self) -> int:
        return self.first.start_batch

    def loader_state(self, *, next_batch: int | None = None) -> LoaderState:
        return self.first.loader_state(next_batch=next_batch)

    def state_dict(self, *, next_batch: int | None = None) -> dict:
        return self.first.state_dict(next_batch=next_batch)

    def load_state_dict(self, state: LoaderState | dict) -> None:
        self.first.load_state_dict(state)
        self.second.set_epoch(self.first.epoch)

    # What describes the batches is ``first``'s: its config, classes, crop and feature set.
    @property
    def features(self) -> FeatureSet:
        return self.first.features

    @property
    def config(self):
        return self.first.config

    @property
    def classes(self) -> tuple[int, ...]:
        return self.first.classes

    @property
    def crop_frames(self) -> int:
        return self.first.crop_frames

    @property
    def fingerprint(self) -> str:
        return self.first.fingerprint

    @property
    def recording_id(self):
        return self.first.recording_id

    @property
    def n_examples(self) -> int:
        """Examples fed per epoch: all of ``first``, and ``second``'s batches that go with them."""
        second = sum(len(self.second.batch_example_ids(i % len(self.second))) for i in range(len(self)))
        return self.first.n_examples + second


CHECKPOINT_STATE = "checkpoint.loader.json"
CHECKPOINT_PREFIX = "checkpoint-"


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
