"""Scheduler: the ``/individual-foundation-overview`` page, the unified dashboard.

Cluster health, traces and DSPEx optimizations side by side, with the progress of the
newest optimization; the optimizations are read from their coordinators' checkpoints
on the scheduler.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from bokeh.layouts import column, row

from foundation_dask._pages import register_page
from foundation_dask.core.health import scheduler_health
from foundation_dask.dspex.orchestration import scheduler_optimizations
from foundation_dask.scope import scheduler_traces
from foundation_dask.views.cluster import ClusterHealthView
from foundation_dask.views.optimization import OptimizationProgressView, OptimizationsView
from foundation_dask.views.traces import TracesView

if TYPE_CHECKING:
    from collections.abc import Callable

    import distributed
    from bokeh.document import Document

#: Milliseconds between refreshes.
REFRESH_MS = 2000


def overview_document(scheduler: distributed.Scheduler,
                      doc: Document) -> tuple[Any, Callable[[], None]]:
    """Health, traces and optimizations of ``scheduler``'s cluster."""
    health = ClusterHealthView(fetch=partial(scheduler_health, scheduler))
    traces = TracesView(include_completed=True,
                        fetch=partial(scheduler_traces, scheduler, True))
    optimizations = OptimizationsView()
    progress = OptimizationProgressView()

    def refresh() -> None:
        health.update()
        traces.update()
        states = sorted(scheduler_optimizations(scheduler),
                        key=lambda s: s.get("started_at") or 0, reverse=True)
        optimizations.update(states)
        if states:
            progress.select(states[0]["optimization_id"])
            progress.update(list(states[0]["history"]))

    # nodes and optimizations on the left, traces and the score plot on the right: the
    # short tables sit above the tall views, no blank band beside either
    root = row(column(health.root, optimizations.root, sizing_mode="stretch_width"),
               column(traces.root, progress.root, sizing_mode="stretch_width"),
               sizing_mode="stretch_width")
    return root, refresh


PAGE = register_page("overview", overview_document, title="overview", refresh_ms=REFRESH_MS)
