"""channels (placeholder)."""

from foundation_dask.core.plugin import SchedulerExtension, WorkerExtension


class ChannelHub(SchedulerExtension):
    name = "channels"


class WorkerChannels(WorkerExtension):
    name = "channels"
