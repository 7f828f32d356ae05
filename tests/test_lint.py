"""The code stays ruff-clean (the configuration is ruff.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it comes with `pip install .[test]`)")
    proc = subprocess.run([ruff, "check", "infraetl", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean() -> None:
    # The annotations are checked, not decoration (the configuration is in pyproject.toml).
    proc = subprocess.run([sys.executable, "-m", "mypy", "infraetl"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 and "No module named mypy" in proc.stderr:
        pytest.skip("mypy is not installed (it comes with `pip install .[test]`)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
