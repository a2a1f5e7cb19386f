"""Any process: the disk cache of LM calls, shared by the processes of a machine.

Calls are cached on disk, keyed by the full request (the LM's identity, the prompt or
messages and every generation argument), in a SQLite file (WAL mode, safe for several
processes) under the dask config ``foundation.dspex.cache-dir`` (default
``~/.cache/foundation_dask/lm``). ``cache=False`` on an LM, or
``dspex.configure(cache=False)``, bypasses it; :func:`clear_cache` empties it.

In a process connected to a Foundation cluster (a worker, or a client) a call missing
from the disk cache is looked up in the cluster's cache, in the scheduler's memory
(:class:`~foundation_dask.dspex.lm._scheduler_plugin.LMCacheExtension`), and a new
result goes to both, so a call answered on one host is not made again on another
(``foundation.dspex.cluster-cache``). :func:`lookup` and :func:`store` are the two
steps; :data:`stats` counts what the cluster cache answered in this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

from foundation_dask import config
from foundation_dask.core._client import call_here, scheduler_call, send_here

__all__ = ["DEFAULT_CACHE_DIR", "DiskCache", "cache_dir", "cache_key", "clear_cache",
           "cluster_cache_info", "get_cache", "lookup", "stats", "store"]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "foundation_dask", "lm")


class DiskCache:
    """A key -> JSON value store in one SQLite file (WAL), shared by processes.

    Parameters
    ----------
    directory
        Where ``lm-cache.sqlite3`` lives (created if needed).
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.path = os.path.join(self.directory, "lm-cache.sqlite3")
        os.makedirs(self.directory, exist_ok=True)
        with closing(self._connect()) as conn, conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, "
                         "value TEXT NOT NULL, created REAL NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        """The value stored under ``key``, or ``None``."""
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (JSON-able) under ``key``, replacing what was there."""
        text = json.dumps(value, ensure_ascii=False)
        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR REPLACE INTO calls (key, value, created) VALUES (?, ?, ?)",
                         (key, text, time.time()))

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        with closing(self._connect()) as conn, conn:
            n = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
            conn.execute("DELETE FROM calls")
        return int(n)

    def __len__(self) -> int:
        with closing(self._connect()) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def __repr__(self) -> str:
        return f"DiskCache({self.path!r})"


_CACHES: dict[str, DiskCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_dir() -> str:
    """The cache directory: dask config ``foundation.dspex.cache-dir`` or the default."""
    directory = config.get("dspex.cache-dir", None) or DEFAULT_CACHE_DIR
    return os.path.abspath(os.path.expanduser(str(directory)))


def get_cache() -> DiskCache:
    """The :class:`DiskCache` of the configured directory (one object per directory)."""
    directory = cache_dir()
    with _CACHES_LOCK:
        cache = _CACHES.get(directory)
        if cache is None:
            cache = _CACHES[directory] = DiskCache(directory)
        return cache


def clear_cache() -> int:
    """Empty the LM call cache of the configured directory, and the cluster's when this
    process is connected to one; returns the entries removed from the disk cache."""
    removed = get_cache().clear()
    try:
        call_here("foundation_lmcache_clear", timeout=10.0)
    except Exception as exc:
        logger.warning("could not clear the cluster LM cache: %s", exc)
    return removed


def cache_key(namespace: dict[str, Any], prompt: str | None,
              messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> str:
    """The cache key of a request: a SHA-256 of the LM's identity and the whole request."""
    request = {"lm": namespace, "prompt": prompt, "messages": messages, "kwargs": kwargs}
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()



#: What the cluster cache did for this process: ``hits``, ``misses``, ``puts`` and
#: ``errors`` (a failed lookup is a miss, logged and counted here).
stats = {"hits": 0, "misses": 0, "puts": 0, "errors": 0}


def _cluster_cache() -> bool:
    return bool(config.get("dspex.cluster-cache", True))


def lookup(key: str) -> dict[str, Any] | None:
    """The cached result of ``key``: from this host's disk cache, else the cluster's
    (then written to the disk cache too); ``None`` when neither has it.

    Raises what the disk cache raises (``sqlite3.Error``, ``OSError``)."""
    value = get_cache().get(key)
    if value is not None or not _cluster_cache():
        return value
    try:
        found, text = call_here("foundation_lmcache_get", timeout=2.0, key=key)
    except Exception as exc:
        stats["errors"] += 1
        logger.warning("cluster LM cache unavailable, calling the model: %s", exc)
        return None
    if not found:
        return None
    if text is None:
        stats["misses"] += 1
        return None
    stats["hits"] += 1
    value = json.loads(text)
    get_cache().set(key, value)
    return value


def store(key: str, value: dict[str, Any]) -> None:
    """Write ``value`` to this host's disk cache and to the cluster's."""
    get_cache().set(key, value)
    if _cluster_cache():
        text = json.dumps(value, ensure_ascii=False)
        if send_here({"op": "foundation_lmcache_put", "key": key, "value": text}):
            stats["puts"] += 1


def cluster_cache_info(client: Any = None) -> dict[str, Any]:
    """The cluster cache, as the scheduler sees it: ``entries``, ``bytes``,
    ``max_bytes``, and since the scheduler started ``hits``, ``misses``, ``puts`` and
    ``evicted``.

    Parameters
    ----------
    client
        Client to ask through; by default the current one.
    """
    info: dict[str, Any] = scheduler_call("foundation_lmcache_info", client=client)
    return info
