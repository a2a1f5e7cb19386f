"""The type hints of ``core``, ``scope``, ``dspex`` and the base modules are checked:
mypy (configured in ``pyproject.toml``) reports no error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_mypy_reports_no_error():
    pytest.importorskip("mypy", reason="pip install -e '.[test]' installs mypy")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=880)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
