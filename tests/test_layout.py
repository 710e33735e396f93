"""The architecture holds: precompute -> melshards <- loader <- experiments, and nothing else.

Checks: the import statements of every module (read with ``ast``, so an import inside a
function or under ``TYPE_CHECKING`` counts too) point one way and make no circle between
modules; a fresh interpreter loads only what each side may; and every module and function stays
a size a newcomer reads (at most 450 and 80 lines), the offenders named.
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
# No import crosses the arrows, not even inside a function: ``precompute preview`` runs
# ``experiments.preview`` in a process of its own instead of importing it.

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
            if crosses:
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


# -- no circles, rooms of a readable size -----------------------------------------------------

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in module_files(package)}


def module_edges(path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules ``path`` imports, counting imports inside functions and under
    ``TYPE_CHECKING``: ``from loader import sampler`` is an edge to ``loader.sampler``, ``from
    loader import ShardSequence`` one to ``loader`` (its ``__init__``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{node.module}" if node.module else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    edges.add(submodule)
                elif base in modules:
                    edges.add(base)
    return edges - {module_name(path)}


def import_cycles() -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    modules = product_modules()
    graph = {name: sorted(module_edges(path, modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    # The check itself: two modules importing each other (one inside a function) are a cycle.
    for name, body in {
        "a.py": "from pkgx import b\n",
        "b.py": "def f():\n    from pkgx.a import g\n",
    }.items():
        (tmp_path / "pkgx").mkdir(exist_ok=True)
        (tmp_path / "pkgx" / name).write_text(body)
    (tmp_path / "pkgx" / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("pkgx",))
    assert import_cycles() == [["pkgx.a", "pkgx.b"]]


def test_no_circles_between_modules():
    assert import_cycles() == []


def oversized() -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES, by name."""
    found = []
    for package in PACKAGES:
        for path in module_files(package):
            text = path.read_text()
            where = path.relative_to(ROOT)
            if text.count("\n") > MAX_MODULE_LINES:
                found.append(f"{where}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    return found


def test_rooms_stay_readable():
    assert oversized() == []
