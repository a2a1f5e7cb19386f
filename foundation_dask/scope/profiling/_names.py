"""Any process: names and constants shared by the parts of cluster profiling.

The worker side (:mod:`._sampler`), the analysis (:mod:`._analysis`) and the client
side (:mod:`._facade`) agree on these: the name of the replicated profiler process,
the statuses of a node in a report, the sources of stack samples, the files whose
frames are the profiler's own, and the config keys of the analysis thresholds.
"""

from __future__ import annotations

#: Name of the replicated Foundation process holding one ``NodeProfiler`` per worker.
PROFILER_NAME = "cluster_profiler"

SUCCESS, RPC_FAILED, UNREACHABLE = "success", "rpc_failed", "unreachable"
SOURCES = ("sampler", "dask")

#: Samples deeper than this many frames keep their innermost frames only.
MAX_DEPTH = 100

#: A sample stands for at most this many sampling intervals (after a long event-loop
#: stall, the stack seen at its end says little about the time before).
MAX_SAMPLE_INTERVALS = 10

#: Path endings of the profiler's own modules: samples passing through them are the
#: profiler itself, and their functions are never hotspots (``str.endswith`` of a tuple).
OWN_FILES = tuple(
    f"foundation_dask/scope/profiling/{module}.py"
    for module in ("__init__", "_names", "_sampler", "_analysis", "_report", "_facade")
)
WORKER_FILE = "distributed/worker.py"
TASK_SPEC_FILE = "dask/_task_spec.py"

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

#: Those of :data:`THRESHOLD_KEYS` that are durations (parsed to seconds).
SECONDS_KEYS = ("bottleneck-event-loop-lag", "straggler-min-duration")
