"""Worker: the sampler of cluster profiling, :class:`NodeProfiler`.

One :class:`NodeProfiler` per worker (the replicated Foundation process
``"cluster_profiler"``), on the worker's event loop, records the worker's counters at
the start and end of a profiling window (process CPU time, tasks executed), measures
the event-loop lag during the window and samples the call stacks of the worker's busy
threads (``Worker.active_threads``: task threads and the actor thread) into a call
tree in Dask's format, each sample weighted by the wall time it stands for and by the
CPU time its thread used since the thread's previous reading (the thread's CPU clock),
or cuts the worker's own profile history at the window's ends (source ``"dask"``).
See :mod:`foundation_dask.scope.profiling` for the whole picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import linecache
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta

from foundation_dask.core.plugin import extension
from foundation_dask.scope._worker_plugin import scope_workers
from foundation_dask.scope.profiling._names import (
    MAX_DEPTH,
    MAX_SAMPLE_INTERVALS,
    OWN_FILES,
    WORKER_FILE,
)

if TYPE_CHECKING:
    import distributed

#: Whether threads have CPU-time clocks that can be read by their kernel thread id
#: (Linux): the ``sampler`` source then weighs samples by CPU time.
THREAD_CPU_CLOCKS = sys.platform.startswith("linux") and hasattr(time, "clock_gettime")



def _no_thread_clocks(clk_id: int) -> float:
    raise OSError("threads have no CPU-time clocks on this platform")


_clock_gettime: Callable[[int], float] = getattr(time, "clock_gettime", _no_thread_clocks)
_thread_time = time.thread_time
_monotonic = time.monotonic


def thread_cpu_clock(native_id: int) -> int:
    """The clock id of the CPU-time clock of the thread ``native_id`` of this process.

    Linux encodes a thread's CPU clock as ``(~tid << 3) | CPUCLOCK_PERTHREAD |
    CPUCLOCK_SCHED``: what ``pthread_getcpuclockid`` returns, but made from the kernel
    thread id (``Thread.native_id``) instead of a ``pthread_t``, so reading the clock
    of a thread that has exited raises ``OSError`` instead of reading freed memory.
    """
    return ((~native_id) << 3) | 6


def _hosts(worker: distributed.Worker) -> dict[str, Any]:
    """The Foundation processes hosted by ``worker`` (actor key -> host)."""
    processes = extension(worker, "processes")
    return getattr(processes, "hosts", {})


def _find_worker(instance: Any) -> distributed.Worker:
    """The worker hosting ``instance`` as a Foundation process (from its event loop)."""
    for worker in scope_workers():
        for host in list(_hosts(worker).values()):
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


def add_sample(tree: dict[str, Any], frame: Any, seconds: float,
               cpu: float | None = None) -> bool:
    """Add one stack sample (innermost ``frame``) to a call tree in Dask's format.

    Unlike :func:`distributed.profile.process` as the worker calls it, the innermost
    frame is counted, so a node's count minus its children's counts is its self time.
    Every node also sums ``time``: the wall ``seconds`` each sample stands for, and,
    when ``cpu`` is given, ``cpu``: the CPU seconds the sampled thread used. Frames of
    :mod:`distributed.worker` and above are left out (as Dask does); samples passing
    through the modules of cluster profiling (the profiler itself) are dropped.

    Returns
    -------
    bool
        Whether the sample was added.
    """
    stack: list[FrameType] = []
    f = frame
    while f is not None and len(stack) < MAX_DEPTH:
        if f.f_code.co_filename.endswith(OWN_FILES):
            return False
        stack.append(f)
        prev = f.f_back
        if not isinstance(prev, FrameType):
            # None at the bottom of the stack; on CPython 3.11 the f_back of another
            # thread's frame is seldom something else while that thread unwinds: the
            # sample is kept up to here
            break
        if prev.f_code.co_filename.endswith(WORKER_FILE):
            break
        f = prev
    if not stack:
        return False
    node = tree
    node["count"] += 1
    node["time"] = node.get("time", 0.0) + seconds
    if cpu is not None:
        node["cpu"] = node.get("cpu", 0.0) + cpu
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
        if cpu is not None:
            child["cpu"] = child.get("cpu", 0.0) + cpu
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
        # CPU clocks of the sampled threads: ident -> kernel thread id, and kernel thread
        # id -> (CPU seconds, monotonic time) of the thread's latest reading
        self._native_ids: dict[int, int] = {}
        self._cpu_last: dict[int, tuple[float, float]] = {}

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
        clock = "cpu" if source == "sampler" and THREAD_CPU_CLOCKS else "wall"
        if clock == "cpu":
            self._cpu_baseline()
        self._window = {
            "source": source,
            "clock": clock,
            "cpu_clock_errors": 0,
            "sampler_cpu_s": 0.0,
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
            "monotonic_start": time.monotonic(),
        }
        self._done = asyncio.Event()
        self._callback = PeriodicCallback(self._tick, interval * 1000)
        self._callback.start()
        loop = asyncio.get_running_loop()
        self._end_handle = loop.call_later(duration_ms / 1000, self._finish)
        return self._window_info()

    def _refresh_native_ids(self) -> None:
        self._native_ids = {
            t.ident: t.native_id for t in threading.enumerate()
            if t.ident is not None and t.native_id is not None
        }

    def _cpu_baseline(self) -> None:
        """Read the CPU clock of every thread of the process at the window's start."""
        self._refresh_native_ids()
        now = _monotonic()
        self._cpu_last = {}
        for tid in self._native_ids.values():
            with contextlib.suppress(OSError):  # the thread exited meanwhile
                self._cpu_last[tid] = (_clock_gettime(thread_cpu_clock(tid)), now)

    def _thread_cpu(self, ident: int, now: float, since: float) -> float | None:
        """CPU seconds the thread ``ident`` used since its previous reading (``None``
        when its clock cannot be read: counted in ``cpu_clock_errors``)."""
        tid = self._native_ids.get(ident)
        for attempt in (0, 1):
            if tid is not None:
                try:
                    cpu = _clock_gettime(thread_cpu_clock(tid))
                    break
                except OSError:  # exited; its ident may now name another thread
                    pass
            if attempt == 0:
                self._refresh_native_ids()
                tid = self._native_ids.get(ident)
        else:
            return None
        last = self._cpu_last.get(tid)
        self._cpu_last[tid] = (cpu, now)
        if last is None:  # a thread started during the window: its clock started at 0
            return min(cpu, now - since)
        return max(0.0, cpu - last[0])

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
        t0 = _thread_time()
        with worker.active_threads_lock:
            idents = list(worker.active_threads)
        frames = sys._current_frames()
        # a sample stands for the time since the previous one (longer than the interval
        # when the event loop waited for the GIL or the CPU), up to MAX_SAMPLE_INTERVALS;
        # its CPU time is what the thread's CPU clock counted since its previous reading,
        # not bounded: on a loaded machine ticks come late, the CPU clock stays exact
        seconds = min(gap, MAX_SAMPLE_INTERVALS * win["interval"])
        cpu_clock = win["clock"] == "cpu"
        for ident in idents:
            frame = frames.get(ident)
            if frame is None:
                continue
            cpu = None
            if cpu_clock:
                cpu = self._thread_cpu(ident, now, win["monotonic_start"])
                if cpu is None:
                    win["cpu_clock_errors"] += 1
                    cpu = 0.0
            add_sample(self._tree, frame, seconds, cpu)
        win["sampler_cpu_s"] += _thread_time() - t0

    def _alive(self) -> bool:
        return any(
            h._instance is self and not h._stopped for h in list(_hosts(self._worker).values())
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
            ``profile_source``, ``profile_clock`` (``"cpu"``: the nodes of
            ``profile`` carry the CPU seconds of their samples; ``"wall"``: only wall
            seconds), ``profile_interval`` (seconds a sample stands for: the
            window's length over the sampling ticks that ran, at least
            ``sampling_interval``), ``sampling_interval``, ``ticks``, ``samples``,
            ``cpu_clock_errors`` (samples whose thread's CPU clock could not be read,
            counted with 0 CPU seconds), ``sampler_cpu_s`` (CPU seconds the sampler's
            ticks took on the event loop).
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
            spilled = int(sum(worker.data.spilled_total))
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
            "profile_clock": win["clock"],
            # seconds a sample stands for on average: the window over the ticks that ran
            # (more than the nominal interval when the busy event loop skipped ticks);
            # samples of the "sampler" source carry their own time
            "profile_interval": max(win["interval"], elapsed / ticks) if win["ticks"]
            else win["interval"],
            "sampling_interval": win["interval"],
            "ticks": win["ticks"],
            "samples": int(tree["count"]),
            "cpu_clock_errors": win["cpu_clock_errors"],
            "sampler_cpu_s": win["sampler_cpu_s"],
        }



# the name it is listed under among the supervised processes, and pickled by
NodeProfiler.__module__ = "foundation_dask.scope.profiling"
