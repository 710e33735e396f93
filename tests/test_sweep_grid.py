"""Grid files: every configuration named and checked before a run starts, one line per mistake."""

import inspect

import pytest

from experiments import sweep_grid
from experiments.sweep_grid import Configuration, parse_grid, read_grid
from experiments.train import train
from melshards.errors import ConfigError


def test_train_options_are_the_train_signature():
    own = {"features", "out", "seed", "verbose", "quiet"}
    own |= {"checkpoint_every", "resume", "batch_log"}  # how a run is kept, not what it trains
    own |= {"threshold_rule"}
    assert set(sweep_grid.TRAIN_OPTIONS) == set(inspect.signature(train).parameters) - own


def test_path_and_flag_options_are_known_by_their_type():
    assert set(sweep_grid.STRING_OPTIONS) == {
        "model",
        "unknown",
        "targets",
        "soft_labels",
        "windows",
        "window_labels",
        "init_from",
    }
    assert set(sweep_grid.BOOL_OPTIONS) == {"augment", "in_memory"}


def test_grid_combines_every_value_and_names_each_configuration():
    grid = parse_grid(
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
    grid = parse_grid(
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
        parse_grid(data, source="grid.toml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"base": "x"},
            r"^grid\.toml \[base\]: expected a table of train\(\) options \(name = value\), got 'x'$",
        ),
        ({"grid": 5}, r"^grid\.toml \[grid\]: expected a table of option = \[values\], got 5$"),
        ({"grid": {"lr": 0.1}}, r"^grid\.toml \[grid\] lr: expected a non-empty list, got 0\.1$"),
        (
            {"configs": [1, 2]},
            r"^grid\.toml \[\[configs\]\] 1: expected a table of train\(\) options .*got 1$",
        ),
        ({"configs": {"lr": 1}}, r"^grid\.toml \[\[configs\]\]: expected a list of tables, got \{'lr': 1\}$"),
        (
            {"test": "t"},
            r"^grid\.toml \[test\]: expected a table of features = PATH and optionally truth = CSV",
        ),
        ({"test": {"features": 3}}, r"^grid\.toml \[test\]: features must be a path, got 3$"),
        ({"test": {"features": "t", "truht": "x"}}, r"^grid\.toml \[test\]: expected features = PATH"),
        ({"base": {"lr": "x"}}, r"^grid\.toml \[base\]: lr must be a number, got 'x'$"),
        ({"base": {"lr": -1}}, r"^grid\.toml \[base\]: lr must be > 0, got -1\.0$"),
        ({"base": {"init_from": 5}}, r"^grid\.toml \[base\]: init_from must be a string, got 5$"),
        ({"base": {"augment": "no"}}, r"^grid\.toml \[base\]: augment must be true or false, got 'no'$"),
        ({"base": {"epochs": [1, 2]}}, r"^grid\.toml \[base\]: epochs must be a single value, got \[1, 2\]$"),
        ({"grid": {"model": ["tiny", 3]}}, r"^grid\.toml \[grid\] model: model must be a string, got 3$"),
        (
            {"grid": {"mixup": [0.5, 2]}},
            r"^grid\.toml configuration mixup=2: mixup must be in \[0, 1\], got 2\.0$",
        ),
        (
            {"configs": [{"name": "wide", "batch_size": 0}]},
            r"^grid\.toml configuration wide: batch_size must be an integer >= 1, got 0$",
        ),
    ],
)
def test_values_of_the_wrong_type_are_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid({"features": "f"} | data, source="grid.toml")


def test_a_fold_past_the_base_folds_names_the_configuration_not_the_base():
    grid = parse_grid({"features": "f", "base": {"fold": 7}, "grid": {"n_folds": [10]}})
    assert dict(grid.configurations[0].options) == {"fold": 7, "n_folds": 10}
    with pytest.raises(ConfigError, match=r"^g configuration n_folds=5: fold must be in \[0, 5\), got 7$"):
        parse_grid({"features": "f", "base": {"fold": 7}, "grid": {"n_folds": [10, 5]}}, source="g")
    with pytest.raises(ConfigError, match=r"^g \[base\]: fold must be in \[0, 5\), got 7$"):
        parse_grid({"features": "f", "base": {"fold": 7}, "grid": {"lr": [0.1]}}, source="g")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/tmp/x", "..\\x", "", 5])
def test_names_are_plain_names(name):
    with pytest.raises(ConfigError, match=r"^grid\.toml \[\[configs\]\] 1: name "):
        parse_grid({"features": "f", "configs": [{"name": name}]}, source="grid.toml")
    with pytest.raises(ConfigError, match=r"^grid\.toml name: name "):
        parse_grid({"features": "f", "name": name}, source="grid.toml")


def test_every_run_directory_stays_inside_the_output():
    grid = parse_grid(
        {"features": {"..": "a"}, "grid": {"model": ["../up", "/abs"]}, "configs": [{"name": "..x"}]}
    )
    for config in grid.configurations:
        assert "/" not in config.slug and config.slug not in (".", "..")
    assert Configuration("..", "f", {}).slug == "-"


def test_grid_files_name_themselves_in_every_error(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('features = "f"\nconfigs = [1, 2]\n')
    with pytest.raises(ConfigError, match=rf"^{path} \[\[configs\]\] 1: expected a table"):
        read_grid(path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read the grid file: "):
        read_grid(tmp_path)
