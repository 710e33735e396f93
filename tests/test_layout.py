"""The architecture holds: precompute -> melshards <- loader <- experiments, and nothing else.

Two checks: the import statements of every module (read with ``ast``, so an import inside a
function counts too), and what a fresh interpreter really loads when it imports each side.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("melshards", "commandline", "precompute", "loader", "experiments")

# Which of the project's packages each package may import.
ALLOWED = {
    "melshards": set(),
    "commandline": {"melshards"},
    "precompute": {"melshards", "commandline"},
    "loader": {"melshards"},
    "experiments": {"melshards", "loader", "commandline"},
}
# Imports across the arrows allowed anyway, as (file, module): none. (``precompute preview``
# runs ``experiments.preview`` in a process of its own instead of importing it.)
EXCEPTIONS: set[tuple[str, str]] = set()

# Third-party packages a side must not import (its users may not have them installed).
FORBIDDEN = {
    "melshards": {"keras", "tensorflow", "torch", "matplotlib", "librosa", "joblib", "numba", "soundfile"},
    "commandline": {"keras", "tensorflow", "torch", "matplotlib", "librosa", "joblib", "numba", "soundfile"},
    "precompute": {"keras", "tensorflow", "torch", "matplotlib"},
    "loader": {"librosa", "joblib", "soundfile", "soxr", "matplotlib"},
}


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement in ``path`` (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module)
    return found


def module_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    wrong = []
    for path in module_files(package):
        where = str(path.relative_to(ROOT))
        for name in imports_of(path):
            top = name.split(".")[0]
            crosses = top in PACKAGES and top != package and top not in ALLOWED[package]
            if crosses and (where, name) not in EXCEPTIONS:
                wrong.append(f"{where} imports {name}")
            if top in FORBIDDEN.get(package, ()):
                wrong.append(f"{where} imports {name}")
    assert wrong == []


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    return set(result.stdout.split())


def test_the_precompute_side_loads_no_keras_tensorflow_or_matplotlib():
    loaded = loaded_after(
        "import precompute.cli, precompute.run, precompute.job, precompute.plan, precompute.inspection, "
        "precompute.demo, precompute.backends, melshards.verify\n"
        "precompute.cli.build_parser()"
    )
    assert {"precompute", "soundfile", "h5py", "joblib"} <= loaded  # the check sees real imports
    assert loaded.isdisjoint({"keras", "tensorflow", "matplotlib", "torch", "loader", "experiments"})
    # librosa (and the numba it compiles) loads only for stft = "librosa": a fresh worker starts fast.
    assert loaded.isdisjoint({"librosa", "numba"})


def test_the_format_package_loads_neither_side():
    loaded = loaded_after("import melshards, melshards.shard, melshards.verify, commandline.console")
    assert {"melshards", "h5py", "numpy"} <= loaded
    assert loaded.isdisjoint(
        {"precompute", "loader", "experiments", "librosa", "joblib", "keras", "tensorflow"}
    )


def test_the_loader_loads_no_precompute_or_librosa():
    loaded = loaded_after("import loader")
    assert {"loader", "melshards", "numba"} <= loaded
    assert loaded.isdisjoint({"precompute", "experiments", "librosa", "soundfile", "soxr"})
    # no training framework until one is asked for
    assert loaded.isdisjoint({"keras", "tensorflow", "torch", "jax"})
    assert "keras" in loaded_after("from loader import ShardSequence")
