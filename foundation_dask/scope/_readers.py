"""Scheduler: what ElixirScope shows of a cluster, read inside the scheduler process.

For dashboards served by the scheduler, which have no client: the cluster's traces
(:func:`scheduler_traces`, from the supervisor's records of the trace coordinators, no
call to the coordinators), one collected trace (:func:`scheduler_trace_data`: spans of
the workers and traced tasks of the scheduler; spans recorded in client processes are
not reachable from there) and Dask's profile of the workers (:func:`scheduler_profile`).
The coroutines run on the scheduler's event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from foundation_dask.core.plugin import extension
from foundation_dask.scope._names import COORDINATOR
from foundation_dask.scope.collect import clock_offset, correlate

if TYPE_CHECKING:
    import distributed

    from foundation_dask.scope.collect import TraceData

__all__ = ["scheduler_profile", "scheduler_trace_data", "scheduler_traces"]

#: ``{name key: (record token, state)}`` of the coordinators seen last.
_states: dict[str, tuple[tuple, dict[str, Any]]] = {}


def _coordinator_state(supervisor: Any, rec: Any) -> dict[str, Any]:
    """What the supervisor knows of a trace coordinator: its last checkpointed state,
    else its start arguments (cached per incarnation and checkpoint). Both are decoded
    as plain data by the supervisor: nothing of them is imported or run here."""
    token = (id(rec), rec.incarnation, rec.n_checkpoints)
    cached = _states.get(rec.key)
    if cached is not None and cached[0] == token:
        return cached[1]
    loaded = supervisor.checkpoint_state(rec)
    state: dict[str, Any] = dict(loaded) if isinstance(loaded, dict) else {}
    if not state:
        start = supervisor.start_args(rec)
        if start is not None:
            args = start[0] + [None] * 3
            state = {"trace_id": args[0], "scope": args[1], "options": args[2] or {},
                     "status": "active", "started_at": None, "completed_at": None}
        else:
            state = {"status": "active"}
    state.pop("results", None)
    _states[rec.key] = (token, state)
    return state


def scheduler_traces(scheduler: distributed.Scheduler,
                     include_completed: bool = True) -> list[dict[str, Any]]:
    """The cluster's traces, read inside the scheduler process.

    Each trace has a supervised coordinator; the supervisor keeps its start arguments
    and its checkpointed state (taken after every call, e.g. when the trace is stopped),
    which is all this reads.

    Parameters
    ----------
    scheduler
        The scheduler of this process.
    include_completed
        Also list traces that were stopped but not forgotten.

    Returns
    -------
    list of dict
        ``trace_id``, ``scope``, ``status``, ``started_at`` and ``completed_at`` (epoch
        ms), ``options``, ``worker`` (of the coordinator) and ``process_state`` (the
        supervisor's state of the coordinator) of each trace.
    """
    supervisor = extension(scheduler, "processes")
    if supervisor is None:
        return []
    out = []
    records = [(name, rec) for name, rec in supervisor.records_named(COORDINATOR)
               if len(name) == 2]
    for key in set(_states) - {rec.key for _, rec in records}:
        _states.pop(key, None)
    for name, rec in records:
        state = _coordinator_state(supervisor, rec)
        status = state.get("status") or "active"
        if not include_completed and status != "active":
            continue
        started = state.get("started_at")
        out.append({
            "trace_id": str(name[1]),
            "scope": state.get("scope"),
            "status": status,
            "started_at": started if started is not None else rec.started_at * 1000.0,
            "completed_at": state.get("completed_at"),
            "options": state.get("options") or {},
            "worker": rec.worker,
            "process_state": rec.state,
        })
    return out


async def scheduler_trace_data(scheduler: distributed.Scheduler, trace_id: str,
                               info: dict[str, Any] | None = None,
                               timeout: float = 5.0) -> TraceData:
    """Collect a trace inside the scheduler process (asynchronous, on its event loop).

    Asks every worker for its spans and clock (each within ``timeout`` seconds; slower
    ones are listed as missing) and takes the traced tasks from the scheduler's scope
    extension, then correlates them like ``scope.collect_trace_data`` on the
    scheduler's clock. Spans recorded in client processes are not included.

    Parameters
    ----------
    scheduler
        The scheduler of this process.
    trace_id
        The trace.
    info
        The trace's record (default: its entry of :func:`scheduler_traces`).
    timeout
        Seconds each worker has to answer.

    Returns
    -------
    TraceData
    """
    scope_ext = extension(scheduler, "scope")
    if info is None:
        info = next((t for t in scheduler_traces(scheduler) if t["trace_id"] == trace_id),
                    {"trace_id": trace_id, "status": "unknown"})
    offsets: dict[str, float] = {"scheduler": 0.0}
    errors: dict[str, float] = {"scheduler": 0.0}
    workers = list(scheduler.workers)

    async def from_worker(addr: str) -> dict[str, Any]:
        rpc = scheduler.rpc(addr)
        offsets[addr], errors[addr] = await clock_offset(rpc.foundation_scope_clock)
        return await rpc.foundation_scope_spans(trace_id=trace_id)

    results = await asyncio.gather(
        *(asyncio.wait_for(from_worker(w), timeout) for w in workers), return_exceptions=True
    )
    payloads, missing = [], []
    for addr, res in zip(workers, results, strict=True):
        if isinstance(res, BaseException):
            missing.append(addr)
        else:
            payloads.append(res)
    sched = scope_ext.scheduler_spans(trace_id) if scope_ext is not None else None
    if sched is None:
        missing.append("scheduler")
    return correlate(trace_id, dict(info), payloads, sched, offsets, errors, missing)


async def scheduler_profile(scheduler: distributed.Scheduler, seconds: float | None = 60.0,
                            merge_workers: bool = False) -> dict[str, Any]:
    """Dask's profile of the workers over the last ``seconds``, asked by the scheduler.

    Parameters
    ----------
    scheduler
        The scheduler of this process.
    seconds
        How far back (``None``: the workers' whole profile history).
    merge_workers
        One call tree for all workers, else ``{worker: call tree}``.
    """
    start = None if seconds is None else time.time() - seconds
    return await scheduler.get_profile(start=start, merge_workers=merge_workers)
