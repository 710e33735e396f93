"""Model experiments on precomputed mel shards: models, losses, metrics, train, predict.

Nothing here reads audio or needs librosa or joblib: experiments see only feature sets
written by ``precompute``.
"""
