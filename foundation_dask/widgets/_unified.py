"""Client: :class:`UnifiedDashboard`, cluster health, traces and optimizations side by
side in one notebook panel."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from foundation_dask.core.processes import ProcessManager, SingletonHandle
from foundation_dask.dspex.orchestration import coordinator_name
from foundation_dask.widgets._base import Panel, bokeh_widget, panel_doc
from foundation_dask.widgets._live import LiveDashboard
from foundation_dask.widgets._optimization import OptimizationDashboard


@panel_doc
class UnifiedDashboard(Panel):
    """Cluster health, active traces and optimization progress side by side; selecting
    an optimization shows its trace.

    %(panel_parameters)s
    """

    title = "Foundation: cluster, traces, optimizations"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True) -> None:
        super().__init__(refresh, autostart)
        self.live = LiveDashboard(refresh=None, autostart=False)
        self.opt = OptimizationDashboard(refresh=None, autostart=False)
        self.live._lock = self.opt._lock = self._lock  # one lock for every pane shown
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
        opt_id = change["new"]
        if not opt_id:
            return
        handle = ProcessManager.lookup(coordinator_name(opt_id))
        info = (handle.get_optimization_info().result(timeout=10)
                if isinstance(handle, SingletonHandle) else {})  # a coordinator is a singleton
        trace_id = (info.get("config") or {}).get("trace_id")
        if not trace_id:
            self.flash.flash(f"optimization {opt_id} was not traced (trace=True)", "info")
            return
        with self.changing():  # also called from the page, on a kernel subshell's thread
            self.live.timeline.trace_id = trace_id  # followed while active (LiveDashboard)
            try:
                self.live.timeline.update()
                self.live.traces.select(trace_id)
            except Exception as exc:
                self.flash.flash(f"trace {trace_id}: {exc}", "warning")

    def summary(self) -> list[tuple[str, str]]:
        """The lines of the live and the optimization panels."""
        return self.live.summary() + self.opt.summary()


__all__ = ["UnifiedDashboard"]
