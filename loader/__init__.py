"""Reading mel shards for training and inference, in any framework.

``from loader import ShardSequence`` gives the Keras ``PyDataset`` (Keras is imported then, not
before); ``loader.torch.ShardDataset`` gives the same batches to a PyTorch ``DataLoader``; both
wrap ``ShardBatches`` (numpy only). ``open_feature_set``, ``FeatureSet``, ``MelReader`` and
``Augment`` are the pieces they are built from, and ``as_tf_dataset`` wraps a sequence as a
``tf.data.Dataset``. The on-disk format and the errors come from ``melshards``; nothing here
is imported by the precompute side, and nothing here imports a training framework until asked.
"""

from loader import read_kernels

# First: numba's start-up (~0.4 s per process) runs in a thread alongside the imports that
# follow, Keras' above all, instead of in the first batch.
read_kernels.start_warming()

from loader.augment import Augment, AugmentParams  # noqa: E402
from loader.batches import ShardBatches  # noqa: E402
from loader.reader import FeatureSet, MelReader, open_feature_set  # noqa: E402
from melshards.errors import ConfigError, FormatError, IntegrityError, MelShardsError  # noqa: E402

# name -> module that defines it, imported on first use (they import Keras or TensorFlow)
_LAZY = {"ShardSequence": "loader.sequence", "as_tf_dataset": "loader.tfdata"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = [
    "Augment",
    "AugmentParams",
    "ConfigError",
    "FeatureSet",
    "FormatError",
    "IntegrityError",
    "MelReader",
    "MelShardsError",
    "ShardBatches",
    "ShardSequence",
    "as_tf_dataset",
    "open_feature_set",
]
