"""The field checks of a run directory's own files: ``run.json``, ``checkpoint.loader.json``
(besides its loader state, ``loader.state``'s) and ``batches.log``.

A resumed run reads these back; each check returns a field's value, or FormatError naming the
file and the field, as ``melshards.index_fields`` does for ``index.json``:
``runs/x/checkpoint.loader.json fit.history.val_loss: value 2 is nan, not a finite number``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.train_options import ADDED_OPTIONS, RECORDED, VERBOSITY, TrainOptions
from melshards.errors import ConfigError, FormatError
from melshards.index_fields import as_floats, as_hex, as_mapping, check_keys, short

CHECKPOINT_PREFIX = "checkpoint-"
# checkpoint.loader.json's entries besides "loader"; "fit" is the run's (FitLedger.state()).
CHECKPOINT_KEYS = {"model", "model_sha256", "variables"}
VARIABLE_KEYS = {"seed_generators", "metrics"}
FIT_KEYS = {"history", "stopped", "train_seconds", "partial_train_seconds", "seconds", "fit_seconds"}
# run.json's options of a type from_kwargs would take as another (bool("no") is True).
TEXT_OPTIONS = ("features", "model", "out", "unknown")
PATH_OPTIONS = ("soft_labels", "windows", "window_labels", "init_from")
BOOL_OPTIONS = ("augment", "in_memory", "batch_log", "quiet")
BATCH_LINE = re.compile(r"(\d+) (\d+) ([0-9a-f]{64})")


def checkpoint_name(epoch: int, batch: int) -> str:
    """The model file of a checkpoint taken with batch ``batch`` of epoch ``epoch`` next."""
    return f"{CHECKPOINT_PREFIX}e{epoch:05d}-b{batch:06d}.keras"


def checkpoint_entries(extra: Any, *, epoch: int, batch: int, where: str) -> dict[str, Any]:
    """``checkpoint.loader.json``'s entries besides the loader state, checked: the name of the
    model file (the one this run writes for the loader's position ``epoch``, ``batch``: a plain
    name in the run directory), its sha256, the variables (lists; their values are checked
    against the model by ``variable_values``) and, when present, ``fit`` (unchecked here)."""
    extra = as_mapping(extra, where)
    check_keys(extra, CHECKPOINT_KEYS | ({"fit"} & set(extra)), where)
    expected = checkpoint_name(epoch, batch)
    if extra["model"] != expected:
        raise FormatError(
            f"{where} model: expected {expected!r}, the model file of the loader's position, "
            f"got {short(extra['model'])}; a run resumes only from files it wrote"
        )
    as_hex(extra["model_sha256"], f"{where} model_sha256", digits=64)
    variables = as_mapping(extra["variables"], f"{where} variables")
    check_keys(variables, VARIABLE_KEYS, f"{where} variables")
    for key in sorted(VARIABLE_KEYS):
        if not isinstance(variables[key], list):
            raise FormatError(f"{where} variables.{key}: expected a list, got {short(variables[key])}")
    return extra


def variable_values(values: list, variables: Sequence[Any], where: str) -> list[np.ndarray]:
    """``values`` (JSON lists) as arrays of the shapes of ``variables``, every value finite."""
    if len(values) != len(variables):
        raise FormatError(f"{where}: {len(values)} values for the model's {len(variables)} variables")
    arrays = []
    for i, (value, variable) in enumerate(zip(values, variables, strict=True)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise FormatError(f"{where}[{i}]: expected numbers, got {short(value)}") from None
        shape = tuple(int(d) for d in variable.shape)
        if array.shape != shape:
            raise FormatError(f"{where}[{i}]: expected shape {shape}, got {array.shape}")
        if not np.isfinite(array).all():
            raise FormatError(f"{where}[{i}]: {short(value)} is not finite")
        arrays.append(np.asarray(value))
    return arrays


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise FormatError(f"{where}: expected a finite number of seconds >= 0, got {short(value)}")
    return float(value)


def fit_state(data: Any, *, epoch: int, where: str) -> dict[str, Any]:
    """The run's bookkeeping in a checkpoint (``FitLedger.state()``), checked: every epoch's logs
    (finite numbers, one per epoch for every name, ``loss`` among them), one training time per
    epoch, and as many epochs as the loader's ``epoch`` (the next one to train) follows."""
    data = as_mapping(data, where)
    check_keys(data, FIT_KEYS, where)
    history = as_mapping(data["history"], f"{where}.history")
    columns = {key: list(as_floats(values, f"{where}.history.{key}")) for key, values in history.items()}
    epochs = len(columns.get("loss", []))
    uneven = sorted(key for key, values in columns.items() if len(values) != epochs)
    if columns and "loss" not in columns:
        raise FormatError(f"{where}.history: malformed: missing loss")
    if uneven:
        raise FormatError(
            f"{where}.history.{uneven[0]}: {len(columns[uneven[0]])} values, but loss has {epochs} (one per epoch)"
        )
    if epoch != epochs + 1:
        raise FormatError(
            f"{where}.history: {epochs} epochs, but the loader state's next epoch is {epoch} (expected {epochs + 1})"
        )
    if not isinstance(data["stopped"], bool):
        raise FormatError(f"{where}.stopped: expected true or false, got {short(data['stopped'])}")
    train_seconds = [
        _seconds(v, f"{where}.train_seconds")
        for v in as_floats(data["train_seconds"], f"{where}.train_seconds")
    ]
    if len(train_seconds) != epochs:
        raise FormatError(
            f"{where}.train_seconds: {len(train_seconds)} values, expected one per epoch of the history ({epochs})"
        )
    for key in ("partial_train_seconds", "seconds", "fit_seconds"):
        _seconds(data[key], f"{where}.{key}")
    return {**data, "history": columns, "train_seconds": train_seconds}


def run_options(document: Any, *, where: str) -> dict[str, Any]:
    """``run.json``'s options (``{"train": TrainOptions.to_kwargs()}``), checked: every recorded
    option, each of its type and in its range (``TrainOptions.from_kwargs``)."""
    document = as_mapping(document, where)
    check_keys(document, {"train"}, where)
    options = ADDED_OPTIONS | as_mapping(document["train"], f"{where} train")  # a run from before them
    check_keys(options, set(RECORDED) | ({"resume"} & set(options)), f"{where} train")
    for name in TEXT_OPTIONS:
        if not isinstance(options[name], str):
            raise FormatError(f"{where} train {name}: expected a string, got {short(options[name])}")
    for name in PATH_OPTIONS:
        if options[name] is not None and not isinstance(options[name], str):
            raise FormatError(f"{where} train {name}: expected a string or null, got {short(options[name])}")
    for name in BOOL_OPTIONS:
        if not isinstance(options[name], bool):
            raise FormatError(f"{where} train {name}: expected true or false, got {short(options[name])}")
    if options["verbose"] not in VERBOSITY or isinstance(options["verbose"], bool):
        raise FormatError(f"{where} train verbose: expected 0, 1 or 2, got {short(options['verbose'])}")
    try:
        TrainOptions.from_kwargs(**{k: v for k, v in options.items() if k != "resume"})
    except ConfigError as err:
        raise FormatError(f"{where} train: {err}") from None
    return dict(options)


def batch_log_lines(data: bytes, *, where: str) -> list[tuple[int, int, bytes]]:
    """``batches.log``'s lines as ``(epoch, index, line)``, each checked to be
    ``EPOCH INDEX SHA256`` and to end in a newline."""
    lines = []
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        found = BATCH_LINE.fullmatch(line.rstrip(b"\n").decode("utf-8", "replace"))
        if found is None or not line.endswith(b"\n"):
            raise FormatError(
                f"{where} line {number}: expected 'EPOCH INDEX SHA256' and a newline, got {short(line)}"
            )
        lines.append((int(found.group(1)), int(found.group(2)), line))
    return lines


def kept_rows(data: bytes, *, epochs: int, where: str) -> bytes:
    """The header and first ``epochs`` rows of ``history.csv`` (bytes as they are, line ends
    included); FormatError when it holds fewer rows than the checkpoint has epochs."""
    lines = data.splitlines(keepends=True)
    if not epochs:
        return b""
    if len(lines) < 1 + epochs or not all(line.endswith(b"\n") for line in lines[: 1 + epochs]):
        rows = max(len(lines) - 1, 0)
        raise FormatError(f"{where}: holds {rows} epoch row(s), fewer than the checkpoint's {epochs}")
    return b"".join(lines[: 1 + epochs])
