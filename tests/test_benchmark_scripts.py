"""Every script under benchmarks/ imports cleanly: a renamed or removed project API breaks this
test, not a user's long benchmark run."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").rglob("*.py"))


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(p.parents[1] if p.parent.name == "fidelity" else p.parent)))
def test_benchmark_script_imports(script: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_script_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # module level only: each script runs its work under __main__
    assert callable(getattr(module, "main", None)), f"{script} has no main()"
