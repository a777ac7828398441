"""The wheel carries properties/ as package data, so an installed copy finds its yaml files."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO_ROOT


def test_wheel_ships_properties(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("recbole_llm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "recbole_llm/properties/overall.yaml" in names
    assert "recbole_llm/properties/dataset/ml-100k.yaml" in names
    assert any(n.startswith("recbole_llm/properties/hyper/") for n in names)
    assert "recbole_llm/compat.py" in names
