"""What each ``precompute`` subcommand does with its parsed flags.

``precompute.cli`` parses the command line and calls one of ``COMMANDS`` with the values by
option group (``commandline.flags.groups``); each command builds its option objects
(``precompute.cli_options``), calls the library, prints its result on stdout and returns the exit
status. The heavy modules (the run driver, the demo synthesizer, ``melshards.verify``) are
imported by the command that needs them, so ``precompute --help`` starts fast.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

from commandline.console import EXIT_OK, EXIT_PARTIAL, EXIT_USER_ERROR, log
from commandline.flags import build
from melshards.config import FeatureConfig
from melshards.errors import ConfigError
from melshards.names import EVENT_FP
from precompute.cli_options import (
    AnnotationOptions,
    ConfigOptions,
    DemoDataOptions,
    RunOptions,
    WindowOptions,
)

# The parsed values by option group; the command's own flags under "" (``commandline.flags``).
Values = dict[str, dict[str, Any]]


def demo_data_command(values: Values) -> int:
    from precompute.demo import synthesize

    own, demo = values[""], build(DemoDataOptions, values["demo"])
    log.info(
        f"synthesizing {demo.recordings} train + {demo.test_recordings} test recordings into {own['out']}"
    )
    result = synthesize(
        own["out"],
        seed=demo.seed,
        recordings=demo.recordings,
        test_recordings=demo.test_recordings,
        label_fraction=demo.label_fraction,
        jobs=demo.jobs or os.cpu_count() or 1,
        progress=not own["quiet"],
    )
    print(
        f"wrote {result['train_recordings']} train recordings ({result['tp_rows']} TP rows "
        f"for {result['train_calls']} calls, "
        f"{result['fp_rows']} FP rows) and {result['test_recordings']} test recordings "
        f"({result['bytes'] / 1e6:.0f} MB) to {own['out']} in {result['elapsed_s']:.1f} s"
    )
    return EXIT_OK


def features_command(values: Values) -> int:
    from precompute.inputs.annotations import read_annotation_options
    from precompute.run import run_features

    own, config_options = values[""], build(ConfigOptions, values["config"])
    config = config_options.load()
    _log_config(config)
    given = build(AnnotationOptions, values["annotations"])
    from_file = read_annotation_options(config_options.file)
    summary = run_features(
        audio_dir=own["audio_dir"],
        out=own["out"],
        config=config,
        annotations=_annotations(given, from_file, audio_dir=own["audio_dir"]),
        classes=_classes(given, from_file, config_options=config_options, config=config),
        **_run_arguments(values),
    )
    return _report(summary)


def windows_command(values: Values) -> int:
    from precompute.run import run_windows

    own, windows = values[""], build(WindowOptions, values["windows"])
    config = build(ConfigOptions, values["config"]).load()
    _log_config(config)
    summary = run_windows(
        audio_dir=own["audio_dir"],
        out=own["out"],
        step=windows.step,
        files=windows.files,
        config=config,
        **_run_arguments(values),
    )
    return _report(summary)


def _run_arguments(values: Values) -> dict[str, Any]:
    """``run_features``/``run_windows``'s keyword arguments of how the run goes."""
    own = values[""]
    run = build(RunOptions, values["run"])
    return {**dataclasses.asdict(run), "progress": not own["quiet"]}


def _log_config(config: FeatureConfig) -> None:
    log.info(
        f"feature config: preset {config.preset}, {config.n_mels} mels {config.fmin:g}-{config.fmax:g} Hz, "
        f"{config.duration:g} s + {config.context:g} s context at {config.sample_rate} Hz "
        "(`precompute config` with the same options prints all of it)"
    )


def _annotations(given: AnnotationOptions, from_file: dict, *, audio_dir) -> list:
    """The annotation inputs the options name, in reading order: --tp, --fp, --raven, --reviews,
    --clips, folders.

    ``from_file`` holds the config file's ``[annotations]`` options, used where a flag is not given.
    """
    from precompute.inputs.annotations import Annotations, parse_columns

    columns = parse_columns(given.columns) if given.columns else from_file.get("columns", {})
    label = given.label_column or from_file.get("label_column")
    separator = given.label_separator or from_file.get("label_separator") or ";"
    review = {"review_column": given.review_column or from_file.get("review_column") or "Review"}
    if not given.any_input:
        raise ConfigError(
            "no annotations: give --tp CSV, --raven PATH, --reviews PATH, --clips CSV or --class-folders"
        )
    csv_format = "events" if columns else "rfcx"
    inputs = [Annotations(csv_format, given.tp, columns=columns)] if given.tp else []
    inputs += [Annotations(csv_format, given.fp, kind=EVENT_FP, columns=columns)] if given.fp else []
    inputs += [Annotations("raven", given.raven, label_column=label, **review)] if given.raven else []
    inputs += [Annotations("reviews", given.reviews, label_column=label, **review)] if given.reviews else []
    if given.clips:
        inputs.append(
            Annotations("clips", given.clips, columns=columns, label_column=label, separator=separator)
        )
    inputs += [Annotations("class_folders", audio_dir)] if given.class_folders else []
    return inputs


def _classes(given: AnnotationOptions, from_file: dict, *, config_options: ConfigOptions, config):
    """The class list's source: --classes (or the config's [annotations] classes), and n_classes
    when the config file, --set or the preset gives it; else the data."""
    from precompute.inputs.classes import ClassSpec, parse_class_option

    spec = parse_class_option(given.classes) if given.classes else from_file.get("classes", ClassSpec())
    count_given = config_options.gives_n_classes(config)
    if count_given and spec.names is not None and len(spec.names) != config.n_classes:
        raise ConfigError(
            f"n_classes is {config.n_classes}, but the class list names {len(spec.names)} classes"
        )
    return ClassSpec(names=spec.names, count=config.n_classes if count_given else None, scheme=spec.scheme)


def _report(summary) -> int:
    for failure in summary.failures[:10]:
        log.warning(f"  failed: {failure['message']}")
    if len(summary.failures) > 10:
        log.warning(f"  ... and {len(summary.failures) - 10} more in {summary.failures_path}")
    print(summary.line())
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def inspect_command(values: Values) -> int:
    from precompute.inspection import inspect_lines

    own = values[""]
    print("\n".join(inspect_lines(own["features"], cache_dir=own["cache_dir"])))
    return EXIT_OK


def preview_command(values: Values) -> int:
    # The pictures show what the loader feeds a model, so they live with the experiments and
    # need the loader and matplotlib, which precompute never imports (a cluster worker installs
    # neither): the command runs experiments.preview in a process of its own, with every
    # argument after "preview" as given, and exits with its status. Its output comes through
    # sys.stdout and sys.stderr, as every command's does, so a caller that redirects them (a
    # notebook, a test) sees it too.
    command = [sys.executable, "-m", "experiments.preview", *values[""]["arguments"]]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def verify_command(values: Values) -> int:
    from melshards.index import read_index
    from melshards.verify import verify

    own = values[""]
    features = own["features"]
    started = time.perf_counter()
    read_index(features)  # a missing or unreadable index is one error line
    problems = verify(features, progress=not own["quiet"], cache_dir=own["cache_dir"])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            f"precompute verify: error: {features}: {len(problems)} problem(s); delete the "
            "shards named above and run the same precompute command again: it rebuilds only those",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    print(f"{features}: every shard matches the index ({time.perf_counter() - started:.1f} s)")
    return EXIT_OK


def config_command(values: Values) -> int:
    from precompute.config_files import config_toml, preset_names, preset_values

    if values[""]["list"]:
        for name in preset_names():
            changed = preset_values(name)
            what = ", ".join(f"{k}={v}" for k, v in changed.items()) or "every parameter's default"
            print(f"{name:<10} {what}")
        return EXIT_OK
    print(config_toml(build(ConfigOptions, values["config"]).load()), end="")
    return EXIT_OK


# subcommand -> the function that runs it; ``precompute.cli.build_parser`` defines their flags.
COMMANDS = {
    "demo-data": demo_data_command,
    "features": features_command,
    "windows": windows_command,
    "inspect": inspect_command,
    "preview": preview_command,
    "verify": verify_command,
    "config": config_command,
}
