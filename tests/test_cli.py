"""What every command prints where: the summary on stdout, logs and bars on stderr, --quiet,
and exit status 2 with one line for the errors a user can fix."""

import errno
import re

import pytest

from audio_fixtures import TINY
from commandline.console import report_error, setup_logging, user_error_message
from melshards.errors import FormatError
from melshards.index import read_index
from precompute.cli import main
from precompute.lock import output_lock

# TINY (tests/audio_fixtures.py) spelled as --set options on top of the default preset.
TINY_SET = [
    f"--set={name}={getattr(TINY, name)}"
    for name in (
        "sample_rate",
        "n_fft",
        "hop_length",
        "n_mels",
        "fmax",
        "duration",
        "context",
        "min_overlap",
        "n_classes",
        "shard_size",
    )
]


def features_argv(paths, out, *extra):
    return [
        "features",
        "--audio-dir",
        str(paths["audio"]),
        "--tp",
        str(paths["tp"]),
        "--fp",
        str(paths["fp"]),
        "--out",
        str(out),
        "--jobs",
        "1",
        *TINY_SET,
        *extra,
    ]


SUMMARY = re.compile(
    r"wrote 9 examples in 3 shards \(\d+\.\d MB; 3 built\) to (?P<out>\S+) in \d+\.\d s, "
    r"\d+\.\d slices/s; 0 failures\n"
)


def test_features_logs_on_stderr_and_prints_one_summary_line(tone_dataset, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(features_argv(tone_dataset, out)) == 0
    captured = capsys.readouterr()
    match = SUMMARY.fullmatch(captured.out)
    assert match and match.group("out") == str(out)
    err = captured.err.replace("\r", "\n")
    assert "feature config: preset default, 32 mels 50-8000 Hz, 2 s + 0.25 s context at 16000 Hz" in err
    assert (
        f"annotations: 7 TP rows from {tone_dataset['tp']}, 2 FP rows from {tone_dataset['fp']}; 0 rejected; "
        "4 classes (n_classes 4): s0, s1, s2, s3" in err
    )
    assert "9 slices from 4 recordings in 3 shards: 0 up to date, 3 to build with 1 loky worker(s)" in err
    assert "features -> f: 100%" in err  # the tqdm bar
    # The --set options built exactly the TINY config (its name aside).
    assert read_index(out).config.to_dict() == dict(TINY.to_dict(), preset="default")

    assert main(features_argv(tone_dataset, out, "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert re.fullmatch(
        rf"{re.escape(str(out))} is up to date: 9 examples in 3 shards \(\d+\.\d MB, 3 reused\); 0 failures\n",
        captured.out,
    )


def test_quiet_silences_every_command_but_its_result(tone_dataset, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(features_argv(tone_dataset, out, "-q")) == 0
    assert SUMMARY.fullmatch(capsys.readouterr().out)
    commands = {
        "windows": [
            "windows",
            "--audio-dir",
            str(tone_dataset["audio"]),
            "--out",
            str(tmp_path / "w"),
            "--jobs",
            "1",
            *TINY_SET,
        ],
        "verify": ["verify", str(out)],
        "inspect": ["inspect", str(out)],
        "demo-data": [
            "demo-data",
            str(tmp_path / "demo"),
            "--recordings",
            "1",
            "--test-recordings",
            "0",
            "--jobs",
            "1",
        ],
        "preview": ["preview", str(out), "--out", str(tmp_path / "p.png"), "--dpi", "20"],
        "config": ["config", *TINY_SET],
    }
    for name, argv in commands.items():
        assert main([*argv, "--quiet"]) == 0, name
        captured = capsys.readouterr()
        assert captured.err == "", name
        assert captured.out.strip(), name
        if name not in ("inspect", "config"):
            assert captured.out.count("\n") == 1, name
    assert main(["verify", str(out)]) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(
        rf"{re.escape(str(out))}: every shard matches the index \(\d+\.\d s\)\n", captured.out
    )
    assert "verify f: 100%" in captured.err.replace("\r", "\n")


def test_a_locked_directory_is_a_user_error(tone_dataset, tmp_path, capsys):
    out = tmp_path / "f"
    out.mkdir()
    with output_lock(out):
        assert main(features_argv(tone_dataset, out, "-q")) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"precompute features: error: {re.escape(str(out))}: another precompute run \(pid \d+\) is "
        r"writing here; wait for it or stop it\n",
        err,
    )


def test_missing_inputs_are_user_errors(tone_dataset, tmp_path, capsys):
    cases = {
        "audio dir": (
            [
                "features",
                "--audio-dir",
                str(tmp_path / "nope"),
                "--tp",
                str(tone_dataset["tp"]),
                "--out",
                str(tmp_path / "o"),
            ],
            f"{tmp_path / 'nope'}: audio directory not found",
        ),
        "feature set": (["verify", str(tmp_path / "nope")], "no index; not a finished feature set"),
        "preview": (["preview", str(tmp_path / "nope"), "--out", str(tmp_path / "p.png")], "no index"),
    }
    for name, (argv, message) in cases.items():
        assert main(argv) == 2, name
        captured = capsys.readouterr()
        last = captured.err.splitlines()[-1]
        assert last.startswith(f"precompute {argv[0]}: error: ") and message in last, name
        assert "Traceback" not in captured.err
        assert main([*argv, "--quiet"]) == 2, name
        assert capsys.readouterr().err == last + "\n", name


def test_report_error_keeps_tracebacks_for_bugs(capsys):
    assert report_error("prog", FormatError("f/index.json: no index")) == 2
    assert capsys.readouterr().err == "prog: error: f/index.json: no index\n"
    assert (
        user_error_message(PermissionError(errno.EACCES, "Permission denied", "/out"))
        == "/out: Permission denied"
    )
    with pytest.raises(ZeroDivisionError):
        report_error("prog", ZeroDivisionError("a bug"))
    setup_logging(quiet=False)
