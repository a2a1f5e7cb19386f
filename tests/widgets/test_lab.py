"""The notebook panels in a real JupyterLab, while the kernel is busy.

The test starts JupyterLab (a token, a free port, a temporary root folder holding a
notebook the test writes), opens the notebook in Debian's headless Chromium through
Playwright and runs its cells as a user does: one cell shows an ``OptimizationDashboard``
and a ``UnifiedDashboard`` refreshed every second, the next runs a traced 20-30 s
``DistributedOptimizer.optimize_program_distributed`` on an embedded two-worker cluster
(the deterministic test LM with a delay), the last a second optimization that the test
stops with the panel's Stop button. While a cell runs (the kernel is busy), the page's DOM
must show a row for the optimization whose percent done rises, points in the score plot
and spans in the unified panel's trace timeline; at the end, status completed and 100 %;
the Stop button, clicked while the kernel is busy, stops the second run. The test prints
the time from each progress snapshot of the coordinator to the page showing it.

Needs Chromium at ``/usr/bin/chromium`` (``apt-get install chromium``, or ``FD_CHROMIUM``),
``playwright`` and ``jupyterlab``: skipped without them, a failure under ``CI=true``.
Screenshots go to ``FD_SCREENSHOTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, local_chromium, require_browser, wait_for

REPO = Path(__file__).resolve().parents[2]
#: Seconds: the server starting, the page and kernel ready, the run.
SERVER_TIMEOUT = 90
PAGE_TIMEOUT = 120
RUN_TIMEOUT = 150
OPT_ID = "lab-run"
STOP_ID = "lab-stop"

SETUP = f"""\
import atexit, functools, json, sys, time
sys.path.insert(0, {str(REPO)!r})
import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.widgets import OptimizationDashboard, UnifiedDashboard
from tests._helpers import (counted_gated_with_demos, last_in_race, make_examples, metric,
                            needs_demos, program)

client = fd.connect(n_workers=2, threads_per_worker=1)
client.wait_for_workers(2, timeout=60)
_ = atexit.register(fd.close)
trainset = make_examples(30)
"""
SHOW = """\
dash = OptimizationDashboard(refresh=1.0)
unified = UnifiedDashboard(refresh=1.0)
_ = atexit.register(dash.stop), atexit.register(unified.stop)
display(dash, unified)
"""
#: The run cannot end before the test has read the panels mid-run: the last example of
#: the race's order waits, for a candidate with demos (the winner sees every example),
#: until the test creates the file "gate".
RUN = f"""\
valset = make_examples(60, 100)
gated = functools.partial(counted_gated_with_demos, gate="gate", delay=0.25,
                          held=last_in_race(valset, seed=0))
result = dspex.DistributedOptimizer.optimize_program_distributed(
    program(gated), trainset, metric, num_candidate_programs=4, display_progress=False,
    valset=valset, optimization_id={OPT_ID!r}, trace=True, seed=0)
with open("history.json", "w") as f:
    json.dump({{"status": result.status, "best_score": result.best_score,
               "trace_id": result.trace_id,
               "refresh_s": {{"dash": list(dash.refresh_log),
                              "unified": list(unified.refresh_log)}},
               "history": dspex.optimization_history({OPT_ID!r}).to_dict("records")}},
              f, default=str)
"""
#: A longer run the test stops with the Stop button while this cell runs.
STOP = f"""\
stopped = dspex.DistributedOptimizer.optimize_program_distributed(
    program(functools.partial(needs_demos, delay=0.3)), trainset, metric,
    num_candidate_programs=8, display_progress=False, optimization_id={STOP_ID!r})
with open("stopped.json", "w") as f:
    json.dump({{"status": stopped.status, "errors": dash.errors + unified.errors}}, f)
"""
LIVE = """\
from foundation_dask.widgets import LiveDashboard
live = LiveDashboard(refresh=1.0)
_ = atexit.register(live.stop)
display(live)
"""
#: Keeps the kernel busy while the test uses the live dashboard's trace buttons.
BUSY = """\
import os
open("busy.started", "w").close()
t0 = time.time()
while not os.path.exists("busy.done") and time.time() - t0 < 120:
    time.sleep(0.05)
with open("busy.json", "w") as f:
    json.dump({"errors": live.errors, "traces": list(live.trace_select.options)}, f)
"""

#: Every element matching ``selector`` in the page, inside shadow roots too (Bokeh renders
#: its views in shadow DOM).
_DEEP_JS = """
const deep = (selector) => {
  const out = [];
  const walk = (root) => {
    out.push(...root.querySelectorAll(selector));
    for (const el of root.querySelectorAll("*")) if (el.shadowRoot) walk(el.shadowRoot);
  };
  walk(document);
  return out;
};
"""
#: The rows of the DataTables in the page: ``[[cell text, ...], ...]`` per table, the
#: table found by the header text of its first column.
TABLE_ROWS_JS = """(first) => {""" + _DEEP_JS + """
  const out = [];
  for (const grid of deep(".slick-grid, .bk-data-table")) {
    const header = grid.querySelector(".slick-header-column");
    if (!header || !header.innerText.trim().startsWith(first)) continue;
    const rows = [];
    for (const row of grid.querySelectorAll(".slick-viewport .slick-row")) {
      rows.push(Array.from(row.querySelectorAll(".slick-cell"), (c) => c.innerText.trim()));
    }
    out.push(rows);
  }
  return out;
}"""
#: Lengths of the newest Bokeh source named ``name`` in the page (``null`` if absent).
SOURCE_LENGTH_JS = """(name) => {
  if (typeof Bokeh === "undefined" || !Bokeh.documents) return null;
  for (let i = Bokeh.documents.length - 1; i >= 0; i--) {
    const m = Bokeh.documents[i].get_model_by_name(name);
    if (m == null) continue;
    const data = m.data instanceof Map ? [...m.data.values()] : Object.values(m.data);
    let best = 0;
    for (const v of data) best = Math.max(best, v.length);
    if (best > 0 || i === 0) return best;
  }
  return null;
}"""
#: Records, every 50 ms, the first time each distinct "Done %" text of the optimization's
#: row appears in the page (``window.fdSeen``: ``[[ms since epoch, text], ...]``).
WATCH_JS = """([first, opt]) => {
  window.fdSeen = [];
  const seen = new Set();
  const rows = """ + TABLE_ROWS_JS + """;
  window.fdWatch = setInterval(() => {
    for (const table of rows(first)) {
      for (const row of table) {
        if (row[0] === opt && !seen.has(row[2])) {
          seen.add(row[2]);
          window.fdSeen.push([Date.now(), row[2]]);
        }
      }
    }
  }, 50);
}"""


def _notebook(cells: list[str]) -> dict[str, Any]:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}",
                   "metadata": {}, "outputs": [], "source": src}
                  for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


class Lab:
    """A JupyterLab server on a free port with a token, rooted in a temporary folder."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.log_path = root.parent / f"{root.name}-lab.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Lab:
        home = self.root.parent / f"{self.root.name}-home"
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "JUPYTER_CONFIG_DIR": str(home / "config"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
        # no "news" prompt and no update check: nothing asked of the network
        settings = home / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
                 "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
                 f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0",
                 "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
                 "--LabApp.extension_manager=readonly",
                 *(["--allow-root"] if os.geteuid() == 0 else [])],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited ({self.proc.returncode}):\n"
                                     + self.log())
            return f":{self.port}/" in self.log()

        wait_for(up, SERVER_TIMEOUT, what="JupyterLab serving")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        """Stop the server (it shuts its kernels down); SIGKILL its group after that."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # the second confirms the shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # kernels and workers left behind
        self.proc = None


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_browser("jupyterlab")
    root = tmp_path / "root"
    root.mkdir()
    server = Lab(root)
    try:
        yield server.start()
    finally:
        server.stop()
        print("JupyterLab log (end):\n" + server.log()[-4000:])  # shown if the test failed


def _rows(page: Any, first: str) -> list[list[list[str]]]:
    return page.evaluate(TABLE_ROWS_JS, first)


def _opt_rows(page: Any) -> list[list[str]]:
    """The optimization's row in each optimizations table of the page."""
    return [row for table in _rows(page, "Optimization") for row in table
            if row and row[0] == OPT_ID]


def _percent(text: str) -> float:
    return float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else -1.0


def _status_rows(page: Any, opt_id: str) -> list[list[str]]:
    return [row for table in _rows(page, "Optimization") for row in table
            if row and row[0] == opt_id]


def _spans(page: Any) -> int:
    return page.evaluate(SOURCE_LENGTH_JS, "foundation-timeline-spans") or 0


@pytest.mark.timeout(420)
def test_panels_stay_live_in_jupyterlab_while_the_kernel_is_busy(lab: Lab, screenshots: Path):
    from playwright.sync_api import sync_playwright

    cells = [SETUP, SHOW, RUN, STOP, LIVE, BUSY]
    (lab.root / "live.ipynb").write_text(json.dumps(_notebook(cells)))
    page_errors: list[str] = []
    console: list[str] = []

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context, external = local_chromium(pw, profile, viewport={"width": 1400, "height": 1000},
                                           accept_downloads=True)
        try:
            page = context.new_page()
            page.add_init_script("Error.stackTraceLimit = 60")  # whole stacks in errors
            page.on("pageerror", lambda e: page_errors.append(f"{e}\n{e.stack}"))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(f"{lab.url}/lab/tree/live.ipynb?token={lab.token}",
                      wait_until="domcontentloaded", timeout=PAGE_TIMEOUT * 1000)
            page.wait_for_function(
                "() => window.jupyterapp && document.querySelector('.jp-Notebook')"
                f" && document.querySelectorAll('.jp-Cell').length === {len(cells)}",
                timeout=PAGE_TIMEOUT * 1000)
            page.wait_for_function(  # the kernel started and is idle
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel;"
                " return k != null && k.status === 'idle'; }", timeout=PAGE_TIMEOUT * 1000)
            # not awaited: the command's promise resolves when every cell has run
            page.evaluate("() => { window.jupyterapp.commands.execute"
                          "('notebook:run-all-cells'); }")
            # the panels render before the optimization starts
            page.wait_for_function(
                "() => {" + _DEEP_JS + " return deep('.slick-header-column').length > 0; }",
                timeout=PAGE_TIMEOUT * 1000)
            page.evaluate(WATCH_JS, ["Optimization", OPT_ID])

            # mid-run: a row for the optimization in both panels, percent done rising,
            # points in the score plot, spans in the unified panel's timeline
            first = wait_for(lambda: [r for r in _opt_rows(page) if 0 < _percent(r[2]) < 100],
                             RUN_TIMEOUT, what="a running row for the optimization")
            t_first = time.monotonic()
            page.screenshot(path=screenshots / "lab-mid-run.png", full_page=True)
            assert not (lab.root / "history.json").exists(), "the run ended before the read"
            p1 = _percent(first[0][2])
            spans1 = wait_for(lambda: _spans(page), RUN_TIMEOUT,
                              what="spans of the optimization's trace in the timeline")
            later = wait_for(lambda: [r for r in _opt_rows(page) if _percent(r[2]) > p1],
                             RUN_TIMEOUT, what=f"percent done rising past {p1}")
            points = page.evaluate(SOURCE_LENGTH_JS, "foundation-optimization-progress")
            rows_mid = _opt_rows(page)
            spans2 = wait_for(lambda: _spans(page) > spans1 and _spans(page), RUN_TIMEOUT,
                              what=f"the timeline growing past {spans1} spans")
            assert not (lab.root / "history.json").exists(), "the run ended before the gate"
            assert _percent(later[0][2]) > p1 and later[0][1] == "running"
            assert points and points > 0, "no points in the score plot mid-run"
            assert len(rows_mid) == 2, f"a panel shows no row for the optimization: {rows_mid}"
            mid = time.monotonic() - t_first
            (lab.root / "gate").touch()  # the run may end now

            # the end: completed, 100 % (in both panels), the final numbers
            done = wait_for(lambda: [r for r in _opt_rows(page) if r[1] == "completed"
                                     and _percent(r[2]) == 100.0] if len(_opt_rows(page)) == 2
                            and all(r[1] == "completed" for r in _opt_rows(page)) else None,
                            RUN_TIMEOUT, what="the optimization shown completed")
            assert all(_percent(r[2]) == 100.0 for r in done)
            final = json.loads(wait_for(lambda: (lab.root / "history.json").exists()
                                        and (lab.root / "history.json").read_text(),
                                        RUN_TIMEOUT, what="the run's history"))
            assert final["status"] == "completed"
            assert _percent(done[0][3]) == pytest.approx(final["best_score"], abs=0.01)
            seen = page.evaluate("() => { clearInterval(window.fdWatch); return fdSeen; }")
            # the trace ended with the run: the traces table says so, the timeline has
            # at least what it had mid-run
            traced = wait_for(lambda: [r for t in _rows(page, "Trace") for r in t
                                       if r and r[0] == final["trace_id"]
                                       and "completed" in r], RUN_TIMEOUT,
                              what=f"trace {final['trace_id']} shown completed")
            assert traced and _spans(page) >= spans2
            page.screenshot(path=screenshots / "lab-end.png", full_page=True)

            # Stop, clicked while the next cell runs, stops that run: pick it in the
            # optimization panel's dropdown, click its Stop button
            wait_for(lambda: [r for r in _status_rows(page, STOP_ID) if r[1] == "running"
                              and _percent(r[2]) > 0], RUN_TIMEOUT,
                     what=f"{STOP_ID} running")
            assert not (lab.root / "stopped.json").exists()
            dropdown = page.get_by_label("Optimization", exact=True).first
            wait_for(lambda: STOP_ID in dropdown.inner_text(), RUN_TIMEOUT,
                     what=f"{STOP_ID} in the dropdown")
            dropdown.select_option(STOP_ID)
            page.get_by_role("button", name="Stop").first.click()
            toast = page.locator(".fd-flash-success", has_text=f"Stopping optimization {STOP_ID}")
            wait_for(lambda: toast.count() > 0, RUN_TIMEOUT, what="the Stop toast")
            stopped_rows = wait_for(lambda: [r for r in _status_rows(page, STOP_ID)
                                             if r[1] == "stopped"], RUN_TIMEOUT,
                                    what=f"{STOP_ID} shown stopped")
            stopped = json.loads(wait_for(lambda: (lab.root / "stopped.json").exists()
                                          and (lab.root / "stopped.json").read_text(),
                                          RUN_TIMEOUT, what="the stopped run's result"))
            assert stopped["status"] == "stopped", stopped
            assert _percent(stopped_rows[0][2]) < 100.0
            assert not stopped["errors"], stopped["errors"]
            page.screenshot(path=screenshots / "lab-stopped.png", full_page=True)

            # the live dashboard's trace buttons, while the last cell keeps the kernel busy:
            # start a trace, stop it, export it (a download)
            wait_for(lambda: (lab.root / "busy.started").exists(), RUN_TIMEOUT,
                     what="the busy cell running")
            page.get_by_role("tab", name="Traces").last.click()
            page.get_by_role("textbox", name="Scope", exact=True).fill("busy-kernel")
            page.get_by_role("button", name="Start trace").click()
            started = page.locator(".fd-flash-success", has_text=re.compile(r"Trace \S+ started"))
            wait_for(lambda: started.count() > 0, RUN_TIMEOUT, what="the Start trace toast")
            trace_id = re.search(r"Trace (\S+) started", started.first.inner_text()).group(1)
            wait_for(lambda: [r for t in _rows(page, "Trace") for r in t
                              if r and r[0] == trace_id and "active" in r], RUN_TIMEOUT,
                     what=f"trace {trace_id} listed active")
            page.get_by_role("button", name="Stop trace").click()
            wait_for(lambda: [r for t in _rows(page, "Trace") for r in t
                              if r and r[0] == trace_id and "active" not in r], RUN_TIMEOUT,
                     what=f"trace {trace_id} listed stopped")
            with page.expect_download(timeout=RUN_TIMEOUT * 1000) as download:
                page.get_by_role("button", name="Export JSON").click()
            path = screenshots / download.value.suggested_filename
            download.value.save_as(path)
            assert json.loads(path.read_text())["trace_id"] == trace_id
            assert not (lab.root / "busy.json").exists(), "the kernel was not busy"
            (lab.root / "busy.done").touch()
            busy = json.loads(wait_for(lambda: (lab.root / "busy.json").exists()
                                       and (lab.root / "busy.json").read_text(),
                                       RUN_TIMEOUT, what="the busy cell's end"))
            assert trace_id in busy["traces"] and not busy["errors"], busy
            # whole, where the assertion message below cuts them
            (screenshots / "page-errors.txt").write_text("\n\n".join(page_errors))
            assert not page_errors, page_errors
            assert not [line for line in console if "foundation pane" in line], console
        finally:
            print("page console:\n" + "\n".join(console[-40:]))
            context.close()

    # progress event -> DOM: for each percent the page showed, from the first snapshot
    # with that percent (the coordinator's clock: this machine's) to the page showing it
    when = {}
    for snap in final["history"]:
        when.setdefault(f"{float(snap['completion_percent']):.1f}", float(snap["time"]))
    shown = {text: round(t / 1000 - when[text], 3) for t, text in seen if text in when}
    assert shown, (seen, sorted(when))
    lags = sorted(shown.values())
    (screenshots / "lab-latency.json").write_text(json.dumps(
        {"progress_to_dom_s": shown, "refresh_s": final["refresh_s"]}, indent=1))
    during = {name: sorted(d for t, d in log if t >= min(when.values()))
              for name, log in final["refresh_s"].items()}
    print("refresh durations during the run (s): " + ", ".join(
        f"{name} median {d[len(d) // 2]:.2f} max {d[-1]:.2f}" for name, d in during.items()
        if d))
    print(f"progress event -> DOM at refresh=1.0: median {lags[len(lags) // 2]:.2f} s, "
          f"max {lags[-1]:.2f} s over {len(lags)} values ({shown}); mid-run reads took "
          f"{mid:.1f} s; screenshots and lab-latency.json in {screenshots}")
