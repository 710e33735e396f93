"""Check the command outputs quoted in the docs against what the commands print today.

A transcript is a fenced code block whose first line starts with ``$ ``. Each ``$ COMMAND``
line (continued by a trailing backslash) is followed by what COMMAND prints, stdout and stderr
together as a terminal shows them (a progress bar in its last state); a line ``...`` stands for
lines left out. Other code blocks are not checked.

    python docs/check_outputs.py          # run the demo flow in a scratch directory (minutes)
    python docs/check_outputs.py --quick  # only its quick commands, on the data/demo of `make features`
    python docs/check_outputs.py --fix    # and rewrite the numbers that changed

The transcripts' commands run in the order of ``DOCS``, each once, in a scratch directory
(``bash -c``, the virtualenv's ``bin`` first on the ``PATH``), so that the paths they print are
those of the docs. Each quoted line must match a printed line, in order: the same words and the
same numbers (counts, sizes, shapes, parameters), except those that change from run to run
(``VOLATILE``: times, rates, scores, progress, the epochs early stopping chose, the worker count).
``--fix`` rewrites a quoted line whose words are printed with other numbers; a line that is not
printed any more is reported, never rewritten.

``--quick`` (what ``tests/test_doc_outputs.py`` runs) skips the commands that take minutes: it
links ``data/demo`` (which ``make features`` writes) instead of synthesizing it, stops
``experiments.train`` once it has printed the first line of its transcript, and skips the rest of
``QUICK``'s ``None`` entries; their lines are not checked. Exit status: 0 every quoted line is
printed; 1 some are not (each named with its file and line); 2 no ``data/demo`` for ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where transcripts are read, in the order their commands run (the demo flow's).
DOCS = ("README.md", "docs/experiments.md", "docs/loader.md")

# Numbers that change from run to run: masked before lines are compared.
VOLATILE = re.compile(
    "|".join(
        (
            r"\bin \d+(?:\.\d+)? s\b",  # "wrote ... in 7.1 s"
            r"\d+(?:\.\d+)? s(?=, [\d.]+ samples/s)",  # train's "108 s, 178.4 samples/s"
            r"[\d.]+ ?(?:samples|slices|slice|rec|batch|it)/s",  # rates
            r"\d+m?s(?:/step)?(?= -)",  # Keras: "14/14 - 5s - 375ms/step - loss: ..."
            r"\[\d+:\d\d<\d+:\d\d",  # a progress bar's clock
            r"\b(?:val_|test_)?(?:loss|lwlrap|top1):? \d+\.\d+",  # scores
            r"best epoch \d+ of \d+",
            r"\bEpoch \d+/\d+",
            r"\d+ \w+ worker\(s\)",  # as many as the machine has cores
        )
    )
)
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
ELIDED = "..."

# --quick: how each command runs, by its start ("all" or "first": until the first quoted
# line is printed); a command not listed does not run.
QUICK = {
    "precompute features": "all",
    "precompute windows": "all",
    "python -m experiments.train": "first",
}


@dataclass
class Transcript:
    """One ``$ COMMAND`` of a doc and the lines quoted as its output (with their line numbers)."""

    path: Path
    line: int
    command: str
    quoted: list[tuple[int, str]] = field(default_factory=list)


def read_transcripts(path: Path) -> list[Transcript]:
    """The transcripts of the markdown file ``path``, in order."""
    found: list[Transcript] = []
    lines = path.read_text().splitlines()
    in_block = is_transcript = False
    continued = False
    for number, text in enumerate(lines, start=1):
        if text.startswith("```"):
            in_block = not in_block
            is_transcript = in_block and number < len(lines) and lines[number].startswith("$ ")
            continue
        if not (in_block and is_transcript):
            continue
        if continued:
            found[-1].command += " " + text.strip().removesuffix("\\").strip()
        elif text.startswith("$ "):
            found.append(Transcript(path, number, text[2:].removesuffix("\\").strip()))
        else:
            found[-1].quoted.append((number, text))
        continued = text.endswith("\\") and (continued or text.startswith("$ "))
    return found


def masked(line: str) -> str:
    """``line`` with its volatile numbers as ``~``, trailing blanks dropped."""
    return VOLATILE.sub("~", line).rstrip()


def shape(line: str) -> str:
    """``masked(line)`` with every other number as ``#``: its words."""
    return NUMBER.sub("#", masked(line))


def rewrite(quoted: str, printed: str) -> str:
    """``printed`` with the volatile numbers of ``quoted`` (a line of the same shape)."""
    kept = iter(match.group() for match in VOLATILE.finditer(quoted))
    return VOLATILE.sub(lambda match: next(kept, match.group()), printed).rstrip()


def compare(quoted: list[tuple[int, str]], printed: list[str]) -> list[tuple[int, str, str | None]]:
    """``(line number, quoted line, printed line or None)`` for each quoted line that is not
    printed, in order; the printed line is one of the same words, when there is one."""
    problems: list[tuple[int, str, str | None]] = []
    at = 0
    for number, line in quoted:
        if line.strip() == ELIDED:
            continue
        exact = [i for i in range(at, len(printed)) if masked(printed[i]) == masked(line)]
        if exact:
            at = exact[0] + 1
            continue
        alike = [i for i in range(at, len(printed)) if shape(printed[i]) == shape(line)]
        problems.append((number, line, printed[alike[0]] if alike else None))
        if alike:
            at = alike[0] + 1
    return problems


def printed_lines(text: str) -> list[str]:
    """What a terminal would have shown, line by line: a progress bar's states each a line."""
    return [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip()]


def run(
    command: str, *, cwd: Path, stop_at: str | None = None, timeout: float = 3600
) -> tuple[list[str], int]:
    """The lines ``command`` prints (stdout and stderr in the order written), run in ``cwd``, and
    its exit status; with ``stop_at``, it is stopped (status 0) once it printed a line of that shape."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    # A session of its own: stopping it stops what it started too.
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    stopped = False
    try:
        for text in proc.stdout:
            lines += printed_lines(text)
            if stop_at is not None and any(shape(line) == shape(stop_at) for line in lines):
                os.killpg(proc.pid, signal.SIGTERM)
                stopped = True
                break
        status = proc.wait(timeout=timeout)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return lines, 0 if stopped else status


def quick_mode(command: str) -> str | None:
    for start, mode in QUICK.items():
        if command == start or command.startswith(start + " "):
            return mode
    return None


def check(
    transcripts: list[Transcript], *, scratch: Path, quick: bool = False
) -> list[tuple[Transcript, int, str, str | None]]:
    """Run the transcripts' commands in ``scratch`` and compare: ``(transcript, line number,
    quoted line, printed line or None)`` for every quoted line not printed."""
    if quick:
        demo = ROOT / "data" / "demo"
        (scratch / "data").mkdir(parents=True, exist_ok=True)
        if not (scratch / "data" / "demo").exists():
            (scratch / "data" / "demo").symlink_to(demo)
    outputs: dict[str, list[str]] = {}
    problems: list[tuple[Transcript, int, str, str | None]] = []
    for transcript in transcripts:
        quoted = [(n, line) for n, line in transcript.quoted if line.strip() != ELIDED]
        mode = quick_mode(transcript.command) if quick else "all"
        if mode is None:
            continue
        if mode == "first":
            quoted = quoted[:1]
        if transcript.command not in outputs:
            stop_at = quoted[0][1] if mode == "first" and quoted else None
            outputs[transcript.command], status = run(transcript.command, cwd=scratch, stop_at=stop_at)
            if status != 0:
                last = outputs[transcript.command][-1:] or [""]
                problems.append(
                    (transcript, transcript.line, f"$ {transcript.command}", f"exit {status}: {last[0]}")
                )
        for number, line, printed in compare(quoted, outputs[transcript.command]):
            problems.append((transcript, number, line, printed))
    return problems


def fix(problems: list[tuple[Transcript, int, str, str | None]]) -> int:
    """Rewrite each quoted line that is printed with other numbers; the count rewritten."""
    by_file: dict[Path, dict[int, str]] = {}
    for transcript, number, line, printed in problems:
        if printed is not None and shape(printed) == shape(line):
            by_file.setdefault(transcript.path, {})[number] = rewrite(line, printed)
    for path, changes in by_file.items():
        lines = path.read_text().split("\n")
        for number, text in changes.items():
            lines[number - 1] = text
        path.write_text("\n".join(lines))
    return sum(len(changes) for changes in by_file.values())


def report(problems: list[tuple[Transcript, int, str, str | None]]) -> list[str]:
    """One line per problem: ``FILE:LINE: $ COMMAND: quoted ... | prints ...``."""
    out = []
    for transcript, number, line, printed in problems:
        where = f"{transcript.path.relative_to(ROOT)}:{number}: $ {transcript.command.split(' --')[0]}"
        said = f"prints {printed!r}" if printed is not None else "prints no line like it"
        out.append(f"{where}: quotes {line!r}, {said}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/check_outputs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only the quick commands, on ./data/demo")
    p.add_argument("--fix", action="store_true", help="rewrite quoted lines printed with other numbers")
    p.add_argument("--scratch", type=Path, help="where the commands run (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.quick and not (ROOT / "data" / "demo" / "train_tp.csv").is_file():
        print(
            f"{p.prog}: error: --quick reads {ROOT / 'data' / 'demo'}: make features first", file=sys.stderr
        )
        return 2
    transcripts = [t for name in DOCS for t in read_transcripts(ROOT / name)]
    with tempfile.TemporaryDirectory(prefix="check-outputs-") as tmp:
        scratch = args.scratch or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        problems = check(transcripts, scratch=scratch, quick=args.quick)
    for line in report(problems):
        print(line)
    if args.fix and problems:
        print(f"rewrote {fix(problems)} quoted line(s)")
    print(f"{len(transcripts)} transcripts, {len(problems)} quoted line(s) not printed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
