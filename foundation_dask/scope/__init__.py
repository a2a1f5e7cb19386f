"""Any process: ElixirScope, distributed tracing, trace correlation, cluster profiling and
export.

>>> from foundation_dask import scope
>>> with scope.trace("optimize") as t:              # doctest: +SKIP
...     client.gather(client.map(work, range(100)))
>>> data = scope.collect_trace_data(t.trace_id)     # doctest: +SKIP
>>> data.events, data.timeline, data.errors          # doctest: +SKIP

Where each part runs: :mod:`~foundation_dask.scope.tracing` (traces and spans, in
clients and workers), :mod:`~foundation_dask.scope.collect` (collection in a client,
correlation anywhere), :mod:`~foundation_dask.scope.profiling` (a sampler on every
worker, the analysis in the client), :mod:`~foundation_dask.scope.export` (any
process); the scheduler and worker sides of the Foundation plugins are
``_scheduler_plugin`` and ``_worker_plugin`` (listed in the dask config
``foundation.extensions``), and the scheduler's readers for dashboards ``_readers``.
The names below are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation_dask._lazy import attach
from foundation_dask.tracecontext import TraceContext, current, record_event

if TYPE_CHECKING:  # what the lazy names below resolve to, for editors and type checkers
    from foundation_dask.errors import TraceNotFoundError
    from foundation_dask.scope._readers import (
        scheduler_profile,
        scheduler_trace_data,
        scheduler_traces,
    )
    from foundation_dask.scope.collect import TraceData, collect_trace_data
    from foundation_dask.scope.profiling import (
        PerformanceReport,
        analyze_cluster_performance,
        start_cluster_profiling,
    )
    from foundation_dask.scope.tracing import (
        ClusterTrace,
        TraceCoordinator,
        active_traces,
        continue_trace,
        forget_trace,
        parse_trace_options,
        span,
        start_cluster_trace,
        stop_trace,
        trace,
        traced,
    )

_LAZY = {
    "ClusterTrace": "foundation_dask.scope.tracing",
    "TraceCoordinator": "foundation_dask.scope.tracing",
    "TraceNotFoundError": "foundation_dask.errors",
    "active_traces": "foundation_dask.scope.tracing",
    "continue_trace": "foundation_dask.scope.tracing",
    "forget_trace": "foundation_dask.scope.tracing",
    "parse_trace_options": "foundation_dask.scope.tracing",
    "span": "foundation_dask.scope.tracing",
    "start_cluster_trace": "foundation_dask.scope.tracing",
    "stop_trace": "foundation_dask.scope.tracing",
    "trace": "foundation_dask.scope.tracing",
    "traced": "foundation_dask.scope.tracing",
    "TraceData": "foundation_dask.scope.collect",
    "collect_trace_data": "foundation_dask.scope.collect",
    "start_cluster_profiling": "foundation_dask.scope.profiling",
    "analyze_cluster_performance": "foundation_dask.scope.profiling",
    "PerformanceReport": "foundation_dask.scope.profiling",
    "scheduler_traces": "foundation_dask.scope._readers",
    "scheduler_trace_data": "foundation_dask.scope._readers",
    "scheduler_profile": "foundation_dask.scope._readers",
}

__all__ = [
    "ClusterTrace", "PerformanceReport", "TraceCoordinator", "TraceData", "TraceNotFoundError",
    "active_traces", "analyze_cluster_performance", "collect_trace_data", "continue_trace",
    "forget_trace", "parse_trace_options", "scheduler_profile", "scheduler_trace_data",
    "scheduler_traces", "span", "start_cluster_profiling", "start_cluster_trace", "stop_trace",
    "trace", "traced", "TraceContext", "current", "record_event",
]


__getattr__, __dir__ = attach(__name__, _LAZY)
