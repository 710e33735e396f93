"""``tf.data`` view of a loader's batches; TensorFlow is imported here only, when called.

``as_tf_dataset`` takes any ``loader.batches.ShardBatches`` (``ShardSequence.as_tf_dataset``
calls it with itself), so this module imports no other loader module at run time.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loader.batches import ShardBatches


def as_tf_dataset(seq: ShardBatches, *, prefetch: int | None = -1, first_epoch: int | None = None):
    """A ``tf.data.Dataset`` yielding exactly ``seq[i]`` for each batch of an epoch.

    Built with ``from_generator`` and an explicit ``output_signature``: ``x`` (None, n_mels,
    crop_frames, 1) in the sequence's dtype, ``y`` (None, n_classes) float32 (with frame
    targets (None, steps, n_classes): ``seq.label_shape``), and ``known`` of ``y``'s shape
    when ``seq.return_mask``. The k-th pass over the dataset (``model.fit`` makes one per
    epoch) yields epoch ``first_epoch + k`` of the sequence; ``first_epoch`` defaults to
    ``seq.epoch`` when this is called. ``prefetch``: batches to prefetch, -1 for
    ``tf.data.AUTOTUNE``, 0 or None for none.

    The batches are the sequence's own arrays (built in its worker mode, 64-byte aligned), which
    TensorFlow wraps without copying; its prefetch thread builds the next batch while the model
    trains on the current one.
    """
    import tensorflow as tf

    start = seq.epoch if first_epoch is None else int(first_epoch)
    passes = itertools.count(start)
    config = seq.config
    labels = tf.TensorSpec((None, *seq.label_shape), tf.float32)
    signature = [tf.TensorSpec((None, config.n_mels, seq.crop_frames, 1), tf.as_dtype(seq.dtype)), labels]
    if seq.return_mask:
        signature.append(labels)

    def generate():
        epoch = next(passes)
        for index in range(len(seq)):
            yield seq.batch(index, epoch=epoch)

    ds = tf.data.Dataset.from_generator(generate, output_signature=tuple(signature))
    # Tell Keras how many batches an epoch has, as it knows for a PyDataset.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(seq)))
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE if prefetch == -1 else int(prefetch))
    return ds
