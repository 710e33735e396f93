"""Grid files of ``experiments.sweep``: what each configuration trains, read and checked up front.

``read_grid`` reads a grid file (TOML, described in ``experiments.sweep``) into a ``Grid``: its
``Configuration``s, each a plain name, a feature set and the ``train()`` options it sets. A
bad file is one ``ConfigError`` naming the file and the key: an unknown key, a value of the
wrong type (``base = "x"``, ``grid = 5``, ``configs = [1, 2]``), an option ``train()`` would
refuse (``lr = -1``), or a name that is not a plain name (``".."``, ``"a/b"``, an absolute
path: a run directory is ``OUT/<name>/seed-<k>``, always inside ``OUT``). ``read_toml``,
``check_options`` and ``check_values`` serve ``experiments.pseudo``'s recipes alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.train_options import FIELD_GROUP, GROUP_TYPES, RECORDED, TrainOptions
from melshards.errors import ConfigError

# ``experiments.train.train`` options a grid may set: every option of ``TrainOptions`` (a test
# keeps this list equal to train()'s keywords) but how a run is kept (``KeepOptions``: out,
# checkpoints, verbosity) and the sweep's own ``features`` and ``seed``.
TRAIN_OPTIONS = tuple(
    name for name in RECORDED if FIELD_GROUP[name] != "keep" and name not in ("features", "seed")
)
GRID_KEYS = ("name", "features", "seeds", "metric", "base", "grid", "configs", "test")
TEST_KEYS = ("features", "truth", "events")
# Compared for every configuration (those a run lacks are left out); "lower" ranks ascending.
METRICS = (
    "val_lwlrap",
    "val_top1",
    "val_loss",
    "test_lwlrap",
    "test_top1",
    "test_segment_f1",
    "test_event_f1",
    "best_epoch",
    "epochs_run",
    "seconds_per_epoch",
    "samples_per_second",
)


def _field_types() -> dict[str, str]:
    """Each option's annotation (``"str | None"``, ``"bool"``, ...) from its group's dataclass."""
    types = {}
    for name in TRAIN_OPTIONS:
        fields = {f.name: f for f in dataclasses.fields(GROUP_TYPES[FIELD_GROUP[name]])}
        types[name] = str(fields[name].type)
    return types


# Options the groups would take in any type (a path through ``os.fspath``, a flag through
# ``bool``): checked here; the groups check every other option's type and range themselves.
_TYPES = _field_types()
STRING_OPTIONS = tuple(n for n, t in _TYPES.items() if t in ("str", "str | None"))
BOOL_OPTIONS = tuple(n for n, t in _TYPES.items() if t == "bool")


@dataclass(frozen=True)
class Configuration:
    """One point of the grid: a name, the feature set, the train() options it sets."""

    name: str
    features: str
    options: Mapping[str, Any]
    axes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The run directory's name: the name with only characters safe in a path."""
        safe = "".join(c if c.isalnum() or c in "._-=," else "-" for c in self.name)
        safe = safe.replace("=", "-").replace(",", "_") or "base"
        return "-" if safe in (".", "..") else safe


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    name: str
    seeds: tuple[int, ...]
    metric: str
    configurations: tuple[Configuration, ...]
    test: Mapping[str, str] | None = None


def check_name(value: Any, where: str) -> str:
    """``value`` as a plain name (a directory inside the output): no path separator, not ``.``
    or ``..``, not absolute; ConfigError naming ``where`` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: name must be a non-empty string, got {value!r}")
    if value in (".", "..") or "/" in value or "\\" in value or os.path.isabs(value):
        raise ConfigError(f"{where}: name {value!r} is not a plain name (no path separator, not '.' or '..')")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def table(value: Any, where: str, *, what: str = "train() options (name = value)") -> dict[str, Any]:
    """``value`` as a dict: a TOML table, else ConfigError naming ``where``."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of {what}, got {value!r}")
    return dict(value)


def check_options(options: Mapping[str, Any], where: str) -> None:
    """Every key of ``options`` is a train() option a grid or recipe may set."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown training option(s) {', '.join(unknown)}; known: {', '.join(TRAIN_OPTIONS)}"
        )


def check_types(options: Mapping[str, Any], where: str) -> None:
    """Every key of ``options`` is a train() option, every value one the TOML way of writing it
    cannot get wrong without a word: a single value, a string for a path or a model, true or
    false for a flag. ``TrainOptions`` checks the rest (``options_error``)."""
    check_options(options, where)
    for name, value in options.items():
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: {name} must be a single value, got {value!r}")
        if name in STRING_OPTIONS and not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
        if name in BOOL_OPTIONS and not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")


def options_error(options: Mapping[str, Any]) -> str | None:
    """What ``TrainOptions`` says of these train() options (a range, a fold of too few), or None."""
    try:
        TrainOptions.from_kwargs(features="features", out="run", **options)
    except ConfigError as err:
        return str(err)
    return None


def check_values(options: Mapping[str, Any], where: str) -> None:
    """``check_types``, then every value one ``train()`` takes; ConfigError naming ``where``."""
    check_types(options, where)
    error = options_error(options)
    if error is not None:
        raise ConfigError(f"{where}: {error}")


def _feature_axis(value: Any, where: str) -> dict[str, str]:
    """``features`` as {label: path}: one path (label "") or a table of named sets."""
    if isinstance(value, str):
        return {"": value}
    if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    raise ConfigError(f"{where}: features must be a path or a table of name = path, got {value!r}")


def _named(axes: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in axes.items()) or "base"


def _points(data: Mapping[str, Any], base: Mapping[str, Any], source: str) -> list[tuple[str | None, dict]]:
    """(explicit name or None, options) of every point of ``[grid]``, then of each ``[[configs]]``."""
    grid = table(data.get("grid", {}), f"{source} [grid]", what="option = [values]")
    grid = {k: _list(v, f"{source} [grid] {k}") for k, v in grid.items()}
    check_options(grid, f"{source} [grid]")
    for key, values in grid.items():
        for value in values:
            check_types({key: value}, f"{source} [grid] {key}")
    points: list[tuple[str | None, dict]] = [
        (None, dict(zip(grid, values, strict=True))) for values in itertools.product(*grid.values())
    ]
    configs = data.get("configs", [])
    if not isinstance(configs, list):
        raise ConfigError(f"{source} [[configs]]: expected a list of tables, got {configs!r}")
    if not grid and configs:
        points = []  # only the listed configurations, not also the bare base
    for k, entry in enumerate(configs, 1):
        extra = table(entry, f"{source} [[configs]] {k}")
        name = extra.pop("name", None)
        if name is not None:
            check_name(name, f"{source} [[configs]] {k}")
        check_types(extra, f"{source} [[configs]] {k}")
        points.append((name, extra))
    return points


def _test_set(value: Any, source: str) -> dict[str, str] | None:
    if value is None:
        return None
    what = "features = PATH and optionally truth = CSV, events = CSV"
    test = table(value, f"{source} [test]", what=what)
    unknown = sorted(set(test) - set(TEST_KEYS))
    if unknown or "features" not in test:
        raise ConfigError(f"{source} [test]: expected {what}")
    for key, path in test.items():
        if not isinstance(path, str):
            raise ConfigError(f"{source} [test]: {key} must be a path, got {path!r}")
    return test


def _check_configurations(
    configurations: Sequence[Configuration], base: Mapping[str, Any], source: str
) -> None:
    """The options of every configuration are ones train() takes. The error names ``[base]``
    when the base alone is refused and so is every configuration, for the same reason; else the
    first configuration refused (a fold of the base may fit the folds of some configurations)."""
    errors = [(config.name, options_error(config.options)) for config in configurations]
    failed = [(name, error) for name, error in errors if error is not None]
    if not failed:
        return
    base_error = options_error(base)
    if base_error is not None and all(error == base_error for _, error in errors):
        raise ConfigError(f"{source} [base]: {base_error}")
    name, error = failed[0]
    raise ConfigError(f"{source} configuration {name}: {error}")


def parse_grid(data: Mapping[str, Any], *, source: str = "grid") -> Grid:
    """Validate a grid file's contents; ConfigError names the file and the bad key or value."""
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(GRID_KEYS)}")
    if "features" not in data:
        raise ConfigError(f"{source}: features is missing (the feature set directory)")
    features = _feature_axis(data["features"], source)
    seeds = _list(data.get("seeds", [0]), f"{source} seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"{source} seeds: expected distinct integers, got {seeds!r}")
    base = table(data.get("base", {}), f"{source} [base]")
    check_types(base, f"{source} [base]")
    points = _points(data, base, source)
    configurations = []
    for label, path in features.items():
        for name, point in points:
            axes = ({"features": label} if label else {}) | point
            if name is not None and label:
                name = f"{name},features={label}"
            configurations.append(Configuration(name or _named(axes), path, base | point, axes))
    _check_configurations(configurations, base, source)
    names = [c.slug for c in configurations]
    if len(set(names)) < len(names):
        raise ConfigError(f"{source}: two configurations share the name {_first_repeat(names)!r}")
    metric = data.get("metric", "val_lwlrap")
    if metric not in METRICS:
        raise ConfigError(f"{source}: metric {metric!r} is not one of {', '.join(METRICS)}")
    name = check_name(data.get("name", Path(source).stem), f"{source} name")
    return Grid(name, tuple(seeds), metric, tuple(configurations), _test_set(data.get("test"), source))


def _first_repeat(names: Sequence[str]) -> str:
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return ""


def read_toml(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
    """A TOML file's contents; ConfigError naming the file when it is missing or not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{path}: cannot read the {what}: {getattr(err, 'strerror', None) or err}"
        ) from None


def read_grid(path: str | os.PathLike) -> Grid:
    """The grid file at ``path``, checked (``parse_grid``)."""
    return parse_grid(read_toml(path, what="grid file"), source=str(path))
