"""Client: :class:`LiveDashboard`, the notebook panel of the cluster, its processes, its
traces and its hotspots."""

from __future__ import annotations

import time

import ipywidgets as W

from foundation_dask import scope
from foundation_dask.views import (
    ClusterHealthView,
    HotspotsView,
    ProcessesView,
    TracesView,
    TraceTimelineView,
)
from foundation_dask.widgets._base import Panel, bokeh_widget, controls_row, panel_doc
from foundation_dask.widgets._frontend import DownloadWidget


@panel_doc
class LiveDashboard(Panel):
    """Cluster nodes and health, supervised processes, traces (start / stop / export)
    and performance (profiling hotspots), refreshed live.

    %(panel_parameters)s
    """

    title = "Foundation live dashboard"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True) -> None:
        super().__init__(refresh, autostart)
        self.health = ClusterHealthView()
        self.processes = ProcessesView()
        self.traces = TracesView(include_completed=True)
        self.timeline = TraceTimelineView()
        self.hotspots = HotspotsView(seconds=30)
        self.views = [self.health, self.processes, self.traces]
        self.download = DownloadWidget()
        self._followed: dict[str, str | None] = {}  # the followed trace's last status
        self._timeline_next = 0.0  # monotonic time of the next timeline update allowed

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
            controls_row(self.scope_text, self.options_text, self.start_button),
            controls_row(self.trace_select, self.stop_button, self.export_button,
                         self.show_button),
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
        self._follow_timeline()

    #: Share of one core the followed timeline may take on average: after an update that
    #: cost ``c`` seconds of CPU, the next waits ``c / timeline_cpu_share`` seconds (a
    #: 10,000-span trace is redrawn every 8 s or so, a 1,000-span one at every refresh;
    #: sending the redraw costs about as much again, in the same tick).
    timeline_cpu_share = 0.005

    def _follow_timeline(self) -> None:
        """Refresh the timeline shown while its trace is active, and once when it ends
        (so that the last spans and the final status show)."""
        trace_id = self.timeline.trace_id
        if not trace_id:
            return
        data = self.traces.source.data
        status = dict(zip(data.get("trace_id", []), data.get("status", []),
                          strict=False)).get(trace_id)
        was = self._followed.get(trace_id)
        self._followed = {trace_id: status}
        ended = was == "active" and status != "active"
        due = status == "active" and time.monotonic() >= self._timeline_next
        if not (ended or due):
            return
        t0 = time.thread_time()
        try:
            self.timeline.update()
        except Exception as exc:  # the trace is being collected or was dropped
            self.errors.append(f"TraceTimelineView: {type(exc).__name__}: {exc}")
            del self.errors[:-20]
        cost = time.thread_time() - t0
        self._timeline_next = time.monotonic() + cost / self.timeline_cpu_share

    def _on_trace_selected(self, trace_id: str | None) -> None:
        if trace_id and trace_id in self.trace_select.options:
            self.trace_select.value = trace_id

    def _selected(self) -> str:
        trace_id = self.trace_select.value
        if not trace_id:
            raise ValueError("no trace selected: start one, or pick one in the list")
        return trace_id

    # actions, each returns its flash text (the buttons call them) ----------------------

    def start_trace(self) -> str:
        """Start a cluster trace with the scope and options typed in; select it."""
        t = scope.start_cluster_trace(scope=self.scope_text.value or "notebook",
                                      options=self.options_text.value or None)
        self.refresh()
        self.trace_select.value = t.trace_id
        return f"Trace {t.trace_id} started"

    def stop_trace(self) -> str:
        """Stop the selected trace."""
        trace_id = self._selected()
        scope.stop_trace(trace_id)
        self.refresh()
        return f"Trace {trace_id} stop requested"

    def export_trace(self) -> str:
        """Collect the selected trace and download it as JSON."""
        trace_id = self._selected()
        data = scope.collect_trace_data(trace_id)
        self.download.send(data.to_json(), f"trace_{trace_id}.json")
        return f"Trace {trace_id} exported ({data.summary['spans']} events)"

    def show_trace(self) -> str:
        """Collect the selected trace and show its timeline."""
        trace_id = self._selected()
        self.timeline.trace_id = trace_id
        self.timeline.update()
        return f"Timeline of {trace_id}: {len(self.timeline.source['spans'].data['name'])} spans"

    def profile(self) -> str:
        """Profile the cluster for 3 seconds and show the hotspots."""
        scope.start_cluster_profiling(duration_ms=3000)
        report = scope.analyze_cluster_performance()
        self.hotspots.update(report.code_hotspots)
        top = report.code_hotspots["function"].iloc[0] if len(report.code_hotspots) else "-"
        return (f"Profiled {len(report.node_details)} nodes: {len(report.performance_bottlenecks)}"
                f" bottlenecks, top hotspot {top}")

    def summary(self) -> list[tuple[str, str]]:
        """Nodes, processes, traces and the last message."""
        data = self.health.source
        table = data["nodes"] if isinstance(data, dict) and "nodes" in data else None
        nodes = len(table.data.get("node", [])) if table is not None else "?"
        return [("nodes", str(nodes)),
                ("processes", str(len(self.processes.source.data.get("name", [])))),
                ("traces", ", ".join(self.trace_select.options) or "none"),
                ("last message", (self.flash.last or {}).get("text", "-"))]


__all__ = ["LiveDashboard"]
