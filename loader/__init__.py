"""Reading mel shards for training and inference.

``from loader import ShardSequence`` gives the Keras ``PyDataset``; ``open_feature_set``,
``FeatureSet``, ``MelReader`` and ``Augment`` are the pieces it is built from, and
``as_tf_dataset`` wraps a sequence as a ``tf.data.Dataset``. The on-disk format and the errors
come from ``melshards``; nothing here is imported by the precompute side.
"""

from loader import kernels
from loader.augment import Augment, AugmentParams
from loader.reader import FeatureSet, MelReader, open_feature_set
from loader.sequence import ShardSequence
from loader.tfdata import as_tf_dataset
from melshards.errors import ConfigError, FormatError, IntegrityError, MelShardsError

kernels.start_warming()

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
