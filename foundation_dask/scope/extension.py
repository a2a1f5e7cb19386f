"""Scheduler and worker sides of ElixirScope.

The scheduler side records a span for every traced task as it finishes (which
worker, which thread, compute and transfer intervals measured on the worker, errors)
from the task's ``span`` annotation; the worker side hands out the spans its process
recorded and its clock for offset estimation.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Any

from dask.utils import key_split

from foundation_dask.core.plugin import SchedulerExtension, WorkerExtension
from foundation_dask.scope.context import context_from_annotations, recorder, task_span_id

#: Traced tasks kept per trace on the scheduler.
MAX_TASKS_PER_TRACE = 200_000


#: Stimuli that take a task off its worker without it being lost.
_NOT_LOST = ("steal", "client-releases")


class ScopeExtension(SchedulerExtension):
    """Scheduler side of ElixirScope: the task stream of traced tasks."""

    name = "scope"

    def __init__(self, scheduler, plugin):
        super().__init__(scheduler, plugin)
        self.tasks: dict[str, deque] = {}
        self.removed_workers: dict[str, float] = {}
        self._last_worker: dict[Any, str] = {}
        self.transition = self._transition

    def handlers(self):
        return {
            "foundation_scope_scheduler_spans": self.scheduler_spans,
            "foundation_scope_clock": self.clock,
        }

    def clock(self) -> int:
        return time.time_ns()

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        self.removed_workers[worker] = time.time()

    def _transition(self, key, start, finish, *args, **kwargs) -> None:
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
            # work stealing moved it before it ran, or no client wants it any more (e.g.
            # a finished task being computed again after its worker died, released
            # meanwhile): not an event of the trace
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


def _task_record(trace_id, parent_id, key, worker, thread, startstops, finish, exc_text,
                 tb_text) -> dict[str, Any]:
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


class ScopeWorker(WorkerExtension):
    """Worker side of ElixirScope: this process's recorded spans and its clock."""

    name = "scope"

    def handlers(self):
        return {
            "foundation_scope_spans": self.spans,
            "foundation_scope_clock": self.clock,
        }

    async def setup(self) -> None:
        if recorder.node == "client":
            recorder.node = self.worker.address

    async def teardown(self) -> None:
        # a process that hosted an in-process worker goes back to being a client
        if recorder.node == self.worker.address:
            recorder.node = "client"

    def spans(self, trace_id: str, clear: bool = False) -> dict[str, Any]:
        out = recorder.take(trace_id, clear=clear)
        out["node"] = self.worker.address
        out["threads"] = {
            **{t.ident: t.name for t in threading.enumerate()}, **out["threads"]
        }
        return out

    def clock(self) -> int:
        return time.time_ns()
