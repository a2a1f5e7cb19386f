"""Worker: the worker side of ElixirScope, :class:`ScopeWorker`.

Hands out the spans this worker's process recorded (``foundation_scope_spans``) and its
clock (``foundation_scope_clock``) for the offset estimation of trace collection, and
names the process's span recorder after the worker.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foundation_dask.core.plugin import WorkerExtension
from foundation_dask.tracecontext import recorder

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.plugin import FoundationWorkerPlugin

#: The workers of this process that run ElixirScope's worker side.
_workers: weakref.WeakSet[distributed.Worker] = weakref.WeakSet()


def scope_workers() -> list[distributed.Worker]:
    """The workers of this process where ElixirScope's worker side is set up."""
    return list(_workers)


class ScopeWorker(WorkerExtension):
    """Worker side of ElixirScope: this process's recorded spans and its clock."""

    name = "scope"

    def __init__(self, worker: distributed.Worker, plugin: FoundationWorkerPlugin) -> None:
        super().__init__(worker, plugin)
        _workers.add(worker)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_scope_spans": self.spans,
            "foundation_scope_clock": self.clock,
        }

    async def setup(self) -> None:
        if recorder.node == "client":
            recorder.node = self.worker.address

    async def teardown(self) -> None:
        _workers.discard(self.worker)
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
