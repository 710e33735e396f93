"""Feature configurations: presets shipped as TOML files, user TOML files, ``--set`` overrides.

``FeatureConfig`` lives in ``melshards.config``: it describes the stored arrays, the loader
reads it without librosa, and its fields are the one source of every parameter's default,
unit and meaning. This module only builds one.

A config is resolved in three layers, each overriding the one before:

1. a preset, chosen by ``--preset``, by a ``preset = "NAME"`` key in the TOML file, or
   ``default``. The ``default`` preset is ``FeatureConfig``'s own defaults; every other preset
   is a file ``precompute/presets/NAME.toml`` that sets only what differs from it, each value
   with its unit and reason;
2. a TOML file (``--config``): any parameter, at top level or under a ``[features]`` table;
3. ``--set key=value`` on the command line, parsed with the parameter's type.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from melshards.config import PARAMETERS, FeatureConfig, parameter_names
from melshards.errors import ConfigError

PRESET_DIR = "presets"
DEFAULT_PRESET = "default"
NONE_WORDS = ("none", "null")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(FeatureConfig)


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _normalize_values(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Check names and bring TOML values to the field types.

    ``"none"`` becomes None where a parameter allows it, and an integer given for a float
    parameter becomes a float: ``fmin = 50`` and ``fmin = 50.0`` must give the same config
    (and the same fingerprint, which hashes the JSON of the values).
    """
    types = _field_types()
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(
            f"{source}: unknown feature parameter(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(parameter_names())}"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        tp = types[name]
        if isinstance(value, str) and value.lower() in NONE_WORDS and _allows_none(tp):
            value = None
        elif _base_type(tp) is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[name] = value
    return values


def preset_names() -> tuple[str, ...]:
    """Names of the presets: ``default`` (built in) first, then the files shipped with the package."""
    folder = resources.files("precompute") / PRESET_DIR
    names = sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    return (DEFAULT_PRESET, *(n for n in names if n != DEFAULT_PRESET))


def preset_text(name: str) -> str:
    """The TOML text of preset ``name``, comments included (``default``: every parameter)."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    if name == DEFAULT_PRESET:
        return config_toml(FeatureConfig())
    return (resources.files("precompute") / PRESET_DIR / f"{name}.toml").read_text(encoding="utf-8")


def preset_values(name: str) -> dict[str, Any]:
    """The parameters preset ``name`` sets (typed); ``default`` sets none, it is the defaults."""
    if name == DEFAULT_PRESET:
        return {}
    data = tomllib.loads(preset_text(name))
    if "preset" in data:
        raise ConfigError(f"preset file {name}.toml must not name a preset itself")
    return _normalize_values(data, source=f"preset {name}")


def preset(name: str, **overrides: Any) -> FeatureConfig:
    """The preset ``name`` with ``overrides`` applied."""
    values = {**preset_values(name), **_normalize_values(overrides, source=f"preset {name} overrides")}
    return FeatureConfig.from_dict({**values, "preset": name}, source=f"preset {name}")


def parse_value(name: str, text: str, *, source: str = "--set") -> Any:
    """``text`` converted to the type of parameter ``name`` (int, float, str, bool or None)."""
    types = _field_types()
    if name not in types:
        raise ConfigError(
            f"{source} {name}={text}: unknown parameter {name!r}; valid keys: {', '.join(parameter_names())}"
        )
    tp = types[name]
    word = text.strip()
    if _allows_none(tp) and word.lower() in NONE_WORDS:
        return None
    base = _base_type(tp)
    unit = PARAMETERS[name][0]
    try:
        if base is bool:
            lowered = word.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(word)
            return lowered in ("true", "1", "yes")
        if base is int:
            return int(word)
        if base is float:
            return float(word)
    except ValueError:
        kind = {int: "an integer", float: "a number", bool: "true or false"}[base]
        raise ConfigError(
            f"{source} {name}={text}: {name} must be {kind}" + (f" ({unit})" if unit else "")
        ) from None
    return word


def parse_set(items: Iterable[str], *, source: str = "--set") -> dict[str, Any]:
    """``["n_mels=96", "fmax=12000"]`` -> ``{"n_mels": 96, "fmax": 12000.0}``; later items win."""
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{source} {item!r}: expected key=value, e.g. {source} n_mels=96")
        values[name] = parse_value(name, text, source=source)
    return values


def read_toml(path: str | Path) -> dict[str, Any]:
    """The feature parameters of a TOML file (top level or its ``[features]`` table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    features = dict(data.get("features", data))
    features.pop("annotations", None)  # the [annotations] table: precompute.inputs.annotations reads it
    return features


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    **options: Any,
) -> FeatureConfig:
    """Resolve a feature config: preset < TOML file < overrides.

    path : a TOML file that may name a ``preset`` and set any parameter, at top level or under
        a ``[features]`` table::

            preset = "default"
            n_mels = 96
            context = 1.0

    overrides : parameters that win over the file (e.g. ``parse_set`` of ``--set`` options);
        a ``preset`` key here picks the preset instead of the file's.
    options : more overrides as keywords (``preset=``, ``shard_size=``); None values are ignored.
    """
    source = str(path) if path is not None else "config"
    data = _normalize_values(read_toml(path), source=source) if path is not None else {}
    extra = {k: v for k, v in options.items() if v is not None}
    extra.update(overrides or {})
    extra = _normalize_values(extra, source="command line")
    name = extra.pop("preset", None) or data.pop("preset", None) or "default"
    data.pop("preset", None)
    if name not in preset_names():
        raise ConfigError(f"{source}: unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    merged = {**preset_values(name), **data, **extra, "preset": name}
    try:
        return FeatureConfig.from_dict(merged, source=source)
    except ConfigError as err:
        # Name every layer the values came from, so the user knows what to change.
        layers = [f"preset {name}"]
        if path is not None:
            layers.append(str(path))
        layers += [f"{k}={_toml_text(v)}" for k, v in extra.items() if k != "preset"]
        raise ConfigError(f"{' + '.join(layers)}: {err}") from None


def config_toml(config: FeatureConfig) -> str:
    """``config`` as a TOML file that ``load_config`` reads back to the same config."""
    lines = [f"# feature config (preset {config.preset}); units and meaning after each value"]
    width = max(len(n) for n in parameter_names())
    for name, value in config.to_dict().items():
        unit, meaning = PARAMETERS[name]
        lines.append(f"{name:<{width}} = {_toml_text(value):<10} # {unit}: {meaning}")
    return "\n".join(lines) + "\n"


def parameter_table() -> str:
    """The Markdown table of every parameter (name, default, unit, meaning) in ``docs/presets.md``."""
    lines = ["| parameter | default | unit | meaning |", "|---|---|---|---|"]
    for name, value in FeatureConfig().to_dict().items():
        unit, meaning = PARAMETERS[name]
        lines.append(f"| `{name}` | `{_toml_text(value)}` | {unit} | {meaning} |")
    return "\n".join(lines) + "\n"


def _toml_text(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
