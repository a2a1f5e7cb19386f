"""Scheduler: the supervisor's records of supervised instances and replicated groups.

:class:`_Record` is one supervised instance (a singleton, or one replica of a
replicated process) and :class:`_Group` a replicated process, as the
:class:`~foundation_dask.core.processes.Supervisor` keeps them; :class:`_NameLocks`
its per-name locks, each kept only while someone holds or waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any

from foundation_dask.core.processes._names import name_from_key


@dataclass
class _Record:
    """One supervised instance (a singleton, or one replica of a replicated process).

    ``owner`` is who may stop it without ``force=True``: the client id or worker
    address that started it, or ``"cluster"``.

    ``key`` is the :func:`name_key` of its name and ``name`` that name decoded; a
    replica's name is ``("__replica__", group key, worker)``. ``display`` is the
    ``repr`` of the name users gave.
    """

    key: str
    display: str
    spec: bytes
    class_name: str
    mode: str
    interval: float
    methods: list[str] = field(default_factory=list)
    coroutines: list[str] = field(default_factory=list)
    kind: str = "singleton"  # or "replica"
    group: str | None = None  # name key of the replicated group
    pinned: str | None = None  # worker of a replica
    incarnation: int = 0
    worker: str | None = None
    actor_key: str | None = None
    state: str = "starting"  # starting, running, moving, restarting, pending, failed, stopped
    error: str | None = None
    failed_on: str | None = None  # the worker of the last failed start
    checkpoint: bytes | None = None
    checkpoint_incarnation: int = -1
    checkpoint_time: float | None = None
    n_checkpoints: int = 0
    checkpoint_error: str | None = None  # what checkpoint() raised last, until one works
    checkpoint_failures: int = 0
    token: str = ""  # the secret of the current incarnation (its worker has it)
    owner: str = ""  # the client id or worker address that started it, or "cluster"
    restarts: int = 0
    started_at: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    name: Hashable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = name_from_key(self.key)

    def public_name(self) -> Hashable:
        """The name as its handles know it: a replica's is ``(group name, worker)``."""
        if self.group is None:
            return self.name
        return (name_from_key(self.group), self.pinned)

    def info(self) -> dict[str, Any]:
        """What clients and views are told of the instance (msgpack-able)."""
        return {
            "name_key": self.key,
            "name": self.display,
            "kind": self.kind,
            "class_name": self.class_name,
            "methods": self.methods,
            "coroutines": self.coroutines,
            "worker": self.worker,
            "actor_key": self.actor_key,
            "incarnation": self.incarnation,
            "state": (
                "checkpoint failing"
                if self.state == "running" and self.checkpoint_error else self.state
            ),
            "error": self.error or self.checkpoint_error,
            "checkpoint_failures": self.checkpoint_failures,
            "restarts": self.restarts,
            "checkpoints": self.n_checkpoints,
            "checkpoint_age": (
                None if self.checkpoint_time is None else time.time() - self.checkpoint_time
            ),
            "started_at": self.started_at,
            "group": self.group,
            "owner": self.owner,
        }

    def notify(self) -> None:
        """Wake whoever waits for a change of this record (:meth:`Supervisor.where`)."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class _Group:
    """A replicated process: what each worker's replica is started from."""

    key: str
    display: str
    spec: bytes
    class_name: str
    mode: str
    interval: float
    methods: list[str]
    coroutines: list[str]
    owner: str = ""


class _NameLocks:
    """One :class:`asyncio.Lock` per name, made on first use and forgotten when its
    last holder releases it with nobody waiting: names that come and go (processes
    started and stopped) leave no entry behind."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, key: object) -> bool:
        return key in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of ``key`` for the ``async with`` block."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)  # counted before waiting: never two locks
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def check_options(display: str, mode: Any, interval: Any) -> None:
    """Refuse a checkpoint ``mode`` or ``interval`` a record cannot have (ValueError)."""
    if mode not in ("call", "interval", "never"):
        raise ValueError(f"checkpoint mode {mode!r} of {display} is not one of 'call', "
                         "'interval', 'never'.")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise ValueError(f"checkpoint interval {interval!r} of {display} must be a positive "
                         "number of seconds.")
