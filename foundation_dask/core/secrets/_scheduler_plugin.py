"""Scheduler: :class:`SecretStore`, the values of secrets, in the scheduler's memory only.

Processes send ``foundation_secret_put`` on their batched stream the first time they
pickle a :class:`~foundation_dask.core.secrets.Secret` (before the task or call that
carries it); processes that unpickle one ask ``foundation_secret_get``, which waits a
little for a value still on its way. Nothing is ever written to disk. The store keeps
at most :data:`MAX_SECRETS` values (the oldest go first, and are counted).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from foundation_dask.core.plugin import SchedulerExtension

#: Values kept; beyond it the oldest are dropped (``SecretStore.dropped`` counts them).
MAX_SECRETS = 10_000


class SecretStore(SchedulerExtension):
    """Values of secrets by reference (random tokens), in memory."""

    name = "secrets"

    def __init__(self, scheduler: Any, plugin: Any) -> None:
        super().__init__(scheduler, plugin)
        self.values: OrderedDict[str, str] = OrderedDict()
        self.dropped = 0
        self._waiting: dict[str, asyncio.Event] = {}

    def handlers(self) -> dict[str, Any]:
        return {"foundation_secret_get": self.get}

    def stream_handlers(self) -> dict[str, Any]:
        return {"foundation_secret_put": self.put}

    def put(self, ref: str = "", value: str = "", worker: str | None = None,
            client: str | None = None) -> None:
        if not isinstance(ref, str) or not isinstance(value, str) or not ref:
            return
        self.values[ref] = value
        self.values.move_to_end(ref)
        while len(self.values) > MAX_SECRETS:
            self.values.popitem(last=False)
            self.dropped += 1
        event = self._waiting.pop(ref, None)
        if event is not None:
            event.set()

    async def get(self, ref: str = "", wait: float = 10.0) -> str | None:
        if ref not in self.values and wait > 0:
            event = self._waiting.setdefault(ref, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), min(float(wait), 30.0))
            except asyncio.TimeoutError:
                self._waiting.pop(ref, None)
        return self.values.get(ref)
