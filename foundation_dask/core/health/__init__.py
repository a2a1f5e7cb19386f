"""Any process: cluster health, per-node status, load and resource use, cluster throughput.

:meth:`HealthMonitor.get_cluster_health` makes one round trip to the scheduler,
which builds the report from what Dask already collects with every worker heartbeat
(``WorkerState.metrics``) plus the host figures :class:`WorkerHealth` adds to those
heartbeats. The status rules are in :mod:`foundation_dask.core.health._results`.

>>> import foundation_dask as fd
>>> health = fd.HealthMonitor.get_cluster_health()          # doctest: +SKIP
>>> health.cluster.connected_nodes                          # doctest: +SKIP
2
>>> health.to_frame()                                       # doctest: +SKIP
"""

from foundation_dask.core.health._facade import HealthMonitor
from foundation_dask.core.health._results import (
    DEGRADED,
    HEALTHY,
    STATUSES,
    UNREACHABLE,
    WORKER_METRIC,
    ClusterHealth,
    ClusterInfo,
    MemoryUsage,
    NodeHealth,
    PerformanceMetrics,
)
from foundation_dask.core.health._scheduler_plugin import (
    HealthExtension,
    RateWindow,
    health_report,
    health_thresholds,
    scheduler_health,
)
from foundation_dask.core.health._worker_plugin import WorkerHealth

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "STATUSES",
    "UNREACHABLE",
    "WORKER_METRIC",
    "ClusterHealth",
    "ClusterInfo",
    "HealthExtension",
    "HealthMonitor",
    "MemoryUsage",
    "NodeHealth",
    "PerformanceMetrics",
    "RateWindow",
    "WorkerHealth",
    "health_report",
    "health_thresholds",
    "scheduler_health",
]
