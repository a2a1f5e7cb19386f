"""health (placeholder)."""

from foundation_dask.core.plugin import SchedulerExtension, WorkerExtension


class HealthExtension(SchedulerExtension):
    name = "health"


class WorkerHealth(WorkerExtension):
    name = "health"
