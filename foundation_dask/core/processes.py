"""processes (placeholder)."""

from foundation_dask.core.plugin import SchedulerExtension, WorkerExtension


class Supervisor(SchedulerExtension):
    name = "processes"


class WorkerProcesses(WorkerExtension):
    name = "processes"
