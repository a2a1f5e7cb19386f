"""Worker: :class:`WorkerChannels`, the worker's one link to the hub, shared by the
tasks and actors running on it."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from distributed.core import Status

from foundation_dask.core.channels._link import Link
from foundation_dask.core.plugin import WorkerExtension

if TYPE_CHECKING:
    from distributed import Worker

    from foundation_dask.core.plugin import FoundationWorkerPlugin


#: Worker states in which its link closes.
_GONE = frozenset({Status.closing, Status.closed, Status.failed})


class WorkerChannels(WorkerExtension):
    """Worker side of Channels: the worker's link, shared by its tasks and actors."""

    name = "channels"

    def __init__(self, worker: Worker, plugin: FoundationWorkerPlugin):
        super().__init__(worker, plugin)
        self._link: Link | None = None
        self._lock = threading.Lock()

    @property
    def link(self) -> Link:
        """The worker's link to the hub (connected on first use)."""
        with self._lock:
            if self._link is None:
                worker = self.worker
                ref = weakref.ref(worker)

                def alive() -> bool:  # a paused or cut-off worker keeps its link
                    w = ref()
                    return w is not None and w.status not in _GONE

                self._link = Link(
                    loop=worker.loop,
                    address=worker.scheduler.address,
                    connection_args=worker.connection_args,
                    endpoint=worker.address,
                    kind="worker",
                    alive=alive,
                )
            return self._link

    async def teardown(self) -> None:
        if self._link is not None:
            await self._link.close()
