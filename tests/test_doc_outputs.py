"""The command outputs quoted in the docs are what the commands print (``docs/check_outputs.py``).

The checker's rules are tested on small texts; then its ``--quick`` run checks the transcripts of
README.md and docs/ against the demo flow's quick commands, on the ``data/demo`` that ``make
features`` writes (skipped without it).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_outputs", ROOT / "docs" / "check_outputs.py")
check_outputs = importlib.util.module_from_spec(_spec)
sys.modules["check_outputs"] = check_outputs  # dataclasses look their module up by name
_spec.loader.exec_module(check_outputs)

DOC = """\
# A doc

```bash
make features   # not a transcript: no `$` line first
```

```
$ precompute features --audio-dir data/demo/train \\
    --out features/demo
551 slices from 96 recordings in 16 shards: 0 up to date, 16 to build with 2 loky worker(s)
...
wrote 551 examples in 16 shards (146.6 MB; 16 built) to features/demo in 7.1 s, 77.9 slices/s; 0 failures
$ python -m experiments.train --features features/demo --out runs/baseline
features/demo: 445 train examples (14 batches), 106 validation (fold 0 of 5)
```
"""


def test_transcripts_are_the_blocks_that_start_with_a_command(tmp_path):
    (tmp_path / "doc.md").write_text(DOC)
    found = check_outputs.read_transcripts(tmp_path / "doc.md")
    assert [(t.line, t.command) for t in found] == [
        (8, "precompute features --audio-dir data/demo/train --out features/demo"),
        (13, "python -m experiments.train --features features/demo --out runs/baseline"),
    ]
    assert [n for n, _ in found[0].quoted] == [10, 11, 12] and found[0].quoted[1][1] == "..."
    assert found[1].quoted == [
        (14, "features/demo: 445 train examples (14 batches), 106 validation (fold 0 of 5)")
    ]


def test_times_rates_scores_and_progress_may_differ_counts_may_not():
    quoted = [
        (1, "wrote 551 examples in 16 shards (146.6 MB; 16 built) to f in 7.1 s, 77.9 slices/s; 0 failures"),
        (2, "features -> demo: 100%|██████████| 551/551 [00:07<00:00, 78.70slice/s]"),
        (3, "14/14 - 5s - 375ms/step - loss: 0.5783 - lwlrap: 0.2398 - val_lwlrap: 0.1496"),
        (
            4,
            "baseline: val_lwlrap 0.9586, val_top1 0.9355 (best epoch 36 of 40), 108 s, 178.4 samples/s -> r",
        ),
    ]
    printed = [
        "wrote 551 examples in 16 shards (146.6 MB; 16 built) to f in 17.7 s, 31.2 slices/s; 0 failures",
        "features -> demo:  50%|█████     | 276/551 [00:03<00:03, 70.00slice/s]",
        "features -> demo: 100%|██████████| 551/551 [00:12<00:00, 44.10slice/s]",
        "14/14 - 25s - 2s/step - loss: 0.5413 - lwlrap: 0.2501 - val_lwlrap: 0.1927",
        "baseline: val_lwlrap 0.1927, val_top1 0.0825 (best epoch 1 of 1), 30 s, 19.8 samples/s -> r",
    ]
    assert check_outputs.compare(quoted, printed) == []
    drifted = [(7, "features/demo: 445 train examples (14 batches), 106 validation (fold 0 of 5)")]
    now = "features/demo: 441 train examples (14 batches), 110 validation (fold 0 of 5)"
    assert check_outputs.compare(drifted, [now]) == [(7, drifted[0][1], now)]
    assert check_outputs.compare([(8, "wrote model.keras to runs/x")], [now]) == [
        (8, "wrote model.keras to runs/x", None)
    ]
    # In order: a line printed before the one matched last does not count.
    assert check_outputs.compare([(1, "b"), (2, "a")], ["a", "b"]) == [(2, "a", None)]


def test_fix_rewrites_the_numbers_that_changed_and_keeps_the_timings(tmp_path):
    (tmp_path / "doc.md").write_text(DOC)
    [features, trained] = check_outputs.read_transcripts(tmp_path / "doc.md")
    printed = "wrote 550 examples in 16 shards (146.2 MB; 16 built) to features/demo in 3.0 s, 183.3 slices/s; 0 failures"
    problems = [(features, 12, features.quoted[2][1], printed)]
    problems.append((trained, 14, trained.quoted[0][1], "features/demo: 441 train examples (14 batches), "))
    assert check_outputs.fix(problems) == 1  # the second is not the same words: reported only
    lines = (tmp_path / "doc.md").read_text().splitlines()
    assert lines[11] == (
        "wrote 550 examples in 16 shards (146.2 MB; 16 built) to features/demo in 7.1 s, 77.9 slices/s; 0 failures"
    )
    assert lines[13] == trained.quoted[0][1]


def test_run_stops_once_the_line_is_printed(tmp_path):
    started = time.monotonic()
    lines, status = check_outputs.run(
        "echo one; echo 'two 2'; sleep 60; echo three", cwd=tmp_path, stop_at="two 7"
    )
    assert lines == ["one", "two 2"] and status == 0
    assert time.monotonic() - started < 30
    assert check_outputs.run("printf 'a\\rb\\n'; echo err >&2; exit 3", cwd=tmp_path) == (
        ["a", "b", "err"],
        3,
    )


def test_the_docs_quote_the_demo_flow():
    commands = [
        t.command.split(" --")[0]
        for name in check_outputs.DOCS
        for t in check_outputs.read_transcripts(ROOT / name)
    ]
    assert commands == [
        "precompute demo-data data/demo",
        "precompute features",
        "python -m experiments.train",
        "precompute windows",
        "python -m experiments.predict",
        "precompute preview features/demo",
    ]


@pytest.mark.skipif(
    not (ROOT / "data" / "demo" / "train_tp.csv").is_file(), reason="no data/demo: make features writes it"
)
def test_quoted_outputs_are_printed(tmp_path):
    transcripts = [t for name in check_outputs.DOCS for t in check_outputs.read_transcripts(ROOT / name)]
    problems = check_outputs.check(transcripts, scratch=tmp_path, quick=True)
    assert check_outputs.report(problems) == []
