"""Model experiments on precomputed mel shards: train, predict, compare, draw.

- training: ``train`` (``train()`` and ``python -m experiments.train``, whose flags are
  ``train_flags``) makes an ``options.TrainOptions`` and hands it to ``run``, which reads the
  ``sequences``, fits with the ``callbacks`` and keeps its ``checkpoints``;
- the network: ``models``, ``losses``, ``metrics``; ``plots`` draws the curves;
- scoring: ``predict`` writes the ``submission`` table of a windows feature set;
- many runs: ``sweep`` (a grid over seeds), ``pseudo`` (pseudo-label rounds);
- pictures: ``pictures`` draws the examples ``picks`` chooses; ``preview`` is the
  ``precompute preview`` command.

Nothing here reads audio or needs librosa or joblib: experiments see only feature sets
written by ``precompute``.
"""
