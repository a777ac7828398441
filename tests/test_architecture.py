"""Dependencies point one way: algorithm packages never import the runner."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "recbole_llm"
ALGORITHMS = ("quantize", "llm", "text", "convert")
RUNNER = ("recbole_llm.config", "recbole_llm.registry", "recbole_llm.quick_start", "recbole_llm.cli",
          "recbole_llm.tuning", "recbole_llm.benchmark", "recbole_llm.teachers")


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("package", ALGORITHMS)
def test_algorithm_packages_do_not_import_the_runner(package):
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for name in _imports(path)
        if name in RUNNER
    ]
    assert not offenders, offenders


def test_models_do_not_import_the_entry_points():
    entry_points = ("recbole_llm.quick_start", "recbole_llm.cli", "recbole_llm.tuning", "recbole_llm.benchmark")
    offenders = [
        f"{path.name} imports {name}"
        for path in sorted((PACKAGE / "model").glob("*.py"))
        for name in _imports(path)
        if name in entry_points
    ]
    assert not offenders, offenders
