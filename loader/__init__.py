"""Reading mel shards for training and inference.

``from loader import ShardSequence`` gives the Keras ``PyDataset``; ``open_feature_set``,
``FeatureSet``, ``MelReader`` and ``Augment`` are the pieces it is built from, and
``as_tf_dataset`` wraps a sequence as a ``tf.data.Dataset``. The on-disk format and the errors
come from ``melshards``; nothing here is imported by the precompute side.
"""

from loader import kernels

# Before the imports below (Keras takes seconds): numba's start-up runs alongside them.
kernels.start_warming()

from loader.augment import Augment, AugmentParams  # noqa: E402
from loader.reader import FeatureSet, MelReader, open_feature_set  # noqa: E402
from loader.sequence import ShardSequence  # noqa: E402
from loader.tfdata import as_tf_dataset  # noqa: E402
from melshards.errors import ConfigError, FormatError, IntegrityError, MelShardsError  # noqa: E402

__all__ = [
    "Augment",
    "AugmentParams",
    "ConfigError",
    "FeatureSet",
    "FormatError",
    "IntegrityError",
    "MelReader",
    "MelShardsError",
    "ShardSequence",
    "as_tf_dataset",
    "open_feature_set",
]
