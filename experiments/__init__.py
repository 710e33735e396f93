"""Model experiments on precomputed mel shards: train, predict, compare, draw.

- training: ``train`` (``train()`` and ``python -m experiments.train``, whose flags are
  ``train_flags``) makes an ``options.TrainOptions`` and hands it to ``run``, which reads the
  ``sequences``, fits with the ``callbacks`` and keeps its ``checkpoints``;
- the network: ``models``, ``losses``, ``metrics``; ``plots`` draws the curves;
- scoring: ``predict`` writes the ``submission`` table of a windows feature set, its events
  with the per-class ``thresholds`` a run fits on its validation split, and ``detection_tables``
  (one Raven table per recording);
- the review loop: ``review`` picks the detections to review next (``review_files`` writes
  them); ``review_loop`` runs rounds of pick, review (``review_sim``), grow and retrain, and
  ``review_report`` compares the strategies;
- many runs: ``sweep`` (a grid over seeds), ``pseudo`` (pseudo-label rounds);
- pictures: ``pictures`` draws the examples ``picks`` chooses; ``preview`` is the
  ``precompute preview`` command.

Nothing here reads audio or needs librosa or joblib: experiments see only feature sets
written by ``precompute``.

A command line here (``python -m experiments.X``) holds back TensorFlow's start-up lines on
stderr, and its C++ log lines while it runs (``commandline.native_logs``): first, as this
package is imported, before any module here imports Keras. Its ``--verbose`` (1 or more) prints
the held lines; ``TF_CPP_MIN_LOG_LEVEL=0`` holds nothing. A program that imports these modules
keeps TensorFlow's logging as it is.
"""

import sys

from commandline.native_logs import hold_tensorflow_logs

if sys.argv[:1] == ["-m"]:  # python -m experiments.X: this package is imported while "-m" runs
    hold_tensorflow_logs()
