"""How the views look in a real browser: the Foundation pages of the Dask dashboard and
the demo's static report.

Headless Chromium (Playwright, the system Chromium) opens each page and checks what a
user sees: no ``nan``, ``NaN``, ``undefined`` or ``None`` in the visible text, no table
cell whose text is cut (``scrollWidth > clientWidth``), every plot has data (each figure
of ``Bokeh.documents`` has a renderer whose source has rows with all their coordinates, two
for a line) and the page is no wider than the window (``tests.support.LOOKS_JS``). A
screenshot of each page goes to ``FD_SCREENSHOTS`` (default the test's temporary folder).
``FD_REPORT`` names a ``report.html`` to check (``foundation-dask demo --quick`` writes
one); without it the test writes one from a short run.

Needs Chromium at ``/usr/bin/chromium`` (or ``FD_CHROMIUM``) and the ``playwright``
Python package; skipped without them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import foundation_dask as fd
from foundation_dask import dspex, scope
from tests._helpers import busy, make_examples, metric, program
from tests.support import LOOKS_JS, local_chromium, require_browser, wait_for

#: Seconds to wait for a page to render its Bokeh documents.
PAGE_TIMEOUT = 60
#: Seconds to wait for a page's plots to get their data (pages refresh every 1-2 s).
READY_TIMEOUT = 20
#: The browser window.
VIEWPORT = {"width": 1400, "height": 900}

#: Whether the page's Bokeh documents are rendered and idle.
RENDERED_JS = """() => typeof Bokeh !== "undefined" && Bokeh.documents != null
  && Bokeh.documents.length > 0 && Bokeh.documents.every((d) => d.is_idle)"""


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:<port>/`` serving ``folder`` (the browser loads 127.0.0.1 only)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def screenshot_dir(tmp_path: Path) -> Path:
    """``FD_SCREENSHOTS`` or ``tmp_path``, created."""
    folder = Path(os.environ.get("FD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def inspect(page: Any, url: str, shot: Path, ready: str | None = None) -> dict[str, Any]:
    """Open ``url``, wait for its documents (and ``ready``, a JS predicate), screenshot
    it to ``shot`` and return what :data:`LOOKS_JS` found."""
    response = page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT * 1000)
    assert response is not None and response.ok, (url, response)
    page.wait_for_function(RENDERED_JS, timeout=PAGE_TIMEOUT * 1000)
    if ready:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        with contextlib.suppress(PlaywrightTimeout):  # the checks below say what is not
            page.wait_for_function(ready, timeout=READY_TIMEOUT * 1000)
    page.wait_for_timeout(500)  # a layout pass after the last data
    found = page.evaluate(LOOKS_JS)
    # the whole page in a window of its height (a full-page screenshot of a smaller
    # window leaves bits of canvases at the left edge)
    width = page.viewport_size["width"]
    height = page.evaluate("() => document.documentElement.scrollHeight")
    page.set_viewport_size({"width": width, "height": min(max(height, 600), 8000)})
    page.wait_for_timeout(300)
    page.screenshot(path=shot)
    page.set_viewport_size({"width": width, "height": VIEWPORT["height"]})
    return found


def assert_looks_finished(found: dict[str, Any], where: str) -> None:
    """No bad words, no cut cells, no empty plots."""
    assert found["documents"] > 0, f"{where}: no Bokeh document rendered"
    assert not found["bad"], f"{where}: missing values shown: {found['bad'][:10]}"
    assert not found["cut"], f"{where}: table cells cut: {found['cut'][:10]}"
    assert not found["empty"], f"{where}: plots without data: {found['empty']}"
    assert found["overflow"] <= 0, f"{where}: {found['overflow']} px wider than the window"


#: Whether every plot of the page has data (the pages fill theirs on refresh).
PLOTS_FILLED_JS = "() => (" + LOOKS_JS + ")().empty.length === 0"


@pytest.fixture
def browser_page(tmp_path: Path) -> Any:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context, _ = local_chromium(pw, profile, viewport=VIEWPORT)
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.mark.timeout(300)
def test_dashboard_pages_look_finished(browser_page: Any, tmp_path: Path):
    """Every Foundation page of the Dask dashboard, on a cluster that traced and profiled
    some work: full cells, no missing values, every plot with data."""
    from foundation_dask._pages import registered_pages

    shots = screenshot_dir(tmp_path)
    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2, timeout=60)
        scope.start_cluster_profiling(duration_ms=60_000)
        with scope.trace("looks") as traced:
            client.gather(client.map(busy, [0.2] * 10, pure=False))
        trace_id = traced.trace_id
        # an optimization for the overview page's progress plot
        dspex.DistributedOptimizer.optimize_program_distributed(
            program(), make_examples(8), metric, num_candidate_programs=1,
            display_progress=False, optimization_id="looks-opt")
        wait_for(lambda: len(scope.collect_trace_data(trace_id).events) > 0, 30,
                 what="trace events")
        base = client.dashboard_link.rsplit("/", 1)[0]
        paths = list(registered_pages())
        assert paths, "no Foundation page registered"
        results = {}
        for path in paths:
            name = path.rsplit("-", 1)[-1]
            found = inspect(browser_page, base + path, shots / f"page-{name}.png",
                            ready=PLOTS_FILLED_JS)
            results[path] = found
        for path, found in results.items():
            assert_looks_finished(found, path)
    finally:
        fd.close()


def _report_inputs() -> Path | None:
    path = os.environ.get("FD_REPORT")
    return Path(path) if path else None


@pytest.mark.timeout(300)
def test_report_looks_finished(browser_page: Any, tmp_path: Path):
    """The demo's static report (``FD_REPORT``: a report.html already written; else
    written here from a short traced run): the history plots hold their history, the
    numbers are those of the run, nothing is cut or missing."""
    shots = screenshot_dir(tmp_path)
    report = _report_inputs()
    if report is None:
        report = _write_small_report(tmp_path)
    with served(report.parent) as url:
        found = inspect(browser_page, url + report.name, shots / "report.png")
    assert_looks_finished(found, str(report))
    assert not [t for t in found["plots"] if " / nan" in t]
    text = browser_page.inner_text("body")
    assert "best 0.0" not in text
    html = report.read_text()
    assert " / nan" not in html  # trace lanes named by node and thread


def _write_small_report(tmp_path: Path) -> Path:
    """The demo's report of a short run: health sampled throughout, a traced and profiled
    optimization with a deterministic LM."""
    from foundation_dask.demo import HealthRecorder, write_report

    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2, timeout=60)
        with HealthRecorder(interval=0.3) as recorder:
            scope.start_cluster_profiling(duration_ms=60_000)
            client.gather(client.map(busy, [0.2] * 6, pure=False))
            result = dspex.DistributedOptimizer.optimize_program_distributed(
                program(), make_examples(8), metric, num_candidate_programs=2,
                display_progress=False, optimization_id="report-opt", trace=True)
            def sampled() -> bool:  # every plot's line needs two points of each node
                frame = recorder.frame().dropna(subset=["cpu", "memory", "load_avg"])
                counts = frame.groupby("node").size()
                return len(counts) == 2 and int(counts.min()) >= 3

            wait_for(sampled, 60, what="three complete health samples of each node")
            data = scope.collect_trace_data(result.trace_id, timeout=15)
            report = scope.analyze_cluster_performance(wait=False)
            recorder.sample()
            paths = write_report(
                str(tmp_path / "foundation-report"), data, report, result,
                health=recorder.last, health_history=recorder.frame(),
                progress=dspex.optimization_history(result.optimization_id))
        return Path(paths["report"])
    finally:
        fd.close()
