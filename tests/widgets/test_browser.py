"""The notebook panels in a real browser.

Voila serves ``tests/widgets/browser/dashboard.ipynb`` (a two-worker cluster and a
``LiveDashboard(refresh=1.0)``) and headless Chromium, driven by Playwright, checks what a
user sees and does: the Bokeh tables render from the inline BokehJS, the data refreshes,
buttons act on the cluster, the export downloads a JSON file, and the data of the Bokeh
sources in the page equals the kernel's. The notebook writes the kernel-side values to
the JSON file named by ``FD_BROWSER_STATE`` and acts on request files next to it
(``<state>.singleton``, ``<state>.stop``).

Needs Chromium at ``/usr/bin/chromium`` (or ``FD_CHROMIUM``), the ``playwright`` Python
package (the system Chromium is used, no browser download) and ``voila``; skipped
without them. The kernel-side tests at the end need none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOKS_JS, free_port, local_chromium, require_browser, wait_for

HERE = Path(__file__).parent
NOTEBOOK = HERE / "browser" / "dashboard.ipynb"
#: Seconds: starting Voila, executing the notebook (the cluster starts there), one action.
SERVER_TIMEOUT = 60
PAGE_TIMEOUT = 120
ACTION_TIMEOUT = 30

# Bokeh models of the page, by name (the names the views give them). A view re-rendered
# from a new bundle leaves its old document in ``Bokeh.documents``: the newest document
# holding a model is the live one.
_FIND_JS = """
const find = (name) => {
  if (typeof Bokeh === "undefined" || !Bokeh.documents) return null;
  for (let i = Bokeh.documents.length - 1; i >= 0; i--) {
    const model = Bokeh.documents[i].get_model_by_name(name);
    if (model != null) return [Bokeh.documents[i], model];
  }
  return null;
};
const columns = (source) => source.data instanceof Map
  ? [...source.data.entries()] : Object.entries(source.data);
"""
#: ``{column: [values]}`` of the source named ``name`` (``null`` if absent).
SOURCE_DATA_JS = "(name) => {" + _FIND_JS + """
  const found = find(name);
  if (found == null) return null;
  const out = {};
  for (const [k, v] of columns(found[1])) {
    out[k] = Array.from(v, (x) => (typeof x === "number" && !Number.isFinite(x)) ? null : x);
  }
  return out;
}"""
#: ``{column: length}`` of the source named ``name`` (``null`` if absent).
SOURCE_LENGTHS_JS = "(name) => {" + _FIND_JS + """
  const found = find(name);
  if (found == null) return null;
  return Object.fromEntries(columns(found[1]).map(([k, v]) => [k, v.length]));
}"""
#: Whether every named root is rendered (its newest document idle) and the nodes table
#: has ``n`` rows.
RENDERED_JS = "([roots, n]) => {" + _FIND_JS + """
  if (!roots.every((name) => { const f = find(name); return f != null && f[0].is_idle; })) {
    return false;
  }
  const nodes = find("foundation-health-nodes");
  return nodes != null && columns(nodes[1]).find(([k]) => k === "node")[1].length === n;
}"""
#: Whether the source named ``name`` has a row whose ``column`` contains ``text``.
HAS_ROW_JS = "([name, column, text]) => {" + _FIND_JS + """
  const found = find(name);
  if (found == null) return false;
  const col = columns(found[1]).find(([k]) => k === column);
  return col != null && Array.from(col[1]).some((v) => String(v).includes(text));
}"""
#: Whether column ``column`` of the source named ``name`` holds ``values``.
COLUMN_IS_JS = "([name, column, values]) => {" + _FIND_JS + """
  const found = find(name);
  if (found == null) return false;
  const col = columns(found[1]).find(([k]) => k === column);
  return col != null && JSON.stringify(Array.from(col[1])) === JSON.stringify(values);
}"""
#: Whether the page's CPU/memory history (streamed into) has at least ``n`` rows.
HISTORY_AT_LEAST_JS = (
    "(n) => { const lengths = (" + SOURCE_LENGTHS_JS + ")('foundation-health-history');"
    " return lengths != null && lengths.time >= n; }"
)
#: Roots of the panel's Bokeh views.
ROOTS = ["foundation-health", "foundation-processes-view", "foundation-traces-view",
         "foundation-timeline-view", "foundation-hotspots-view"]




def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


#: Labextensions a Voila page cannot load (they import JupyterLab's own modules).
VOILA_DENYLIST = ["dask-labextension", "@jupyterhub/jupyter-server-proxy"]


class VoilaDashboard:
    """Voila serving the dashboard notebook, with the kernel state it reports."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.state_path = tmp_path / "state.json"
        self.log_path = tmp_path / "voila.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.kernel: dict[str, int] = {}
        self.started = time.monotonic()
        #: The Playwright page showing the dashboard, while there is one.
        self.page: Any = None

    def start(self) -> VoilaDashboard:
        env = {**os.environ, "FD_BROWSER_STATE": str(self.state_path),
               "JUPYTER_RUNTIME_DIR": str(self.tmp_path / "runtime"),
               "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser",
                 f"--port={free_port()}", "--Voila.ip=127.0.0.1", "--show_tracebacks=True",
                 # JupyterLab-only extensions that the install brings for the notebooks
                 # (they need JupyterLab's file browser, which a Voila page has not)
                 f"--VoilaConfiguration.extension_denylist={VOILA_DENYLIST!r}"],
                cwd=self.tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def url() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"Voila exited ({self.proc.returncode}):\n{self.log()}")
            match = re.search(r"http://127\.0\.0\.1:\d+/", self.log())
            return match.group(0) if match else None

        self.url = wait_for(url, SERVER_TIMEOUT, what="Voila serving")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def state(self) -> dict[str, Any]:
        """The kernel-side state the notebook wrote last (``{}`` before the first)."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        if "error" in state:
            raise AssertionError(f"the notebook's state thread failed: {state['error']}")
        if "pid" in state:
            self.kernel = {"pid": state["pid"], "pgid": state["pgid"]}
        return state

    def wait(self, predicate: Callable[[], Any], what: str,
             timeout: float = ACTION_TIMEOUT) -> Any:
        """What ``predicate`` returns once truthy, the page's messages flowing meanwhile
        (Playwright's sync API passes a routed websocket's messages on only while it is
        called: :attr:`page` is given a moment between two checks)."""

        def check() -> Any:
            if self.page is not None:
                self.page.wait_for_timeout(10)
            return predicate()

        return wait_for(check, timeout, what=what)

    def wait_state(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = ACTION_TIMEOUT) -> dict[str, Any]:
        """The first kernel state satisfying ``predicate``."""

        def check() -> dict[str, Any] | None:
            state = self.state()
            return state if state and predicate(state) else None

        return self.wait(check, f"kernel state: {what}", timeout)

    def request(self, name: str) -> None:
        """Ask the notebook for ``name`` (``singleton``: start one; ``stop``: stop
        refreshing)."""
        Path(f"{self.state_path}.{name}").touch()

    def stop(self, timeout: float = 30) -> None:
        """Terminate Voila (it shuts its kernels down); kill it after ``timeout`` s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill_kernel(self) -> None:
        """SIGKILL what is left of the kernel's process group (kernel and cluster)."""
        pid, pgid = self.kernel.get("pid"), self.kernel.get("pgid")
        if pid is None or pgid != pid:  # only a kernel leading its own group
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)



def _losing_one_stream(ws: Any, losing: dict[str, Any]) -> None:
    """Pass a kernel websocket through, except the first message streaming into a Bokeh
    source once ``losing["armed"]`` (kept in ``losing["lost"]``)."""
    server = ws.connect_to_server()

    def to_page(message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        if (losing["armed"] and losing["lost"] is None and "comm_msg" in text
                and "ColumnsStreamed" in text):
            losing["lost"] = text
            return
        ws.send(message)

    server.on_message(to_page)
    ws.on_message(server.send)


def cell(page: Any, text: str) -> Any:
    """The first visible table cell showing ``text`` (tables also hold hidden cells
    that measure column widths)."""
    return page.locator(".slick-cell:visible", has_text=text).first


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[VoilaDashboard]:
    require_browser("voila")
    server = VoilaDashboard(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()
        with contextlib.suppress(AssertionError, pytest.fail.Exception):
            server.state()  # the kernel's pid, if not known yet
            wait_for(lambda: not _group_members(server.kernel.get("pgid", -1)), 30,
                     what="kernel exit")
        server.kill_kernel()
        print("Voila log (end):\n" + server.log()[-4000:])  # shown if the test failed


@pytest.mark.timeout(300)
def test_live_dashboard_in_a_browser(dashboard: VoilaDashboard, tmp_path: Path):
    import bokeh
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    t0 = dashboard.started
    timings = {"served": time.monotonic() - t0}
    console: list[tuple[str, str]] = []
    page_errors: list[str] = []
    failed: list[str] = []

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        # no network but the local server
        context, external = local_chromium(pw, profile, viewport={"width": 1280, "height": 860},
                                           accept_downloads=True)
        try:
            page = context.new_page()
            # The kernel's websocket passes through the test, which can lose one patch
            # on the way (as a page connecting while a refresh is sent loses it).
            losing: dict[str, Any] = {"armed": False, "lost": None}
            page.route_web_socket(re.compile(r"/api/kernels/"),
                                  lambda ws: _losing_one_stream(ws, losing))
            dashboard.page = page
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: page_errors.append(f"{e}\n{e.stack}"))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)

            # 1. The dashboard renders: BokehJS (inline, the kernel's version) renders
            # every view; the cluster table lists the two workers.
            response = page.goto(dashboard.url, wait_until="domcontentloaded",
                                 timeout=PAGE_TIMEOUT * 1000)
            assert response is not None and response.ok, response
            try:
                page.wait_for_function(RENDERED_JS, arg=[ROOTS, 2], timeout=PAGE_TIMEOUT * 1000)
            except PlaywrightTimeout:
                raise AssertionError("the dashboard did not render; the page shows:\n"
                                     + page.inner_text("body")[-4000:]) from None
            timings["rendered"] = time.monotonic() - t0
            assert page.evaluate("() => Bokeh.version") == bokeh.__version__
            state = dashboard.wait_state(lambda s: len(s.get("nodes", [])) == 2, "two nodes")
            for address in state["nodes"]:
                expect(cell(page, address)).to_be_visible()
            page.screenshot(path=tmp_path / "dashboard.png")
            history_at_start = page.evaluate(SOURCE_LENGTHS_JS, "foundation-health-history")
            assert history_at_start is not None, "no CPU/memory history source in the page"

            # 1b. A patch lost on the way (the next stream into the history): the page
            # notices the gap at the following patch and gets the whole document again.
            losing["armed"] = True
            dashboard.wait(lambda: losing["lost"], "a streamed patch lost")
            dashboard.wait_state(lambda s: s.get("resyncs", 0) >= 1, "the page's resync")
            page.wait_for_function(HISTORY_AT_LEAST_JS, arg=history_at_start["time"] + 2,
                                   timeout=ACTION_TIMEOUT * 1000)

            # 2. Data changes on refresh: a singleton started in the kernel (not by the
            # panel) shows up in the Processes table with the next refresh.
            dashboard.request("singleton")
            page.wait_for_function(HAS_ROW_JS, arg=["foundation-processes", "name",
                                                    "browser-probe"],
                                   timeout=ACTION_TIMEOUT * 1000)
            page.get_by_role("tab", name="Processes").click()
            expect(cell(page, "browser-probe")).to_be_visible()
            timings["singleton"] = time.monotonic() - t0

            # 3. A button acts: "Start trace" starts a cluster trace with the scope typed
            # in; a success toast names it, the table and the Trace dropdown list it.
            page.get_by_role("tab", name="Traces").click()
            page.get_by_label("Scope", exact=True).fill("browser-test")
            page.get_by_role("button", name="Start trace").click()
            toast = page.locator(".fd-flash-success", has_text=re.compile(r"Trace \S+ started"))
            expect(toast.first).to_be_visible(timeout=ACTION_TIMEOUT * 1000)  # stays 60 s
            trace_id = re.search(r"Trace (\S+) started", toast.first.inner_text()).group(1)
            expect(cell(page, trace_id)).to_be_visible()
            expect(page.get_by_label("Trace", exact=True)).to_have_value(trace_id)
            page.wait_for_function(HAS_ROW_JS, arg=["foundation-traces", "trace_id", trace_id])
            traces = page.evaluate(SOURCE_DATA_JS, "foundation-traces")
            row = traces["trace_id"].index(trace_id)
            assert traces["status"][row] == "active"
            assert traces["scope"][row] == "browser-test"
            dashboard.wait_state(lambda s: trace_id in s.get("traces", []), "the trace")
            timings["trace"] = time.monotonic() - t0

            # 4. The export downloads the selected trace as a JSON file.
            with page.expect_download(timeout=ACTION_TIMEOUT * 1000) as download_info:
                page.get_by_role("button", name="Export JSON").click()
            download = download_info.value
            assert download.suggested_filename == f"trace_{trace_id}.json"
            path = tmp_path / download.suggested_filename
            download.save_as(path)
            exported = json.loads(path.read_text())
            assert {"trace_id", "scope", "events", "exported_at"} <= exported.keys()
            assert exported["trace_id"] == trace_id and exported["scope"] == "browser-test"
            assert exported["status"] == "active"
            assert isinstance(exported["events"], list)
            assert exported["exported_at"] / 1000 == pytest.approx(time.time(), abs=600)
            expect(page.locator(".fd-flash-success", has_text=f"Trace {trace_id} exported")
                   .first).to_be_visible()
            expect(page.locator(".fd-download-status")).to_contain_text(path.name)
            timings["export"] = time.monotonic() - t0

            # 5. The browser's Bokeh data equals the kernel's. The kernel stops refreshing
            # and reports its sources; the page must reach the same rows, including the
            # history streamed into (a double-applied stream makes it longer).
            page.wait_for_function(  # two refreshes streamed into the page's history
                HISTORY_AT_LEAST_JS, arg=history_at_start["time"] + 2,
                timeout=ACTION_TIMEOUT * 1000)
            dashboard.request("stop")
            final = dashboard.wait_state(lambda s: s.get("refreshing") is False,
                                         "refreshing stopped")
            rows = final["history_rows"]
            assert set(rows.values()) == {rows["time"]}, rows
            assert rows["time"] <= final["refreshes"], (
                f"{rows['time']} history rows after {final['refreshes']} refreshes: "
                "streamed data applied twice in the kernel")
            with contextlib.suppress(PlaywrightTimeout):  # else the comparison says how
                page.wait_for_function(HISTORY_AT_LEAST_JS, arg=rows["time"],
                                       timeout=ACTION_TIMEOUT * 1000)
            assert page.evaluate(SOURCE_LENGTHS_JS, "foundation-health-history") == rows
            for name, column, values in [("foundation-health-nodes", "node", final["nodes"]),
                                         ("foundation-processes", "name", final["processes"]),
                                         ("foundation-traces", "trace_id", final["traces"])]:
                with contextlib.suppress(PlaywrightTimeout):  # the last patches may be on
                    page.wait_for_function(COLUMN_IS_JS, arg=[name, column, values],
                                           timeout=ACTION_TIMEOUT * 1000)  # their way
                data = page.evaluate(SOURCE_DATA_JS, name)
                assert data[column] == values, name
                assert {len(v) for v in data.values()} == {len(values)}, name
            assert len(final["nodes"]) == 2
            assert not final["errors"], final["errors"]
            timings["compared"] = time.monotonic() - t0

            # 6. Each tab looks finished: no missing value shown, no cell cut, the health
            # plots drawn; a plot with nothing to draw yet (no profile taken) says what
            # will appear there and how to start it. Screenshots go to FD_SCREENSHOTS.
            shots = Path(os.environ.get("FD_SCREENSHOTS") or tmp_path)
            shots.mkdir(parents=True, exist_ok=True)
            for tab in ["Cluster", "Processes", "Traces", "Performance"]:
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(500)  # the tab's layout pass
                page.screenshot(path=shots / f"panel-{tab.lower()}.png", full_page=True)
                looks = page.evaluate(LOOKS_JS)
                assert not looks["bad"], (tab, looks["bad"])
                assert not looks["cut"], (tab, looks["cut"])
                unexplained = [t for t, note in zip(looks["empty"], looks["notes"], strict=True)
                               if not note]
                assert not unexplained, (tab, "plots empty without a note", unexplained)
                assert looks["overflow"] <= 0, (tab, looks["overflow"])
            assert not {"CPU %", "Memory % of limit", "Load average (1 min)"} & set(
                looks["empty"]), looks["empty"]

            # Nothing went wrong in the page: no exception, no error but the refused
            # external requests, nothing asked of a Bokeh CDN, every local request served.
            assert not page_errors, page_errors
            errors = [text for kind, text in console
                      if kind == "error" and not text.startswith("Failed to load resource")]
            assert not errors, errors
            assert any("asking the kernel for the whole document" in text
                       for kind, text in console if kind == "warning"), console
            broken = [text for _, text in console if "wasn't built properly" in text]
            assert not broken, broken  # a Bokeh view that failed to render
            assert not [url for url in external if "bokeh" in url], external
            assert not [url for url in failed if "127.0.0.1" in url], failed
        finally:
            dashboard.page = None
            context.close()

    # Everything shuts down: Voila shuts its kernel down, whose exit closes the cluster.
    dashboard.stop()
    kernel = dashboard.kernel
    wait_for(lambda: not _group_members(kernel["pgid"]), 30,
             what=f"kernel {kernel['pid']} and its cluster exiting after Voila stopped")
    timings["shutdown"] = time.monotonic() - t0
    print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})


# ---------------------------------------------------------------------------- kernel side


def test_panels_load_bokehjs_inline(monkeypatch):
    """Displaying a panel loads BokehJS from the installed package: no CDN URL in what
    is published to the front end."""
    import bokeh
    import bokeh.io.notebook as bokeh_notebook
    from bokeh.io.state import curstate

    import foundation_dask.widgets as fw
    from foundation_dask.widgets import _base as fw_base

    published: list[dict[str, Any]] = []
    monkeypatch.setattr(bokeh_notebook, "publish_display_data",
                        lambda data, metadata=None, **kw: published.append(data))
    monkeypatch.setattr(bokeh_notebook, "_NOTEBOOK_LOADED", bokeh_notebook._NOTEBOOK_LOADED)
    state = curstate()
    for attr in ("_notebook", "_notebook_type"):
        monkeypatch.setattr(state, attr, getattr(state, attr))
    monkeypatch.setattr(fw_base, "_inline_loaded", False)

    dash = fw.LiveDashboard(refresh=None, autostart=False)
    dash.refreshes = 1  # no cluster here: display without a first refresh
    try:
        bundle = dash._repr_mimebundle_()
        bundles = [pane.bundle for pane in fw_base._panes(dash.widget)]
    finally:
        dash.close()

    assert fw_base._inline_loaded and published, "displaying a panel did not load BokehJS"
    sent = json.dumps(published) + json.dumps(bundle, default=str) + json.dumps(bundles)
    assert "cdn.bokeh.org" not in sent
    assert not re.search(r"https?://[^\"']*bokeh[^\"']*\.js", sent)
    scripts = "".join(str(d.get("application/javascript", "")) for d in published)
    assert bokeh.__version__ in scripts
    assert len(scripts) > 1_000_000  # the library itself, not a loader of it
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_bokeh_pane_sends_every_change_and_a_current_bundle():
    """Every change is sent at once as one message (no waiting for the page); a page
    asking for the state gets the document as it is now; the panes of one document send
    the same message for a change (a model's definition travels once per document)."""
    from bokeh.models import ColumnDataSource, FixedTicker
    from bokeh.plotting import figure

    from foundation_dask.widgets import BokehPane

    source = ColumnDataSource({"x": [0.0], "y": [0.0]}, name="points")
    fig = figure(title="before")
    fig.line("x", "y", source=source)
    pane = BokehPane(fig)
    other = BokehPane(fig)  # a second pane of the same document
    sent: list[Any] = []
    pane.send = lambda content, buffers=None: sent.append((content, buffers))  # type: ignore[method-assign]
    other_sent: list[Any] = []
    other.send = lambda content, buffers=None: other_sent.append((content, buffers))  # type: ignore[method-assign]
    states: list[Any] = []
    pane._send = lambda msg, buffers=None: states.append(msg)  # type: ignore[method-assign]

    source.stream({"x": [1.0], "y": [1.0]})
    fig.title.text = "after"
    fig.yaxis.ticker = FixedTicker(ticks=[0, 1])  # a new model, defined in the message
    assert len(sent) == 3 and all(c["type"] == "patch" for c, _ in sent)
    assert "FixedTicker" in sent[2][0]["content"]
    assert [c for c, _ in other_sent] == [c for c, _ in sent]

    assert "after" not in pane.bundle  # the bundle of the widget's creation...
    pane.send_state()  # ...until a page asks for the state (one widget's or all)
    doc = pane.bundled_document()
    assert list(doc.get_model_by_name("points").data["x"]) == [0.0, 1.0]
    assert "after" in pane.bundle and states and states[-1]["method"] == "update"
    assert "after" in pane.get_state()["bundle"]
    pane.close()
    other.close()
    source.stream({"x": [2.0], "y": [2.0]})
    assert len(sent) == 3  # closed panes follow the document no more


def test_page_events_reach_the_kernel_document():
    """A change made in the page (a selected row) is applied to the kernel's document and
    runs its Python callbacks; it is not sent back."""
    from bokeh.models import ColumnDataSource

    from foundation_dask.views.base import make_table
    from foundation_dask.widgets import BokehPane

    source = ColumnDataSource({"a": [1, 2, 3]})
    table = make_table(source, [("a", "A")])
    pane = BokehPane(table)
    sent: list[Any] = []
    pane.send = lambda content, buffers=None: sent.append(content)  # type: ignore[method-assign]
    seen: list[Any] = []
    source.selected.on_change("indices", lambda attr, old, new: seen.append(new))
    event = {"kind": "ModelChanged", "model": {"id": source.selected.id}, "attr": "indices",
             "new": [2]}
    pane._from_page(pane, {"type": "event", "event": event}, [])
    assert source.selected.indices == [2] and seen == [[2]]
    assert not sent
    pane.close()


def test_tables_redraw_on_every_data_change():
    """Tables made by make_table carry the browser-side callback that redraws them when
    the data changes without changing the number of rows (BokehJS redraws only then)."""
    from bokeh.models import ColumnDataSource, CustomJS

    from foundation_dask.views.base import make_table

    source = ColumnDataSource({"a": [1]})
    table = make_table(source, [("a", "A")])
    callbacks = source.js_property_callbacks
    assert {"change:data", "streaming", "patching"} <= set(callbacks)
    redraw = callbacks["change:data"][0]
    assert isinstance(redraw, CustomJS) and redraw.args["view"] is table.view


def test_a_refresh_sends_one_message_per_document():
    """The changes of one refresh (data, title, a new axis ticker) travel as one message
    per document, which the page applies at once."""
    from bokeh.models import ColumnDataSource, FixedTicker
    from bokeh.plotting import figure

    from foundation_dask.widgets import BokehPane
    from foundation_dask.widgets._bokeh import batched_changes

    source = ColumnDataSource({"x": [0.0], "y": [0.0]})
    fig = figure(title="before")
    fig.line("x", "y", source=source)
    pane = BokehPane(fig)
    sent: list[Any] = []
    pane.send = lambda content, buffers=None: sent.append(content)  # type: ignore[method-assign]
    with batched_changes():
        source.data = {"x": [1.0, 2.0], "y": [1.0, 2.0]}
        fig.title.text = "after"
        with batched_changes():  # nested: sent with the outer block
            fig.yaxis.ticker = FixedTicker(ticks=[0, 1])
        assert not sent
    assert len(sent) == 1 and pane.patches_sent == 1
    events = json.loads(sent[0]["content"])["events"]
    assert [e["kind"] for e in events] == ["ColumnDataChanged", "ModelChanged", "ModelChanged"]
    assert "FixedTicker" in sent[0]["content"]
    pane.close()


@pytest.mark.timeout(60)
def test_patches_are_numbered_and_a_page_missing_one_gets_the_document_again():
    """Each patch carries its number and the bundle the number of the last patch it
    holds, also while another thread streams (a page connecting during a refresh): the
    page skips what its document has and, after a gap (a patch sent before its model
    existed), asks for the whole document, which comes at once with its number."""
    import threading

    from bokeh.document import Document
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    from foundation_dask.widgets import BokehPane
    from foundation_dask.widgets._bokeh import batched_changes

    source = ColumnDataSource({"x": [0.0], "y": [0.0]}, name="points")
    fig = figure()
    fig.line("x", "y", source=source)
    pane = BokehPane(fig)
    sent: list[Any] = []
    pane.send = lambda content, buffers=None: sent.append(content)  # type: ignore[method-assign]
    states: list[Any] = []
    pane._send = lambda msg, buffers=None: states.append(msg)  # type: ignore[method-assign]

    def rows_and_seq(bundle: str) -> tuple[int, int]:
        parsed = json.loads(bundle)
        points = Document.from_json(parsed["doc"]).get_model_by_name("points")
        return len(points.data["x"]), parsed["seq"]

    stop = threading.Event()

    def refreshing() -> None:  # a panel's refresh: its changes under the pane's lock
        i = 0
        while not stop.is_set():
            i += 1
            with pane.lock, batched_changes():
                source.stream({"x": [float(i)], "y": [float(i)]})

    thread = threading.Thread(target=refreshing)
    thread.start()
    try:
        bundles = [pane.get_state()["bundle"] for _ in range(200)]  # pages connecting
    finally:
        stop.set()
        thread.join(10)
    assert [c["seq"] for c in sent] == list(range(1, len(sent) + 1))
    seen = [rows_and_seq(b) for b in bundles]
    assert all(rows == 1 + seq for rows, seq in seen), seen  # each patch in or after it
    assert len({seq for _, seq in seen}) > 1  # the bundles were made while streaming

    # a page that got patch 5 after 3 asks again: the whole document comes at once
    pane._from_page(pane, {"type": "resync", "have": 3, "got": 5}, [])
    assert pane.resyncs == 1
    assert states[-1]["method"] == "update" and "bundle" in states[-1]["state"]
    rows, seq = rows_and_seq(states[-1]["state"]["bundle"])
    assert seq == pane.patches_sent == len(sent) and rows == 1 + seq
    pane.close()
