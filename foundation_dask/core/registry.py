"""registry (placeholder)."""

from foundation_dask.core.plugin import SchedulerExtension


class RegistryExtension(SchedulerExtension):
    name = "registry"
