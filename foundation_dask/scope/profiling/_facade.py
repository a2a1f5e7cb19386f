"""Client: starting and analysing cluster profiling windows.

:func:`start_cluster_profiling` opens a window on the :class:`~._sampler.NodeProfiler`
of every worker; :func:`analyze_cluster_performance` waits for its end, gathers every
profiler's figures with a per-node deadline, the cluster health, the supervised
processes, the scheduler's task stream and the meter of Foundation's scheduler
extensions (:mod:`~._scheduler_meter`, installed on the scheduler for the window), and
builds the
:class:`~foundation_dask.scope.profiling.PerformanceReport` (:func:`~._analysis.build_report`).
Both act through ``client`` or else the current client
(:func:`foundation_dask.core._client.current_client`, which connects with
:func:`foundation_dask.connect` when there is none).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from dask.utils import key_split, parse_timedelta

from foundation_dask import config
from foundation_dask.core._client import current_client, worker_infos
from foundation_dask.core.channels import Channels
from foundation_dask.core.health import HealthMonitor
from foundation_dask.core.processes import ProcessManager
from foundation_dask.errors import ProcessLostError, ProcessNotFoundError
from foundation_dask.scope.profiling._analysis import build_report, thresholds_from_config
from foundation_dask.scope.profiling._names import (
    PROFILER_NAME,
    RPC_FAILED,
    SOURCES,
    SUCCESS,
    UNREACHABLE,
)
from foundation_dask.scope.profiling._report import PerformanceReport
from foundation_dask.scope.profiling._sampler import NodeProfiler
from foundation_dask.scope.profiling._scheduler_meter import install_meter, read_meter
from foundation_dask.scope.tracing import parse_trace_options

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.health import ClusterHealth

_last_session: ProfilingSession | None = None


@dataclass
class ProfilingSession:
    """A started profiling window.

    Attributes
    ----------
    started_at
        Start of the window, milliseconds since the epoch (this process's clock).
    duration_ms
        Length of the window.
    profilers
        ``{worker address: handle}`` of the :class:`NodeProfiler` of each worker.
    collection_time
        When the window ends and the figures can be collected, milliseconds since
        the epoch.
    options
        ``source`` (``"sampler"`` or ``"dask"``) and ``interval``.
    start_errors
        ``{worker: error}`` of the profilers that could not be started.
    scheduler_meter
        Whether the meter of Foundation's scheduler extensions runs for the window
        (None: the session was found on the cluster, not started here).
    """

    started_at: int
    duration_ms: float
    profilers: dict[str, Any]
    collection_time: int
    options: dict[str, Any] = field(default_factory=dict)
    start_errors: dict[str, str] = field(default_factory=dict)
    task_stream_index: int | None = field(default=None, repr=False)
    messages_at_start: int | None = field(default=None, repr=False)
    monotonic_start: float = field(default_factory=time.monotonic, repr=False)
    scheduler_meter: bool | None = None

    @property
    def remaining_s(self) -> float:
        """Seconds until the window ends (0 once it has)."""
        return max(0.0, self.collection_time / 1000 - time.time())

    def analyze(self, **kwargs: Any) -> PerformanceReport:
        """:func:`analyze_cluster_performance` of this session (same keyword arguments,
        ``client`` included)."""
        return analyze_cluster_performance(self, **kwargs)

    def stop(self, *, client: distributed.Client | None = None) -> bool:
        """Stop the profilers (their figures are dropped) and the scheduler's meter.

        Parameters
        ----------
        client
            The client to act through; default: the current client, else the one
            :func:`foundation_dask.connect` starts.
        """
        client = client or current_client()
        client.run_on_scheduler(read_meter, uninstall=True)
        return bool(ProcessManager.stop(PROFILER_NAME, client=client))

    def __repr__(self) -> str:
        return (
            f"<ProfilingSession {len(self.profilers)} nodes, {self.duration_ms:g} ms, "
            f"{self.remaining_s:.1f}s left, source={self.options.get('source', 'sampler')}>"
        )


def _parse_options(opts: dict[str, Any] | str | None) -> dict[str, Any]:
    options = parse_trace_options(opts)
    unknown = sorted(set(options) - {"source", "interval"})
    if unknown:
        raise ValueError(
            f"unknown profiling options {unknown}; known: 'source' ('sampler' or 'dask') "
            "and 'interval' (sampling interval of the 'sampler' source, e.g. '10ms')."
        )
    source = options.setdefault("source", "sampler")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if options.get("interval") is not None:
        interval = parse_timedelta(options["interval"], "ms")
        if not interval or interval <= 0:
            raise ValueError(f"interval must be positive, not {options['interval']!r}")
    return options


def _node_timeout() -> float:
    return float(parse_timedelta(config.get("scope.profiling-timeout"), "s"))


def _wait_all(futures: dict[str, Any],
              timeout: float) -> tuple[dict[str, Any], dict[str, BaseException]]:
    """Results and exceptions of handle calls, each waited for until a shared deadline."""
    deadline = time.monotonic() + timeout
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    for node, fut in futures.items():
        try:
            results[node] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # TimeoutError, lost process, errors of the method
            errors[node] = exc
            inner = getattr(fut, "_fut", None)
            if inner is not None and not inner.done():
                inner.cancel()
    return results, errors


def _cluster_health(client: distributed.Client) -> ClusterHealth:
    # a synchronous client (checked by the callers) returns the value, not an awaitable
    return cast("ClusterHealth", HealthMonitor.get_cluster_health(client=client))


def _messages_total(client: distributed.Client) -> int | None:
    try:
        return _cluster_health(client).performance.messages_total
    except Exception:
        return None


def start_cluster_profiling(duration_ms: float = 5000,
                            opts: dict[str, Any] | str | None = None, *,
                            client: distributed.Client | None = None) -> ProfilingSession:
    """Profile every worker of the cluster for ``duration_ms`` from now.

    Opens a window on the :class:`NodeProfiler` of every worker (replicated process
    ``"cluster_profiler"``, started on first use and kept for later sessions; a window
    still open is ended), meters Foundation's own extensions on the scheduler for the
    same window, and broadcasts ``("start_profiling", duration_ms, started_at_ms)`` on
    the ``control`` channel.

    Parameters
    ----------
    duration_ms
        Length of the window in milliseconds.
    opts
        A dict, JSON object or ``"key=value"`` text: ``source`` (``"sampler"``, default,
        or ``"dask"``: see :mod:`foundation_dask.scope.profiling`) and ``interval``
        (sampling interval of the ``sampler`` source; default
        ``distributed.worker.profile.interval``).
    client
        The client to act through (a synchronous one); default: the current client,
        else the one :func:`foundation_dask.connect` starts.

    Returns
    -------
    ProfilingSession
        Pass it to :func:`analyze_cluster_performance` (the latest session is used by
        default).
    """
    global _last_session
    if (
        isinstance(duration_ms, bool) or not isinstance(duration_ms, (int, float))
        or not math.isfinite(duration_ms) or duration_ms <= 0
    ):
        raise ValueError(f"duration_ms must be a positive number, not {duration_ms!r}")
    options = _parse_options(opts)
    client = client or current_client()
    if client.asynchronous:
        raise RuntimeError(
            "start_cluster_profiling() needs a synchronous client; call it from a notebook "
            "or a thread, not from the event loop."
        )
    index = client.sync(client.scheduler.get_task_stream_index)  # installs the plugin
    messages = _messages_total(client)
    handles = ProcessManager.start_replicated(NodeProfiler, options, name=PROFILER_NAME,
                                              owner="cluster", client=client)
    started_at = int(time.time() * 1000)
    mono = time.monotonic()
    metered = bool(client.run_on_scheduler(install_meter, duration_s=duration_ms / 1000,
                                           fresh=True))
    _, errors = _wait_all(
        {w: h.start(duration_ms, started_at, options) for w, h in handles.items()},
        _node_timeout(),
    )
    Channels.broadcast("control", ("start_profiling", duration_ms, started_at), client=client)
    session = ProfilingSession(
        started_at=started_at,
        duration_ms=duration_ms,
        profilers=dict(handles),
        collection_time=started_at + int(math.ceil(duration_ms)),
        options=options,
        start_errors={w: f"{type(e).__name__}: {e}" for w, e in errors.items()},
        task_stream_index=index,
        messages_at_start=messages,
        monotonic_start=mono,
        scheduler_meter=metered,
    )
    _last_session = session
    return session


def _session_from_cluster(client: distributed.Client) -> ProfilingSession:
    try:
        handles = ProcessManager.lookup_replicated(PROFILER_NAME, client=client)
    except ProcessNotFoundError:
        handles = {}
    infos, _ = _wait_all({w: h.window_info() for w, h in handles.items()}, _node_timeout())
    started = [i for i in infos.values() if i.get("started")]
    if not started:
        raise RuntimeError(
            "No profiling session: start one with scope.start_cluster_profiling(duration_ms)."
        )
    first = min(started, key=lambda i: i["session_started_at_ms"])
    at = int(first["session_started_at_ms"])
    return ProfilingSession(
        started_at=at, duration_ms=first["duration_ms"], profilers=handles,
        collection_time=at + int(math.ceil(first["duration_ms"])),
        options={"source": first["source"]},
    )


def _health_by_node(client: distributed.Client) -> tuple[dict[str, dict], int | None, str | None]:
    try:
        report = _cluster_health(client)
        nodes = {n.node: dict(vars(n)) for n in report.nodes}
        return nodes, report.performance.messages_total, None
    except Exception as exc:
        nodes = {}
        for addr, w in worker_infos(client).items():
            metrics = w.get("metrics") or {}
            nodes[addr] = {
                "node": addr, "name": str(w.get("name")), "status": None,
                "cpu": metrics.get("cpu"), "memory_bytes": metrics.get("memory"),
                "memory_limit": w.get("memory_limit"), "nthreads": w.get("nthreads"),
                "host": w.get("host"),
            }
        return nodes, None, f"HealthMonitor unavailable ({type(exc).__name__}: {exc})"


def _process_counts(client: distributed.Client) -> dict[str, int]:
    frame = ProcessManager.list_processes(client=client)
    own = f"{NodeProfiler.__module__}.{NodeProfiler.__qualname__}"
    counts: dict[str, int] = defaultdict(int)
    for worker, state, cls in zip(frame["worker"], frame["state"], frame["class_name"],
                                  strict=True):
        if worker and state == "running" and cls != own:
            counts[worker] += 1
    return dict(counts)


def _window_tasks(client: distributed.Client, session: ProfilingSession,
                  windows: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    if session.task_stream_index is None:
        return []
    records = client.sync(
        client.scheduler.get_task_stream, start_index=session.task_stream_index
    )
    start = session.started_at / 1000
    end = session.collection_time / 1000
    tasks = []
    for rec in records:
        node = rec.get("worker")
        lo, hi = windows.get(node, (start, end))
        for ss in rec.get("startstops", ()):
            if ss.get("action") != "compute" or ss["start"] > hi or ss["stop"] < lo:
                continue
            tasks.append({
                "key": str(rec["key"]), "prefix": key_split(rec["key"]), "node": node,
                "duration_s": float(ss["stop"] - ss["start"]),
            })
    return tasks


def analyze_cluster_performance(session: ProfilingSession | None = None, *,
                                wait: bool = True, timeout: float | None = None,
                                top: int | None = None,
                                client: distributed.Client | None = None) -> PerformanceReport:
    """Collect and analyse a profiling window.

    Parameters
    ----------
    session
        Default: the latest session started by this process, else the one running on
        the cluster.
    wait
        If the window has not ended yet, wait for its end (the report notes how long);
        with ``False``, analyse what was measured so far (noted as a partial window).
    timeout
        Seconds each node has to answer after the window (default config
        ``foundation.scope.profiling-timeout``, 10 s, plus one second for the answer to
        travel); a node that does not answer in time, or whose profiler fails, gets
        ``status="rpc_failed"`` and the report comes back without it.
    top
        Rows of ``code_hotspots`` (default config ``foundation.scope.hotspots``, 20).
    client
        The client to act through (a synchronous one); default: the current client,
        else the one :func:`foundation_dask.connect` starts.

    Returns
    -------
    PerformanceReport
    """
    client = client or current_client()
    if client.asynchronous:
        raise RuntimeError(
            "analyze_cluster_performance() needs a synchronous client; call it from a "
            "notebook or a thread, not from the event loop."
        )
    workers = set(worker_infos(client))
    if session is None:
        # the latest session of this process, unless it belongs to another cluster
        last = _last_session
        session = (last if last and set(last.profilers) & workers
                   else _session_from_cluster(client))
    timeout = _node_timeout() if timeout is None else float(timeout)
    top = int(config.get("scope.hotspots") if top is None else top)
    thresholds = thresholds_from_config()
    notes: list[str] = []

    remaining = session.remaining_s
    if remaining > 0:
        if wait:
            notes.append(
                f"called {remaining:.1f}s before the end of the window: waited for it to end"
            )
            time.sleep(remaining)
        else:
            elapsed = session.duration_ms / 1000 - remaining
            notes.append(
                f"window still open: analysed {elapsed:.1f}s of {session.duration_ms / 1000:g}s"
            )

    nodes: dict[str, dict[str, Any]] = {}
    calls = {}
    for node, handle in session.profilers.items():
        if node in session.start_errors:
            nodes[node] = {"status": RPC_FAILED,
                           "error": f"not started: {session.start_errors[node]}"}
        elif node not in workers:
            nodes[node] = {"status": UNREACHABLE, "error": "the worker left the cluster"}
        else:
            calls[node] = handle.get_detailed_metrics(wait, timeout)
    results, errors = _wait_all(calls, timeout + 1.0)
    for node, exc in errors.items():
        status = UNREACHABLE if isinstance(exc, ProcessLostError) else RPC_FAILED
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"no answer within {timeout:g}s"
        nodes[node] = {"status": status, "error": f"{type(exc).__name__}: {text}"}
    for node, metrics in results.items():
        nodes[node] = {"status": SUCCESS, "error": None, "metrics": metrics}
        if not metrics["window"].get("complete"):
            notes.append(f"{node}: window not complete ({metrics['window']['elapsed_s']:.1f}s)")
    joined = sorted(workers - set(session.profilers))
    if joined:
        notes.append(f"joined after the session started, not profiled: {', '.join(joined)}")

    health, messages_now, health_note = _health_by_node(client)
    if health_note:
        notes.append(health_note)
    messages = None
    if messages_now is not None and session.messages_at_start is not None:
        messages = {
            "messages": messages_now - session.messages_at_start,
            "seconds": time.monotonic() - session.monotonic_start,
        }
    try:
        counts = _process_counts(client)
    except Exception as exc:
        counts = {}
        notes.append(f"process counts unavailable ({type(exc).__name__}: {exc})")
    windows = {}
    for node, res in nodes.items():
        w = (res.get("metrics") or {}).get("window") or {}
        if w.get("scheduler_started_at"):
            windows[node] = (w["scheduler_started_at"], w.get("scheduler_ended_at") or math.inf)
    try:
        tasks = _window_tasks(client, session, windows)
    except Exception as exc:
        tasks = []
        notes.append(f"task stream unavailable, no straggler analysis ({exc})")

    scheduler = client.run_on_scheduler(read_meter)
    if not scheduler["seconds"] and not scheduler["window_s"]:
        scheduler = None
        if session.scheduler_meter is not None:
            notes.append("Foundation's scheduler extensions were not metered: the scheduler "
                         "has no Foundation plugin")
    info = {
        "started_at": session.started_at, "duration_ms": session.duration_ms,
        "collection_time": session.collection_time, "options": dict(session.options),
    }
    return build_report(info, nodes, health, counts, tasks, thresholds, messages, notes, top,
                        scheduler=scheduler)
