"""Cluster health: per-node status, load and resource use, cluster throughput.

:meth:`HealthMonitor.get_cluster_health` makes one round trip to the scheduler,
which builds the report from what Dask already collects with every worker
heartbeat (``WorkerState.metrics``: CPU, memory, event-loop interval, task
counts) plus a few host figures that :class:`WorkerHealth` adds to those
heartbeats (load average, host CPU count, OS threads of the worker process).

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

>>> import foundation_dask as fd
>>> health = fd.HealthMonitor.get_cluster_health()          # doctest: +SKIP
>>> health.cluster.connected_nodes                          # doctest: +SKIP
2
>>> health.to_frame()                                       # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dask.config
import distributed
import psutil
from dask.utils import format_bytes, parse_timedelta
from distributed.diagnostics.plugin import SchedulerPlugin

from foundation_dask import config
from foundation_dask.core._client import current_client
from foundation_dask.core.plugin import SchedulerExtension, WorkerExtension, scheduler_extension

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: Name of the custom worker metric carrying the host figures.
WORKER_METRIC = "foundation_host"

#: Worker statuses that make a node unreachable / degraded.
_GONE_STATUSES = frozenset({"closing", "closed", "failed"})

HEALTHY, DEGRADED, UNREACHABLE = "healthy", "degraded", "unreachable"
STATUSES = (HEALTHY, DEGRADED, UNREACHABLE)

_STATUS_COLOURS = {HEALTHY: "#2e7d32", DEGRADED: "#ef6c00", UNREACHABLE: "#c62828"}


# --------------------------------------------------------------------------- worker side


def _load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not on Linux/macOS
        return psutil.getloadavg()


class WorkerHealth(WorkerExtension):
    """Adds the host figures to the worker's heartbeat metrics.

    The metric :data:`WORKER_METRIC` is a ``dict`` with ``load_avg`` (1, 5 and 15
    minute load averages of the host), ``cpu_count`` (logical CPUs of the host),
    ``threads`` (OS threads of the worker process) and ``hostname``.
    """

    name = "health"

    async def setup(self) -> None:
        self._process = psutil.Process()
        self._hostname = socket.gethostname()
        self.worker.metrics[WORKER_METRIC] = self.host_metrics

    async def teardown(self) -> None:
        self.worker.metrics.pop(WORKER_METRIC, None)

    def host_metrics(self, worker: distributed.Worker) -> dict[str, Any]:
        """The host figures sent with each heartbeat."""
        try:
            threads: int | None = self._process.num_threads()
        except psutil.Error:  # pragma: no cover - process vanishing
            threads = None
        return {
            "load_avg": [float(x) for x in _load_average()],
            "cpu_count": psutil.cpu_count() or os.cpu_count() or 1,
            "threads": threads,
            "hostname": self._hostname,
        }


# --------------------------------------------------------------------------- scheduler side


class _TransitionForwarder(SchedulerPlugin):
    """Forwards task transitions to :meth:`HealthExtension.transition`.

    Only installed when the Foundation scheduler plugin does not forward them itself.
    """

    name = "foundation-health-transitions"

    def __init__(self, extension: HealthExtension) -> None:
        self.extension = extension

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.extension.transition(key, start, finish, *args, **kwargs)


def _counter_value(obj: Any, attr: str) -> int | None:
    value = getattr(obj, attr, None)
    if callable(value):
        value = value()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return None


class HealthExtension(SchedulerExtension):
    """Scheduler side of health: the ``foundation_health`` handler.

    Keeps a sliding window (:attr:`window` seconds, sampled every
    :attr:`sample_interval` seconds) of cumulative counters (channel messages,
    finished tasks, scheduler transitions) from which the rates of
    :class:`PerformanceMetrics` are computed.
    """

    name = "health"

    #: Length in seconds of the window over which rates are computed.
    window: float = 10.0
    #: Seconds between two samples of the counters.
    sample_interval: float = 1.0

    def __init__(self, scheduler: distributed.Scheduler, plugin: Any):
        super().__init__(scheduler, plugin)
        self.samples: deque[tuple[float, int | None, int, int]] = deque()
        #: Tasks finished (``processing`` to ``memory`` or ``erred``) since the start.
        self.tasks_finished = 0
        self._forwarder: _TransitionForwarder | None = None
        self._callback: Any = None

    def handlers(self) -> dict[str, Any]:
        return {"foundation_health": self.cluster_health}

    async def start(self) -> None:
        from tornado.ioloop import PeriodicCallback

        if getattr(type(self.plugin), "transition", None) in (None, SchedulerPlugin.transition):
            self._forwarder = _TransitionForwarder(self)
            self.scheduler.add_plugin(self._forwarder, name=_TransitionForwarder.name)
        self._sample()
        self._callback = PeriodicCallback(self._sample, self.sample_interval * 1000)
        self._callback.start()

    async def close(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self._forwarder is not None:
            self.scheduler.plugins.pop(_TransitionForwarder.name, None)
            self._forwarder = None

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """Count finished tasks (called for every task transition)."""
        if start == "processing" and (finish == "memory" or finish == "erred"):
            self.tasks_finished += 1

    # -- counters

    def _extension(self, name: str) -> Any:
        try:
            return scheduler_extension(self.scheduler, name)
        except KeyError:
            return None

    def message_count(self) -> int | None:
        """Cumulative message count of the channels hub, if it keeps one."""
        hub = self._extension("channels")
        return None if hub is None else _counter_value(hub, "message_count")

    def _counters(self) -> tuple[float, int | None, int, int]:
        return (
            time.monotonic(),
            self.message_count(),
            self.tasks_finished,
            int(getattr(self.scheduler, "transition_counter", 0)),
        )

    def _sample(self) -> tuple[float, int | None, int, int]:
        sample = self._counters()
        self.samples.append(sample)
        while len(self.samples) > 1 and sample[0] - self.samples[0][0] > self.window:
            self.samples.popleft()
        return sample

    def rates(self) -> dict[str, Any]:
        """Messages, tasks and transitions per second over the window."""
        now = self._sample()
        start = self.samples[0]
        span = now[0] - start[0]

        def rate(i: int) -> float:
            if span < 0.1 or now[i] is None or start[i] is None:
                return 0.0
            return max(0.0, (now[i] - start[i]) / span)

        return {
            "message_throughput_per_sec": rate(1),
            "messages_total": now[1],
            "tasks_per_sec": rate(2),
            "tasks_total": now[2],
            "transitions_per_sec": rate(3),
            "window": span,
        }

    def process_count(self, address: str) -> int:
        """Foundation processes hosted on worker ``address`` (0 if unknown)."""
        processes = self._extension("processes")
        count_on = getattr(processes, "count_on", None)
        if count_on is None:
            return 0
        try:
            return int(count_on(address))
        except Exception:
            logger.exception("processes.count_on(%r) failed", address)
            return 0

    # -- the report

    @staticmethod
    def thresholds(
        degraded_cpu: float | None = None,
        degraded_memory: float | None = None,
        degraded_event_loop_lag: float | str | None = None,
        unreachable_after: float | str | None = None,
    ) -> dict[str, float]:
        """The status thresholds: the arguments given, else the ``foundation.health`` config."""

        def pick(value: Any, key: str) -> Any:
            return config.get(f"health.{key}") if value is None else value

        def seconds(value: Any) -> float:
            if isinstance(value, (int, float)):
                return float(value)
            return float(parse_timedelta(value, "s"))

        return {
            "degraded_cpu": float(pick(degraded_cpu, "degraded-cpu")),
            "degraded_memory": float(pick(degraded_memory, "degraded-memory")),
            "degraded_event_loop_lag": seconds(
                pick(degraded_event_loop_lag, "degraded-event-loop-lag")
            ),
            "unreachable_after": seconds(pick(unreachable_after, "unreachable-after")),
        }

    def node_health(self, ws: Any, thresholds: Mapping[str, float], now: float) -> dict[str, Any]:
        """Health of one worker as a ``dict`` (the fields of :class:`NodeHealth`)."""
        metrics = ws.metrics or {}
        host = metrics.get(WORKER_METRIC) or {}
        load = host.get("load_avg")
        load_avg = float(load[0]) if load else None
        cores = host.get("cpu_count")
        load_per_core = load_avg / cores if load_avg is not None and cores else None
        cpu = float(metrics.get("cpu", 0.0))
        memory_bytes = int(metrics.get("memory", 0))
        memory_limit = int(ws.memory_limit or 0)
        memory = 100.0 * memory_bytes / memory_limit if memory_limit else None
        tick = parse_timedelta(dask.config.get("distributed.admin.tick.interval"), "ms")
        interval = metrics.get("event_loop_interval")
        lag = max(0.0, float(interval) - tick) if interval is not None else 0.0
        last_seen = max(0.0, now - ws.last_seen)
        worker_status = ws.status.name

        reasons: list[str] = []
        status = HEALTHY
        if last_seen > thresholds["unreachable_after"]:
            status = UNREACHABLE
            reasons.append(
                f"not heard from for {last_seen:.1f}s > {thresholds['unreachable_after']:g}s"
            )
        if worker_status in _GONE_STATUSES:
            status = UNREACHABLE
            reasons.append(f"worker status is {worker_status}")
        elif worker_status != "running":
            reasons.append(f"worker status is {worker_status}")
        if cpu > thresholds["degraded_cpu"]:
            reasons.append(f"cpu {cpu:.1f}% > {thresholds['degraded_cpu']:g}%")
        if memory is not None and memory > thresholds["degraded_memory"]:
            reasons.append(
                f"memory {memory:.1f}% of {format_bytes(memory_limit)} > "
                f"{thresholds['degraded_memory']:g}%"
            )
        if lag > thresholds["degraded_event_loop_lag"]:
            reasons.append(
                f"event-loop lag {lag:.2f}s > {thresholds['degraded_event_loop_lag']:g}s"
            )
        if status == HEALTHY and reasons:
            status = DEGRADED

        return {
            "node": ws.address,
            "name": str(ws.name),
            "status": status,
            "reasons": reasons,
            "host": host.get("hostname") or ws.host,
            "load_avg": load_avg,
            "load_per_core": load_per_core,
            "cores": cores,
            "nthreads": ws.nthreads,
            "cpu": cpu,
            "memory": memory,
            "memory_bytes": memory_bytes,
            "memory_limit": memory_limit,
            "process_count": self.process_count(ws.address),
            "threads": host.get("threads"),
            "tasks": len(ws.processing),
            "executing": int((metrics.get("task_counts") or {}).get("executing", 0)),
            "event_loop_lag": lag,
            "last_seen": last_seen,
            "worker_status": worker_status,
        }

    def cluster_health(
        self,
        degraded_cpu: float | None = None,
        degraded_memory: float | None = None,
        degraded_event_loop_lag: float | str | None = None,
        unreachable_after: float | str | None = None,
    ) -> dict[str, Any]:
        """The whole report as plain ``dict`` s (the ``foundation_health`` handler)."""
        thresholds = self.thresholds(
            degraded_cpu, degraded_memory, degraded_event_loop_lag, unreachable_after
        )
        now = time.time()
        nodes = [self.node_health(ws, thresholds, now) for ws in self.scheduler.workers.values()]
        used = sum(n["memory_bytes"] for n in nodes)
        limit = sum(n["memory_limit"] for n in nodes)
        performance = self.rates()
        performance["memory_usage"] = {
            "bytes": used,
            "limit": limit,
            "percent": 100.0 * used / limit if limit else None,
        }
        return {
            "timestamp": now,
            "cluster": {"connected_nodes": len(nodes), "node_health": nodes},
            "performance": performance,
            "thresholds": thresholds,
        }


# --------------------------------------------------------------------------- results


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

_TABLE = [  # (header, attribute, formatter) of the text and HTML tables
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
        hosts: dict[str, NodeHealth] = {}
        for n in self.nodes:
            if n.status != HEALTHY or n.load_avg is None or not n.cores:
                continue
            seen = hosts.get(n.host)
            if seen is None or n.last_seen < seen.last_seen:
                hosts[n.host] = n
        return float(sum(max(0.0, n.cores - n.load_avg) for n in hosts.values()))

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
        counts = self.counts()
        perf = self.performance
        mem = perf.memory_usage
        mem_text = format_bytes(mem.bytes)
        if mem.percent is not None:
            mem_text += f" ({mem.percent:.1f}% of {format_bytes(mem.limit)})"
        when = datetime.fromtimestamp(self.timestamp).isoformat(sep=" ", timespec="seconds")
        return (
            f"Cluster health at {when}: {self.status}, {self.cluster.connected_nodes} nodes "
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
        head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in _TABLE)
        body = []
        for n in self.nodes:
            tds = []
            for _, attr, fmt in _TABLE:
                text = html.escape(fmt(getattr(n, attr)))
                if attr == "status":
                    colour = _STATUS_COLOURS.get(n.status, "inherit")
                    text = f'<span style="color: {colour}; font-weight: bold">{text}</span>'
                tds.append(f"<td>{text}</td>")
            body.append(f"<tr>{''.join(tds)}</tr>")
        return (
            f"<div><p>{html.escape(self._summary())}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )


# --------------------------------------------------------------------------- client side


async def _get_health(client: distributed.Client, kwargs: dict[str, Any]) -> ClusterHealth:
    reply = await client.scheduler.foundation_health(**kwargs)
    return ClusterHealth.from_dict(reply)


class HealthMonitor:
    """Cluster health (``Foundation.HealthMonitor``)."""

    @staticmethod
    def get_cluster_health(
        *,
        degraded_cpu: float | None = None,
        degraded_memory: float | None = None,
        degraded_event_loop_lag: float | str | None = None,
        unreachable_after: float | str | None = None,
        client: distributed.Client | None = None,
    ) -> ClusterHealth | Awaitable[ClusterHealth]:
        """Health of every node and cluster rates, in one round trip to the scheduler.

        Parameters
        ----------
        degraded_cpu, degraded_memory
            Percent thresholds; default the scheduler's ``foundation.health`` config.
        degraded_event_loop_lag, unreachable_after
            Durations (seconds or ``"1s"``); default the scheduler's config.
        client
            Client to act through; default :func:`distributed.get_client`.

        Returns
        -------
        ClusterHealth
            Blocks on a synchronous client; an awaitable on an asynchronous one.
        """
        kwargs = {
            k: v
            for k, v in {
                "degraded_cpu": degraded_cpu,
                "degraded_memory": degraded_memory,
                "degraded_event_loop_lag": degraded_event_loop_lag,
                "unreachable_after": unreachable_after,
            }.items()
            if v is not None
        }
        client = client or current_client()
        return client.sync(_get_health, client, kwargs)
