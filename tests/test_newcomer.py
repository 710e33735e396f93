"""What a newcomer sees on the command lines: no TensorFlow start-up lines, a missing feature set
that names the command making one, the make targets that make what they read, a mistyped flag
named with the real one, plurals that agree (``commandline.native_logs``, ``commandline.parser``,
``commandline.console.plural``, ``experiments.train``, the Makefile)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from commandline import native_logs
from commandline.console import plural
from commandline.parser import CommandParser
from melshards.errors import FormatError
from synthetic_features import make_feature_set

ROOT = Path(__file__).resolve().parents[1]


def python_env(env: dict | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != native_logs.LEVEL_VARIABLE}
    return {**environ, "PYTHONPATH": str(ROOT), **(env or {})}


def run_python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=python_env(env), capture_output=True, text=True, timeout=300
    )


# -- 1. TensorFlow's start-up lines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """``python -m experiments.train`` run two ways at once (each imports TensorFlow): ``help``
    and ``error`` (a feature set that is not there); ``(exit status, stdout, stderr)`` of each,
    and ``missing``, the path it was given."""
    tmp = tmp_path_factory.mktemp("train-runs")
    failing = ["--features", str(tmp / "mine"), "--out", str(tmp / "run")]
    argvs = {"help": ["--help"], "error": failing}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "experiments.train", *argv],
            cwd=ROOT,
            env=python_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in argvs.items()
    }
    runs: dict = {"missing": tmp / "mine"}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        runs[name] = (proc.returncode, out, err)
    return runs


def test_train_help_and_a_user_error_print_no_tensorflow_lines(train_runs):
    status, out, err = train_runs["help"]
    assert status == 0 and out.startswith("usage: python -m experiments.train") and err == ""
    status, out, err = train_runs["error"]
    missing = train_runs["missing"]
    assert status == 2 and out == ""
    assert err == (
        f"experiments.train: error: {missing / 'index.json'}: no index; not a finished feature set "
        f"(make one with precompute features --audio-dir AUDIO --tp TP.csv --out {missing})\n"
    )


def test_train_verbose_shows_the_held_lines(fresh_holder, capsys):
    from experiments.train_flags import parse_flags

    fresh_holder._held.append("E0000 cuda_platform.cc:52] failed call to cuInit\n")
    parse_flags(["--features", "f", "--out", "o"])
    assert capsys.readouterr().err == ""
    parse_flags(["--features", "f", "--out", "o", "--verbose", "1"])
    assert capsys.readouterr().err == "E0000 cuda_platform.cc:52] failed call to cuInit\n"


# What ``python -m experiments.X`` does before it imports the package: argv[0] is "-m".
AS_COMMAND = "import sys; sys.argv[0] = '-m'; "
REPORT = (
    "import experiments, os, sys; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'tensorflow' in sys.modules)"
)
HOLDER = "import experiments, sys; print(any('Held' in type(f).__name__ for f in sys.meta_path))"


def test_experiments_quiets_tensorflow_before_importing_it():
    assert run_python("-c", AS_COMMAND + REPORT).stdout.split() == ["3", "False"]
    # The user's own level stays; 0 (show everything) also holds nothing back.
    assert run_python("-c", AS_COMMAND + REPORT, env={"TF_CPP_MIN_LOG_LEVEL": "1"}).stdout.split() == [
        "1",
        "False",
    ]
    assert run_python("-c", AS_COMMAND + HOLDER, env={"TF_CPP_MIN_LOG_LEVEL": "0"}).stdout.split() == [
        "False"
    ]


def test_a_program_importing_experiments_keeps_tensorflow_logging_as_it_is():
    assert run_python("-c", REPORT).stdout.split() == ["None", "False"]
    assert run_python("-c", HOLDER).stdout.split() == ["False"]


@pytest.fixture
def fresh_holder(monkeypatch):
    """``native_logs`` with nothing held or shown, restored afterwards."""
    monkeypatch.setattr(native_logs, "_held", [])
    monkeypatch.setattr(native_logs, "_shown", False)
    return native_logs


@pytest.mark.parametrize(
    "argv, shown",
    [(["--verbose", "1"], True), (["--verbose=2"], True), (["--verbose", "0"], False), ([], False)]
    + [(["--verbose", "2", "--quiet"], False)],
)
def test_verbose_on_the_command_line_shows_the_held_lines(fresh_holder, capsys, argv, shown):
    fresh_holder._held.append("I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
    p = CommandParser(prog="demo")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    p.add_argument("-q", "--quiet", action="store_true")
    p.parse_args(argv)
    expected = "I0000 cudart_stub.cc:31] Could not find cuda drivers\n" if shown else ""
    assert capsys.readouterr().err == expected
    assert fresh_holder.held_lines() == (
        [] if shown else ["I0000 cudart_stub.cc:31] Could not find cuda drivers"]
    )


def test_train_help_says_what_verbose_shows():
    from experiments.train_flags import build_parser

    help_text = " ".join(build_parser().format_help().split())
    assert "given as 1 or 2, also TensorFlow's start-up lines, held back otherwise" in help_text


def test_held_stderr_holds_descriptor_2_until_shown(fresh_holder, capfd):
    with fresh_holder.held_stderr():
        os.write(2, b"I0000 00:00 port.cc:153] oneDNN custom operations are on\n")
    assert capfd.readouterr().err == ""
    assert fresh_holder.held_lines() == ["I0000 00:00 port.cc:153] oneDNN custom operations are on"]
    fresh_holder.show_held()
    assert capfd.readouterr().err == "I0000 00:00 port.cc:153] oneDNN custom operations are on\n"
    with fresh_holder.held_stderr():  # once shown, nothing more is held
        os.write(2, b"later\n")
    assert capfd.readouterr().err == "later\n"


def test_a_failing_import_prints_what_it_held(fresh_holder, capfd):
    with pytest.raises(ImportError, match="no such library"), fresh_holder.held_stderr():
        os.write(2, b"E0000 failed call to cuInit\n")
        raise ImportError("no such library")
    assert capfd.readouterr().err == "E0000 failed call to cuInit\n"


def test_the_import_finder_holds_only_its_module(fresh_holder, monkeypatch, tmp_path, capfd):
    (tmp_path / "noisy_native.py").write_text("import os\nos.write(2, b'W0000 noisy start\\n')\nVALUE = 7\n")
    (tmp_path / "plain_native.py").write_text("import os\nos.write(2, b'plain says\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(native_logs, "HELD_MODULE", "noisy_native")
    finder = native_logs._HeldImportFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in ("noisy_native", "plain_native"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import noisy_native
    import plain_native  # noqa: F401

    assert noisy_native.VALUE == 7 and not isinstance(noisy_native.__loader__, native_logs._HeldLoader)
    assert capfd.readouterr().err == "plain says\n"
    assert fresh_holder.held_lines() == ["W0000 noisy start"]


# -- 2. A missing feature set; the make targets ---------------------------------------------------


def test_train_names_the_command_that_makes_a_missing_set(tmp_path, labelled_set, capsys):
    from experiments import train

    base = ["--out", str(tmp_path / "run"), "--epochs", "1", "--verbose", "0"]
    assert train.main(["--features", "features/mine", *base]) == 2
    assert capsys.readouterr().err == (
        "experiments.train: error: features/mine/index.json: no index; not a finished feature set "
        "(make one with precompute features --audio-dir AUDIO --tp TP.csv --out features/mine)\n"
    )
    assert train.main(["--features", str(labelled_set), "--windows", "features/mine-w", *base]) == 2
    assert capsys.readouterr().err.endswith(
        "(make one with precompute windows --audio-dir AUDIO --out features/mine-w)\n"
    )
    with pytest.raises(FormatError, match=r"make one with precompute features .* --out nowhere\)$"):
        train.train("nowhere", out=tmp_path / "run")


def make_dry_run(target: str, cwd: Path, *more: str) -> list[str]:
    """The commands ``make TARGET`` would run in ``cwd`` (an empty folder), installs aside."""
    sentinels = [f"--old-file=.venv/.installed-{name}" for name in ("core", "train", "dev")]
    argv = ["make", "-n", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(cwd), *sentinels]
    done = subprocess.run([*argv, target, *more], capture_output=True, text=True, check=True, timeout=60)
    return [line for line in done.stdout.splitlines() if " -m " in line]


@pytest.mark.parametrize(
    "target, first",
    [
        ("train", ["precompute demo-data", "precompute features", "experiments.train"]),
        ("preview", ["precompute demo-data", "precompute features", "precompute preview"]),
        ("predict", ["precompute demo-data", "precompute windows", "experiments.predict"]),
    ],
)
def test_make_targets_make_the_demo_data_they_read(tmp_path, target, first):
    commands = make_dry_run(target, tmp_path)
    assert [next(name for name in first if name in line) for line in commands] == first


def test_make_help_prints_the_run_directory():
    shown = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, check=True
    )
    train_line = next(line for line in shown.stdout.splitlines() if line.startswith("  make train "))
    assert "-> runs/baseline/ (RUN=, MODEL=, EPOCHS=, FOLD=)" in train_line and "$(" not in shown.stdout
    other = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help", "RUN=tiny-f1"], capture_output=True, text=True, check=True
    )
    assert "runs/tiny-f1/" in other.stdout


# -- 3. Mistyped flags ----------------------------------------------------------------------------


def usage_error(capsys, parse, argv) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


def test_precompute_names_a_mistyped_flag_before_the_missing_ones(capsys):
    from precompute import cli

    assert usage_error(capsys, cli.main, ["features", "--audio-dri", "data/x", "--out", "f"]) == (
        "precompute features: error: unknown flag --audio-dri; did you mean --audio-dir?"
    )
    assert usage_error(capsys, cli.main, ["windows", "--stpe=5", "--out", "f"]) == (
        "precompute windows: error: unknown flag --stpe; did you mean --step?"
    )
    # preview hands every argument on to experiments.preview, which checks them.
    args, rest = cli.build_parser().parse_known_args(["preview", "f", "--out", "p.png", "--per-clas", "2"])
    assert args.command == "preview" and rest == ["f", "--out", "p.png", "--per-clas", "2"]


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (
            "experiments.train_flags:parse_flags",
            ["--epoch", "3"],
            "unknown flag --epoch; did you mean --epochs?",
        ),
        ("experiments.train_flags:parse_flags", ["--featurs", "f", "--out", "o"], "did you mean --features?"),
        (
            "experiments.predict:parse_args",
            ["--modle", "m.keras"],
            "unknown flag --modle; did you mean --model?",
        ),
        (
            "experiments.pseudo:parse_args",
            ["--featurs", "f"],
            "unknown flag --featurs; did you mean --features?",
        ),
        (
            "experiments.sweep:parse_args",
            ["grid.toml", "--quite"],
            "unknown flag --quite; did you mean --quiet?",
        ),
        ("experiments.preview:main", ["f", "--out", "p.png", "--per-clas", "2"], "did you mean --per-class?"),
    ],
)
def test_experiments_command_lines_name_a_mistyped_flag(capsys, module, argv, message):
    import importlib

    name, _, function = module.partition(":")
    parse = getattr(importlib.import_module(name), function)
    line = usage_error(capsys, parse, argv)
    assert re.fullmatch(r"(python -m experiments\.\w+|precompute preview): error: .*", line)
    assert line.endswith(message)


def test_command_parser_takes_exact_names_and_stops_where_its_flags_end(capsys):
    p = CommandParser(prog="demo")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("rest", nargs="*")
    assert usage_error(capsys, p.parse_args, ["--zzz"]) == "demo: error: unknown flag --zzz"
    assert p.parse_args(["--lr", "-0.5", "--", "--not-a-flag"]).rest == ["--not-a-flag"]
    assert p.parse_args(["--epochs=3"]).epochs == 3
    assert p.unknown_flag(["--epoch", "3"]) == "unknown flag --epoch; did you mean --epochs?"


# -- 4. Plurals ----------------------------------------------------------------------------------


def test_plural():
    assert [plural(n, "batch") for n in (0, 1, 14)] == ["0 batches", "1 batch", "14 batches"]
    assert plural(1, "train example") == "1 train example" and plural(2, "window") == "2 windows"
    assert plural(3, "class") == "3 classes"


def test_train_says_one_batch(tmp_path, capsys):
    from experiments import train

    features = make_feature_set(tmp_path / "set", n_recordings=5, per_recording=2, n_classes=4, seed=1)
    argv = ["--features", str(features), "--model", "tiny", "--epochs", "1", "--batch-size", "8"]
    assert train.main([*argv, "--out", str(tmp_path / "run"), "--verbose", "0"]) == 0
    err = capsys.readouterr().err
    assert f"{features}: 8 train examples (1 batch), 2 validation (fold 0 of 5)" in err, err
