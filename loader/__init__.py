"""Reading mel shards for training and inference.

``from loader import ShardSequence`` gives the Keras ``PyDataset``; ``open_feature_set``,
``FeatureSet``, ``MelReader`` and ``Augment`` are the pieces it is built from.

The precompute side imports ``loader.format`` and ``loader.errors``, which runs this file; it
must not pay for Keras/TensorFlow (seconds per worker process) or numba. So the names below
are resolved from their modules on first use (PEP 562 ``__getattr__``); each is an ordinary
attribute of the module named in ``_EXPORTS``.
"""

from __future__ import annotations

import importlib

from loader.errors import ConfigError, FormatError, IntegrityError, MelShardsError

_EXPORTS = {
    "ShardSequence": "loader.sequence",
    "FeatureSet": "loader.reader",
    "MelReader": "loader.reader",
    "open_feature_set": "loader.reader",
    "Augment": "loader.augment",
    "AugmentParams": "loader.augment",
    "as_tf_dataset": "loader.tfdata",
}

__all__ = ["ConfigError", "FormatError", "IntegrityError", "MelShardsError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loader' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
