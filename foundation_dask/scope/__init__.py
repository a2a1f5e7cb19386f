"""ElixirScope: distributed tracing, trace correlation, cluster profiling and export.

>>> from foundation_dask import scope
>>> with scope.trace("optimize") as t:              # doctest: +SKIP
...     client.gather(client.map(work, range(100)))
>>> data = scope.collect_trace_data(t.trace_id)     # doctest: +SKIP
>>> data.events, data.timeline, data.errors          # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from foundation_dask.scope.context import TraceContext, current, record_event

_LAZY = {
    "ClusterTrace": "foundation_dask.scope.tracing",
    "TraceCoordinator": "foundation_dask.scope.tracing",
    "TraceNotFoundError": "foundation_dask.scope.tracing",
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
}

__all__ = [*sorted(_LAZY), "TraceContext", "current", "record_event"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'foundation_dask.scope' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
