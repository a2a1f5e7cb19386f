"""Worker: the worker's registry identity (:class:`RegistryWorker`).

Entries registered from a task or an actor belong to the worker that ran it. The
scheduler tells a worker its identity token on the batched stream it holds for that
worker; the registry facade, called from a task, sends the token with its requests so
that the scheduler knows the caller without taking its word for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dask.config
import distributed
from dask.utils import parse_timedelta

from foundation_dask.core.plugin import WorkerExtension
from foundation_dask.core.registry._core import IDENTITY_OP, raise_if_error


class RegistryWorker(WorkerExtension):
    """Holds the worker's identity token for registry requests made from its tasks."""

    name = "registry"

    def __init__(self, worker: distributed.Worker, plugin: Any) -> None:
        super().__init__(worker, plugin)
        self.token: str | None = None
        self._arrived: asyncio.Event | None = None

    def stream_handlers(self) -> dict[str, Any]:
        return {IDENTITY_OP: self._receive}

    def _receive(self, token: str, **kwargs: Any) -> None:
        self.token = token
        if self._arrived is not None:
            self._arrived.set()

    def forget(self) -> None:
        """Drop the token (the scheduler no longer knows it)."""
        self.token = None
        self._arrived = None

    async def identity(self, client: distributed.Client) -> str:
        """The worker's identity token, asked of the scheduler through ``client`` once.

        Runs on the worker's event loop (the loop of the worker's client).
        """
        if self.token is None:
            if self._arrived is None or self._arrived.is_set():
                self._arrived = asyncio.Event()
            arrived = self._arrived
            reply = await client.scheduler.foundation_registry_identify(
                worker=self.worker.address
            )
            raise_if_error(reply)
            timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
            await asyncio.wait_for(arrived.wait(), timeout)
        assert self.token is not None
        return self.token
