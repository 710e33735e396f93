"""``ShardSequence``: ``ShardBatches`` as a ``keras.utils.PyDataset``, for ``model.fit``.

Every batch comes from ``loader.batches.ShardBatches`` (see there: a pure function of
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
``experiments.checkpoints.LoaderCheckpoint`` saves the model, its optimizer and the loader's
position together while ``fit`` runs, and restores them.

Batches built on the accelerator: ``ShardSequence(..., on_device=True)`` yields each batch as
``(inputs, y[, known])``, ``inputs`` the stored values of its crops and its augmentation draws
(``loader.stored_batch``), for a ``loader.device_keras.DeviceBatchModel`` that decodes and
augments them with ``keras.ops`` inside the training step; ``seq.batch(i)`` and
``as_tf_dataset`` still give finished batches.

Workers: ``workers``/``use_multiprocessing`` are not handed to Keras (its worker processes
send every batch through a pipe, its threads through a queue); the sequence builds each batch
with its own threads or shared-memory processes, and Keras iterates it in process.
"""

from __future__ import annotations

import operator
import os
from typing import Any

import keras
import numpy as np

from loader.batches import ShardBatches
from loader.feature_set import FeatureSet
from loader.options import LoaderOptions
from loader.state import LoaderState
from loader.tfdata import as_tf_dataset
from melshards.errors import ConfigError


class ShardSequence(ShardBatches, keras.utils.PyDataset):
    """Batches ``(x, y)`` or ``(x, y, known)`` from a feature set for ``model.fit``.

    Takes what ``loader.batches.ShardBatches`` takes (``options``, a ``LoaderOptions``, and any
    option by name: ``split``, ``fold``, ``batch_size``, ``shuffle``, ``seed``, ``augment``,
    ``dtype``, ``return_mask``, ``in_memory``, ``crop_frames``, ``drop_remainder``,
    ``targets``, ``target_step``, ``lookahead``, ``rank``/``world_size``, ``workers``,
    ``use_multiprocessing``, ...) and Keras' ``max_queue_size``. ``on_device=True``: yield
    stored batches for a ``loader.device_keras.DeviceBatchModel`` (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike | FeatureSet,
        options: LoaderOptions | None = None,
        *,
        max_queue_size: int = 10,
        on_device: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(on_device, bool):
            raise ConfigError(f"ShardSequence: on_device must be True or False, got {on_device!r}")
        # Keras is told nothing about workers: the sequence splits each batch across its own
        # workers instead (``loader.rows``) and Keras builds batches in its in-process path.
        keras.utils.PyDataset.__init__(self, max_queue_size=max_queue_size)
        ShardBatches.__init__(self, path, options, **kwargs)
        self.on_device = on_device

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
        batch = self.get(index + self.start_batch if index >= 0 else index)
        return batch.fit_tuple() if self.on_device else batch

    def as_tf_dataset(self, *, prefetch: int | None = -1):
        """A ``tf.data.Dataset`` of the same batches (see ``loader.tfdata.as_tf_dataset``)."""
        return as_tf_dataset(self, prefetch=prefetch)


def _batch_form(seq: ShardSequence) -> tuple:
    """What two sequences must share for their batches to be concatenated."""
    step = seq.target_step if seq.targets == "frames" else 1
    return (seq.return_mask, seq.crop_frames, seq.targets, step)


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
        if first.on_device or second.on_device:
            raise ConfigError("paired sequences take finished batches: make both without on_device=True")
        if _batch_form(first) != _batch_form(second):
            raise ConfigError(
                "paired sequences must agree on return_mask, crop_frames, targets and target_step"
            )
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
    def label_shape(self) -> tuple[int, ...]:
        return self.first.label_shape

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
