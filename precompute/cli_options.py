"""The option groups of the command line: each flag sets one field of one of these, by name.

A flag's ``dest`` is ``"GROUP.FIELD"`` (``commandline.flags``): ``--jobs`` stores into
``run.jobs``, the field ``jobs`` of ``RunOptions``. ``precompute.cli`` declares the flags,
``precompute.commands`` builds these from the parsed values (``commandline.flags.build``) and
hands them on. A flag whose ``dest`` has no dot belongs to the command itself: ``--quiet``,
and the command's inputs and output (``--audio-dir``, ``--out``, a feature set's path), which
keep the name of the keyword argument they are passed as.

======================  ============================================================
group                   flags
======================  ============================================================
``config``              ``--preset --config --set --shard-size`` (``ConfigOptions``)
``annotations``         ``--tp --fp --columns --raven --reviews --clips
                        --class-folders --label-column --label-separator
                        --review-column --classes`` (``AnnotationOptions``)
``run``                 ``--jobs --backend --scheduler/--address --on-error --overwrite
                        --stage`` (``RunOptions``)
``windows``             ``--step --files`` (``WindowOptions``)
``demo``                ``--seed --recordings --test-recordings --label-fraction --jobs``
                        of ``demo-data`` (``DemoDataOptions``)
======================  ============================================================

These hold what was given and nothing more: every value is checked where it is used (the
feature config, the run driver, the demo synthesizer), with the same messages as from Python.
``AnnotationOptions`` refuses an empty text flag (``--label-separator ""``) itself: it would
read as a flag not given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from melshards.config import FeatureConfig
from melshards.errors import ConfigError
from precompute.config_files import load_config, parse_set, preset_values, read_toml


@dataclass(frozen=True)
class ConfigOptions:
    """How the feature config is resolved: preset < TOML file < ``--set`` (``precompute.config_files``)."""

    preset: str | None = None
    file: Path | None = None  # --config TOML
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, in order
    shard_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))

    def load(self) -> FeatureConfig:
        """The feature config these options resolve to."""
        overrides = parse_set(self.overrides)
        return load_config(self.file, preset=self.preset, shard_size=self.shard_size, overrides=overrides)

    def gives_n_classes(self, config: FeatureConfig) -> bool:
        """Whether ``--set``, the preset of ``config`` or the TOML file sets ``n_classes``."""
        given = "n_classes" in parse_set(self.overrides) or "n_classes" in preset_values(config.preset)
        return given or (self.file is not None and "n_classes" in read_toml(self.file))


# The annotation flags whose value may not be empty: field -> (flag, what to give instead).
NOT_EMPTY = {
    "columns": ("--columns", "give field=column pairs, e.g. recording_id=file,t_min=start"),
    "label_column": ("--label-column", "give the name of the labels' column"),
    "label_separator": ("--label-separator", "give the text between several labels of one clip"),
    "review_column": ("--review-column", "give the name of the reviewers' verdicts column"),
    "classes": ("--classes", "give class names (a,b,c) or species_songtype"),
}


@dataclass(frozen=True)
class AnnotationOptions:
    """The annotation inputs of ``precompute features`` and how to read them (docs/annotations.md).

    Options left out here may come from the config file's ``[annotations]`` table.
    """

    tp: Path | None = None
    fp: Path | None = None
    columns: str | None = None  # "field=column,..."
    raven: Path | None = None
    reviews: Path | None = None  # reviewed Raven tables
    clips: Path | None = None
    class_folders: bool = False
    label_column: str | None = None
    label_separator: str | None = None
    review_column: str | None = None
    classes: str | None = None  # "a,b,c" or "species_songtype"

    def __post_init__(self) -> None:
        # An empty value would read as "not given" and quietly become the default.
        for name, (flag, hint) in NOT_EMPTY.items():
            if getattr(self, name) == "":
                raise ConfigError(f"{flag} is empty; {hint}, or leave the flag out for the default")

    @property
    def any_input(self) -> bool:
        return bool(self.tp or self.raven or self.reviews or self.clips or self.class_folders)


@dataclass(frozen=True)
class RunOptions:
    """How a run goes: ``run_features``/``run_windows``'s keyword arguments of the same names."""

    jobs: int | None = None
    backend: str = "loky"
    scheduler: str | None = None
    on_error: str = "skip"
    overwrite: bool = False
    stage: Path | None = None


@dataclass(frozen=True)
class WindowOptions:
    """Where sliding windows go, and over which files (``precompute.run.run_windows``)."""

    step: float = 5.0
    files: Path | None = None


@dataclass(frozen=True)
class DemoDataOptions:
    """The demo dataset to synthesize (``precompute.demo.synthesize``'s arguments of the same names)."""

    seed: int = 0
    recordings: int = 96
    test_recordings: int = 24
    label_fraction: float = 1.0
    jobs: int | None = None  # None: every core
