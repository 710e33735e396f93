"""What the command lines print, and where: shared by ``precompute`` and ``experiments``.

- the result of a command (its one-line summary, ``inspect``'s report) goes to stdout;
- progress bars (tqdm) and log lines go to stderr; ``--quiet`` silences both, but never
  warnings or errors;
- an error the user can fix (bad config, missing or invalid input, a locked directory) is one
  line on stderr, ``PROG: error: MESSAGE``, and exit status 2; no traceback.

Exit status, for every command: 0 success; 2 an error the user can fix (also argparse's usage
errors); 3 the output was written but some inputs failed (``precompute features``/``windows``);
130 interrupted (Ctrl-C). Anything else, with a traceback, is a bug: please report it.
"""

from __future__ import annotations

import logging
import sys

from melshards.errors import MelShardsError

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

LOGGER_NAME = "melshards"

log = logging.getLogger(LOGGER_NAME)


def setup_logging(*, quiet: bool = False) -> logging.Logger:
    """Send ``melshards`` log lines to stderr: info and up, or warnings and up when ``quiet``.

    Safe to call more than once (tests call ``main`` many times in one process): the handler
    is replaced, and it writes to the ``sys.stderr`` of the moment, so captured streams work.
    """
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    return log


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for anything else (a bug)."""
    if isinstance(err, MelShardsError):
        return " ".join(str(err).split("\n"))
    if isinstance(err, OSError) and err.strerror:
        # Permission denied, disk full, no such file: the environment, not a bug.
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    return None


def report_error(prog: str, err: BaseException) -> int:
    """Print ``err`` as one line and return exit status 2 if the user can fix it; else re-raise."""
    message = user_error_message(err)
    if message is None:
        raise err
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless ``count`` is 1: ``"1 batch"``, ``"14 batches"``,
    ``"2 train examples"`` (the last word takes the ending: -es after s, x, z, ch, sh; else -s)."""
    if count == 1:
        return f"{count} {noun}"
    ending = "es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s"
    return f"{count} {noun}{ending}"
