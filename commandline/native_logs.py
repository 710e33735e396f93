"""TensorFlow's start-up lines: held back, printed only when asked for.

Importing TensorFlow writes 8-11 lines to stderr from its C++ core (oneDNN, the CUDA drivers,
``E0000 ... failed call to cuInit`` on a machine without a GPU, CPU instructions), before
Python's logging exists and whatever ``TF_CPP_MIN_LOG_LEVEL`` says. Every ``experiments``
command line would start with them, ``--help`` included, and a one-line error would come after
them. So ``hold_tensorflow_logs`` (called once, by ``experiments/__init__.py``, before any of
its modules imports Keras or TensorFlow):

- sets ``TF_CPP_MIN_LOG_LEVEL=3``: none of TensorFlow's C++ log lines while it runs (the
  ``cuInit`` failure when a model is built, for one); Python exceptions still say what failed;
- catches what the import of TensorFlow writes to file descriptor 2 (the C++ side writes there,
  not to ``sys.stderr``), and keeps it: ``show_held`` prints it, which
  ``commandline.parser.CommandParser`` does when the command line says ``--verbose`` (a level
  of 1 or more); if the import fails, what it wrote is printed at once.

Set ``TF_CPP_MIN_LOG_LEVEL`` yourself and it is left as it is; set it to ``0`` and nothing is
held either: ``TF_CPP_MIN_LOG_LEVEL=0 python -m experiments.train ...`` prints all TensorFlow says.
Only the standard library here: the precompute side imports this package too.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import tempfile
from collections.abc import Iterator

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "3"  # TensorFlow's C++ log lines: no info, warnings or errors
HELD_MODULE = "tensorflow"

_held: list[str] = []  # what the import wrote, until shown
_shown = False  # once asked for, nothing more is held


def hold_tensorflow_logs() -> None:
    """Quiet TensorFlow's C++ logging and hold what importing it prints (see the module's text);
    nothing when TensorFlow is already imported, or when ``TF_CPP_MIN_LOG_LEVEL`` is ``0``."""
    if os.environ.get(LEVEL_VARIABLE) == "0" or HELD_MODULE in sys.modules:
        return
    os.environ.setdefault(LEVEL_VARIABLE, QUIET_LEVEL)
    if not any(isinstance(finder, _HeldImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HeldImportFinder())


def held_lines() -> list[str]:
    """The lines held back so far (not yet shown)."""
    return "".join(_held).splitlines()


def show_held() -> None:
    """Print the held lines on stderr, and hold nothing from now on."""
    global _shown
    _shown = True
    text = "".join(_held)
    _held.clear()
    if text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Catch what is written to file descriptor 2 inside the block and hold it; on an exception,
    print it at once. Nothing is caught once ``show_held`` was called, or without a descriptor 2."""
    if _shown:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            _held.append(caught.read().decode(errors="replace"))
            if failed:
                show_held()


class _HeldImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the finders after it would, with a loader that runs the import
    inside ``held_stderr``; every other name is left to them."""

    def find_spec(self, name, path=None, target=None):
        if name != HELD_MODULE:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _HeldImportFinder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HeldLoader(spec.loader)
                return spec
        return None


class _HeldLoader(importlib.abc.Loader):
    """The real loader, its ``exec_module`` inside ``held_stderr``; the module keeps the real one."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        with held_stderr():
            self.loader.exec_module(module)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)
