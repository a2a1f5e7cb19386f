"""The command line: ``foundation-dask demo`` runs the tour end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from foundation_dask.cli import main


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end():
    proc = subprocess.run(
        [sys.executable, "-m", "foundation_dask", "demo"],
        capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "get('k9') = 81 (state restored from its last checkpoint)" in out
    assert "incarnation 1" in out
    assert "the notebook received 6" in out
    assert "arrived on 'control'" in out
    assert "discover_services(capabilities=['kv']) -> ['kv-store']" in out
    assert "healthy" in out
    assert "Done in" in out


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
