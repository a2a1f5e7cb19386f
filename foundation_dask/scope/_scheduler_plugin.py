"""Scheduler: the scheduler side of ElixirScope, :class:`ScopeExtension`.

Records a span for every traced task as it finishes (which worker, which thread,
compute and transfer intervals measured on the worker, errors) from the task's trace
annotation, and hands them out (``foundation_scope_scheduler_spans``) with the
scheduler's clock (``foundation_scope_clock``) when a trace is collected; drops what it
keeps of a trace, and the spans the scheduler's process recorded for it, when the trace
is forgotten (``foundation_scope_forget``). The worker side is
:class:`~foundation_dask.scope._worker_plugin.ScopeWorker`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask.utils import key_split

from foundation_dask.core.plugin import SchedulerExtension
from foundation_dask.tracecontext import context_from_annotations, recorder, task_span_id

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.plugin import FoundationSchedulerPlugin

#: Traced tasks kept per trace on the scheduler.
MAX_TASKS_PER_TRACE = 200_000


#: Stimuli that take a task off its worker without it being lost: work stealing, a
#: client that no longer wants it, a client that cancelled it (``Client.cancel``).
_NOT_LOST = ("steal", "client-releases", "cancel-key")


class ScopeExtension(SchedulerExtension):
    """Scheduler side of ElixirScope: the task stream of traced tasks."""

    name = "scope"

    def __init__(self, scheduler: distributed.Scheduler,
                 plugin: FoundationSchedulerPlugin) -> None:
        super().__init__(scheduler, plugin)
        self.tasks: dict[str, deque] = {}
        self.removed_workers: dict[str, float] = {}
        self._last_worker: dict[Any, str] = {}
        self.transition = self._transition

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_scope_scheduler_spans": self.scheduler_spans,
            "foundation_scope_clock": self.clock,
            "foundation_scope_forget": self.forget,
        }

    def clock(self) -> int:
        return time.time_ns()

    def forget(self, trace_id: str) -> dict[str, int]:
        """Drop the traced tasks of ``trace_id`` and the spans this process recorded for
        it; returns how many of each were dropped."""
        tasks = self.tasks.pop(trace_id, None)
        spans = recorder.buffers.get(trace_id)
        dropped = {"tasks": len(tasks or ()), "spans": len(spans or ())}
        recorder.forget(trace_id)
        return dropped

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        self.removed_workers[worker] = time.time()

    def _transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        # Called for every transition of every task: keep the untraced path to a few
        # comparisons and the traced path to one tuple; the rest waits for collection.
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            if ts is not None and ts.annotations and ts.processing_on is not None \
                    and context_from_annotations(ts.annotations) is not None:
                self._last_worker[key] = ts.processing_on.address
            return
        if start != "processing":
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None or not ts.annotations:
            return
        ctx = context_from_annotations(ts.annotations)
        if ctx is None:
            return
        buf = self.tasks.get(ctx.trace_id)
        if buf is None:
            buf = self.tasks[ctx.trace_id] = deque(maxlen=MAX_TASKS_PER_TRACE)
        if finish == "memory" or finish == "erred":
            buf.append((
                ctx.span_id, key, kwargs.get("worker"), kwargs.get("thread"),
                kwargs.get("startstops"), finish, kwargs.get("exception_text"),
                kwargs.get("traceback_text"),
            ))
        elif (kwargs.get("stimulus_id") or "").startswith(_NOT_LOST):
            # work stealing moved it before it ran, no client wants it any more (e.g.
            # a finished task being computed again after its worker died, released
            # meanwhile), or a client cancelled it: not an event of the trace
            return
        else:
            # processing -> released/waiting/no-worker: the task left its worker
            # unfinished (the worker died or retired); Dask runs it again elsewhere
            stimulus = kwargs.get("stimulus_id") or ""
            buf.append((
                ctx.span_id, key, self._last_worker.get(key), None,
                [{"action": "compute", "start": time.time(), "stop": time.time()}], "lost",
                f"task left {self._last_worker.get(key)} unfinished ({stimulus})", "",
            ))
        self._last_worker.pop(key, None)

    def scheduler_spans(self, trace_id: str, clear: bool = False) -> dict[str, Any]:
        buf = self.tasks.pop(trace_id, None) if clear else self.tasks.get(trace_id)
        return {
            "tasks": [_task_record(trace_id, *row) for row in list(buf or ())],
            "removed_workers": dict(self.removed_workers),
            "workers": list(self.scheduler.workers),
            "now_ns": time.time_ns(),
        }


def _task_record(trace_id: str, parent_id: int, key: Any, worker: str | None,
                 thread: int | None, startstops: Any, finish: str, exc_text: str | None,
                 tb_text: str | None) -> dict[str, Any]:
    startstops = startstops or ()
    compute = [s for s in startstops if s.get("action") == "compute"]
    t0, t1 = (compute[0]["start"], compute[-1]["stop"]) if compute else (0.0, 0.0)
    error = None
    if finish == "erred":
        error = {"type": _exception_type(exc_text or ""), "message": exc_text or "",
                 "traceback": tb_text or ""}
    elif finish == "lost":
        error = {"type": "TaskLost", "message": exc_text or "", "traceback": ""}
    return {
        "trace_id": trace_id,
        "span_id": task_span_id(trace_id, f"{key}@{t0}" if finish == "lost" else key),
        "parent_id": parent_id,
        "name": key_split(key),
        "key": str(key),
        "node": worker,
        "thread_id": thread,
        "start_ns": int(t0 * 1e9),
        "end_ns": int(t1 * 1e9),
        "status": "ok" if finish == "memory" else "error",
        "lost": finish == "lost",
        "error": error,
        "transfers": [
            {"source": s.get("source"), "start_ns": int(s["start"] * 1e9),
             "end_ns": int(s["stop"] * 1e9)}
            for s in startstops if s.get("action") == "transfer"
        ],
    }


def _exception_type(text: str) -> str:
    """``"ValueError('nope')"`` -> ``"ValueError"`` (the scheduler keeps only the text)."""
    match = re.match(r"^\s*([A-Za-z_][\w.]*)\s*[(:]", text)
    return match.group(1) if match else "Exception"
