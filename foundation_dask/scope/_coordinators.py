"""Client: finding the coordinators of traces.

Every cluster trace has a :class:`~foundation_dask.scope.TraceCoordinator`, a supervised
process named ``("trace_coordinator", trace_id)``; starting, stopping, listing and
collecting traces reach it through these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from foundation_dask.core.processes import ProcessManager
from foundation_dask.errors import TraceNotFoundError
from foundation_dask.scope._names import COORDINATOR, coordinator_name

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.processes import SingletonHandle


def coordinator(trace_id: str, client: distributed.Client) -> SingletonHandle:
    """A handle on the coordinator of ``trace_id``.

    Raises
    ------
    TraceNotFoundError
        If no trace has that id (the message lists the known ones).
    """
    handle = ProcessManager.lookup(coordinator_name(trace_id), client=client)
    if handle is None or isinstance(handle, dict):  # a coordinator is a singleton
        known = [t["trace_id"] for t in trace_infos(client)]
        raise TraceNotFoundError(
            f"No trace {trace_id!r}. Known traces: {known or 'none'}; start one with "
            "scope.start_cluster_trace() or scope.trace().",
            trace_id=trace_id,
        )
    return handle


def trace_infos(client: distributed.Client) -> list[dict[str, Any]]:
    """The record of every trace coordinator that answers (see
    :meth:`~foundation_dask.scope.TraceCoordinator.get_trace_info`)."""
    infos = []
    for _, handle in ProcessManager.find(COORDINATOR, client=client):
        try:
            infos.append(handle.get_trace_info().result())
        except Exception:  # a coordinator being restarted or stopped meanwhile
            continue
    return infos
