"""Client and worker: cluster profiling (ElixirScope's ``ClusterProfiler``), where the
cluster spends its time.

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
sample once even for recursive functions. Hotspots rank by CPU time: with the
``sampler`` source on Linux, each sample also carries the CPU seconds its thread used
since the thread's previous reading (the thread's CPU-time clock, read by its kernel
thread id at every tick, a few microseconds), so a task that sleeps or waits for a lock,
a file or the network ranks by what it computes, however late the sampler's ticks
come on a loaded machine. ``self_time_s`` / ``total_time_s`` are then CPU seconds and
``self_wall_s`` / ``total_wall_s`` the wall seconds of the same samples. The ``dask``
source has no CPU times (Dask's profiler samples every thread running a task, whether
it computes or sleeps): its hotspots rank by wall time of busy threads, as do those of
workers without per-thread CPU clocks (not Linux); ``cluster_overview["hotspot_clock"]``
says which, and a note says why. A sampler only runs when the event loop gets
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

Foundation itself is profiled on the scheduler: for the window, a meter
(:mod:`~foundation_dask.scope.profiling._scheduler_meter`) times every call through
which Foundation's scheduler extensions (channels, processes, health, registry,
secrets, scope, dspex.lm, the plugin) hold the scheduler's event loop, each exclusive of
the others, coroutines by their steps, not their waits;
:attr:`PerformanceReport.scheduler_extensions` gives seconds, calls and share per
subsystem (``dspex.tune`` reports the same table for its runs). Dask does not sample
the scheduler's event loop on Python 3.11, so it counts; a wrapper costs about a
microsecond a call, and the meter ends by itself with the window.

Starting a new session ends the previous one (there is one ``"cluster_profiler"`` per
cluster; its instances stay and serve the next sessions). The profilers keep their
results until the next session or :meth:`ProfilingSession.stop`, so a session can be
analysed again (e.g. with other thresholds).
"""

from foundation_dask.scope.profiling._analysis import (
    ALL_EXTENSIONS,
    EXTENSION_COLUMNS,
    HOTSPOT_COLUMNS,
    NODE_COLUMNS,
    build_report,
    code_hotspots,
    count_innermost_frames,
    extensions_frame,
    function_stats,
    hotspot_clock,
    stragglers,
    thresholds_from_config,
)
from foundation_dask.scope.profiling._facade import (
    ProfilingSession,
    analyze_cluster_performance,
    start_cluster_profiling,
)
from foundation_dask.scope.profiling._names import (
    IDLE_FRAMES,
    MAX_DEPTH,
    MAX_SAMPLE_INTERVALS,
    PROFILER_NAME,
    RPC_FAILED,
    SOURCES,
    SUCCESS,
    THRESHOLD_KEYS,
    UNREACHABLE,
)
from foundation_dask.scope.profiling._report import PerformanceReport
from foundation_dask.scope.profiling._sampler import (
    THREAD_CPU_CLOCKS,
    NodeProfiler,
    add_sample,
    thread_cpu_clock,
)

__all__ = [
    "ALL_EXTENSIONS", "EXTENSION_COLUMNS", "extensions_frame",
    "HOTSPOT_COLUMNS", "IDLE_FRAMES", "MAX_DEPTH", "MAX_SAMPLE_INTERVALS", "NODE_COLUMNS",
    "PROFILER_NAME", "RPC_FAILED", "SOURCES", "SUCCESS", "THREAD_CPU_CLOCKS", "THRESHOLD_KEYS",
    "UNREACHABLE", "NodeProfiler", "PerformanceReport", "ProfilingSession", "add_sample",
    "analyze_cluster_performance", "build_report", "code_hotspots", "count_innermost_frames",
    "function_stats", "hotspot_clock", "start_cluster_profiling", "stragglers",
    "thread_cpu_clock", "thresholds_from_config",
]
