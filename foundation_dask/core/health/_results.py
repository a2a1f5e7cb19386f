"""Any process: the health report (:class:`ClusterHealth`) and the status rules.

Status of a node (worker), worst rule first:

``"unreachable"``
    The scheduler has not heard from the worker for longer than
    ``foundation.health.unreachable-after`` (10 s), or the worker is
    ``closing``, ``closed`` or ``failed``.
``"degraded"``
    CPU above ``foundation.health.degraded-cpu`` (90 %), memory above
    ``foundation.health.degraded-memory`` (85 % of the worker's memory limit),
    event-loop lag above ``foundation.health.degraded-event-loop-lag`` (1 s), or
    a worker status other than ``running`` (``paused``, ``closing_gracefully``,
    ``init``).
``"healthy"``
    None of the above.

:attr:`NodeHealth.reasons` says which rules fired, with the numbers. The
thresholds are read from the scheduler's Dask config and can be overridden per
call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from foundation_dask._html import coloured, html_repr

if TYPE_CHECKING:
    import pandas as pd

#: Name of the custom worker metric carrying the host figures.
WORKER_METRIC = "foundation_host"

HEALTHY, DEGRADED, UNREACHABLE = "healthy", "degraded", "unreachable"
STATUSES = (HEALTHY, DEGRADED, UNREACHABLE)

_STATUS_COLOURS = {HEALTHY: "#2e7d32", DEGRADED: "#ef6c00", UNREACHABLE: "#c62828"}


@dataclass
class NodeHealth:
    """Health of one node (a Dask worker).

    Attributes
    ----------
    node
        Worker address.
    name
        Worker name.
    status
        ``"healthy"``, ``"degraded"`` or ``"unreachable"`` (rules in :mod:`health
        <foundation_dask.core.health>`).
    reasons
        Why the node is not healthy, one string per rule that fired.
    host
        Host name of the worker's machine.
    load_avg
        1-minute load average of the host (``None`` until the first heartbeat
        carrying it).
    load_per_core
        ``load_avg / cores``.
    cores
        Logical CPUs of the host.
    nthreads
        Dask threads of the worker.
    cpu
        CPU use of the worker process, percent (may exceed 100 with several threads).
    memory
        Memory of the worker process, percent of its memory limit (``None`` without limit).
    memory_bytes, memory_limit
        Memory of the worker process and its limit (0: none), bytes.
    process_count
        Foundation processes hosted on the worker.
    threads
        OS threads of the worker process.
    tasks
        Tasks assigned to the worker (processing).
    executing
        Tasks executing at the last heartbeat.
    event_loop_lag
        How much longer than planned the worker's event-loop ticks took, seconds.
    last_seen
        Seconds since the scheduler last heard from the worker.
    worker_status
        Dask's status of the worker (``running``, ``paused``...).
    """

    node: str
    name: str
    status: str
    reasons: list[str] = field(default_factory=list)
    host: str = ""
    load_avg: float | None = None
    load_per_core: float | None = None
    cores: int | None = None
    nthreads: int = 0
    cpu: float = 0.0
    memory: float | None = None
    memory_bytes: int = 0
    memory_limit: int = 0
    process_count: int = 0
    threads: int | None = None
    tasks: int = 0
    executing: int = 0
    event_loop_lag: float = 0.0
    last_seen: float = 0.0
    worker_status: str = "running"


@dataclass
class ClusterInfo:
    """Nodes of the cluster: ``connected_nodes`` and one :class:`NodeHealth` each."""

    connected_nodes: int
    node_health: list[NodeHealth] = field(default_factory=list)


@dataclass
class MemoryUsage:
    """Memory of all worker processes: ``bytes`` used, summed ``limit`` and ``percent``."""

    bytes: int = 0
    limit: int = 0
    percent: float | None = None


@dataclass
class PerformanceMetrics:
    """Cluster rates over the scheduler's sliding window of ``window`` seconds.

    Attributes
    ----------
    message_throughput_per_sec
        Channel messages per second (0 when the channels hub keeps no count).
    messages_total
        Cumulative channel messages, or ``None`` when not counted.
    tasks_per_sec
        Tasks finished per second.
    tasks_total
        Tasks finished since the health extension started.
    transitions_per_sec
        Scheduler task-state transitions per second.
    window
        Seconds the rates are computed over (rates are 0 until the scheduler has
        kept at least 0.1 s of history).
    memory_usage
        Memory of all workers.
    """

    message_throughput_per_sec: float = 0.0
    messages_total: int | None = None
    tasks_per_sec: float = 0.0
    tasks_total: int = 0
    transitions_per_sec: float = 0.0
    window: float = 0.0
    memory_usage: MemoryUsage = field(default_factory=MemoryUsage)


_FRAME_COLUMNS = [f.name for f in NodeHealth.__dataclass_fields__.values()]

#: (header, attribute, formatter) of the text and HTML tables.
_TABLE: list[tuple[str, str, Callable[[Any], str]]] = [
    ("name", "name", str),
    ("node", "node", str),
    ("status", "status", str),
    ("load", "load_avg", lambda v: "-" if v is None else f"{v:.2f}"),
    ("load/core", "load_per_core", lambda v: "-" if v is None else f"{v:.2f}"),
    ("cores", "cores", lambda v: "-" if v is None else str(v)),
    ("threads", "nthreads", str),
    ("cpu %", "cpu", lambda v: f"{v:.1f}"),
    ("mem %", "memory", lambda v: "-" if v is None else f"{v:.1f}"),
    ("memory", "memory_bytes", format_bytes),
    ("procs", "process_count", str),
    ("tasks", "tasks", str),
    ("lag", "event_loop_lag", lambda v: f"{v:.3f}s"),
    ("seen", "last_seen", lambda v: f"{v:.1f}s ago"),
    ("reasons", "reasons", lambda v: "; ".join(v)),
]


@dataclass
class ClusterHealth:
    """Result of :meth:`HealthMonitor.get_cluster_health`.

    Attributes
    ----------
    cluster
        ``connected_nodes`` and ``node_health`` (one :class:`NodeHealth` per worker).
    performance
        Cluster rates and memory (:class:`PerformanceMetrics`).
    timestamp
        Scheduler wall-clock time of the report, seconds since the epoch.
    thresholds
        The status thresholds used (``degraded_cpu``, ``degraded_memory``,
        ``degraded_event_loop_lag``, ``unreachable_after``).
    """

    cluster: ClusterInfo
    performance: PerformanceMetrics
    timestamp: float
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterHealth:
        """Build from the ``foundation_health`` reply."""
        nodes = [
            NodeHealth(**{**n, "reasons": list(n["reasons"])})
            for n in data["cluster"]["node_health"]
        ]
        perf = dict(data["performance"])
        perf["memory_usage"] = MemoryUsage(**perf["memory_usage"])
        return cls(
            cluster=ClusterInfo(data["cluster"]["connected_nodes"], nodes),
            performance=PerformanceMetrics(**perf),
            timestamp=data["timestamp"],
            thresholds=dict(data.get("thresholds") or {}),
        )

    @property
    def nodes(self) -> list[NodeHealth]:
        """Shortcut for ``cluster.node_health``."""
        return self.cluster.node_health

    def node(self, key: str) -> NodeHealth:
        """The node with address or name ``key``."""
        for n in self.nodes:
            if key in (n.node, n.name):
                return n
        raise KeyError(f"no node {key!r} in this report; nodes: {[n.name for n in self.nodes]}")

    def counts(self) -> dict[str, int]:
        """Number of nodes per status."""
        out = dict.fromkeys(STATUSES, 0)
        for n in self.nodes:
            out[n.status] = out.get(n.status, 0) + 1
        return out

    @property
    def status(self) -> str:
        """``"healthy"`` when every node is, ``"critical"`` when none is (or there are no
        nodes), else ``"degraded"``."""
        counts = self.counts()
        if not self.nodes or counts[HEALTHY] == 0:
            return "critical"
        return HEALTHY if counts[HEALTHY] == len(self.nodes) else DEGRADED

    def available_capacity(self) -> float:
        """Spare CPU of the hosts with a healthy node, in cores.

        For each host running at least one ``healthy`` node, ``max(0, cores -
        load_avg)`` with the host's logical CPU count and 1-minute load average;
        summed over hosts. Workers sharing a host share its cores and load, so a
        host is counted once. Hosts whose load is not known yet count 0.
        """
        hosts: dict[str, tuple[float, float, float]] = {}  # host -> (last_seen, cores, load)
        for n in self.nodes:
            if n.status != HEALTHY or n.load_avg is None or not n.cores:
                continue
            seen = hosts.get(n.host)
            if seen is None or n.last_seen < seen[0]:
                hosts[n.host] = (n.last_seen, n.cores, n.load_avg)
        return float(sum(max(0.0, cores - load) for _, cores, load in hosts.values()))

    def to_frame(self) -> pd.DataFrame:
        """One row per node, the fields of :class:`NodeHealth` as columns (``reasons``
        joined with ``"; "``)."""
        import pandas as pd

        rows = []
        for n in self.nodes:
            row = asdict(n)
            row["reasons"] = "; ".join(n.reasons)
            rows.append(row)
        return pd.DataFrame(rows, columns=_FRAME_COLUMNS)

    def _summary(self) -> str:
        return f"Cluster health {self._state()}"

    def _state(self) -> str:
        counts = self.counts()
        perf = self.performance
        mem = perf.memory_usage
        mem_text = format_bytes(mem.bytes)
        if mem.percent is not None:
            mem_text += f" ({mem.percent:.1f}% of {format_bytes(mem.limit)})"
        when = datetime.fromtimestamp(self.timestamp).isoformat(sep=" ", timespec="seconds")
        return (
            f"at {when}: {self.status}, {self.cluster.connected_nodes} nodes "
            f"({counts[HEALTHY]} healthy, {counts[DEGRADED]} degraded, "
            f"{counts[UNREACHABLE]} unreachable); "
            f"{perf.message_throughput_per_sec:.1f} msg/s, {perf.tasks_per_sec:.1f} tasks/s, "
            f"memory {mem_text}, spare capacity {self.available_capacity():.1f} cores"
        )

    def __str__(self) -> str:
        cells = [[fmt(getattr(n, attr)) for _, attr, fmt in _TABLE] for n in self.nodes]
        headers = [h for h, _, _ in _TABLE]
        widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

        def line(row: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

        lines = [self._summary(), line(headers)] + [line(row) for row in cells]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = []
        for n in self.nodes:
            cells: list[Any] = []
            for _, attr, fmt in _TABLE:
                text = fmt(getattr(n, attr))
                if attr == "status":
                    cells.append(coloured(text, _STATUS_COLOURS.get(n.status, "inherit")))
                else:
                    cells.append(text)
            rows.append(cells)
        return html_repr(str(self), "Cluster health", summary=self._state(),
                         header=[h for h, _, _ in _TABLE], rows=rows)
