"""Any process: names shared by the parts of ElixirScope.

The process names of trace coordinators (the client starts and finds them, the
scheduler reads their records for the dashboard) and the columns of a collected
trace's events (collection builds them, the exporters read them).
"""

from __future__ import annotations

#: First element of the name of every trace coordinator: ``("trace_coordinator", id)``.
COORDINATOR = "trace_coordinator"

#: Columns of ``TraceData.events``, in order.
EVENT_COLUMNS = [
    "trace_id", "span_id", "parent_id", "name", "kind", "node", "pid", "host", "thread",
    "thread_id", "start_ns", "end_ns", "start", "end", "duration_ms", "status", "error_type",
    "error_message", "traceback", "key", "attrs", "clock_offset_ms",
]


def coordinator_name(trace_id: str) -> tuple[str, str]:
    """The supervised-process name of the coordinator of ``trace_id``."""
    return (COORDINATOR, trace_id)
