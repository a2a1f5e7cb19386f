"""Scheduler: the health report, built from the scheduler's state (:class:`HealthExtension`).

The report (:func:`health_report`) reads what Dask already collects with every worker
heartbeat (``WorkerState.metrics``: CPU, memory, event-loop interval, task counts),
the host figures of :class:`~foundation_dask.core.health.WorkerHealth` among them,
plus cluster rates over a sliding window of cumulative counters (:class:`RateWindow`).
:class:`HealthExtension` serves it as the ``foundation_health`` handler;
:func:`scheduler_health` builds it inside the scheduler process, with or without the
Foundation plugin installed (for the dashboard pages).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dask.config
import distributed
from dask.utils import format_bytes, parse_timedelta
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from foundation_dask import config
from foundation_dask.core.health._results import DEGRADED, HEALTHY, UNREACHABLE, WORKER_METRIC
from foundation_dask.core.plugin import SchedulerExtension, extension

if TYPE_CHECKING:
    from distributed.scheduler import WorkerState

    from foundation_dask.core.plugin import FoundationSchedulerPlugin

logger = logging.getLogger(__name__)

#: Worker statuses that make a node unreachable.
_GONE_STATUSES = frozenset({"closing", "closed", "failed"})

#: A sample of the cumulative counters: (monotonic time, channel messages or ``None``,
#: finished tasks, scheduler transitions).
Sample = tuple[float, int | None, int, int]


# --------------------------------------------------------------------------- counters and rates


def _counter_value(obj: Any, attr: str) -> int | None:
    value = getattr(obj, attr, None)
    if callable(value):
        value = value()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return None


def message_count(scheduler: distributed.Scheduler) -> int | None:
    """Cumulative message count of the channels hub of ``scheduler``, if it keeps one."""
    hub = extension(scheduler, "channels")
    return None if hub is None else _counter_value(hub, "message_count")


def transition_count(scheduler: distributed.Scheduler) -> int:
    """Task-state transitions of ``scheduler`` since its start."""
    return int(getattr(scheduler, "transition_counter", 0))


def process_count(scheduler: distributed.Scheduler, address: str) -> int:
    """Foundation processes hosted on worker ``address`` (0 if unknown)."""
    processes = extension(scheduler, "processes")
    count_on = getattr(processes, "count_on", None)
    if count_on is None:
        return 0
    try:
        return int(count_on(address))
    except Exception:
        logger.exception("processes.count_on(%r) failed", address)
        return 0


class RateWindow:
    """Samples of cumulative counters over the last ``window`` seconds, and their rates.

    Parameters
    ----------
    window
        Seconds of samples kept (the oldest kept sample is at most this old).
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> Sample:
        """Keep ``sample``; drop the samples older than the window."""
        self.samples.append(sample)
        while len(self.samples) > 1 and sample[0] - self.samples[0][0] > self.window:
            self.samples.popleft()
        return sample

    def rates(self, now: Sample) -> dict[str, Any]:
        """Add ``now``; messages, tasks and transitions per second over the window."""
        self.add(now)
        start = self.samples[0]
        span = now[0] - start[0]

        def rate(new: int | None, old: int | None) -> float:
            if span < 0.1 or new is None or old is None:
                return 0.0
            return max(0.0, (new - old) / span)

        return {
            "message_throughput_per_sec": rate(now[1], start[1]),
            "messages_total": now[1],
            "tasks_per_sec": rate(now[2], start[2]),
            "tasks_total": now[2],
            "transitions_per_sec": rate(now[3], start[3]),
            "window": span,
        }


# --------------------------------------------------------------------------- the report


_THRESHOLDS = {
    "degraded_cpu": ("degraded-cpu", "percent"),
    "degraded_memory": ("degraded-memory", "percent"),
    "degraded_event_loop_lag": ("degraded-event-loop-lag", "duration"),
    "unreachable_after": ("unreachable-after", "duration"),
}


def _threshold(value: Any, name: str, source: str) -> float:
    """``value`` of threshold ``name`` as a float; a ``ValueError`` naming ``source``
    (the argument or the setting) otherwise."""
    kind = _THRESHOLDS[name][1]
    if kind == "percent":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            return float(value)
        raise ValueError(f"{source} must be a number of percent (such as 90), got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    try:
        if isinstance(value, str):
            return float(parse_timedelta(value, "s"))
    except (ValueError, KeyError, TypeError):
        pass
    raise ValueError(
        f"{source} must be a duration in seconds or a string such as '1s', got {value!r}"
    )


def check_thresholds(**given: Any) -> dict[str, float]:
    """The thresholds ``given`` (``None`` ones left out) as floats.

    Raises
    ------
    ValueError
        A value is not a number (``degraded_cpu``, ``degraded_memory``) or a duration
        (``degraded_event_loop_lag``, ``unreachable_after``); the message names it.
    """
    return {name: _threshold(value, name, name) for name, value in given.items()
            if value is not None}


def health_thresholds(
    degraded_cpu: float | None = None,
    degraded_memory: float | None = None,
    degraded_event_loop_lag: float | str | None = None,
    unreachable_after: float | str | None = None,
) -> dict[str, float]:
    """The status thresholds: the arguments given, else the ``foundation.health`` config.

    Returns
    -------
    dict
        ``degraded_cpu``, ``degraded_memory`` (percent), ``degraded_event_loop_lag``,
        ``unreachable_after`` (seconds).

    Raises
    ------
    ValueError
        An argument or a ``foundation.health`` setting is not a number or duration; the
        message names it.
    """
    given = {
        "degraded_cpu": degraded_cpu,
        "degraded_memory": degraded_memory,
        "degraded_event_loop_lag": degraded_event_loop_lag,
        "unreachable_after": unreachable_after,
    }
    out = {}
    for name, value in given.items():
        if value is None:
            setting = _THRESHOLDS[name][0]
            out[name] = _threshold(config.get(f"health.{setting}"), name,
                                   f"the setting foundation.health.{setting}")
        else:
            out[name] = _threshold(value, name, name)
    return out


def node_health(ws: WorkerState, thresholds: Mapping[str, float], now: float,
                processes: int = 0) -> dict[str, Any]:
    """Health of one worker as a ``dict`` (the fields of
    :class:`~foundation_dask.core.health.NodeHealth`).

    Parameters
    ----------
    ws
        The scheduler's state of the worker.
    thresholds
        The status thresholds (:func:`health_thresholds`).
    now
        Wall-clock time of the report.
    processes
        Foundation processes hosted on the worker.
    """
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
        "process_count": processes,
        "threads": host.get("threads"),
        "tasks": len(ws.processing),
        "executing": int((metrics.get("task_counts") or {}).get("executing", 0)),
        "event_loop_lag": lag,
        "last_seen": last_seen,
        "worker_status": worker_status,
    }


def health_report(scheduler: distributed.Scheduler, thresholds: Mapping[str, float],
                  rates: Mapping[str, Any]) -> dict[str, Any]:
    """The ``foundation_health`` report of ``scheduler``, as plain ``dict`` s.

    Parameters
    ----------
    scheduler
        The scheduler (this process's).
    thresholds
        The status thresholds (:func:`health_thresholds`).
    rates
        The cluster rates (:meth:`RateWindow.rates`).

    Returns
    -------
    dict
        ``timestamp``, ``cluster`` (``connected_nodes``, ``node_health``),
        ``performance`` (``rates`` and ``memory_usage``) and ``thresholds``: what
        :meth:`ClusterHealth.from_dict <foundation_dask.core.health.ClusterHealth.from_dict>`
        reads.
    """
    now = time.time()
    nodes = [node_health(ws, thresholds, now, process_count(scheduler, ws.address))
             for ws in scheduler.workers.values()]
    used = sum(n["memory_bytes"] for n in nodes)
    limit = sum(n["memory_limit"] for n in nodes)
    performance = dict(rates)
    performance["memory_usage"] = {
        "bytes": used,
        "limit": limit,
        "percent": 100.0 * used / limit if limit else None,
    }
    return {
        "timestamp": now,
        "cluster": {"connected_nodes": len(nodes), "node_health": nodes},
        "performance": performance,
        "thresholds": dict(thresholds),
    }


#: Rate windows of the schedulers read without the Foundation health extension.
_windows: weakref.WeakKeyDictionary[distributed.Scheduler, RateWindow] = (
    weakref.WeakKeyDictionary()
)


def scheduler_health(scheduler: distributed.Scheduler) -> dict[str, Any]:
    """The ``foundation_health`` report, built inside the scheduler process (no RPC).

    From the scheduler's Foundation health extension when the Foundation plugin is
    installed. Before that (a scheduler started with the dashboard preload, no client
    yet), from the same Dask worker state, with rates over a window kept for the
    scheduler across calls: no host load average until the worker plugin is there, no
    finished-task count, no Foundation processes.

    Parameters
    ----------
    scheduler
        The scheduler of this process.

    Returns
    -------
    dict
        The report, as :func:`health_report` returns it.
    """
    ext = extension(scheduler, "health")
    if ext is not None:
        report: dict[str, Any] = ext.cluster_health()
        return report
    window = _windows.get(scheduler)
    if window is None:
        window = _windows[scheduler] = RateWindow(HealthExtension.window)
    sample = (time.monotonic(), message_count(scheduler), 0, transition_count(scheduler))
    return health_report(scheduler, health_thresholds(), window.rates(sample))


# --------------------------------------------------------------------------- the extension


class _TransitionForwarder(SchedulerPlugin):
    """Forwards task transitions to :meth:`HealthExtension.transition`.

    Only installed when the Foundation scheduler plugin does not forward them itself.
    """

    name = "foundation-health-transitions"

    def __init__(self, extension: HealthExtension) -> None:
        self.extension = extension

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.extension.transition(key, start, finish, *args, **kwargs)


class HealthExtension(SchedulerExtension):
    """Scheduler side of health: the ``foundation_health`` handler.

    Keeps a sliding window (:attr:`window` seconds, sampled every
    :attr:`sample_interval` seconds) of cumulative counters (channel messages,
    finished tasks, scheduler transitions) from which the rates of
    :class:`~foundation_dask.core.health.PerformanceMetrics` are computed.
    """

    name = "health"

    #: Length in seconds of the window over which rates are computed.
    window: float = 10.0
    #: Seconds between two samples of the counters.
    sample_interval: float = 1.0

    thresholds = staticmethod(health_thresholds)

    def __init__(self, scheduler: distributed.Scheduler,
                 plugin: FoundationSchedulerPlugin) -> None:
        super().__init__(scheduler, plugin)
        self.rate_window = RateWindow(self.window)
        #: Tasks finished (``processing`` to ``memory`` or ``erred``) since the start.
        self.tasks_finished = 0
        self._forwarder: _TransitionForwarder | None = None
        self._callback: PeriodicCallback | None = None

    @property
    def samples(self) -> deque[Sample]:
        """The samples of the counters in the window, oldest first."""
        return self.rate_window.samples

    def handlers(self) -> dict[str, Any]:
        return {"foundation_health": self.cluster_health}

    async def start(self) -> None:
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

    def message_count(self) -> int | None:
        """Cumulative message count of the channels hub, if it keeps one."""
        return message_count(self.scheduler)

    def process_count(self, address: str) -> int:
        """Foundation processes hosted on worker ``address`` (0 if unknown)."""
        return process_count(self.scheduler, address)

    def _counters(self) -> Sample:
        return (time.monotonic(), self.message_count(), self.tasks_finished,
                transition_count(self.scheduler))

    def _sample(self) -> None:
        self.rate_window.add(self._counters())

    def rates(self) -> dict[str, Any]:
        """Messages, tasks and transitions per second over the window."""
        return self.rate_window.rates(self._counters())

    # -- the report

    def node_health(self, ws: WorkerState, thresholds: Mapping[str, float],
                    now: float) -> dict[str, Any]:
        """Health of one worker as a ``dict`` (see :func:`node_health`)."""
        return node_health(ws, thresholds, now, self.process_count(ws.address))

    def cluster_health(
        self,
        degraded_cpu: float | None = None,
        degraded_memory: float | None = None,
        degraded_event_loop_lag: float | str | None = None,
        unreachable_after: float | str | None = None,
    ) -> dict[str, Any]:
        """The whole report as plain ``dict`` s (the ``foundation_health`` handler).

        A threshold that is not a number or duration gives ``{"error": message}``
        instead (no traceback on the scheduler).
        """
        try:
            limits = health_thresholds(
                degraded_cpu, degraded_memory, degraded_event_loop_lag, unreachable_after
            )
        except ValueError as exc:
            return {"error": str(exc)}
        return health_report(self.scheduler, limits, self.rates())
