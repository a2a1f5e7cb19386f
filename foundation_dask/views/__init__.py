"""Client and scheduler: Bokeh views of the cluster, shared by notebook panels and the
Dask dashboard pages.

Every view has ``source`` (the data), ``root`` (the model to embed) and
``update(data=None)`` (refresh from ``data`` or from its fetch function); see
:mod:`foundation_dask.views.base`.

>>> from foundation_dask.views import ClusterHealthView
>>> view = ClusterHealthView()          # doctest: +SKIP
>>> view.update()                       # doctest: +SKIP
>>> bokeh.io.show(view.root)            # doctest: +SKIP

Importing this package imports Bokeh; ``foundation_dask`` itself does not. The
dashboard pages built from the views are in :mod:`foundation_dask.views.pages`.
"""

from __future__ import annotations

from foundation_dask.views.base import STATUS_COLOURS, View
from foundation_dask.views.cluster import ClusterHealthView
from foundation_dask.views.optimization import (
    OptimizationProgressView,
    OptimizationsView,
    WorkerStatsView,
)
from foundation_dask.views.processes import ProcessesView
from foundation_dask.views.profiling import FlameGraphView, HotspotsView, SchedulerExtensionsView
from foundation_dask.views.traces import TracesView, TraceTimelineView

__all__ = [
    "STATUS_COLOURS",
    "ClusterHealthView",
    "FlameGraphView",
    "HotspotsView",
    "OptimizationProgressView",
    "OptimizationsView",
    "ProcessesView",
    "SchedulerExtensionsView",
    "TraceTimelineView",
    "TracesView",
    "View",
    "WorkerStatsView",
]
