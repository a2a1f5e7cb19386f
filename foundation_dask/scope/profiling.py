"""Cluster profiling (ElixirScope's ``ClusterProfiler``): where the cluster spends its time.

>>> from foundation_dask import scope
>>> session = scope.start_cluster_profiling(duration_ms=5000)    # doctest: +SKIP
>>> client.gather(client.map(work, range(1000)))                 # doctest: +SKIP
>>> report = scope.analyze_cluster_performance()                 # doctest: +SKIP
>>> report.code_hotspots.head()                                  # doctest: +SKIP

How it works
------------
:func:`start_cluster_profiling` starts one :class:`NodeProfiler` per worker (a replicated
Foundation process named ``"cluster_profiler"``) and announces the window with
``("start_profiling", duration_ms, started_at_ms)`` on the ``control`` channel. Each
profiler, on its worker's event loop, records the worker's counters at the start of the
window (process CPU time, tasks executed) and again when the window ends, measures the
event-loop lag during the window, and samples the call stacks of the worker's busy
threads.

Stack samples come from Dask's own sampling machinery: every
``distributed.worker.profile.interval`` (10 ms) the threads registered in
``Worker.active_threads`` are sampled, which covers task threads and the actor thread
(synchronous methods of Foundation processes and Dask actors run through Dask's
``_run_actor``, which registers the thread). Threads that are idle are not registered and
not sampled. Two sources are available (option ``source``):

``"sampler"`` (default)
    During the window only, the profiler samples ``Worker.active_threads`` itself at the
    same interval and builds a call tree in Dask's format (``{"description", "count",
    "children", "identifier"}``) where the innermost frame of each sample is counted.
    Descriptions also carry the module and qualified name of the function, so code sent by
    value by cloudpickle (file ``<dynamic-code>``) is still named ``module.func``.
``"dask"``
    The worker's own profile history (what ``Worker.get_profile`` and
    ``Client.profile`` serve), cut exactly at the window's ends. No extra sampling, but
    Dask's tree does not count the innermost frame of a sample (without the low-level
    profiler its count stays 0 and the sample is only counted in the callers). The
    analysis gives those samples back to the callees: exactly when a function has one
    callee, split evenly among callees that only ever were innermost frames otherwise.

Self time of a function is its count minus the counts of its children, summed over
every place the function appears in the tree and over nodes; total time counts each
sample once even for recursive functions. A sampler only runs when the event loop gets
the CPU and the GIL, so on a busy machine it runs less often than its interval: a sample
of the ``sampler`` source stands for the time since the previous sampling tick (at most
:data:`MAX_SAMPLE_INTERVALS` intervals), and a sample of the ``dask`` source for the
window's length over the number of ticks that ran (at least the nominal interval).
Asynchronous code running on the event loop itself is not sampled; it shows as event-loop
lag. Frames where a thread only waits (``threading.py`` ``wait``, ``queue.py``
``get``...) are left out of the hotspots and reported as ``idle_wait_s``.

:func:`analyze_cluster_performance` runs in the calling process: it waits for the window
to end, asks every profiler for its figures with a per-node timeout (a node that does not
answer gets ``status="rpc_failed"``; one that left gets ``"unreachable"``), reads the
cluster health (:class:`~foundation_dask.HealthMonitor`), the supervised processes and
the scheduler's task stream (task durations of the window, for stragglers), and applies
the thresholds of the Dask config read in the calling process:

==================================  =======  ===========================================
``foundation.scope.*``              default  meaning
==================================  =======  ===========================================
``bottleneck-cpu``                  80       process CPU % over the window
``bottleneck-memory``               85       memory % of the worker's limit
``bottleneck-event-loop-lag``       0.5s     longest event-loop delay in the window
``straggler-factor``                3        task duration vs. median of its prefix
``straggler-min-tasks``             5        tasks of a prefix needed for a median
``straggler-min-duration``          100ms    shorter tasks are never stragglers
``imbalance-factor``                2        max / min processes or tasks per node
``idle-cpu``                        10       CPU % below which a node without tasks
                                             is idle
``memory-pressure``                 70       memory % that triggers a suggestion
``profiling-timeout``               10s      per-node answer deadline
``hotspots``                        20       rows of ``code_hotspots``
==================================  =======  ===========================================

Bottlenecks are reported above those thresholds, stragglers per task prefix. Suggestions:
``process_imbalance`` and ``task_imbalance`` when the node with the most Foundation
processes (the profilers are not counted) or the most tasks executed in the window has
more than ``imbalance-factor`` times, and at least 2 more than, the node with the
fewest; ``memory_pressure`` for nodes at ``memory-pressure`` % of their memory limit or
more, spilling or paused; ``idle_nodes`` for nodes that executed no task and used less
than ``idle-cpu`` % CPU while others executed tasks. Each carries the numbers that
triggered it.

Starting a new session ends the previous one (there is one ``"cluster_profiler"`` per
cluster; its instances stay and serve the next sessions). The profilers keep their
results until the next session or :meth:`ProfilingSession.stop`, so a session can be
analysed again (e.g. with other thresholds).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import linecache
import math
import os
import socket
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import format_bytes, key_split, parse_timedelta

from foundation_dask import config
from foundation_dask.core._client import current_client, worker_infos

if TYPE_CHECKING:
    import distributed
    import pandas as pd

#: Name of the replicated Foundation process holding one :class:`NodeProfiler` per worker.
PROFILER_NAME = "cluster_profiler"

SUCCESS, RPC_FAILED, UNREACHABLE = "success", "rpc_failed", "unreachable"
SOURCES = ("sampler", "dask")

#: Samples deeper than this many frames keep their innermost frames only.
MAX_DEPTH = 100

#: A sample stands for at most this many sampling intervals (after a long event-loop
#: stall, the stack seen at its end says little about the time before).
MAX_SAMPLE_INTERVALS = 10

_THIS_FILE = "foundation_dask/scope/profiling.py"
_WORKER_FILE = "distributed/worker.py"
_TASK_SPEC_FILE = "dask/_task_spec.py"

#: ``(file suffix, function)`` of frames where a thread only waits.
IDLE_FRAMES = frozenset({
    ("threading.py", "wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("threading.py", "join"),
    ("threading.py", "acquire"),
    ("queue.py", "get"),
    ("selectors.py", "select"),
    ("concurrent/futures/_base.py", "result"),
    ("concurrent/futures/thread.py", "_worker"),
})

#: ``foundation.scope.<key>`` config keys of the analysis (defaults in foundation.yaml).
THRESHOLD_KEYS = (
    "bottleneck-cpu", "bottleneck-memory", "bottleneck-event-loop-lag", "straggler-factor",
    "straggler-min-tasks", "straggler-min-duration", "imbalance-factor", "idle-cpu",
    "memory-pressure",
)

_SECONDS_KEYS = ("bottleneck-event-loop-lag", "straggler-min-duration")

_last_session: ProfilingSession | None = None


# --------------------------------------------------------------------------- worker side


def _find_worker(instance: Any) -> distributed.Worker:
    """The worker hosting ``instance`` as a Foundation process (from its event loop)."""
    from distributed import Worker

    for worker in list(Worker._instances):
        plugin = worker.extensions.get("foundation")
        processes = getattr(plugin, "extensions", {}).get("processes")
        for host in getattr(processes, "hosts", {}).values():
            if host._instance is instance:
                return worker
    with contextlib.suppress(ValueError):
        from distributed import get_worker

        return get_worker()
    raise RuntimeError("NodeProfiler is not hosted by a worker of this process")


def _frame_description(frame: Any) -> dict[str, Any]:
    code = frame.f_code
    globs = frame.f_globals
    filename = code.co_filename
    if filename.startswith("<") and isinstance(globs.get("__file__"), str):
        filename = globs["__file__"]  # code sent by value: its module's file
    lineno = frame.f_lineno or code.co_firstlineno
    try:
        line = linecache.getline(code.co_filename, lineno, globs).strip()
    except Exception:  # pragma: no cover - exotic loaders
        line = ""
    return {
        "filename": filename,
        "name": code.co_name,
        "qualname": getattr(code, "co_qualname", code.co_name),
        "module": globs.get("__name__"),
        "line_number": lineno,
        "first_line": code.co_firstlineno,
        "line": line,
    }


def add_sample(tree: dict[str, Any], frame: Any, seconds: float) -> bool:
    """Add one stack sample (innermost ``frame``) to a call tree in Dask's format.

    Unlike :func:`distributed.profile.process` as the worker calls it, the innermost
    frame is counted, so a node's count minus its children's counts is its self time.
    Every node also sums ``time``: the ``seconds`` each sample stands for. Frames of
    :mod:`distributed.worker` and above are left out (as Dask does); samples passing
    through this module (the profiler itself) are dropped.

    Returns
    -------
    bool
        Whether the sample was added.
    """
    stack = []
    f = frame
    while f is not None and len(stack) < MAX_DEPTH:
        if f.f_code.co_filename.endswith(_THIS_FILE):
            return False
        stack.append(f)
        prev = f.f_back
        if not isinstance(prev, FrameType):
            # None at the bottom of the stack; on CPython 3.11 the f_back of another
            # thread's frame is seldom something else while that thread unwinds: the
            # sample is kept up to here
            break
        if prev.f_code.co_filename.endswith(_WORKER_FILE):
            break
        f = prev
    if not stack:
        return False
    node = tree
    node["count"] += 1
    node["time"] = node.get("time", 0.0) + seconds
    for f in reversed(stack):
        code = f.f_code
        ident = f"{code.co_name};{code.co_filename};{code.co_firstlineno}"
        child = node["children"].get(ident)
        if child is None:
            child = node["children"][ident] = {
                "count": 0,
                "time": 0.0,
                "description": _frame_description(f),
                "children": {},
                "identifier": ident,
            }
        child["count"] += 1
        child["time"] += seconds
        node = child
    return True


def _empty_tree() -> dict[str, Any]:
    from distributed import profile

    return profile.create()


class NodeProfiler:
    """Per-worker profiler of a profiling window (ElixirScope's ``NodeProfiler``).

    Started on every worker by :func:`start_cluster_profiling` as the replicated process
    ``"cluster_profiler"``. Every method is a coroutine and runs on the worker's event
    loop, like the worker's own profiler, so it reads the worker's state without locks.

    Parameters
    ----------
    options
        Options of the session (``source``, ``interval``); :meth:`start` may override them.
    """

    foundation_checkpoint = "never"

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = dict(options or {})
        self._worker: Any = None
        self._process: Any = None
        self._window: dict[str, Any] | None = None
        self._tree: dict[str, Any] = {}
        self._callback: Any = None
        self._end_handle: asyncio.TimerHandle | None = None
        self._done: asyncio.Event | None = None

    # -- window

    async def start(self, duration_ms: float, started_at_ms: int,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Open a window of ``duration_ms`` from now; returns :meth:`window_info`."""
        import psutil
        from tornado.ioloop import PeriodicCallback

        self._close_window()
        options = {**self.options, **(options or {})}
        source = options.get("source", "sampler")
        worker = self._worker = _find_worker(self)
        self._process = self._process or psutil.Process()
        interval = dask.config.get("distributed.worker.profile.interval")
        if source == "sampler" and options.get("interval"):
            interval = options["interval"]
        interval = float(parse_timedelta(interval, "ms"))
        if source == "dask":
            worker.cycle_profile()  # the history is cut exactly at the window's start
        self._tree = _empty_tree()
        self._window = {
            "source": source,
            "interval": interval,
            "duration_ms": float(duration_ms),
            "session_started_at_ms": started_at_ms,
            "started_at": time.time(),
            "ended_at": None,
            "profile_start": time.time() + worker.scheduler_delay,
            "profile_stop": None,
            "scheduler_ended_at": None,
            "begin": self._snapshot(),
            "end": None,
            "ticks": 0,
            "lag_max": 0.0,
            "lag_sum": 0.0,
            "last_tick": time.monotonic(),
        }
        self._done = asyncio.Event()
        self._callback = PeriodicCallback(self._tick, interval * 1000)
        self._callback.start()
        loop = asyncio.get_running_loop()
        self._end_handle = loop.call_later(duration_ms / 1000, self._finish)
        return self._window_info()

    def _snapshot(self) -> dict[str, Any]:
        times = self._process.cpu_times()
        return {
            "monotonic": time.monotonic(),
            "cpu_s": times.user + times.system,
            "executed": int(self._worker.state.executed_count),
        }

    def _tick(self) -> None:
        win = self._window
        if win is None:
            return
        now = time.monotonic()
        gap = now - win["last_tick"]
        lag = max(0.0, gap - win["interval"])
        win["last_tick"] = now
        win["ticks"] += 1
        win["lag_max"] = max(win["lag_max"], lag)
        win["lag_sum"] += lag
        if win["ticks"] % 100 == 0 and not self._alive():
            self._finish()  # the process was stopped: stop sampling
            return
        if win["source"] != "sampler":
            return
        worker = self._worker
        if not worker.active_threads:
            return
        with worker.active_threads_lock:
            idents = list(worker.active_threads)
        frames = sys._current_frames()
        # a sample stands for the time since the previous one (longer than the interval
        # when the event loop waited for the GIL or the CPU), up to MAX_SAMPLE_INTERVALS
        seconds = min(gap, MAX_SAMPLE_INTERVALS * win["interval"])
        for ident in idents:
            frame = frames.get(ident)
            if frame is not None:
                add_sample(self._tree, frame, seconds)

    def _alive(self) -> bool:
        plugin = self._worker.extensions.get("foundation")
        processes = getattr(plugin, "extensions", {}).get("processes")
        return any(
            h._instance is self and not h._stopped
            for h in getattr(processes, "hosts", {}).values()
        )

    def _finish(self) -> None:
        win = self._window
        if win is None or win["end"] is not None:
            return
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self._end_handle is not None:
            self._end_handle.cancel()
            self._end_handle = None
        worker = self._worker
        if win["source"] == "dask":
            worker.cycle_profile()
            win["profile_stop"] = worker.profile_history[-1][0]
        win["end"] = self._snapshot()
        win["ended_at"] = time.time()
        win["scheduler_ended_at"] = win["ended_at"] + worker.scheduler_delay
        if self._done is not None:
            self._done.set()

    def _close_window(self) -> None:
        if self._done is not None:
            self._done.set()  # callers waiting for the previous window stop waiting
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self._end_handle is not None:
            self._end_handle.cancel()
            self._end_handle = None

    async def stop(self) -> dict[str, Any]:
        """End the window now (its figures stay available)."""
        self._finish()
        return self._window_info()

    async def window_info(self) -> dict[str, Any]:
        """Node, source, start, requested duration and whether the window has ended."""
        return self._window_info()

    def _window_info(self) -> dict[str, Any]:
        win = self._window
        if win is None:
            return {"node": getattr(self._worker, "address", None), "started": False}
        return {
            "node": self._worker.address,
            "started": True,
            "source": win["source"],
            "session_started_at_ms": win["session_started_at_ms"],
            "started_at": win["started_at"],
            "duration_ms": win["duration_ms"],
            "ended_at": win["ended_at"],
            # the window on the clock of task start/stop times (worker time + the
            # worker's estimate of its offset to the scheduler)
            "scheduler_started_at": win["profile_start"],
            "scheduler_ended_at": win["scheduler_ended_at"],
            "complete": win["end"] is not None,
        }

    # -- results

    def _profile(self) -> dict[str, Any]:
        from distributed import profile

        win = self._window
        assert win is not None
        if win["source"] == "sampler":
            return self._tree
        worker = self._worker
        stop = win["profile_stop"]
        parts = [
            p for t, p in list(worker.profile_history)
            if t > win["profile_start"] and (stop is None or t <= stop)
        ]
        if stop is None:
            parts.append(worker.profile_recent)
        return profile.merge(*parts) if parts else profile.create()

    async def get_detailed_metrics(self, wait: bool = True,
                                   timeout: float | None = None) -> dict[str, Any]:
        """Figures of the window and the call tree sampled during it.

        Parameters
        ----------
        wait
            Wait for the window to end (at most ``timeout`` seconds); otherwise report
            what was measured so far (``window["complete"]`` is then ``False``).
        timeout
            Seconds to wait at most; ``None``: until the window ends.

        Returns
        -------
        dict
            ``node``, ``window``, ``cpu`` (process CPU % over the window), ``memory``,
            ``memory_bytes``, ``memory_limit``, ``threads``, ``load_avg``, ``cores``,
            ``nthreads``, ``tasks_executed`` (in the window), ``tasks_executing``,
            ``tasks_ready`` (now), ``event_loop_lag`` (longest delay of the event loop
            in the window, seconds), ``event_loop_lag_mean``, ``profile`` (call tree),
            ``profile_source``, ``profile_interval`` (seconds a sample stands for: the
            window's length over the sampling ticks that ran, at least
            ``sampling_interval``), ``sampling_interval``, ``ticks``, ``samples``.
        """
        import psutil

        win = self._window
        if win is None:
            raise RuntimeError(
                "this profiler was never started (its worker joined after the session "
                "started); start a new session with scope.start_cluster_profiling()."
            )
        if wait and win["end"] is None and self._done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout)
        worker = self._worker
        end = win["end"] or self._snapshot()
        begin = win["begin"]
        elapsed = max(1e-9, end["monotonic"] - begin["monotonic"])
        proc = self._process
        memory_bytes = int(proc.memory_info().rss)
        limit = int(getattr(worker.memory_manager, "memory_limit", None) or 0)
        total = limit or int(psutil.virtual_memory().total)
        try:
            load_avg: float | None = float(os.getloadavg()[0])
        except (AttributeError, OSError):  # pragma: no cover - not on Linux/macOS
            load_avg = None
        try:
            spilled = int(sum(worker.data.spilled_total))  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            spilled = 0
        tree = self._profile()
        if win["end"] is None:  # still being sampled: send a snapshot
            tree = copy.deepcopy(tree)
        ticks = max(1, win["ticks"])
        return {
            "node": worker.address,
            "name": str(worker.name),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker_status": worker.status.name,
            "window": {
                **self._window_info(),
                "elapsed_s": elapsed,
            },
            "cpu": 100.0 * (end["cpu_s"] - begin["cpu_s"]) / elapsed,
            "cpu_time_s": end["cpu_s"] - begin["cpu_s"],
            "memory_bytes": memory_bytes,
            "memory_limit": limit,
            "memory": 100.0 * memory_bytes / total if total else None,
            "spilled_bytes": spilled,
            "threads": proc.num_threads(),
            "load_avg": load_avg,
            "cores": psutil.cpu_count() or os.cpu_count(),
            "nthreads": worker.state.nthreads,
            "tasks_executed": end["executed"] - begin["executed"],
            "tasks_executing": int(worker.state.executing_count),
            "tasks_ready": len(worker.state.ready) + len(worker.state.constrained),
            "event_loop_lag": win["lag_max"],
            "event_loop_lag_mean": win["lag_sum"] / ticks,
            "profile": tree,
            "profile_source": win["source"],
            # seconds a sample stands for on average: the window over the ticks that ran
            # (more than the nominal interval when the busy event loop skipped ticks);
            # samples of the "sampler" source carry their own time
            "profile_interval": max(win["interval"], elapsed / ticks) if win["ticks"]
            else win["interval"],
            "sampling_interval": win["interval"],
            "ticks": win["ticks"],
            "samples": int(tree["count"]),
        }


# --------------------------------------------------------------------------- analysis


def _is_idle_frame(filename: str, name: str) -> bool:
    return any(filename.endswith(suffix) and name == fn for suffix, fn in IDLE_FRAMES)


def _module_from_path(filename: str) -> str | None:
    """Best guess of the module name of a source file, from ``sys.path``."""
    if not filename or filename.startswith("<"):
        return None
    path = os.path.abspath(filename)
    best = None
    for entry in sys.path:
        base = os.path.abspath(entry or os.curdir)
        if path.startswith(base + os.sep) and (best is None or len(base) > len(best)):
            best = base
    if best is None:
        return None
    rel = os.path.splitext(os.path.relpath(path, best))[0]
    parts = rel.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or None


def count_innermost_frames(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a call tree from Dask's worker profile where innermost frames count.

    Dask's worker profiler does not count the innermost frame of a sample, so its
    node's count is 0 while the caller's count includes the sample. For every node,
    ``count - sum(children's counts)`` samples had one of its children as innermost
    frame: they are given to the only child when there is one (exact), else split evenly
    among the children that never had callees of their own (their count is 0, so they
    were only ever innermost frames), else among all children.
    """

    def fix(node: dict[str, Any], extra: float) -> dict[str, Any]:
        children = list(node["children"].values())
        excess = node["count"] - sum(c["count"] for c in children)
        shares = dict.fromkeys(range(len(children)), 0.0)
        if excess > 0 and children:
            takers = [i for i, c in enumerate(children) if c["count"] == 0] or list(shares)
            for i in takers:
                shares[i] = excess / len(takers)
        return {
            "count": node["count"] + extra,
            "description": node["description"],
            "identifier": node["identifier"],
            "children": {
                c["identifier"]: fix(c, shares[i]) for i, c in enumerate(children)
            },
        }

    return fix(tree, 0.0)


def function_stats(tree: dict[str, Any],
                   interval: float = 0.01) -> dict[tuple[str, str], dict[str, Any]]:
    """Per-function samples and seconds of a call tree whose innermost frames are counted.

    Parameters
    ----------
    tree
        A call tree in Dask's format; nodes may carry ``time`` (seconds), else their
        time is ``count * interval``.
    interval
        Seconds per sample of nodes without ``time``.

    Returns
    -------
    dict
        ``{(filename, name): {"self", "total", "self_s", "total_s", "entry",
        "description", "first_line"}}``: self samples and seconds (the node's minus its
        children's, summed over every place of the function), total samples and seconds
        (each sample once, also for recursive functions), whether the function was
        called by Dask's task machinery (a task's function), the description of its
        first node and the first line of its code.
    """

    def seconds(node: dict[str, Any]) -> float:
        value = node.get("time")
        return float(value) if value is not None else node["count"] * interval

    stats: dict[tuple[str, str], dict[str, Any]] = {}
    # iterative walk: (node, parent description, functions on the path)
    todo: list[tuple[dict[str, Any], dict[str, Any] | None, frozenset]] = [
        (c, None, frozenset()) for c in tree["children"].values()
    ]
    while todo:
        node, parent, path = todo.pop()
        desc = node["description"]
        if not isinstance(desc, dict):
            continue
        key = (desc.get("filename", ""), desc.get("name", ""))
        entry = stats.get(key)
        if entry is None:
            first = desc.get("first_line")
            if first is None:  # Dask's identifiers end with the function's first line
                tail = str(node.get("identifier", "")).rpartition(";")[2]
                first = int(tail) if tail.isdigit() else desc.get("line_number")
            entry = stats[key] = {"self": 0.0, "total": 0.0, "self_s": 0.0, "total_s": 0.0,
                                  "entry": False, "description": desc, "first_line": first}
        children = node["children"].values()
        entry["self"] += max(0.0, node["count"] - sum(c["count"] for c in children))
        entry["self_s"] += max(0.0, seconds(node) - sum(seconds(c) for c in children))
        if key not in path:
            entry["total"] += node["count"]
            entry["total_s"] += seconds(node)
        parent_file = parent.get("filename", "") if parent else ""
        if (parent is None or parent_file.endswith(_TASK_SPEC_FILE)) and not (
            key[0].endswith(_TASK_SPEC_FILE)
        ):
            entry["entry"] = True
        sub_path = path | {key}
        todo.extend((c, desc, sub_path) for c in children)
    return stats


HOTSPOT_COLUMNS = [
    "function", "name", "location", "self_time_s", "total_time_s", "samples",
    "total_samples", "calls", "nodes", "filename", "line",
]

NODE_COLUMNS = [
    "node", "name", "status", "error", "health", "cpu", "memory", "memory_bytes",
    "memory_limit", "threads", "process_count", "load_avg", "cores", "nthreads",
    "tasks_executed", "tasks_executing", "tasks_ready", "event_loop_lag",
    "event_loop_lag_mean", "samples", "top_function", "window_s", "host", "pid",
]


def code_hotspots(profiles: dict[str, dict[str, Any]], top: int = 20,
                  task_counts: dict[str, dict[str, int]] | None = None,
                  ) -> tuple[pd.DataFrame, float, dict[str, str | None]]:
    """Top functions by self time summed over the cluster.

    Parameters
    ----------
    profiles
        ``{node: get_detailed_metrics() result}`` of the nodes that answered (uses its
        ``profile``, ``profile_source`` and ``profile_interval``).
    top
        Number of rows.
    task_counts
        ``{node: {task prefix: tasks}}`` of the window, for the ``calls`` of functions
        that are the functions of tasks.

    Returns
    -------
    (DataFrame, float, dict)
        The hotspots (columns :data:`HOTSPOT_COLUMNS`), the seconds spent in idle waits
        (left out of the table) and the top function of each node.
    """
    import pandas as pd

    merged: dict[tuple[str, str], dict[str, Any]] = {}
    idle = 0.0
    node_top: dict[str, str | None] = {}
    for node, result in profiles.items():
        tree = result["profile"]
        if result.get("profile_source") == "dask":
            tree = count_innermost_frames(tree)
        interval = float(result.get("profile_interval") or 0.01)
        best: tuple[float, str] | None = None
        for key, st in function_stats(tree, interval).items():
            filename, name = key
            if filename.endswith(_THIS_FILE):
                continue
            if _is_idle_frame(filename, name):
                idle += st["self_s"]
                continue
            row = merged.get(key)
            if row is None:
                desc = st["description"]
                module = desc.get("module") or _module_from_path(filename)
                qualname = desc.get("qualname") or name
                line = st["first_line"] or 0
                row = merged[key] = {
                    "function": f"{module}.{qualname}" if module else qualname,
                    "name": name,
                    "location": f"{filename}:{line}",
                    "self_time_s": 0.0, "total_time_s": 0.0, "samples": 0.0,
                    "total_samples": 0.0, "calls": None, "nodes": set(),
                    "filename": filename, "line": line,
                }
            row["samples"] += st["self"]
            row["total_samples"] += st["total"]
            row["self_time_s"] += st["self_s"]
            row["total_time_s"] += st["total_s"]
            if st["total"] > 0:
                row["nodes"].add(node)
            if st["entry"] and task_counts is not None:
                calls = (task_counts.get(node) or {}).get(name)
                if calls:
                    row["calls"] = (row["calls"] or 0) + calls
            if st["self"] > 0 and (best is None or st["self"] > best[0]):
                best = (st["self"], row["function"])
        node_top[node] = best[1] if best else None
    rows = sorted(
        merged.values(), key=lambda r: (-r["self_time_s"], -r["total_time_s"], r["function"])
    )
    rows = [r for r in rows if r["samples"] > 0][:top]
    for r in rows:
        r["nodes"] = sorted(r["nodes"])
        for k in ("samples", "total_samples"):
            r[k] = int(round(r[k])) if float(r[k]).is_integer() else round(r[k], 2)
    frame = pd.DataFrame(rows, columns=HOTSPOT_COLUMNS)
    frame["calls"] = frame["calls"].astype("Int64")
    return frame, idle, node_top


def _imbalance(values: dict[str, float], factor: float) -> dict[str, Any] | None:
    if len(values) < 2:
        return None
    hi_node = max(values, key=lambda n: (values[n], n))
    lo_node = min(values, key=lambda n: (values[n], n))
    hi, lo = values[hi_node], values[lo_node]
    if hi - lo < 2 or hi <= factor * lo:
        return None
    return {
        "max_node": hi_node, "max": hi, "min_node": lo_node, "min": lo,
        "ratio": hi / lo if lo else math.inf, "factor": factor, "per_node": dict(values),
    }


def stragglers(tasks: list[dict[str, Any]], factor: float, min_tasks: int,
               min_duration: float) -> list[dict[str, Any]]:
    """Tasks much slower than the median of their prefix.

    Parameters
    ----------
    tasks
        ``{"key", "prefix", "node", "duration_s"}`` of the tasks of the window.
    factor
        A task is a straggler above ``factor`` times its prefix's median...
    min_tasks
        ...when its prefix ran at least ``min_tasks`` tasks...
    min_duration
        ...and it took at least ``min_duration`` seconds.

    Returns
    -------
    list of dict
        One ``straggler`` bottleneck per prefix with stragglers.
    """
    by_prefix: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        by_prefix[t["prefix"]].append(t)
    out = []
    for prefix, group in sorted(by_prefix.items()):
        if len(group) < min_tasks:
            continue
        median = statistics.median(t["duration_s"] for t in group)
        slow = [
            t for t in group
            if t["duration_s"] >= min_duration and t["duration_s"] > factor * median
        ]
        if not slow:
            continue
        slow.sort(key=lambda t: -t["duration_s"])
        out.append({
            "type": "straggler",
            "prefix": prefix,
            "affected_nodes": sorted({t["node"] for t in slow}),
            "values": [
                {"key": t["key"], "node": t["node"], "duration_s": t["duration_s"],
                 "ratio": t["duration_s"] / median if median else math.inf}
                for t in slow
            ],
            "median_s": median,
            "tasks": len(group),
            "threshold": factor,
        })
    return out


def thresholds_from_config() -> dict[str, float]:
    """The analysis thresholds from ``foundation.scope.*`` (see the module docs)."""
    out = {}
    for key in THRESHOLD_KEYS:
        value = config.get(f"scope.{key}")
        if key in _SECONDS_KEYS:
            value = parse_timedelta(value, "s")
        out[key] = float(value)
    return out


def build_report(session: dict[str, Any], nodes: dict[str, dict[str, Any]],
                 health: dict[str, dict[str, Any]], process_counts: dict[str, int],
                 tasks: list[dict[str, Any]], thresholds: dict[str, float],
                 messages: dict[str, Any] | None = None, notes: list[str] | None = None,
                 top: int = 20) -> PerformanceReport:
    """Assemble a :class:`PerformanceReport` from what was gathered (no cluster access).

    Parameters
    ----------
    session
        ``started_at`` (ms), ``duration_ms``, ``options``.
    nodes
        ``{node: {"status": ..., "error": ..., "metrics": get_detailed_metrics()}}``.
    health
        ``{node: NodeHealth fields}`` (may be empty).
    process_counts
        ``{node: Foundation processes other than the profilers}``.
    tasks
        ``{"key", "prefix", "node", "duration_s"}`` of the tasks that ran in the window.
    thresholds
        See :func:`thresholds_from_config`.
    messages
        ``{"messages", "seconds"}``: channel messages over a span of the window.
    notes
        Remarks to carry (waits, partial windows...).
    top
        Rows of ``code_hotspots``.
    """
    import pandas as pd

    notes = list(notes or [])
    ok = {n: r["metrics"] for n, r in nodes.items() if r["status"] == SUCCESS}
    task_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t in tasks:
        task_counts[t["node"]][t["prefix"]] += 1
    hotspots, idle_s, node_top = code_hotspots(ok, top=top, task_counts=task_counts)

    rows = []
    for node in sorted(nodes):
        res = nodes[node]
        m = res.get("metrics") or {}
        h = health.get(node) or {}
        rows.append({
            "node": node,
            "name": m.get("name") or h.get("name"),
            "status": res["status"],
            "error": res.get("error"),
            "health": h.get("status"),
            "cpu": m.get("cpu", h.get("cpu")),
            "memory": m.get("memory", h.get("memory")),
            "memory_bytes": m.get("memory_bytes", h.get("memory_bytes")),
            "memory_limit": m.get("memory_limit", h.get("memory_limit")),
            "threads": m.get("threads", h.get("threads")),
            "process_count": process_counts.get(node, 0),
            "load_avg": m.get("load_avg", h.get("load_avg")),
            "cores": m.get("cores", h.get("cores")),
            "nthreads": m.get("nthreads", h.get("nthreads")),
            "tasks_executed": m.get("tasks_executed"),
            "tasks_executing": m.get("tasks_executing", h.get("executing")),
            "tasks_ready": m.get("tasks_ready"),
            "event_loop_lag": m.get("event_loop_lag", h.get("event_loop_lag")),
            "event_loop_lag_mean": m.get("event_loop_lag_mean"),
            "samples": m.get("samples"),
            "top_function": node_top.get(node),
            "window_s": (m.get("window") or {}).get("elapsed_s"),
            "host": m.get("host") or h.get("host"),
            "pid": m.get("pid"),
        })
    details = pd.DataFrame(rows, columns=NODE_COLUMNS)

    # bottlenecks
    bottlenecks: list[dict[str, Any]] = []
    for kind, column, key in [
        ("cpu_bottleneck", "cpu", "bottleneck-cpu"),
        ("memory_bottleneck", "memory", "bottleneck-memory"),
        ("event_loop_lag", "event_loop_lag", "bottleneck-event-loop-lag"),
    ]:
        values = {
            n: float(m[column]) for n, m in ok.items()
            if m.get(column) is not None and m[column] > thresholds[key]
        }
        if values:
            bottlenecks.append({
                "type": kind, "affected_nodes": sorted(values), "values": values,
                "threshold": thresholds[key],
            })
    bottlenecks += stragglers(
        tasks, thresholds["straggler-factor"], int(thresholds["straggler-min-tasks"]),
        thresholds["straggler-min-duration"],
    )

    # suggestions
    suggestions: list[dict[str, Any]] = []
    factor = thresholds["imbalance-factor"]
    procs = _imbalance({n: float(process_counts.get(n, 0)) for n in ok}, factor)
    if procs:
        suggestions.append({
            "kind": "process_imbalance",
            "message": (
                f"Foundation processes are unbalanced: {procs['max_node']} hosts "
                f"{procs['max']:.0f}, {procs['min_node']} hosts {procs['min']:.0f} "
                f"(more than {factor:g}x). Stop and restart some singletons so the "
                "supervisor places them on the less loaded node."
            ),
            "numbers": procs,
        })
    executed = {n: float(m.get("tasks_executed") or 0) for n, m in ok.items()}
    work = _imbalance(executed, factor)
    if work:
        suggestions.append({
            "kind": "task_imbalance",
            "message": (
                f"Tasks are unbalanced: {work['max_node']} executed {work['max']:.0f} tasks "
                f"in the window, {work['min_node']} executed {work['min']:.0f} (more than "
                f"{factor:g}x). Check worker restrictions, resources and data locality "
                "(client.submit(..., workers=...)), or call client.rebalance()."
            ),
            "numbers": work,
        })
    pressure = {
        n: {"memory": m.get("memory"), "memory_bytes": m.get("memory_bytes"),
            "spilled_bytes": m.get("spilled_bytes"), "worker_status": m.get("worker_status")}
        for n, m in ok.items()
        if (m.get("memory") or 0) >= thresholds["memory-pressure"]
        or (m.get("spilled_bytes") or 0) > 0 or m.get("worker_status") == "paused"
    }
    if pressure:
        parts = ", ".join(
            f"{n} at {v['memory']:.1f}%" + (
                f" ({format_bytes(v['spilled_bytes'])} spilled)" if v["spilled_bytes"] else ""
            )
            for n, v in sorted(pressure.items())
        )
        suggestions.append({
            "kind": "memory_pressure",
            "message": (
                f"Memory pressure on {parts} (threshold {thresholds['memory-pressure']:g}%). "
                "Release results that are no longer needed, persist less, use smaller "
                "partitions, or give the workers more memory."
            ),
            "numbers": {"per_node": pressure, "threshold": thresholds["memory-pressure"]},
        })
    if sum(executed.values()) > 0:
        idle_nodes = sorted(
            n for n, m in ok.items()
            if executed[n] == 0 and (m.get("cpu") or 0.0) < thresholds["idle-cpu"]
        )
        busy = sorted(n for n in ok if executed[n] > 0)
        if idle_nodes:
            per_node = {
                n: {"tasks_executed": int(executed[n]), "cpu": float(ok[n].get("cpu") or 0)}
                for n in sorted(ok)
            }
            suggestions.append({
                "kind": "idle_nodes",
                "message": (
                    "Idle during the window: "
                    + ", ".join(f"{n} (0 tasks, {per_node[n]['cpu']:.1f}% CPU)"
                                for n in idle_nodes)
                    + " while "
                    + ", ".join(f"{n} executed {per_node[n]['tasks_executed']} tasks"
                                for n in busy)
                    + ". Submit more, smaller tasks, remove restrictions pinning work to "
                    "some workers, or scale the cluster down."
                ),
                "numbers": {"idle_nodes": idle_nodes, "busy_nodes": busy,
                            "per_node": per_node, "idle_cpu": thresholds["idle-cpu"]},
            })

    # overview
    window_s = session["duration_ms"] / 1000
    hosts: dict[str, int] = {}
    for m in ok.values():
        if m.get("cores"):
            hosts[m.get("host") or m["node"]] = int(m["cores"])
    for n, h in health.items():
        if n not in ok and h.get("cores"):
            hosts.setdefault(h.get("host") or n, int(h["cores"]))
    mem_used = sum(int(m.get("memory_bytes") or 0) for m in ok.values())
    mem_limit = sum(int(m.get("memory_limit") or 0) for m in ok.values())
    total_tasks = int(sum(executed.values()))
    cpus = [float(m["cpu"]) for m in ok.values() if m.get("cpu") is not None]
    overview = {
        "nodes": len(nodes),
        "profiled_nodes": len(ok),
        "healthy_nodes": sum(
            1 for n in nodes
            if ((health.get(n) or {}).get("status") or ("healthy" if n in ok else None))
            == "healthy"
        ),
        "failed_nodes": sorted(n for n, r in nodes.items() if r["status"] != SUCCESS),
        "total_cores": sum(hosts.values()),
        "total_threads": int(sum(int(m.get("nthreads") or 0) for m in ok.values())),
        "cpu_percent": statistics.fmean(cpus) if cpus else None,
        "cpu_percent_max": max(cpus) if cpus else None,
        "memory_bytes": mem_used,
        "memory_limit": mem_limit,
        "memory_percent": 100.0 * mem_used / mem_limit if mem_limit else None,
        "messages": (messages or {}).get("messages"),
        "message_throughput_per_sec": (
            messages["messages"] / messages["seconds"]
            if messages and messages.get("messages") is not None and messages.get("seconds")
            else None
        ),
        "message_window_s": (messages or {}).get("seconds"),
        "tasks_executed": total_tasks,
        "tasks_per_sec": total_tasks / window_s if window_s else 0.0,
        "window_s": window_s,
        "started_at": session["started_at"],
        "samples": int(sum(int(m.get("samples") or 0) for m in ok.values())),
        "profiled_time_s": float(sum(
            m["profile"].get("time", (m.get("samples") or 0) * (m.get("profile_interval") or 0))
            for m in ok.values()
        )),
        "idle_wait_s": idle_s,
        "profile_source": session.get("options", {}).get("source", "sampler"),
    }
    return PerformanceReport(
        cluster_overview=overview,
        node_details=details,
        performance_bottlenecks=bottlenecks,
        optimization_suggestions=suggestions,
        code_hotspots=hotspots,
        thresholds=dict(thresholds),
        notes=notes,
        session=dict(session),
        profiles={n: m["profile"] for n, m in ok.items()},
    )


# --------------------------------------------------------------------------- results


def _fmt(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{value:.1f}%"
    if kind == "bytes":
        return format_bytes(int(value))
    if kind == "s":
        return f"{value:.3f}s"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass
class PerformanceReport:
    """Result of :func:`analyze_cluster_performance`.

    Attributes
    ----------
    cluster_overview
        ``nodes``, ``profiled_nodes``, ``healthy_nodes``, ``failed_nodes``,
        ``total_cores`` (logical CPUs of the hosts), ``total_threads``, ``cpu_percent``
        (mean over nodes) and ``cpu_percent_max``, ``memory_bytes``, ``memory_limit``,
        ``memory_percent``, ``messages`` and ``message_throughput_per_sec`` (channel
        messages counted by the scheduler from the session's start to the analysis,
        ``message_window_s`` seconds), ``tasks_executed`` and ``tasks_per_sec`` over the
        window,
        ``window_s``, ``started_at`` (ms), ``samples``, ``profiled_time_s``,
        ``idle_wait_s``, ``profile_source``.
    node_details
        One row per node (columns :data:`NODE_COLUMNS`): ``status`` is ``success``,
        ``rpc_failed`` (with ``error``) or ``unreachable``; ``health`` is the
        :class:`~foundation_dask.HealthMonitor` status; ``cpu`` is the process CPU % over
        the window; ``process_count`` counts Foundation processes other than the
        profiler; ``tasks_executed`` counts tasks run in the window, ``tasks_executing``
        and ``tasks_ready`` are the counts at analysis time; ``event_loop_lag`` is the
        longest delay of the event loop in the window (seconds).
    performance_bottlenecks
        ``{"type", "affected_nodes", "values", "threshold"}`` with type
        ``cpu_bottleneck``, ``memory_bottleneck``, ``event_loop_lag`` or ``straggler``
        (which adds ``prefix``, ``median_s`` and ``tasks``).
    optimization_suggestions
        ``{"kind", "message", "numbers"}`` with kind ``process_imbalance``,
        ``task_imbalance``, ``memory_pressure`` or ``idle_nodes``.
    code_hotspots
        Top functions by self time summed over the cluster (columns
        :data:`HOTSPOT_COLUMNS`): ``function`` (``module.qualname``), ``location``
        (``file:first line``), ``self_time_s``, ``total_time_s``, ``samples`` (self),
        ``total_samples``, ``calls`` (tasks of the window, for functions of tasks),
        ``nodes``.
    thresholds
        The thresholds applied.
    notes
        What the analysis had to do or could not do (waits, partial windows...).
    session
        ``started_at`` (ms), ``duration_ms``, ``options`` of the session.
    profiles
        ``{node: call tree}`` of the window, in Dask's profile format.
    """

    cluster_overview: dict[str, Any]
    node_details: pd.DataFrame
    performance_bottlenecks: list[dict[str, Any]]
    optimization_suggestions: list[dict[str, Any]]
    code_hotspots: pd.DataFrame
    thresholds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """The per-node table (a copy of :attr:`node_details`)."""
        return self.node_details.copy()

    def _summary(self) -> str:
        o = self.cluster_overview
        return (
            f"Cluster performance over {o['window_s']:.1f}s: {o['profiled_nodes']}/"
            f"{o['nodes']} nodes profiled ({o['healthy_nodes']} healthy), "
            f"{o['total_cores']} cores, CPU {_fmt(o['cpu_percent'], 'pct')} mean, memory "
            f"{_fmt(o['memory_bytes'], 'bytes')}, {o['tasks_per_sec']:.1f} tasks/s, "
            f"{_fmt(o['message_throughput_per_sec'])} msg/s, {o['samples']} samples"
        )

    def _bottleneck_lines(self) -> list[str]:
        lines = []
        for b in self.performance_bottlenecks:
            if b["type"] == "straggler":
                worst = b["values"][0]
                lines.append(
                    f"{b['type']} {b['prefix']}: {len(b['values'])} of {b['tasks']} tasks > "
                    f"{b['threshold']:g}x median {b['median_s']:.3f}s (worst {worst['key']} "
                    f"{worst['duration_s']:.3f}s on {worst['node']})"
                )
            else:
                vals = ", ".join(f"{n}={v:.3g}" for n, v in sorted(b["values"].items()))
                lines.append(f"{b['type']} (> {b['threshold']:g}): {vals}")
        return lines

    def __repr__(self) -> str:
        lines = [f"<PerformanceReport> {self._summary()}"]
        for n in self.node_details.itertuples():
            lines.append(
                f"  {n.node} {n.status}: cpu {_fmt(n.cpu, 'pct')}, memory "
                f"{_fmt(n.memory, 'pct')}, tasks {_fmt(n.tasks_executed)}, lag "
                f"{_fmt(n.event_loop_lag, 's')}" + (f", error {n.error}" if n.error else "")
            )
        for line in self._bottleneck_lines():
            lines.append(f"  bottleneck: {line}")
        for s in self.optimization_suggestions:
            lines.append(f"  suggestion [{s['kind']}]: {s['message']}")
        for h in self.code_hotspots.head(5).itertuples():
            lines.append(
                f"  hotspot: {h.function} ({h.location}) self {h.self_time_s:.2f}s "
                f"total {h.total_time_s:.2f}s on {', '.join(h.nodes)}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        nodes = self.node_details[[
            "node", "status", "health", "cpu", "memory", "memory_bytes", "threads",
            "process_count", "tasks_executed", "tasks_executing", "tasks_ready",
            "event_loop_lag", "top_function", "error",
        ]].copy()
        nodes["cpu"] = nodes["cpu"].map(lambda v: _fmt(v, "pct"))
        nodes["memory"] = nodes["memory"].map(lambda v: _fmt(v, "pct"))
        nodes["memory_bytes"] = nodes["memory_bytes"].map(lambda v: _fmt(v, "bytes"))
        nodes["event_loop_lag"] = nodes["event_loop_lag"].map(lambda v: _fmt(v, "s"))
        hot = self.code_hotspots.head(10)[
            ["function", "location", "self_time_s", "total_time_s", "samples", "calls",
             "nodes"]
        ]

        def items(lines: list[str]) -> str:
            if not lines:
                return "<p>none</p>"
            return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in lines) + "</ul>"

        return (
            f"<div><p><b>{esc(self._summary())}</b></p>"
            f"<h4>Nodes</h4>{nodes.to_html(index=False, na_rep='-')}"
            f"<h4>Bottlenecks</h4>{items(self._bottleneck_lines())}"
            "<h4>Suggestions</h4>"
            f"{items([s['message'] for s in self.optimization_suggestions])}"
            f"<h4>Code hotspots</h4>{hot.to_html(index=False, na_rep='-')}"
            + (f"<h4>Notes</h4>{items(self.notes)}" if self.notes else "")
            + "</div>"
        )


# --------------------------------------------------------------------------- client side


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

    @property
    def remaining_s(self) -> float:
        """Seconds until the window ends (0 once it has)."""
        return max(0.0, self.collection_time / 1000 - time.time())

    def analyze(self, **kwargs: Any) -> PerformanceReport:
        """:func:`analyze_cluster_performance` of this session."""
        return analyze_cluster_performance(self, **kwargs)

    def stop(self) -> bool:
        """Stop the profilers (their figures are dropped)."""
        import foundation_dask as fd

        return bool(fd.ProcessManager.stop(PROFILER_NAME))

    def __repr__(self) -> str:
        return (
            f"<ProfilingSession {len(self.profilers)} nodes, {self.duration_ms:g} ms, "
            f"{self.remaining_s:.1f}s left, source={self.options.get('source', 'sampler')}>"
        )


def _parse_options(opts: dict[str, Any] | str | None) -> dict[str, Any]:
    from foundation_dask.scope.tracing import parse_trace_options

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


def _wait_all(futures: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict]:
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


def _messages_total(client: distributed.Client) -> int | None:
    import foundation_dask as fd

    try:
        return fd.HealthMonitor.get_cluster_health(client=client).performance.messages_total
    except Exception:
        return None


def start_cluster_profiling(duration_ms: float = 5000,
                            opts: dict[str, Any] | str | None = None) -> ProfilingSession:
    """Profile every worker of the cluster for ``duration_ms`` from now.

    Opens a window on the :class:`NodeProfiler` of every worker (replicated process
    ``"cluster_profiler"``, started on first use and kept for later sessions; a window
    still open is ended) and broadcasts ``("start_profiling", duration_ms,
    started_at_ms)`` on the ``control`` channel.

    Parameters
    ----------
    duration_ms
        Length of the window in milliseconds.
    opts
        A dict, JSON object or ``"key=value"`` text: ``source`` (``"sampler"``, default,
        or ``"dask"``: see the module docs) and ``interval`` (sampling interval of the
        ``sampler`` source; default ``distributed.worker.profile.interval``).

    Returns
    -------
    ProfilingSession
        Pass it to :func:`analyze_cluster_performance` (the latest session is used by
        default).
    """
    import foundation_dask as fd

    global _last_session
    if (
        isinstance(duration_ms, bool) or not isinstance(duration_ms, (int, float))
        or not math.isfinite(duration_ms) or duration_ms <= 0
    ):
        raise ValueError(f"duration_ms must be a positive number, not {duration_ms!r}")
    options = _parse_options(opts)
    client = current_client()
    if client.asynchronous:
        raise RuntimeError(
            "start_cluster_profiling() needs a synchronous client; call it from a notebook "
            "or a thread, not from the event loop."
        )
    index = client.sync(client.scheduler.get_task_stream_index)  # installs the plugin
    messages = _messages_total(client)
    handles = fd.ProcessManager.start_replicated(NodeProfiler, options, name=PROFILER_NAME)
    started_at = int(time.time() * 1000)
    mono = time.monotonic()
    _, errors = _wait_all(
        {w: h.start(duration_ms, started_at, options) for w, h in handles.items()},
        _node_timeout(),
    )
    fd.Channels.broadcast("control", ("start_profiling", duration_ms, started_at))
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
    )
    _last_session = session
    return session


def _session_from_cluster() -> ProfilingSession:
    import foundation_dask as fd
    from foundation_dask.core.processes import ProcessNotFoundError

    try:
        handles = fd.ProcessManager.lookup_replicated(PROFILER_NAME)
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
    import foundation_dask as fd

    try:
        report = fd.HealthMonitor.get_cluster_health(client=client)
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


def _process_counts() -> dict[str, int]:
    import foundation_dask as fd

    frame = fd.ProcessManager.list_processes()
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
                                top: int | None = None) -> PerformanceReport:
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

    Returns
    -------
    PerformanceReport
    """
    client = current_client()
    if client.asynchronous:
        raise RuntimeError(
            "analyze_cluster_performance() needs a synchronous client; call it from a "
            "notebook or a thread, not from the event loop."
        )
    workers = set(worker_infos(client))
    if session is None:
        # the latest session of this process, unless it belongs to another cluster
        last = _last_session
        session = last if last and set(last.profilers) & workers else _session_from_cluster()
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
    from foundation_dask.core.processes import ProcessLostError

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
        counts = _process_counts()
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

    info = {
        "started_at": session.started_at, "duration_ms": session.duration_ms,
        "collection_time": session.collection_time, "options": dict(session.options),
    }
    return build_report(info, nodes, health, counts, tasks, thresholds, messages, notes, top)


__all__ = [
    "NodeProfiler", "PerformanceReport", "ProfilingSession", "analyze_cluster_performance",
    "build_report", "code_hotspots", "count_innermost_frames", "function_stats",
    "start_cluster_profiling", "stragglers", "thresholds_from_config",
]
