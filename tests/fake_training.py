"""Stand-ins for ``experiments.train.train`` and ``experiments.predict.predict`` that write what
the real ones write into a run directory (``metrics.json`` with the run's options, a submission,
the test scores), in milliseconds and without a model: for tests of what a sweep or a
pseudo-label recipe trains, skips and scores, not of training itself.

``install(monkeypatch)`` puts them in place and returns the ``FakeTraining`` that records the
calls; a missing truth file fails as ``predict`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.errors import ExperimentError
from experiments.train_options import TrainOptions
from melshards.index import read_index


@dataclass
class FakeTraining:
    """The runs trained (their ``out``) and scored (their model), in order; ``before_train`` is
    called as each training starts; ``val_lwlrap(options)`` is the score a run gets."""

    trained: list[Path] = field(default_factory=list)
    scored: list[Path] = field(default_factory=list)
    before_train: Callable[[], None] | None = None
    val_lwlrap: Callable[[dict[str, Any]], float] = lambda options: 0.5 + 0.01 * options["seed"]

    def train(self, features, *, out, seed=0, verbose=2, quiet=False, **options) -> dict[str, Any]:
        if self.before_train is not None:
            self.before_train()
        recorded = TrainOptions.from_kwargs(
            features=features, out=out, seed=seed, verbose=verbose, quiet=quiet, **options
        ).to_kwargs()
        metrics = {
            "val_lwlrap": self.val_lwlrap(recorded),
            "val_top1": 0.5,
            "epochs_run": 1,
            "train_seconds": 2.0,
            "fingerprint": read_index(features).fingerprint,
            "config": {"train": recorded},
        }
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.keras").write_text("a model")
        (out / "metrics.json").write_text(json.dumps(metrics))
        self.trained.append(out)
        return metrics

    def predict(self, features, *, model, out, truth=None, metrics=None, quiet=False, **_) -> dict[str, Any]:
        if truth is not None and not Path(truth).is_file():
            raise ExperimentError(f"{truth}: no such truth file")
        Path(out).write_text("recording_id,s0\n")
        self.scored.append(Path(model))
        result: dict[str, Any] = {"recordings": 1, "windows": 1}
        if truth is not None:
            result |= {"test_lwlrap": 0.625, "test_top1": 0.5, "test_recordings": 1}
            if metrics is not None:
                run = json.loads(Path(metrics).read_text())
                run |= result
                run["test_features"] = {
                    "path": str(Path(features).resolve()),
                    "fingerprint": read_index(features).fingerprint,
                }
                Path(metrics).write_text(json.dumps(run))
        return result


def install(monkeypatch) -> FakeTraining:
    """Replace ``train`` and ``predict`` for this test; the fake that records the calls."""
    import experiments.predict
    import experiments.train

    fake = FakeTraining()
    monkeypatch.setattr(experiments.train, "train", fake.train)
    monkeypatch.setattr(experiments.predict, "predict", fake.predict)
    return fake
