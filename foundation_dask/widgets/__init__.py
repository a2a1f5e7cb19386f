"""Live notebook panels: ipywidgets controls around the Bokeh views.

>>> from foundation_dask.widgets import LiveDashboard, OptimizationDashboard
>>> LiveDashboard()            # doctest: +SKIP
>>> OptimizationDashboard()    # doctest: +SKIP

A panel refreshes its views in a background thread every ``refresh`` seconds, so the
kernel stays free; ``panel.refresh()`` refreshes once, now. Actions (buttons) report
their outcome as flash messages. Every panel also renders as a text and an HTML
summary where widgets cannot be shown.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W
from bokeh.events import DocumentReady
from jupyter_bokeh.widgets import BokehModel

from foundation_dask.widgets._frontend import DownloadWidget, FlashMessages

logger = logging.getLogger(__name__)

__all__ = ["BokehPane", "DownloadWidget", "FlashMessages", "LiveDashboard",
           "OptimizationDashboard", "UnifiedDashboard", "bokeh_widget"]

_inline_loaded = False


def load_bokehjs() -> None:
    """Load BokehJS into the notebook from the installed package (no CDN)."""
    global _inline_loaded
    if _inline_loaded:
        return
    try:
        from bokeh.io import output_notebook
        from bokeh.resources import INLINE

        output_notebook(resources=INLINE, hide_banner=True)
        _inline_loaded = True
    except Exception:  # not in a notebook
        logger.debug("BokehJS not loaded", exc_info=True)


class BokehPane(BokehModel):
    """A ``jupyter_bokeh.BokehModel`` whose browser views do not miss changes made
    before they were rendered.

    A view is built from ``render_bundle`` (the document as it was when the bundle was
    made) and then applies the changes the kernel sends; a change sent before the view
    exists is lost for it: one made by the refresh at display time, or while Voila's page
    is not connected yet. The view then shows a stale document for good (lines added
    later are missing, a streamed history is shorter than the kernel's).

    So, from :meth:`expect_view` (called when a panel is displayed) until a view reports
    its document ready, changes are not sent; when the view is ready, the bundle is made
    again if anything changed meanwhile (the view re-renders from it). If no view reports
    ready within :attr:`ready_timeout` seconds, changes are sent again.

    Parameters
    ----------
    model
        The Bokeh layout to show.
    lock
        Held by whoever changes the document from another thread (a panel's refresh
        lock), so that the bundle is made between two changes.
    """

    #: Seconds to wait for a view to report its document ready.
    ready_timeout = 60.0

    def __init__(self, model: Any, lock: Any = None, **kwargs: Any) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self._waiting_since: float | None = None
        self._stale = False  # the document changed since render_bundle was made
        super().__init__(model, **kwargs)
        self._document.on_event(DocumentReady, self._view_ready)

    def expect_view(self) -> None:
        """A view is coming: hold changes back until it is ready (call with the lock)."""
        if self._stale:
            self._rebundle()
        self._waiting_since = time.monotonic()

    def _rebundle(self) -> None:
        self._stale = False
        self.render_bundle = self._model_to_traits(self._model)

    def _document_patched(self, event: Any) -> None:
        if event.setter is self:  # came from the browser
            return
        self._stale = True
        if self._waiting_since is not None:
            if time.monotonic() - self._waiting_since < self.ready_timeout:
                return  # the bundle made when the view is ready includes it
            self._waiting_since = None
            self._rebundle()  # includes this change
            return
        super()._document_patched(event)

    def _view_ready(self, _event: Any) -> None:
        with self.lock:
            if self._waiting_since is None:
                return
            self._waiting_since = None
            if self._stale:
                self._rebundle()


def _panes(widget: W.Widget) -> list[BokehPane]:
    """The :class:`BokehPane` s in a widget tree."""
    found, stack = [], [widget]
    while stack:
        w = stack.pop()
        if isinstance(w, BokehPane):
            found.append(w)
        stack.extend(getattr(w, "children", None) or ())
    return found


def bokeh_widget(model: Any) -> W.DOMWidget:
    """A Bokeh model as an ipywidget (a :class:`BokehPane`)."""
    return BokehPane(model)


class _Panel:
    """Common machinery: a widget tree, views, a refresh thread, flash messages."""

    title = "Panel"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True):
        self.flash = FlashMessages()
        self.views: list[Any] = []
        self.errors: list[str] = []
        self.refresh_interval = refresh
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.widget: W.Widget = W.VBox()
        self._autostart = autostart and refresh is not None

    # -- refreshing ------------------------------------------------------------------

    def refresh(self) -> None:
        """Refresh every view once (fetch from the cluster, push to the browser)."""
        with self._lock:
            for view in self.views:
                try:
                    view.update()
                except Exception as exc:  # a refresh never takes the panel down
                    msg = f"{type(view).__name__}: {type(exc).__name__}: {exc}"
                    self.errors.append(msg)
                    del self.errors[:-20]
                    logger.debug("refresh failed: %s", msg, exc_info=True)
            self._after_refresh()
            self.refreshes += 1

    def _after_refresh(self) -> None:
        """Hook for panels that derive controls from the refreshed data."""

    def start(self) -> None:
        """Refresh every ``refresh`` seconds in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self.title} refresh",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_interval or 3.0)

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self.stop()
        self.widget.close()

    # -- actions ---------------------------------------------------------------------

    def _action(self, label: str, fn: Callable[[], str | None]) -> Callable[[Any], None]:
        """A button handler that runs ``fn`` and flashes its outcome."""

        def handler(_button: Any = None) -> None:
            try:
                text = fn()
            except Exception as exc:
                self.flash.flash(f"{label} failed: {type(exc).__name__}: {exc}", "error")
                return
            if text:
                self.flash.flash(text, "success")

        return handler

    # -- display ---------------------------------------------------------------------

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) lines of the text/HTML fallback."""
        return []

    def __repr__(self) -> str:
        lines = [f"{self.title} (refreshed {self.refreshes} times)"]
        lines += [f"  {k}: {v}" for k, v in self.summary()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in self.summary())
        return f"<b>{html.escape(self.title)}</b><table>{rows}</table>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        load_bokehjs()
        if self.refreshes == 0:
            self.refresh()
        with self._lock:
            for pane in _panes(self.widget):
                pane.lock = self._lock
                pane.expect_view()
        if self._autostart:
            self.start()
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle["text/plain"] = repr(self)
        bundle.setdefault("text/html", self._repr_html_())
        return bundle


class LiveDashboard(_Panel):
    """Cluster nodes and health, supervised processes, traces (start / stop / export)
    and performance (profiling hotspots), refreshed live.

    Parameters
    ----------
    refresh
        Seconds between refreshes (``None``: only on :meth:`refresh`).
    """

    title = "Foundation live dashboard"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True):
        from foundation_dask.views import (
            ClusterHealthView,
            HotspotsView,
            ProcessesView,
            TracesView,
            TraceTimelineView,
        )

        super().__init__(refresh, autostart)
        self.health = ClusterHealthView()
        self.processes = ProcessesView()
        self.traces = TracesView(include_completed=True)
        self.timeline = TraceTimelineView()
        self.hotspots = HotspotsView(seconds=30)
        self.views = [self.health, self.processes, self.traces]
        self.download = DownloadWidget()

        self.scope_text = W.Text(value="notebook", description="Scope")
        self.options_text = W.Text(value="", description="Options",
                                   placeholder="key=value, flag  or  JSON")
        self.start_button = W.Button(description="Start trace", icon="play")
        self.trace_select = W.Dropdown(description="Trace", options=[])
        self.stop_button = W.Button(description="Stop trace", icon="stop")
        self.export_button = W.Button(description="Export JSON", icon="download")
        self.show_button = W.Button(description="Show timeline", icon="chart-bar")
        self.profile_button = W.Button(description="Profile 3 s", icon="tachometer")
        self.start_button.on_click(self._action("Start trace", self.start_trace))
        self.stop_button.on_click(self._action("Stop trace", self.stop_trace))
        self.export_button.on_click(self._action("Export", self.export_trace))
        self.show_button.on_click(self._action("Timeline", self.show_trace))
        self.profile_button.on_click(self._action("Profiling", self.profile))
        self.traces.on_select(self._on_trace_selected)

        trace_controls = W.VBox([
            W.HBox([self.scope_text, self.options_text, self.start_button]),
            W.HBox([self.trace_select, self.stop_button, self.export_button,
                    self.show_button]),
        ])
        self.tabs = W.Tab(children=[
            bokeh_widget(self.health.root),
            bokeh_widget(self.processes.root),
            W.VBox([trace_controls, bokeh_widget(self.traces.root),
                    bokeh_widget(self.timeline.root), self.download]),
            W.VBox([self.profile_button, bokeh_widget(self.hotspots.root)]),
        ])
        for i, name in enumerate(["Cluster", "Processes", "Traces", "Performance"]):
            self.tabs.set_title(i, name)
        self.widget = W.VBox([W.HTML(f"<h3>{self.title}</h3>"), self.flash, self.tabs])

    def _after_refresh(self) -> None:
        ids = [str(t) for t in self.traces.source.data.get("trace_id", [])]
        if list(self.trace_select.options) != ids:
            current = self.trace_select.value
            self.trace_select.options = ids
            if current in ids:
                self.trace_select.value = current

    def _on_trace_selected(self, trace_id: str | None) -> None:
        if trace_id and trace_id in self.trace_select.options:
            self.trace_select.value = trace_id

    def _selected(self) -> str:
        trace_id = self.trace_select.value
        if not trace_id:
            raise ValueError("no trace selected: start one, or pick one in the list")
        return trace_id

    # actions, each returns its flash text ---------------------------------------------

    def start_trace(self) -> str:
        from foundation_dask import scope

        t = scope.start_cluster_trace(scope=self.scope_text.value or "notebook",
                                      options=self.options_text.value or None)
        self.refresh()
        self.trace_select.value = t.trace_id
        return f"Trace {t.trace_id} started"

    def stop_trace(self) -> str:
        from foundation_dask import scope

        trace_id = self._selected()
        scope.stop_trace(trace_id)
        self.refresh()
        return f"Trace {trace_id} stop requested"

    def export_trace(self) -> str:
        from foundation_dask import scope

        trace_id = self._selected()
        data = scope.collect_trace_data(trace_id)
        self.download.send(data.to_json(), f"trace_{trace_id}.json")
        return f"Trace {trace_id} exported ({data.summary['spans']} events)"

    def show_trace(self) -> str:
        trace_id = self._selected()
        self.timeline.trace_id = trace_id
        self.timeline.update()
        return f"Timeline of {trace_id}: {len(self.timeline.source['spans'].data['name'])} spans"

    def profile(self) -> str:
        from foundation_dask import scope

        scope.start_cluster_profiling(duration_ms=3000)
        report = scope.analyze_cluster_performance()
        self.hotspots.update(report.code_hotspots)
        top = report.code_hotspots["function"].iloc[0] if len(report.code_hotspots) else "-"
        return (f"Profiled {len(report.node_details)} nodes: {len(report.performance_bottlenecks)}"
                f" bottlenecks, top hotspot {top}")

    def summary(self) -> list[tuple[str, str]]:
        data = self.health.source
        table = data["nodes"] if isinstance(data, dict) and "nodes" in data else None
        nodes = len(table.data.get("node", [])) if table is not None else "?"
        return [("nodes", str(nodes)),
                ("processes", str(len(self.processes.source.data.get("name", [])))),
                ("traces", ", ".join(self.trace_select.options) or "none"),
                ("last message", (self.flash.last or {}).get("text", "-"))]


class OptimizationDashboard(_Panel):
    """Active optimizations with progress, best score, workers and history; stop and
    scale buttons acting through the ``control`` channel."""

    title = "DSPEx optimizations"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True,
                 scale_step: int = 1):
        from foundation_dask.views.optimization import (
            OptimizationProgressView,
            OptimizationsView,
            WorkerStatsView,
        )

        super().__init__(refresh, autostart)
        self.scale_step = scale_step
        self.optimizations = OptimizationsView()
        self.progress = OptimizationProgressView()
        self.workers = WorkerStatsView(fetch=self._worker_records)
        self.views = [self.optimizations, self.progress, self.workers]
        self.select = W.Dropdown(description="Optimization", options=[])
        self.select.observe(self._on_select, names="value")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger")
        self.up_button = W.Button(description="Scale up", icon="plus")
        self.down_button = W.Button(description="Scale down", icon="minus")
        self.stop_button.on_click(self._action("Stop", self.stop_optimization))
        self.up_button.on_click(self._action("Scale up", lambda: self.scale("up")))
        self.down_button.on_click(self._action("Scale down", lambda: self.scale("down")))
        self.widget = W.VBox([
            W.HTML(f"<h3>{self.title}</h3>"), self.flash,
            bokeh_widget(self.optimizations.root),
            W.HBox([self.select, self.stop_button, self.up_button, self.down_button]),
            bokeh_widget(self.progress.root), bokeh_widget(self.workers.root),
        ])

    def _worker_records(self) -> list[dict[str, Any]]:
        import foundation_dask as fd

        if not self.progress.optimization_id:
            return []
        handle = fd.ProcessManager.lookup(("optimization_coordinator",
                                           self.progress.optimization_id))
        if handle is None:
            return []
        return list(handle.get_records().result(timeout=10)["evaluations"].values())

    def _after_refresh(self) -> None:
        ids = self.optimizations.ids
        if list(self.select.options) != ids:
            current = self.select.value
            self.select.options = ids
            self.select.value = current if current in ids else (ids[0] if ids else None)

    def _on_select(self, change: dict[str, Any]) -> None:
        self.progress.select(change["new"])

    def _selected(self) -> str:
        if not self.select.value:
            raise ValueError("no optimization selected")
        return self.select.value

    def stop_optimization(self) -> str:
        import foundation_dask as fd

        opt_id = self._selected()
        fd.Channels.broadcast("control", ("stop_optimization", opt_id))
        return f"Stopping optimization {opt_id}"

    def scale(self, direction: str) -> str:
        import foundation_dask as fd

        opt_id = self._selected()
        fd.Channels.broadcast("control", ("scale_optimization", opt_id, direction,
                                          self.scale_step))
        return f"Scaling {direction} optimization {opt_id} by {self.scale_step}"

    def summary(self) -> list[tuple[str, str]]:
        d = self.optimizations.source.data
        rows = [
            (str(i), f"{s}, {p:.0f}% done, best {b}")
            for i, s, p, b in zip(d["optimization_id"], d["status"], d["completion_percent"],
                                  d["current_best_score"], strict=False)
        ]
        return rows or [("optimizations", "none")]


class UnifiedDashboard(_Panel):
    """Cluster health, active traces and optimization progress side by side; selecting
    an optimization shows its trace."""

    title = "Foundation: cluster, traces, optimizations"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True):
        super().__init__(refresh, autostart)
        self.live = LiveDashboard(refresh=None, autostart=False)
        self.opt = OptimizationDashboard(refresh=None, autostart=False)
        self.flash = self.live.flash
        self.opt.flash = self.live.flash
        self.views = [*self.live.views, *self.opt.views]
        self.opt.select.observe(self._show_trace_of, names="value")
        self.widget = W.VBox([
            W.HTML(f"<h3>{self.title}</h3>"), self.flash,
            W.HBox([W.VBox([bokeh_widget(self.live.health.root)],
                           layout=W.Layout(width="50%")),
                    W.VBox([bokeh_widget(self.live.traces.root)],
                           layout=W.Layout(width="50%"))]),
            self.opt.widget.children[2], self.opt.widget.children[3],
            W.HBox([W.VBox([bokeh_widget(self.opt.progress.root)],
                           layout=W.Layout(width="50%")),
                    W.VBox([bokeh_widget(self.live.timeline.root)],
                           layout=W.Layout(width="50%"))]),
        ])

    def _after_refresh(self) -> None:
        self.live._after_refresh()
        self.opt._after_refresh()

    def _show_trace_of(self, change: dict[str, Any]) -> None:
        import foundation_dask as fd

        opt_id = change["new"]
        if not opt_id:
            return
        handle = fd.ProcessManager.lookup(("optimization_coordinator", opt_id))
        info = handle.get_optimization_info().result(timeout=10) if handle else {}
        trace_id = (info.get("config") or {}).get("trace_id")
        if trace_id:
            self.live.timeline.trace_id = trace_id
            try:
                self.live.timeline.update()
                self.live.traces.select(trace_id)
            except Exception as exc:
                self.flash.flash(f"trace {trace_id}: {exc}", "warning")
        else:
            self.flash.flash(f"optimization {opt_id} was not traced (trace=True)", "info")

    def summary(self) -> list[tuple[str, str]]:
        return self.live.summary() + self.opt.summary()
