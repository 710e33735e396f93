"""Reading mel shards for training and inference, in any framework.

``from loader import ShardSequence`` gives the Keras ``PyDataset`` (Keras is imported then, not
before); ``loader.torch.ShardDataset`` gives the same batches to a PyTorch ``DataLoader``; both
wrap ``ShardBatches`` (numpy only). Their options are ``LoaderOptions``, in groups
(``SplitOptions``, ``BatchOptions``, ``Augment``, ``BuildOptions``, ``CacheOptions``), or the
same options by name. Labels are one vector per crop, or per time step of it with
``targets="frames"`` (``FrameTargets``). ``open_feature_set``, ``FeatureSet``, ``MelReader`` and ``Augment`` are
the pieces they are built from, and ``as_tf_dataset`` wraps a sequence as a
``tf.data.Dataset`` (TensorFlow is imported when it is called). The on-disk format and the
errors come from ``melshards``; nothing here is imported by the precompute side, and nothing
here imports a training framework until asked.
"""

from loader import read_kernels

# First: numba's start-up (~0.4 s per process) runs in a thread alongside the imports that
# follow, Keras' above all, instead of in the first batch.
read_kernels.start_warming()

from loader.augment import Augment, AugmentParams  # noqa: E402
from loader.batches import ShardBatches  # noqa: E402
from loader.feature_set import FeatureSet, open_feature_set  # noqa: E402
from loader.frame_targets import FrameTargets  # noqa: E402
from loader.options import BatchOptions, BuildOptions, CacheOptions, LoaderOptions, SplitOptions  # noqa: E402
from loader.reader import MelReader  # noqa: E402
from loader.tfdata import as_tf_dataset  # noqa: E402
from melshards.errors import ConfigError, FormatError, IntegrityError, MelShardsError  # noqa: E402


def __getattr__(name: str):
    # ShardSequence is imported on first use: its module imports Keras.
    if name == "ShardSequence":
        from loader.sequence import ShardSequence

        globals()[name] = ShardSequence
        return ShardSequence
    raise AttributeError(f"module 'loader' has no attribute {name!r}")


__all__ = [
    "Augment",
    "AugmentParams",
    "BatchOptions",
    "BuildOptions",
    "CacheOptions",
    "ConfigError",
    "FeatureSet",
    "FormatError",
    "FrameTargets",
    "IntegrityError",
    "LoaderOptions",
    "MelReader",
    "MelShardsError",
    "ShardBatches",
    "ShardSequence",
    "SplitOptions",
    "as_tf_dataset",
    "open_feature_set",
]
