"""Client: :class:`OptimizationDashboard`, the notebook panel of the cluster's DSPEx
optimizations and evaluations, with stop and scale buttons."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from foundation_dask.core.channels import Channels
from foundation_dask.core.processes import ProcessManager, SingletonHandle
from foundation_dask.dspex.orchestration import coordinator_name
from foundation_dask.views.optimization import (
    EvaluationsView,
    OptimizationProgressView,
    OptimizationsView,
    WorkerStatsView,
)
from foundation_dask.widgets._base import Panel, bokeh_widget, controls_row, panel_doc


@panel_doc
class OptimizationDashboard(Panel):
    """Active optimizations with progress, best score, workers and history; stop and
    scale buttons acting through the ``control`` channel; below them the evaluations
    running on the cluster (``dspex.Evaluate``, and DSPy's own optimizers inside
    ``dspex.on_cluster()``), from their progress on ``telemetry``.

    %(panel_parameters)s
    scale_step
        Workers the scale buttons add or remove.
    """

    title = "DSPEx optimizations"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True,
                 scale_step: int = 1) -> None:
        super().__init__(refresh, autostart)
        self.scale_step = scale_step
        self.optimizations = OptimizationsView()
        self.progress = OptimizationProgressView()
        self.workers = WorkerStatsView(fetch=self._worker_records)
        self.evaluations = EvaluationsView()
        self.views = [self.optimizations, self.progress, self.workers, self.evaluations]
        self._telemetry: Any = None
        self.select = W.Dropdown(description="Optimization", options=[],
                                 style={"description_width": "initial"})
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
            controls_row(self.select, self.stop_button, self.up_button, self.down_button),
            bokeh_widget(self.progress.root), bokeh_widget(self.workers.root),
            bokeh_widget(self.evaluations.root),
        ])
        self._listen()

    def _listen(self) -> None:
        """Follow the evaluations' progress on ``telemetry`` (in the subscription's own
        thread, so also while a cell of this kernel runs them)."""
        if self._telemetry is None or self._telemetry.closed:
            self._telemetry = Channels.subscribe(
                "telemetry", lambda msg: self.evaluations.note(msg.payload))

    def close(self) -> None:
        """Stop refreshing, stop following the evaluations and close the widgets."""
        if self._telemetry is not None:
            self._telemetry.close()
        super().close()

    def _worker_records(self) -> list[dict[str, Any]]:
        if not self.progress.optimization_id:
            return []
        handle = ProcessManager.lookup(coordinator_name(self.progress.optimization_id))
        if not isinstance(handle, SingletonHandle):  # a coordinator is a singleton
            return []
        return list(handle.get_records().result(timeout=10)["evaluations"].values())

    def _after_refresh(self) -> None:
        ids = self.optimizations.ids
        if list(self.select.options) != ids:
            current = self.select.value
            self.select.options = ids
            self.select.value = current if current in ids else (ids[0] if ids else None)

    def _on_select(self, change: dict[str, Any]) -> None:
        # from the refresh, or from the page (a kernel subshell's thread): show it now
        with self.changing():
            self.progress.select(change["new"])
            for view in (self.progress, self.workers):
                try:
                    view.update()
                except Exception as exc:  # the next refresh tries again
                    self.errors.append(f"{type(view).__name__}: {type(exc).__name__}: {exc}")
                    del self.errors[:-20]

    def _selected(self) -> str:
        if not self.select.value:
            raise ValueError("no optimization selected")
        return self.select.value

    def stop_optimization(self) -> str:
        """Ask the selected optimization to stop (on the ``control`` channel)."""
        opt_id = self._selected()
        Channels.broadcast("control", ("stop_optimization", opt_id))
        return f"Stopping optimization {opt_id}"

    def scale(self, direction: str) -> str:
        """Ask the selected optimization to scale ``"up"`` or ``"down"`` by
        :attr:`scale_step` workers (on the ``control`` channel)."""
        opt_id = self._selected()
        Channels.broadcast("control", ("scale_optimization", opt_id, direction,
                                       self.scale_step))
        return f"Scaling {direction} optimization {opt_id} by {self.scale_step}"

    def summary(self) -> list[tuple[str, str]]:
        """One line per optimization: status, progress, best score."""
        d = self.optimizations.source.data
        rows = [
            (str(i), f"{s}, {p:.0f}% done, best {b}")
            for i, s, p, b in zip(d["optimization_id"], d["status"], d["completion_percent"],
                                  d["current_best_score"], strict=False)
        ]
        return rows or [("optimizations", "none")]


__all__ = ["OptimizationDashboard"]
