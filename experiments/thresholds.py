"""Per-class detection thresholds fitted on a run's validation split, and their files.

    python -m experiments.thresholds runs/baseline [--rule precision:0.9] [--min-positives 5]

A threshold ``t`` of a class means "a score above ``t`` is a detection", as the events are made
(``experiments.sed_events``: a frame is active when ``score > threshold``). ``fit_thresholds``
fits one per class from validation clip scores, 0/1 labels and the known-label mask, by a rule:

- ``f1``: the threshold of the highest F1 of the class (ties: the highest threshold);
- ``precision:P`` (``0 < P <= 1``): the lowest threshold whose precision is at least ``P``,
  the most recall at that precision. When no threshold reaches ``P``, the class gets the highest
  score of its known negatives: no validation negative is detected (nor any positive: one scored
  above every negative would have reached precision 1).

A threshold lies half-way between two adjacent distinct scores of the class (half-way between 0
and the lowest score when every example is detected), so every example keeps its side.
Unknown labels take no part. A class with fewer than ``min_positives`` known positives, or no
known negative, gets the threshold the same rule fits on every class's known labels pooled
(micro), or 0.5 when the pooled labels have too few positives (or no negative) too; each class
records where its value came from (``fitted``, ``pooled``, ``default``) and its known positives.

Training writes the fitted ``Thresholds`` as ``thresholds.json`` into the run directory, and
the validation scores they came from as ``validation_scores.npz`` (``scores``, ``labels``,
``known``, ``class_names``), from which this command refits them exactly, with another rule or
``--min-positives``, without the model. ``experiments.predict`` uses ``thresholds.json`` beside
the model when ``--threshold`` is not given (``experiments.thresholds_run``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commandline.console import EXIT_INTERRUPTED, EXIT_OK, log, plural, report_error, setup_logging
from commandline.parser import CommandParser
from experiments.errors import ExperimentError
from experiments.run_files import read_run_file, write_run_file
from melshards.checks import check_int
from melshards.errors import ConfigError, MelShardsError

THRESHOLDS_FILE = "thresholds.json"
VALIDATION_FILE = "validation_scores.npz"
SOURCES = ("fitted", "pooled", "default")
DEFAULT_THRESHOLD = 0.5
RULE_FORMS = "f1 or precision:P with 0 < P <= 1"
PROG = "experiments.thresholds"


def parse_rule(rule: Any) -> tuple[str, float]:
    """``("f1", 0.0)`` or ``("precision", P)`` of a rule's text; ConfigError naming it otherwise."""
    if rule == "f1":
        return "f1", 0.0
    name, _, value = rule.partition(":") if isinstance(rule, str) else ("", "", "")
    try:
        precision = float(value) if name == "precision" else math.nan
    except ValueError:
        precision = math.nan
    if not 0 < precision <= 1:  # NaN fails too
        raise ConfigError(f"threshold rule must be {RULE_FORMS}, got {rule!r}")
    return name, precision


def check_rule(rule: Any) -> str:
    """``rule`` when ``parse_rule`` takes it (the field check of ``--threshold-rule``)."""
    parse_rule(rule)
    return rule


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """One threshold per class, in the model's output order.

    rule : the rule that fitted them (``f1``, ``precision:P``)
    values : the thresholds, each in [0, 1]: a score above one is a detection
    source : where each value came from: ``fitted`` (the class's own labels), ``pooled``
        (every class's labels), ``default`` (0.5)
    positives : known positives of each class on the validation split
    class_names : the class of each value
    """

    rule: str
    values: tuple[float, ...]
    source: tuple[str, ...]
    positives: tuple[int, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "values", tuple(float(v) for v in self.values))
        set_(self, "source", tuple(str(s) for s in self.source))
        set_(self, "positives", tuple(int(p) for p in self.positives))
        set_(self, "class_names", tuple(str(c) for c in self.class_names))

    def count(self, source: str) -> int:
        return self.source.count(source)

    def to_json(self) -> str:
        """The JSON document of ``thresholds.json`` (keys: the fields)."""
        return (
            json.dumps({f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}, indent=1)
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = THRESHOLDS_FILE) -> Thresholds:
        """The thresholds of a ``to_json`` document, every field checked; ExperimentError
        naming ``where`` and the field otherwise."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ExperimentError(f"{where}: not a thresholds file: {err}") from None
        if not isinstance(data, dict):
            raise ExperimentError(f"{where}: not a thresholds file (expected a JSON object)")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise ExperimentError(f"{where}: missing key {missing[0]!r}")
        try:
            check_rule(data["rule"])
        except ConfigError as err:
            raise ExperimentError(f"{where}: rule: {err}") from None
        names = _list(data, "class_names", where)
        fields = {key: _list(data, key, where) for key in ("values", "source", "positives")}
        for key, found in fields.items():
            if len(found) != len(names):
                raise ExperimentError(
                    f"{where}: {key} has {len(found)} entries, but class_names has {len(names)}"
                )
        _check_entries(names, fields, where)
        return cls(rule=data["rule"], class_names=names, **fields)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _list(data: dict, key: str, where: str) -> list:
    found = data[key]
    if not isinstance(found, list):
        raise ExperimentError(f"{where}: {key} must be a list, got {type(found).__name__}")
    return found


def _check_entries(names: list, fields: dict[str, list], where: str) -> None:
    """Each class's name, value, source and positive count, in that order."""
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ExperimentError(f"{where}: class_names must be distinct strings")
    for j, name in enumerate(names):
        value, source, positives = (fields[key][j] for key in ("values", "source", "positives"))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ExperimentError(f"{where}: values[{j}] (class {name}) must be in [0, 1], got {value!r}")
        if source not in SOURCES:
            raise ExperimentError(
                f"{where}: source[{j}] (class {name}) must be one of {', '.join(SOURCES)}, got {source!r}"
            )
        if isinstance(positives, bool) or not isinstance(positives, int) or positives < 0:
            raise ExperimentError(
                f"{where}: positives[{j}] (class {name}) must be an integer >= 0, got {positives!r}"
            )


# -- fitting --------------------------------------------------------------------------------------


def fit_thresholds(
    scores: np.ndarray,
    labels: np.ndarray,
    known: np.ndarray | None = None,
    *,
    rule: str = "f1",
    min_positives: int = 3,
    class_names: Sequence[str] | None = None,
) -> Thresholds:
    """One threshold per class by ``rule`` (see the module docstring), with the fallbacks.

    scores : np.ndarray [shape=(n, n_classes)], in [0, 1]
    labels : np.ndarray [shape=(n, n_classes)], 0/1
    known : np.ndarray [shape=(n, n_classes)], 0/1 (None: every label known); unknown labels
        take no part
    min_positives : known positives (>= 1) a class needs for a threshold of its own
    class_names : the name of each class (default ``s0..s{n_classes - 1}``)

    ConfigError for arrays of other shapes or values, a bad rule or ``min_positives``.
    """
    scores, labels, known = _check_arrays(scores, labels, known)
    kind, precision = parse_rule(rule)
    min_positives = check_int("min_positives", min_positives, low=1)
    n_classes = scores.shape[1]
    names = [f"s{j}" for j in range(n_classes)] if class_names is None else list(class_names)
    if len(names) != n_classes:
        raise ConfigError(f"class_names: {len(names)} names for {n_classes} classes")
    positives = (labels & known).sum(axis=0)
    negatives = (~labels & known).sum(axis=0)
    own = (positives >= min_positives) & (negatives > 0)
    pooled = labels[known][:, None]  # every known label, as one column
    fallback, fallback_source = DEFAULT_THRESHOLD, "default"
    if pooled.sum() >= min_positives and (~pooled).any():
        everything = np.ones_like(pooled)
        fallback = _fit_columns(scores[known][:, None], pooled, everything, kind, precision)[0]
        fallback_source = "pooled"
    fitted = _fit_columns(scores, labels, known, kind, precision)
    return Thresholds(
        rule=rule,
        values=np.where(own, fitted, fallback).tolist(),
        source=np.where(own, "fitted", fallback_source).tolist(),
        positives=positives.tolist(),
        class_names=names,
    )


def _check_arrays(scores: Any, labels: Any, known: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    known = np.ones(labels.shape, dtype=bool) if known is None else np.asarray(known)
    if scores.ndim != 2 or labels.shape != scores.shape or known.shape != scores.shape:
        raise ConfigError(
            f"scores, labels and known must be 2-D arrays of one shape (examples, classes), got "
            f"{scores.shape}, {labels.shape} and {known.shape}"
        )
    if not (np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()):
        raise ConfigError("scores must be in [0, 1]")
    for name, values in (("labels", labels), ("known", known)):
        if not np.isin(values, (0, 1)).all():
            raise ConfigError(f"{name} must hold only 0 and 1")
    return scores, labels.astype(bool), known.astype(bool)


def _fit_columns(
    scores: np.ndarray, labels: np.ndarray, known: np.ndarray, kind: str, precision: float
) -> np.ndarray:
    """The rule's threshold of every column at once (a column without a positive or a negative
    gets a value too: the caller replaces it).

    Each column's known examples are sorted by score, highest first (unknown ones last); a cut
    after row ``i`` detects rows ``0..i``, and is possible where the next known score is lower
    (ties stay together) and, for the cut that detects every row, where the lowest score is
    above 0. np.ndarray [shape=(n_classes,)], float64.
    """
    n = scores.shape[0]
    if n == 0:
        return np.full(scores.shape[1], DEFAULT_THRESHOLD)
    ranked = np.where(known, scores, -np.inf)
    order = np.argsort(-ranked, axis=0, kind="stable")
    ranked = np.take_along_axis(ranked, order, axis=0)
    hits = np.take_along_axis(labels & known, order, axis=0)
    detected = np.arange(1, n + 1, dtype=np.float64)[:, None]
    tp = np.cumsum(hits, axis=0)
    n_known = known.sum(axis=0)
    below = np.vstack([ranked[1:], np.full((1, ranked.shape[1]), -np.inf)])
    last = detected == n_known
    possible = (detected <= n_known) & (below < ranked) & (~last | (ranked > 0))
    with np.errstate(invalid="ignore"):
        cut = np.where(last, ranked / 2, (ranked + below) / 2)
    if kind == "f1":
        # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (detected + positives); the first best row is
        # the highest threshold among equals.
        f1 = np.where(possible, 2 * tp / (detected + tp[-1]), -1.0)
        return np.take_along_axis(cut, f1.argmax(axis=0)[None], axis=0)[0]
    reaches = possible & (tp / detected >= precision)
    lowest = n - 1 - reaches[::-1].argmax(axis=0)  # the last row that reaches: the most recall
    chosen = np.take_along_axis(cut, lowest[None], axis=0)[0]
    top_negative = np.where(known & ~labels, scores, -np.inf).max(axis=0, initial=-np.inf)
    return np.where(reaches.any(axis=0), chosen, np.maximum(top_negative, 0.0))


# -- files ----------------------------------------------------------------------------------------


def write_thresholds(path: str | os.PathLike, thresholds: Thresholds) -> None:
    """``thresholds.to_json()`` as ``path``, through a temp file (``run_files.write_run_file``)."""
    write_run_file(path, thresholds.to_json())


def read_thresholds(path: str | os.PathLike) -> Thresholds:
    """The thresholds of ``path``; ExperimentError naming the file and what is wrong."""
    data = read_run_file(path)
    if data is None:
        raise ExperimentError(f"{path}: no such thresholds file")
    return Thresholds.from_json(data, where=str(path))


def write_validation(
    path: str | os.PathLike,
    scores: np.ndarray,
    labels: np.ndarray,
    known: np.ndarray,
    class_names: Sequence[str],
    rows: str = "example",
    unknown: str = "ignore",
) -> None:
    """The validation scores (float32), labels and known mask (uint8), class names, what a row
    is (``example``: a clip; ``step``: a step of a frame model's crop) and how unknown labels
    count in the fit (``negative`` or ``ignore``, the run's ``unknown``) as an ``.npz``, what
    ``read_validation`` gives back."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        scores=np.asarray(scores, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.uint8),
        known=np.asarray(known, dtype=np.uint8),
        class_names=np.asarray(list(class_names), dtype=str),
        rows=np.asarray(rows),
        unknown=np.asarray(unknown),
    )
    write_run_file(path, buffer.getvalue())


def read_validation(path: str | os.PathLike) -> dict[str, Any]:
    """``scores``, ``labels``, ``known`` (arrays), ``class_names`` (a list), ``rows`` and
    ``unknown`` of a ``write_validation`` file; ExperimentError naming it when absent or
    unreadable."""
    data = read_run_file(path)
    if data is None:
        raise ExperimentError(f"{path}: no such file (the run kept no validation scores)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            found = {key: stored[key] for key in ("scores", "labels", "known", "class_names")}
            found["rows"] = str(stored["rows"]) if "rows" in stored else "example"
            found["unknown"] = str(stored["unknown"]) if "unknown" in stored else "ignore"
    except (OSError, ValueError, KeyError) as err:
        raise ExperimentError(f"{path}: not a validation scores file: {err}") from None
    found["class_names"] = [str(c) for c in found["class_names"]]
    return found


def refit(run_dir: str | os.PathLike, *, rule: str = "f1", min_positives: int = 3) -> tuple[Thresholds, str]:
    """Fit the thresholds of a run from its ``validation_scores.npz`` and write them as its
    ``thresholds.json``; the thresholds and what they were fitted on (``110 validation
    examples``, or a frame model's ``5,720 validation steps``)."""
    check_rule(rule)
    check_int("min_positives", min_positives, low=1)
    stored = read_validation(Path(run_dir) / VALIDATION_FILE)
    try:
        known = np.ones_like(stored["known"]) if stored["unknown"] == "negative" else stored["known"]
        thresholds = fit_thresholds(
            stored["scores"],
            stored["labels"],
            known,
            rule=rule,
            min_positives=min_positives,
            class_names=stored["class_names"],
        )
    except ConfigError as err:
        raise ExperimentError(f"{Path(run_dir) / VALIDATION_FILE}: {err}") from None
    write_thresholds(Path(run_dir) / THRESHOLDS_FILE, thresholds)
    return thresholds, plural(int(stored["scores"].shape[0]), f"validation {stored['rows']}")


def summary_line(thresholds: Thresholds, *, rows: str, path: str | os.PathLike) -> str:
    """``thresholds (f1 on 120 validation examples): 20 classes fitted, 4 pooled -> PATH``, with
    ``rows`` what they were fitted on (``120 validation examples``)."""
    line = (
        f"thresholds ({thresholds.rule} on {rows}): "
        f"{plural(thresholds.count('fitted'), 'class')} fitted, {thresholds.count('pooled')} pooled"
    )
    if thresholds.count("default"):
        line += f", {thresholds.count('default')} default ({DEFAULT_THRESHOLD})"
    return f"{line} -> {path}"


def table_lines(thresholds: Thresholds) -> list[str]:
    """The per-class table the command prints: class, positives, threshold, source."""
    width = max([len("class"), *(len(c) for c in thresholds.class_names)])
    lines = [f"{'class':<{width}}  positives  threshold  source"]
    for name, positives, value, source in zip(
        thresholds.class_names, thresholds.positives, thresholds.values, thresholds.source, strict=True
    ):
        lines.append(f"{name:<{width}}  {positives:>9}  {value:>9.6f}  {source}")
    return lines


# -- the command line -----------------------------------------------------------------------------


def build_parser() -> CommandParser:
    p = CommandParser(
        prog=f"python -m {PROG}",
        description=f"Refit a run's per-class thresholds from its {VALIDATION_FILE}; rewrite its {THRESHOLDS_FILE}.",
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by experiments.train")
    p.add_argument("--rule", help=f"{RULE_FORMS} (default: the run's --threshold-rule, else f1)")
    p.add_argument(
        "--min-positives",
        type=int,
        default=3,
        help="known validation positives a class needs for a threshold of its own (default 3)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no log line")
    return p


def recorded_rule(run_dir: str | os.PathLike) -> str:
    """The ``threshold_rule`` the run recorded in ``run.json``, else ``f1``."""
    data = read_run_file(Path(run_dir) / "run.json")
    try:
        train = json.loads(data).get("train", {}) if data is not None else {}
    except (ValueError, AttributeError):
        train = {}
    rule = train.get("threshold_rule", "f1") if isinstance(train, dict) else "f1"
    return rule if isinstance(rule, str) else "f1"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    try:
        rule = args.rule if args.rule is not None else recorded_rule(args.run)
        thresholds, rows = refit(args.run, rule=rule, min_positives=args.min_positives)
    except (MelShardsError, OSError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n".join(table_lines(thresholds)))
    log.info(summary_line(thresholds, rows=rows, path=Path(args.run) / THRESHOLDS_FILE))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
