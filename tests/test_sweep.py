import csv
import inspect
import json
import math
import statistics

import pytest

from experiments import sweep
from experiments.train import train
from melshards.errors import ConfigError
from synthetic_features import make_feature_set


def test_train_options_are_the_train_signature():
    own = {"features", "out", "seed", "verbose", "quiet"}
    own |= {"checkpoint_every", "resume", "batch_log"}  # how a run is kept, not what it trains
    assert set(sweep.TRAIN_OPTIONS) == set(inspect.signature(train).parameters) - own


def test_grid_combines_every_value_and_names_each_configuration():
    grid = sweep.parse_grid(
        {
            "features": {"f16": "a", "u8": "b"},
            "seeds": [0, 1, 2],
            "base": {"epochs": 3},
            "grid": {"model": ["tiny", "baseline"], "mixup": [0.0, 0.5]},
        }
    )
    assert len(grid.configurations) == 8
    first = grid.configurations[0]
    assert first.name == "features=f16,model=tiny,mixup=0.0"
    assert first.features == "a"
    assert dict(first.options) == {"epochs": 3, "model": "tiny", "mixup": 0.0}
    assert first.slug == "features-f16_model-tiny_mixup-0.0"
    assert grid.configurations[-1].features == "b"
    assert grid.seeds == (0, 1, 2)


def test_listed_configurations_replace_the_bare_base():
    grid = sweep.parse_grid(
        {"features": "f", "base": {"epochs": 2}, "configs": [{"name": "slow", "lr": 1e-3}, {"lr": 5e-3}]}
    )
    assert [c.name for c in grid.configurations] == ["slow", "lr=0.005"]
    assert dict(grid.configurations[0].options) == {"epochs": 2, "lr": 1e-3}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"features": "f", "grid": {"modle": ["tiny"]}},
            r"grid\.toml \[grid\]: unknown training option\(s\) modle",
        ),
        ({"features": "f", "base": {"seed": 1}}, r"\[base\]: unknown training option\(s\) seed"),
        ({"seeds": [0]}, "features is missing"),
        ({"features": "f", "seeds": [0, 0]}, "distinct integers"),
        ({"features": "f", "grid": {"lr": []}}, r"\[grid\] lr: expected a non-empty list"),
        ({"features": "f", "metric": "accuracy"}, "metric 'accuracy' is not one of"),
        ({"features": "f", "sedes": [1]}, r"unknown key\(s\) sedes"),
    ],
)
def test_bad_grids_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        sweep.parse_grid(data, source="grid.toml")


def test_comparison_means_and_spreads_per_configuration(tmp_path):
    grid = sweep.parse_grid({"features": "f", "seeds": [0, 1, 2], "grid": {"lr": [0.1, 0.2]}})
    runs = {
        "lr=0.1": [
            {"val_lwlrap": v, "epochs_run": 4, "train_seconds": s}
            for v, s in ((0.5, 8), (0.7, 12), (0.6, 10))
        ],
        "lr=0.2": [{"val_lwlrap": v, "epochs_run": 2, "train_seconds": 2} for v in (0.9, 0.8, 0.85)],
    }
    rows = sweep.compare(grid, runs)
    assert [r["configuration"] for r in rows] == ["lr=0.2", "lr=0.1"]  # best first
    assert rows[1]["val_lwlrap_mean"] == pytest.approx(0.6)
    assert rows[1]["val_lwlrap_std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))
    assert rows[1]["seconds_per_epoch_mean"] == pytest.approx(2.5)
    assert rows[0]["seconds_per_epoch_std"] == 0.0
    assert "test_lwlrap_mean" not in rows[0]  # no run has it
    csv_path, md_path = sweep.write_tables(rows, tmp_path)
    table = list(csv.DictReader(csv_path.open()))
    assert float(table[0]["val_lwlrap_mean"]) == pytest.approx(0.85)
    assert "| lr=0.1 | 3 | 0.6000 ± 0.1000 |" in md_path.read_text()


def test_one_seed_has_no_spread():
    assert sweep.mean_spread([0.5]) == (0.5, pytest.approx(math.nan, nan_ok=True))
    assert sweep.mean_spread([0.4, math.nan, 0.6])[0] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    features = make_feature_set(root / "feats", n_recordings=8, per_recording=3, n_classes=3, seed=5)
    grid_file = root / "grid.toml"
    grid_file.write_text(
        f'name = "tiny"\nfeatures = "{features}"\nseeds = [0, 1]\n'
        '[base]\nmodel = "tiny"\nepochs = 1\nbatch_size = 8\n[grid]\nmixup = [0.0, 0.5]\n'
    )
    out = root / "out"
    assert sweep.main([str(grid_file), "--out", str(out), "--quiet"]) == 0
    return grid_file, out


def test_sweep_trains_each_run_and_tabulates_their_metrics(tiny_sweep):
    _, out = tiny_sweep
    table = {r["configuration"]: r for r in csv.DictReader((out / sweep.TABLE_CSV).open())}
    assert set(table) == {"mixup=0.0", "mixup=0.5"}
    for name, slug in (("mixup=0.0", "mixup-0.0"), ("mixup=0.5", "mixup-0.5")):
        runs = [json.loads((out / slug / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert [r["config"]["train"]["seed"] for r in runs] == [0, 1]
        assert runs[0]["config"]["train"]["mixup"] == float(name.split("=")[1])
        values = [r["val_lwlrap"] for r in runs]
        assert table[name]["seeds"] == "2"
        assert float(table[name]["val_lwlrap_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
        assert float(table[name]["val_lwlrap_std"]) == pytest.approx(
            statistics.stdev(values), rel=1e-5, abs=1e-9
        )
    assert (out / sweep.PICTURE).stat().st_size > 10_000


def test_a_finished_sweep_reruns_without_training(tiny_sweep, monkeypatch):
    grid_file, out = tiny_sweep
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/metrics.json")}
    assert len(before) == 4

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "_train_one", refuse)
    assert sweep.main([str(grid_file), "--out", str(out), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/metrics.json")} == before


def test_a_changed_option_reruns_only_its_runs(tiny_sweep, tmp_path):
    grid_file, out = tiny_sweep
    grid = sweep.read_grid(grid_file)
    config = grid.configurations[0]
    assert sweep.finished(out / config.slug / "seed-0", config, 0) is not None
    changed = sweep.Configuration(config.name, config.features, {**config.options, "lr": 1e-4})
    assert sweep.finished(out / config.slug / "seed-0", changed, 0) is None
    assert sweep.finished(out / config.slug / "seed-0", config, 1) is None  # another seed
