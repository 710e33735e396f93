"""Sweeps: what is trained, skipped, scored and compared; real tiny runs and fast fakes."""

import csv
import json
import math
import re
import statistics

import fake_training
import pytest

from experiments import plots, sweep
from experiments.sweep_grid import Configuration, parse_grid, read_grid
from synthetic_features import make_feature_set


def test_comparison_means_and_spreads_per_configuration(tmp_path):
    grid = parse_grid({"features": "f", "seeds": [0, 1, 2], "grid": {"lr": [0.1, 0.2]}})
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
    grid = read_grid(grid_file)
    config = grid.configurations[0]
    assert sweep.finished(out / config.slug / "seed-0", config, 0) is not None
    changed = Configuration(config.name, config.features, {**config.options, "lr": 1e-4})
    assert sweep.finished(out / config.slug / "seed-0", changed, 0) is None
    assert sweep.finished(out / config.slug / "seed-0", config, 1) is None  # another seed
    # an option the grid no longer sets is its default (batch_size 32), not the 8 trained with
    unset = Configuration(
        config.name, config.features, {k: v for k, v in config.options.items() if k != "batch_size"}
    )
    assert sweep.finished(out / config.slug / "seed-0", unset, 0) is None
    assert sweep.run_state(out / config.slug / "seed-0", unset, 0) == (
        None,
        "it was trained with batch_size 8, not 32",
    )


# -- with fake training: what is trained, skipped and scored -------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_feature_set(tmp_path_factory.mktemp("sweep-fake") / "f", n_recordings=4, per_recording=2)


@pytest.fixture
def fake(monkeypatch):
    return fake_training.install(monkeypatch)


def write_grid(path, features, body):
    path.write_text(f'name = "g"\nfeatures = "{features}"\nseeds = [0]\n{body}')
    return path


def test_a_run_trained_with_other_options_is_trained_again(fake, small_set, tmp_path, capsys):
    out = tmp_path / "out"
    grid = write_grid(tmp_path / "grid.toml", small_set, '[base]\nmodel = "tiny"\nlr = 0.5\nmixup = 0.0\n')
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    write_grid(grid, small_set, '[base]\nmodel = "tiny"\n')  # lr and mixup back to their defaults
    capsys.readouterr()
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "run 1/1 base seed 0: training again, it was trained with lr 0.5, not 0.005 ..." in err
    assert "1 runs: 0 already finished, 1 trained, 0 failed" in err
    recorded = json.loads((out / "base" / "seed-0" / "metrics.json").read_text())["config"]["train"]
    assert (recorded["lr"], recorded["mixup"]) == (0.005, 0.5)
    assert fake.trained == [out / "base" / "seed-0"] * 2
    # and once more: now it is finished
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert "1 runs: 1 already finished, 0 trained, 0 failed" in capsys.readouterr().err
    assert len(fake.trained) == 2


def test_a_run_whose_scoring_failed_is_scored_on_the_next_call(fake, small_set, tmp_path, capsys):
    out, truth = tmp_path / "out", tmp_path / "truth.csv"
    body = f'metric = "test_lwlrap"\n[base]\nmodel = "tiny"\n[test]\nfeatures = "{small_set}"\n'
    grid = write_grid(tmp_path / "grid.toml", small_set, body + f'truth = "{tmp_path}/truht.csv"\n')
    for _ in range(2):  # training once, then the failing scoring again: one line, no traceback
        assert sweep.main([str(grid), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"run 1/1 base seed 0: failed: {tmp_path}/truht.csv: no such truth file" in err
        assert err.endswith("python -m experiments.sweep: error: 1 run(s) failed: base seed 0\n")
    assert len(fake.trained) == 1 and fake.scored == []
    write_grid(grid, small_set, body + f'truth = "{truth}"\n')
    truth.write_text("recording_id,s0\n")
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"run 1/1 base seed 0: scoring on {small_set} ..." in err
    assert "run 1/1 base seed 0: scored, test_lwlrap 0.6250" in err
    assert "1 runs: 0 already finished, 0 trained, 1 scored, 0 failed" in err
    table = next(csv.DictReader((out / sweep.TABLE_CSV).open()))
    assert float(table["test_lwlrap_mean"]) == 0.625
    assert len(fake.trained) == 1 and fake.scored == [out / "base" / "seed-0" / "model.keras"]
    assert sweep.main([str(grid), "--out", str(out)]) == 0  # scored: nothing to do
    assert len(fake.scored) == 1


def test_a_metric_no_run_has_leaves_an_empty_column():
    grid = parse_grid({"features": "f", "metric": "test_lwlrap"})
    rows = sweep.compare(grid, {"base": [{"val_lwlrap": 0.5}]})
    assert math.isnan(rows[0]["test_lwlrap_mean"]) and rows[0]["_values"] == [
        pytest.approx(math.nan, nan_ok=True)
    ]


def test_each_run_logs_a_line_when_it_starts_and_when_it_ends(fake, small_set, tmp_path, capsys):
    out = tmp_path / "out"
    grid = write_grid(tmp_path / "grid.toml", small_set, "[grid]\nmixup = [0.0, 0.5]\n")
    grid.write_text(grid.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    seen = []
    fake.before_train = lambda: seen.append(capsys.readouterr().err)
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    # what was printed before each training started: that run's first line, last
    assert [text.splitlines()[-1] for text in seen] == [
        "run 1/4 mixup=0.0 seed 0: training ...",
        "run 2/4 mixup=0.0 seed 1: training ...",
        "run 3/4 mixup=0.5 seed 0: training ...",
        "run 4/4 mixup=0.5 seed 1: training ...",
    ]
    ended = seen[1].splitlines()[0]
    assert re.fullmatch(
        rf"run 1/4 mixup=0\.0 seed 0: val_lwlrap 0\.5000 \(\d+ s\) -> {out}/mixup-0\.0/seed-0", ended
    )
    assert capsys.readouterr().err.startswith("run 4/4 mixup=0.5 seed 1: val_lwlrap 0.5100 (")
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run ")]
    assert len(lines) == 4 and lines[3] == "run 4/4 mixup=0.5 seed 1: finished earlier, val_lwlrap 0.5100"


def test_the_sweep_picture_is_titled_with_the_grid_metric_and_seeds(fake, small_set, tmp_path, monkeypatch):
    drawn = {}

    def draw(rows, metric, out, *, title):
        drawn.update(metric=metric, title=title, configurations=[r["configuration"] for r in rows])
        return out

    monkeypatch.setattr(sweep, "plot_comparison", draw)
    grid = write_grid(tmp_path / "grid.toml", small_set, "[grid]\nmixup = [0.0, 0.5]\n")
    assert sweep.main([str(grid), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert drawn == {
        "metric": "val_lwlrap",
        "title": "sweep g: 2 configurations: val_lwlrap over 1 seed (0)",
        "configurations": ["mixup=0.0", "mixup=0.5"],
    }


# -- the picture ----------------------------------------------------------------------------------


def close_rows(metric):
    """Two configurations 0.003 apart, three seeds each."""
    grid = parse_grid({"features": "f", "seeds": [0, 1, 2], "metric": metric, "grid": {"lr": [0.1, 0.2]}})
    runs = {
        "lr=0.1": [{metric: v} for v in (0.750, 0.752, 0.751)],
        "lr=0.2": [{metric: v} for v in (0.753, 0.755, 0.754)],
    }
    return sweep.compare(grid, runs)


def test_the_comparison_shows_every_seed_and_the_mean_on_a_fair_axis():
    import matplotlib.pyplot as plt

    rows = close_rows("val_lwlrap")
    title = plots.comparison_title("sweep demo: 2 configurations", "val_lwlrap", (0, 1, 2))
    fig = plots.comparison_figure(rows, "val_lwlrap", title=title)
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "sweep demo: 2 configurations: val_lwlrap over 3 seeds (0, 1, 2)"
        assert ax.get_xlim() == (0.0, 1.02)  # 0.003 apart looks as small as it is
        seeds = [line for line in ax.lines if line.get_marker() == "o"]
        assert [list(line.get_xdata()) for line in seeds] == [[0.753, 0.755, 0.754], [0.750, 0.752, 0.751]]
        means = [line for line in ax.lines if line.get_marker() == "D"]
        assert [line.get_xdata()[0] for line in means] == pytest.approx([0.754, 0.751])
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["lr=0.2\n0.754 ± 0.001", "lr=0.1\n0.751 ± 0.001"]
        assert "dots: seeds" in ax.get_xlabel()
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("metric", "values", "limits"),
    [
        ("val_loss", [0.500, 0.503], (0.0, pytest.approx(0.503 * 1.05))),
        ("val_loss", [0.01, 0.012], (0.0, pytest.approx(0.1))),  # at least 0.1 wide
        ("seconds_per_epoch", [12.0, 30.0], (0.0, pytest.approx(31.5))),
        ("test_top1", [0.2, 0.21], (0.0, 1.02)),
    ],
)
def test_the_value_axis_starts_at_zero_and_is_at_least_a_tenth_wide(metric, values, limits):
    assert plots.value_limits(values, metric) == limits
    low, high = plots.value_limits(values, metric)
    assert high - low >= 0.1


def test_the_picture_is_written(tmp_path):
    rows = close_rows("val_lwlrap")
    path = sweep.write_picture(rows, "val_lwlrap", tmp_path, title="t")
    assert path == tmp_path / sweep.PICTURE and path.stat().st_size > 10_000


# -- frame targets and event scores ----------------------------------------------------------------


def test_event_scores_are_columns_of_the_comparison(tmp_path):
    grid = parse_grid(
        {"features": "f", "seeds": [0, 1], "metric": "test_event_f1", "grid": {"lr": [0.1, 0.2]}}
    )
    runs = {
        "lr=0.1": [
            {"test_lwlrap": 0.9, "test_segment_f1": s, "test_event_f1": e}
            for s, e in ((0.5, 0.3), (0.7, 0.5))
        ],
        "lr=0.2": [{"test_lwlrap": 0.8, "test_segment_f1": 0.6, "test_event_f1": e} for e in (0.6, 0.6)],
    }
    rows = sweep.compare(grid, runs)
    assert [r["configuration"] for r in rows] == ["lr=0.2", "lr=0.1"]  # best test_event_f1 first
    assert rows[1]["test_event_f1_mean"] == pytest.approx(0.4)
    assert rows[1]["test_segment_f1_std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    _, md_path = sweep.write_tables(rows, tmp_path)
    header, _, *lines = md_path.read_text().splitlines()
    assert header == "| configuration | seeds | test_lwlrap | test_segment_f1 | test_event_f1 |"
    assert lines[1] == "| lr=0.1 | 2 | 0.9000 ± 0.0000 | 0.6000 ± 0.1414 | 0.4000 ± 0.1414 |"


def test_frame_targets_are_grid_options_and_event_truth_is_scored_once(
    fake, small_set, tmp_path, capsys, monkeypatch
):
    import experiments.predict

    scored_with = []

    def predict(features, *, truth_events=None, metrics=None, **options):
        scored_with.append(truth_events)
        result = fake.predict(features, metrics=metrics, **options)
        if truth_events is not None:
            run = json.loads(metrics.read_text())
            run |= {
                "test_segment_f1": 0.5,
                "test_event_f1": 0.25,
                "test_features": run.get("test_features", {}),
            }
            run["test_features"]["fingerprint"] = sweep._index_fingerprint(features)
            metrics.write_text(json.dumps(run))
        return result

    monkeypatch.setattr(experiments.predict, "predict", predict)
    out = tmp_path / "out"
    body = 'metric = "test_event_f1"\n[base]\nmodel = "sed"\n[grid]\ntargets = ["clip", "frames"]\n'
    body += "target_step = [4]\n"
    grid = write_grid(tmp_path / "grid.toml", small_set, body + f'[test]\nfeatures = "{small_set}"\n')
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    recorded = json.loads((out / "targets-frames_target_step-4" / "seed-0" / "metrics.json").read_text())
    assert (recorded["config"]["train"]["targets"], recorded["config"]["train"]["target_step"]) == (
        "frames",
        4,
    )
    assert scored_with == [None, None]
    grid.write_text(grid.read_text() + 'events = "calls.csv"\n')
    capsys.readouterr()
    assert sweep.main([str(grid), "--out", str(out)]) == 0  # scored again, for the events
    err = capsys.readouterr().err
    assert "run 2/2 targets=frames,target_step=4 seed 0: scored, test_event_f1 0.2500" in err
    assert scored_with == [None, None, "calls.csv", "calls.csv"] and len(fake.trained) == 2
    assert sweep.main([str(grid), "--out", str(out)]) == 0  # nothing left to score
    assert len(scored_with) == 4
    table = next(csv.DictReader((out / sweep.TABLE_CSV).open()))
    assert (float(table["test_segment_f1_mean"]), float(table["test_event_f1_mean"])) == (0.5, 0.25)


def test_a_run_recorded_before_frame_targets_was_trained_on_clips(fake, small_set, tmp_path, capsys):
    out = tmp_path / "out"
    grid = write_grid(tmp_path / "grid.toml", small_set, '[base]\nmodel = "tiny"\n')
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    path = out / "base" / "seed-0" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["config"]["train"]["targets"], metrics["config"]["train"]["target_step"]
    path.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert "1 runs: 1 already finished, 0 trained, 0 failed" in capsys.readouterr().err
    write_grid(grid, small_set, '[base]\nmodel = "sed"\ntargets = "frames"\n')
    assert sweep.main([str(grid), "--out", str(out)]) == 0
    assert "training again, it was trained with model 'tiny', not 'sed'" in capsys.readouterr().err
