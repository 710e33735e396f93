"""``ShardSequence``: ``ShardBatches`` as a ``keras.utils.PyDataset``, for ``model.fit``.

Every batch comes from ``loader.source.ShardBatches`` (see there: a pure function of
``(seed, epoch, index, rank)``); this class only adds what Keras needs, on every backend
(TensorFlow, JAX, PyTorch).

Epochs: Keras calls ``on_epoch_end`` once before the first epoch of ``fit`` (it resets its
epoch iterator), so the first epoch of a ``fit`` call uses epoch ``epoch + 1`` of the sequence.
Keras' ``fit(shuffle=True)`` also reorders whole batches with Python's global RNG; the batches
themselves do not change, pass ``shuffle=False`` to ``fit`` for a fully reproducible order
(and a useful look-ahead).

Workers: ``workers``/``use_multiprocessing`` are not handed to Keras (its worker processes
send every batch through a pipe, its threads through a queue); the sequence builds each batch
with its own threads or shared-memory processes, and Keras iterates it in process.
"""

from __future__ import annotations

import inspect
import os

import keras

from loader.reader import FeatureSet
from loader.source import ShardBatches
from melshards.errors import ConfigError

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

    def __getitem__(self, index: int):
        import numpy as np

        a = self.first[index]
        b = self.second[index % len(self.second)]
        return tuple(np.concatenate([u, v]) for u, v in zip(a, b, strict=True))

    def on_epoch_end(self) -> None:
        self.first.on_epoch_end()
        self.second.on_epoch_end()

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
