"""Scheduler: :class:`LMCacheExtension`, the LM call cache every worker of the cluster shares.

Each host keeps its own disk cache (:mod:`foundation_dask.dspex.lm.cache`); this one,
in the scheduler's memory, serves them all, so a call answered on one host is a hit on
every other, also on workers that join later or replace a dead one. Workers and
clients send new entries on their batched stream (``foundation_lmcache_put``) and ask
for a missing one with one round trip (``foundation_lmcache_get``). It holds at most
``foundation.dspex.cluster-cache-bytes`` of values; beyond it the least recently used
go first (counted in ``evicted``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from dask.utils import parse_bytes

from foundation_dask import config
from foundation_dask.core.plugin import SchedulerExtension


class LMCacheExtension(SchedulerExtension):
    """LM call results by cache key (JSON text), least recently used first out."""

    name = "lm-cache"

    def __init__(self, scheduler: Any, plugin: Any) -> None:
        super().__init__(scheduler, plugin)
        raw = config.get("dspex.cluster-cache-bytes")
        self.max_bytes = int(raw) if isinstance(raw, int) else int(parse_bytes(str(raw)))
        self.values: OrderedDict[str, str] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.puts = self.evicted = 0

    def handlers(self) -> dict[str, Any]:
        return {"foundation_lmcache_get": self.get, "foundation_lmcache_info": self.info,
                "foundation_lmcache_clear": self.clear}

    def stream_handlers(self) -> dict[str, Any]:
        return {"foundation_lmcache_put": self.put}

    def get(self, key: str = "") -> str | None:
        value = self.values.get(key)
        if value is None:
            self.misses += 1
            return None
        self.values.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str = "", value: str = "", worker: str | None = None,
            client: str | None = None) -> None:
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            return
        old = self.values.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)
        if len(value) > self.max_bytes:
            self.evicted += 1
            return
        self.values[key] = value
        self.nbytes += len(value)
        self.puts += 1
        while self.nbytes > self.max_bytes:
            _, dropped = self.values.popitem(last=False)
            self.nbytes -= len(dropped)
            self.evicted += 1

    def clear(self) -> int:
        """Drop every entry; returns how many there were."""
        n = len(self.values)
        self.values.clear()
        self.nbytes = 0
        return n

    def info(self) -> dict[str, Any]:
        """Entries, bytes, hits, misses, puts and evictions since the scheduler started."""
        return {"entries": len(self.values), "bytes": self.nbytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "puts": self.puts,
                "evicted": self.evicted}
