"""Supervised named singletons and replicated per-worker processes on Dask Actors.

``ProcessManager.start_singleton(Cls, *args, name=..., **kwargs)`` keeps exactly one
live instance of ``Cls`` per name in the cluster. The instance is a Dask Actor: it
lives in a worker's actor table, its synchronous methods run in the worker's actor
thread and its ``async`` methods on the worker's event loop. What Dask's actors lack
is added by a supervisor kept in a scheduler plugin:

* **names**: the supervisor maps each name to its worker, actor key and incarnation;
  :meth:`ProcessManager.lookup` finds it from anywhere.
* **checkpoints**: when the class defines ``checkpoint() -> state`` (and optionally
  ``restore(state)``, else ``__init__`` arguments plus ``__dict__.update`` are not
  guessed: ``restore`` is required to use the state), the state is saved to the
  supervisor after every method call (``foundation.processes.checkpoint: call``,
  the reply waits for it) or at most every ``checkpoint-interval``.
* **restart**: when the worker holding a singleton dies, the supervisor starts a new
  incarnation on another worker, restores the last checkpoint, and tells every client
  that the singleton moved; handles re-resolve and retry transparently.
* **fencing**: each call carries the incarnation it expects. An instance that is
  not the current incarnation refuses calls and its checkpoints are rejected, so two
  live instances never answer to one name.
* **hand-off**: when a worker starts a graceful retirement (``retire_workers``,
  adaptive scale-down), its singletons are frozen, their final state taken, and they
  are restarted elsewhere before the worker goes. The instances are not Dask tasks,
  so they never block retirement.

Calls that fail because the worker died are retried on the new incarnation with the
same call id; the instance remembers the results of its recent calls (inside its
checkpoint), so a call whose effect was checkpointed is not applied twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError
from distributed.protocol import pickle
from distributed.protocol.serialize import to_serialize

from foundation_dask import config
from foundation_dask.core._client import current_client, scheduler_call
from foundation_dask.core.plugin import SchedulerExtension, WorkerExtension
from foundation_dask.scope.context import SpanScope, TraceContext, attach, current, detach

if TYPE_CHECKING:
    import distributed
    import pandas as pd

logger = logging.getLogger(__name__)

#: How many recent call results an instance remembers (and checkpoints) for retries.
APPLIED_CALLS_KEPT = 32

MOVED_OP = "foundation-process-moved"


class ProcessError(RuntimeError):
    """Base class of the errors of supervised processes."""


class ProcessNotFoundError(ProcessError, KeyError):
    """No process is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ProcessLostError(ProcessError):
    """A replicated instance's worker is gone, or a singleton could not be restarted."""


class ProcessStartError(ProcessError):
    """The class could not be instantiated (or restored) on a worker."""


# --------------------------------------------------------------------------------------
# names


def _norm(name: Any) -> Any:
    if isinstance(name, (str, int, float, bool)) or name is None:
        return name
    if isinstance(name, tuple):
        return ["__tuple__", *(_norm(n) for n in name)]
    raise TypeError(
        f"A process name must be a str, a number or a tuple of those, not "
        f"{type(name).__name__} ({name!r}); e.g. name=('trace_coordinator', trace_id)."
    )


def _denorm(norm: Any) -> Any:
    """Inverse of :func:`_norm`."""
    if isinstance(norm, list) and norm and norm[0] == "__tuple__":
        return tuple(_denorm(n) for n in norm[1:])
    return norm


def name_key(name: Hashable) -> str:
    """Canonical string key of a process name (tuples stay distinct from lists)."""
    return json.dumps(_norm(name), separators=(",", ":"))


def _class_interface(cls: type) -> tuple[str, frozenset[str], frozenset[str]]:
    methods = set()
    coroutines = set()
    for attr in dir(cls):
        if attr.startswith("__") and attr != "__call__":
            continue
        value = getattr(cls, attr, None)
        if callable(value) and not isinstance(value, type):
            methods.add(attr)
            if iscoroutinefunction(value):
                coroutines.add(attr)
    return f"{cls.__module__}.{cls.__qualname__}", frozenset(methods), frozenset(coroutines)


# --------------------------------------------------------------------------------------
# scheduler side


@dataclass
class _Record:
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
    checkpoint: bytes | None = None
    checkpoint_incarnation: int = -1
    checkpoint_time: float | None = None
    n_checkpoints: int = 0
    restarts: int = 0
    started_at: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> dict[str, Any]:
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
            "state": self.state,
            "error": self.error,
            "restarts": self.restarts,
            "checkpoints": self.n_checkpoints,
            "checkpoint_age": (
                None if self.checkpoint_time is None else time.time() - self.checkpoint_time
            ),
            "started_at": self.started_at,
            "group": self.group,
        }

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class _Group:
    key: str
    display: str
    spec: bytes
    class_name: str
    mode: str
    interval: float
    methods: list[str]
    coroutines: list[str]


class Supervisor(SchedulerExtension):
    """Scheduler side: the table of supervised processes and their placement."""

    name = "processes"

    def __init__(self, scheduler, plugin):
        super().__init__(scheduler, plugin)
        self.records: dict[str, _Record] = {}
        self.groups: dict[str, _Group] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.watchers: set[str] = set()  # clients that cache process locations
        # last incarnation given to each name: a name started again after stop() keeps
        # counting up, so handles holding the old location see it as stale
        self.last_incarnation: dict[str, int] = {}
        self._background: set[asyncio.Task] = set()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_process_start": self.start_singleton,
            "foundation_process_where": self.where,
            "foundation_process_checkpoint": self.save_checkpoint,
            "foundation_process_stop": self.stop,
            "foundation_process_list": self.list,
            "foundation_replicated_start": self.start_replicated,
            "foundation_replicated_lookup": self.lookup_replicated,
        }

    def client_handlers(self) -> dict[str, Callable[..., Any]]:
        return {"foundation_process_watch": self.watch}

    def watch(self, client: str) -> None:
        """``client`` caches locations: tell it when a process moves."""
        self.watchers.add(client)

    def remove_client(self, client: str) -> None:
        self.watchers.discard(client)

    # -- helpers -----------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def count_on(self, worker: str) -> int:
        """Number of live Foundation processes hosted by ``worker``."""
        return sum(
            1 for r in self.records.values() if r.worker == worker and r.state == "running"
        )

    def _choose_worker(self, exclude: set[str]) -> str | None:
        candidates = [
            ws.address for ws in self.scheduler.running if ws.address not in exclude
        ]
        if not candidates:
            return None
        load = {a: 0 for a in candidates}
        for r in self.records.values():
            if r.worker in load and r.state in ("running", "starting"):
                load[r.worker] += 1
        return min(candidates, key=lambda a: (load[a], a))

    def _broadcast_moved(self, rec: _Record) -> None:
        msg = {"op": MOVED_OP, "name_key": rec.key, "incarnation": rec.incarnation}
        for client in self.watchers:
            bcomm = self.scheduler.client_comms.get(client)
            if bcomm is not None:
                with contextlib.suppress(Exception):  # a closing comm
                    bcomm.send(msg)

    async def _create_on(self, rec: _Record, worker: str) -> None:
        rec.actor_key = f"foundation-process-{uuid.uuid4().hex[:12]}-{rec.incarnation}"
        status = await self.scheduler.rpc(worker).foundation_process_create(
            actor_key=rec.actor_key,
            name_key=rec.key,
            display=rec.display,
            incarnation=rec.incarnation,
            spec=rec.spec,
            checkpoint=rec.checkpoint,
            mode=rec.mode,
            interval=rec.interval,
        )
        if status == "closing":
            raise OSError(f"worker {worker} is closing")
        rec.worker = worker
        rec.state = "running"
        rec.error = None
        rec.history.append(
            {"time": time.time(), "incarnation": rec.incarnation, "worker": worker}
        )

    async def _place(self, rec: _Record, *, exclude: set[str] = frozenset(), raise_errors=False):
        """Start ``rec``'s current incarnation on the best worker; retry on lost workers."""
        tried = set(exclude)
        while True:
            worker = rec.pinned if rec.kind == "replica" else self._choose_worker(tried)
            if worker is None or worker not in self.scheduler.workers:
                if rec.kind == "replica":
                    self._drop(rec, "lost")
                    return
                rec.state = "pending"
                rec.worker = None
                rec.notify()
                logger.info("Process %s waits for a worker", rec.display)
                return
            try:
                await self._create_on(rec, worker)
            except (OSError, CommClosedError):
                tried.add(worker)
                if rec.kind == "replica":
                    self._drop(rec, "lost")
                    return
                continue
            except Exception as exc:
                rec.state = "failed"
                rec.error = f"{type(exc).__name__}: {exc}"
                rec.notify()
                logger.error("Process %s failed to start on %s: %s", rec.display, worker, exc)
                if raise_errors:
                    self.records.pop(rec.key, None)
                    raise ProcessStartError(
                        f"{rec.class_name} could not be started as {rec.display} on {worker}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                return
            rec.notify()
            self._broadcast_moved(rec)
            return

    def _drop(self, rec: _Record, state: str) -> None:
        self.last_incarnation[rec.key] = rec.incarnation
        rec.state = state
        rec.worker = None
        self.records.pop(rec.key, None)
        rec.notify()
        self._broadcast_moved(rec)

    async def _restart(self, rec: _Record, reason: str, exclude: set[str]) -> None:
        async with self._lock(rec.key):
            if self.records.get(rec.key) is not rec:
                return
            rec.incarnation += 1
            rec.restarts += 1
            rec.state = "restarting"
            logger.info(
                "Restarting %s (incarnation %d, %s)", rec.display, rec.incarnation, reason
            )
            await self._place(rec, exclude=exclude)

    async def _handoff(self, rec: _Record, worker: str) -> None:
        async with self._lock(rec.key):
            if self.records.get(rec.key) is not rec or rec.worker != worker:
                return
            old_key = rec.actor_key
            rec.state = "moving"
            try:
                final = await self.scheduler.rpc(worker).foundation_process_freeze(
                    actor_key=old_key
                )
                if final is not None:
                    rec.checkpoint = final
                    rec.checkpoint_incarnation = rec.incarnation
                    rec.checkpoint_time = time.time()
                    rec.n_checkpoints += 1
            except Exception as exc:
                logger.warning("Hand-off of %s: no final checkpoint (%s)", rec.display, exc)
            rec.incarnation += 1
            await self._place(rec, exclude={worker})
            logger.info("Handed off %s from %s to %s", rec.display, worker, rec.worker)
        with contextlib.suppress(Exception):
            await self.scheduler.rpc(worker).foundation_process_destroy(actor_key=old_key)

    # -- hooks ---------------------------------------------------------------------------

    def add_worker(self, worker: str) -> None:
        for rec in list(self.records.values()):
            if rec.state == "pending":
                self._spawn(self._restart_pending(rec))
        for group in self.groups.values():
            self._spawn(self._start_replica(group, worker))

    async def _restart_pending(self, rec: _Record) -> None:
        async with self._lock(rec.key):
            if rec.state == "pending" and self.records.get(rec.key) is rec:
                await self._place(rec)

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        for rec in list(self.records.values()):
            if rec.worker != worker:
                continue
            if rec.kind == "replica":
                self._drop(rec, "lost")
            elif rec.state in ("running", "starting"):
                rec.state = "restarting"
                self._spawn(self._restart(rec, f"worker {worker} left", {worker}))

    def log_event(self, topic: str, msg: Any) -> None:
        if (
            isinstance(msg, dict)
            and msg.get("action") == "worker-status-change"
            and msg.get("status") == "closing_gracefully"
        ):
            for rec in list(self.records.values()):
                if rec.worker == topic and rec.kind == "singleton" and rec.state == "running":
                    self._spawn(self._handoff(rec, topic))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()

    # -- handlers ------------------------------------------------------------------------

    async def start_singleton(
        self, name_key: str, display: str, spec: bytes, class_name: str, mode: str,
        interval: float, methods: list[str], coroutines: list[str],
    ) -> dict[str, Any]:
        async with self._lock(name_key):
            rec = self.records.get(name_key)
            if rec is not None and rec.state not in ("failed", "stopped"):
                if rec.class_name != class_name:
                    raise ValueError(
                        f"{display} is already running as {rec.class_name}, not {class_name}; "
                        "stop it first (ProcessManager.stop) or choose another name."
                    )
                info = rec.info()
                info["existed"] = True
            else:
                rec = _Record(
                    key=name_key, display=display, spec=spec, class_name=class_name,
                    mode=mode, interval=interval, methods=methods, coroutines=coroutines,
                    incarnation=self.last_incarnation.get(name_key, -1) + 1,
                )
                rec.checkpoint = _persisted(name_key)  # from before a cluster restart
                self.records[name_key] = rec
                await self._place(rec, raise_errors=True)
                info = rec.info()
                info["existed"] = False
                info["restored"] = rec.checkpoint is not None
        return info

    async def where(self, name_key: str, min_incarnation: int = 0, timeout: float = 60) -> dict:
        """Where ``name_key`` runs, once its incarnation is at least ``min_incarnation``.

        A missing name is an answer (``{"missing": True}``), not an error: handles ask
        this routinely while a process is being stopped or replaced.
        """
        deadline = time.monotonic() + timeout
        while True:
            rec = self.records.get(name_key)
            if rec is None:
                return {"missing": True, "name_key": name_key}
            if rec.state == "failed":
                raise ProcessLostError(f"{rec.display} failed to restart: {rec.error}")
            if rec.state == "running" and rec.incarnation >= min_incarnation:
                return rec.info()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{rec.display} is {rec.state} (incarnation {rec.incarnation}) and did not "
                    f"come back within {timeout}s; raise foundation.processes.failover-timeout "
                    "or add workers."
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rec.changed.wait(), left)

    def save_checkpoint(self, name_key: str, incarnation: int, state: bytes) -> str:
        rec = self.records.get(name_key)
        if rec is None or rec.incarnation != incarnation or rec.state not in ("running",):
            return "stale"
        rec.checkpoint = state
        rec.checkpoint_incarnation = incarnation
        rec.checkpoint_time = time.time()
        rec.n_checkpoints += 1
        if rec.kind == "singleton":
            _persist(name_key, state)
        return "OK"

    async def stop(self, name_key: str) -> bool:
        group = self.groups.pop(name_key, None)
        recs = (
            [r for r in self.records.values() if r.group == name_key]
            if group is not None
            else [r for r in [self.records.get(name_key)] if r is not None]
        )
        for rec in recs:
            async with self._lock(rec.key):
                worker, actor_key = rec.worker, rec.actor_key
                rec.incarnation += 1  # fence the old instance
                self._drop(rec, "stopped")
                _persist(rec.key, None)
                if worker in self.scheduler.workers:
                    with contextlib.suppress(Exception):
                        await self.scheduler.rpc(worker).foundation_process_destroy(
                            actor_key=actor_key
                        )
        return bool(recs) or group is not None

    def list(self) -> list[dict[str, Any]]:
        return [rec.info() for rec in self.records.values()]

    async def _start_replica(self, group: _Group, worker: str) -> dict[str, Any] | None:
        key = name_key(("__replica__", group.key, worker))
        async with self._lock(key):
            if key in self.records or self.groups.get(group.key) is not group:
                rec = self.records.get(key)
                return rec.info() if rec else None
            rec = _Record(
                key=key, display=f"{group.display}@{worker}", spec=group.spec,
                class_name=group.class_name, mode=group.mode, interval=group.interval,
                methods=group.methods, coroutines=group.coroutines,
                kind="replica", group=group.key, pinned=worker,
            )
            self.records[key] = rec
            await self._place(rec, raise_errors=True)
            return rec.info() if key in self.records else None

    async def start_replicated(
        self, name_key: str, display: str, spec: bytes, class_name: str, mode: str,
        interval: float, methods: list[str], coroutines: list[str],
    ) -> dict[str, dict[str, Any]]:
        group = self.groups.get(name_key)
        if group is None:
            group = _Group(name_key, display, spec, class_name, mode, interval, methods,
                           coroutines)
            self.groups[name_key] = group
        elif group.class_name != class_name:
            raise ValueError(
                f"{display} is already replicated as {group.class_name}, not {class_name}; "
                "stop it first (ProcessManager.stop) or choose another name."
            )
        workers = [ws.address for ws in self.scheduler.running]
        try:
            await asyncio.gather(*(self._start_replica(group, w) for w in workers))
        except ProcessStartError:
            await self.stop(name_key)
            raise
        return self.lookup_replicated(name_key)

    def lookup_replicated(self, name_key: str) -> dict[str, dict[str, Any]]:
        if name_key not in self.groups:
            raise ProcessNotFoundError(f"No replicated process named {name_key}")
        return {
            r.pinned: r.info()
            for r in self.records.values()
            if r.group == name_key and r.state == "running"
        }


def _checkpoint_path(name_key: str) -> str | None:
    """File of a singleton's checkpoint under ``foundation.processes.checkpoint-dir``."""
    import hashlib
    import os

    directory = config.get("processes.checkpoint-dir")
    if not directory:
        return None
    directory = os.path.expanduser(str(directory))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, hashlib.sha1(name_key.encode()).hexdigest() + ".ckpt")


def _persist(name_key: str, state: bytes | None) -> None:
    """Write (or with ``None`` remove) a singleton's checkpoint file, atomically."""
    import os

    path = _checkpoint_path(name_key)
    if path is None:
        return
    try:
        if state is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(state)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("Could not write the checkpoint of %s to %s: %s", name_key, path, exc)


def _persisted(name_key: str) -> bytes | None:
    path = _checkpoint_path(name_key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------
# worker side


class _Host:
    """A hosted instance plus its fencing, checkpointing and call bookkeeping.

    Methods run the way Dask runs actor methods: synchronous ones in the worker's
    single actor thread (``Worker.executors["actor"]``, through Dask's own
    ``_run_actor`` so ``get_worker()`` and the profiler see them), ``async`` ones on
    the worker's event loop.
    """

    def __init__(self, worker, instance, actor_key, name_key, display, incarnation, mode,
                 interval, applied):
        self._worker = worker
        self._instance = instance
        self._actor_key = actor_key
        self._name_key = name_key
        self._display = display
        self._incarnation = incarnation
        self._mode = mode if hasattr(instance, "checkpoint") else "never"
        self._interval = interval
        self._applied: OrderedDict[str, Any] = applied
        self._stopped = False
        self._frozen = False
        self._inflight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._dirty = False
        self._last_checkpoint = 0.0
        self._last_sent: bytes | None = None

    def __repr__(self) -> str:
        return f"<Foundation process {self._display} incarnation {self._incarnation}>"

    def _snapshot(self) -> bytes | None:
        state = self._instance.checkpoint()
        return pickle.dumps((state, list(self._applied.items())))

    async def _send_checkpoint(self, snap: bytes) -> bool:
        if snap == self._last_sent:
            return True
        status = await self._worker.scheduler.foundation_process_checkpoint(
            name_key=self._name_key, incarnation=self._incarnation, state=snap
        )
        if status != "OK":
            self._stopped = True
            return False
        self._last_sent = snap
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        return True

    def _in_actor_thread(self, func, *args):
        from distributed.worker import _run_actor

        w = self._worker
        return w.loop.run_in_executor(
            w.executors["actor"], _run_actor, func, args, {}, w.execution_state,
            self._actor_key, w.active_threads, w.active_threads_lock,
        )

    async def _foundation_call(self, incarnation: int, method: str, args, kwargs, call_id: str,
                               ctx: tuple | None = None):
        if self._stopped or incarnation != self._incarnation:
            return ("stale", self._incarnation)
        if self._frozen:
            return ("moving", self._incarnation)
        if call_id in self._applied:
            return ("ok", self._applied[call_id])
        self._inflight += 1
        self._drained.clear()
        try:
            func = getattr(self._instance, method)
            take = self._mode == "call"
            trace = TraceContext(*ctx) if ctx else None
            label = f"{type(self._instance).__name__}.{method}"
            if iscoroutinefunction(func):
                token = attach(trace)
                try:
                    with SpanScope(label, "actor", {"process": self._display}, trace):
                        result, error = await func(*args, **kwargs), None
                except Exception as exc:
                    result, error = None, exc
                finally:
                    detach(token)
                self._remember(call_id, result, error)
                snap = self._snapshot() if take else None
            else:
                def run():
                    token = attach(trace)
                    try:
                        with SpanScope(label, "actor", {"process": self._display}, trace):
                            res, err = func(*args, **kwargs), None
                    except Exception as exc:
                        res, err = None, exc
                    finally:
                        detach(token)
                    self._remember(call_id, res, err)
                    return res, err, (self._snapshot() if take else None)

                result, error, snap = await self._in_actor_thread(run)
            self._dirty = True
            if snap is not None and not await self._send_checkpoint(snap):
                return ("stale", self._incarnation)
            if error is not None:
                return ("error", error)
            return ("ok", result)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._drained.set()

    def _remember(self, call_id: str, result: Any, error: BaseException | None) -> None:
        if error is None:
            self._applied[call_id] = result
            while len(self._applied) > APPLIED_CALLS_KEPT:
                self._applied.popitem(last=False)

    async def _foundation_getattr(self, incarnation: int, attr: str):
        if self._stopped or incarnation != self._incarnation:
            return ("stale", self._incarnation)
        if self._frozen:
            return ("moving", self._incarnation)
        return ("ok", getattr(self._instance, attr))

    async def _freeze(self) -> bytes | None:
        self._frozen = True
        await self._drained.wait()
        if self._mode == "never":
            return None
        return await self._in_actor_thread(self._snapshot)

    async def _tick(self) -> None:
        """Interval checkpoints."""
        if (
            self._mode == "interval"
            and self._dirty
            and not self._frozen
            and not self._stopped
            and time.monotonic() - self._last_checkpoint >= self._interval
        ):
            self._dirty = False
            snap = await self._in_actor_thread(self._snapshot)
            await self._send_checkpoint(snap)


def _instantiate(spec: bytes, checkpoint: bytes | None) -> tuple[Any, OrderedDict]:
    cls, args, kwargs = pickle.loads(spec)
    instance = cls(*args, **kwargs)
    applied: OrderedDict = OrderedDict()
    if checkpoint is not None:
        state, applied_items = pickle.loads(checkpoint)
        applied.update(applied_items)
        if hasattr(instance, "restore"):
            instance.restore(state)
        else:
            raise TypeError(
                f"{cls.__qualname__} defines checkpoint() but not restore(state): define "
                "restore(self, state) to bring an instance back from its checkpoint."
            )
    return instance, applied


class WorkerProcesses(WorkerExtension):
    """Worker side: creates, freezes and destroys hosted instances."""

    name = "processes"

    def __init__(self, worker, plugin):
        super().__init__(worker, plugin)
        self.hosts: dict[str, _Host] = {}
        self._pc = None

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_process_create": self.create,
            "foundation_process_call": self.call,
            "foundation_process_freeze": self.freeze,
            "foundation_process_destroy": self.destroy,
        }

    async def setup(self) -> None:
        from tornado.ioloop import PeriodicCallback

        interval_ms = max(50, config.get_seconds("processes.checkpoint-interval") * 1000 / 4)
        self._pc = PeriodicCallback(self._tick, interval_ms)
        self._pc.start()

    async def _tick(self) -> None:
        for host in list(self.hosts.values()):
            try:
                await host._tick()
            except Exception:
                logger.exception("interval checkpoint of %s", host._display)

    async def create(self, actor_key, name_key, display, incarnation, spec, checkpoint, mode,
                     interval) -> str:
        w = self.worker
        if w.status.name != "running":
            return "closing"  # the supervisor places it on another worker
        try:
            instance, applied = await w.loop.run_in_executor(
                w.executors["actor"], _instantiate, spec, checkpoint
            )
        except RuntimeError as exc:
            if "after shutdown" in str(exc):  # the worker started closing meanwhile
                return "closing"
            raise
        host = _Host(w, instance, actor_key, name_key, display, incarnation, mode, interval,
                     applied)
        self.hosts[actor_key] = host
        return "OK"

    async def call(self, actor_key: str, function: str, args: list) -> dict[str, Any]:
        """Run ``function`` of the host ``actor_key``: a method call or an attribute read."""
        host = self.hosts.get(actor_key)
        if host is None or function not in ("_foundation_call", "_foundation_getattr"):
            return {"result": to_serialize(("stale", -1))}
        return {"result": to_serialize(await getattr(host, function)(*args))}

    async def freeze(self, actor_key: str) -> bytes | None:
        host = self.hosts.get(actor_key)
        if host is None:
            return None
        return await host._freeze()

    def destroy(self, actor_key: str) -> str:
        host = self.hosts.pop(actor_key, None)
        if host is not None:
            host._stopped = True
        return "OK"

    def live(self) -> dict[str, tuple[str, int]]:
        """``{actor key: (name key, incarnation)}`` of the instances answering here."""
        return {
            k: (h._name_key, h._incarnation) for k, h in self.hosts.items() if not h._stopped
        }

    async def teardown(self) -> None:
        if self._pc is not None:
            self._pc.stop()
        for key in list(self.hosts):
            self.destroy(key)


# --------------------------------------------------------------------------------------
# client side


class _Locations:
    """Per-client cache of process locations, invalidated by the supervisor."""

    def __init__(self, client: distributed.Client):
        self.client = client
        self.cache: dict[str, dict[str, Any]] = {}
        self.moved: dict[str, asyncio.Event] = {}
        self.latest: dict[str, int] = {}  # newest incarnation announced per name
        client._stream_handlers[MOVED_OP] = self._on_moved
        client._send_to_scheduler({"op": "foundation_process_watch"})

    def _on_moved(self, name_key: str, incarnation: int) -> None:
        self.latest[name_key] = max(self.latest.get(name_key, -1), incarnation)
        loc = self.cache.get(name_key)
        if loc is not None and loc["incarnation"] < incarnation:
            del self.cache[name_key]
        event = self.moved.pop(name_key, None)
        if event is not None:
            event.set()

    def event(self, key: str) -> asyncio.Event:
        ev = self.moved.get(key)
        if ev is None:
            ev = self.moved[key] = asyncio.Event()
        return ev

    @classmethod
    def of(cls, client: distributed.Client) -> _Locations:
        locs = getattr(client, "_foundation_locations", None)
        if locs is None:
            locs = cls(client)
            client._foundation_locations = locs
        return locs


_call_counter = itertools.count()
_process_id = uuid.uuid4().hex[:12]


class CallFuture:
    """The pending result of a method call through a :class:`SingletonHandle`.

    ``.result(timeout=None)`` blocks for it; on an asynchronous client the future can
    be awaited. Mirrors :class:`distributed.ActorFuture`.
    """

    def __init__(self, fut: concurrent.futures.Future | asyncio.Future, label: str):
        self._fut = fut
        self._label = label

    def result(self, timeout: float | None = None) -> Any:
        if isinstance(self._fut, asyncio.Future):
            return self._fut.result()
        return self._fut.result(timeout)

    def done(self) -> bool:
        return self._fut.done()

    def __await__(self):
        if isinstance(self._fut, asyncio.Future):
            return self._fut.__await__()
        return asyncio.wrap_future(self._fut).__await__()

    def __repr__(self) -> str:
        state = "finished" if self.done() else "pending"
        return f"<CallFuture {self._label}: {state}>"


class SingletonHandle:
    """A handle on a supervised process that survives its restarts.

    Method calls return a :class:`CallFuture` (``handle.increment().result()``), like
    a Dask :class:`~distributed.Actor`; attribute reads return the value. The handle
    follows the process when it is restarted or handed off, and can be pickled and
    passed to tasks or registered in the :class:`~foundation_dask.ServiceMesh`.
    """

    def __init__(self, name: Hashable, class_name: str, methods: frozenset[str],
                 coroutines: frozenset[str], *, replica_of: str | None = None,
                 key: str | None = None):
        self._name = name
        self._key = key or name_key(name)
        self._class_name = class_name
        self._methods = methods
        self._coroutines = coroutines
        self._replica_of = replica_of

    def __reduce__(self):
        return (
            _rebuild_handle,
            (self._name, self._class_name, self._methods, self._coroutines,
             self._replica_of, self._key),
        )

    @property
    def name(self) -> Hashable:
        return self._name

    def __repr__(self) -> str:
        kind = f"replica on {self._replica_of}" if self._replica_of else "singleton"
        return f"<SingletonHandle {self._name!r}: {self._class_name} ({kind})>"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._methods))

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr in self._methods:
            return _MethodProxy(self, attr)
        fut = self._submit("_foundation_getattr", (attr,), {})
        if isinstance(fut._fut, asyncio.Future):
            return fut  # awaitable on an asynchronous client
        return fut.result()

    def info(self) -> dict[str, Any]:
        """Where the process runs now: worker, incarnation, state, restarts..."""
        return scheduler_call(
            "foundation_process_where", name_key=self._key, min_incarnation=0,
            timeout=config.get_seconds("processes.failover-timeout"),
        )

    # the call machinery ------------------------------------------------------------

    def _submit(self, function: str, args: tuple, kwargs: dict) -> CallFuture:
        client = current_client()
        call_id = f"{_process_id}-{next(_call_counter)}"
        ctx = current()
        coro = self._call(client, function, args, kwargs, call_id, ctx and tuple(ctx))
        label = f"{self._name!r}.{args[0] if function == '_foundation_getattr' else function}"
        if client.asynchronous and _in_loop(client):
            return CallFuture(asyncio.ensure_future(coro), label)
        fut = asyncio.run_coroutine_threadsafe(coro, client.loop.asyncio_loop)
        return CallFuture(fut, label)

    async def _resolve(self, client, locs: _Locations, min_incarnation: int, timeout: float):
        loc = locs.cache.get(self._key)
        if loc is not None and loc["incarnation"] >= min_incarnation:
            return loc
        loc = await client.scheduler.foundation_process_where(
            name_key=self._key, min_incarnation=min_incarnation, timeout=timeout
        )
        if loc.get("missing"):
            if self._replica_of:
                raise ProcessLostError(
                    f"{self!r}: its worker left; replicated instances live and die with "
                    "their worker. Use ProcessManager.lookup_replicated() for the current ones."
                ) from None
            raise ProcessNotFoundError(
                f"No process named {self._name!r} (stopped, or never started)."
            ) from None
        locs.cache[self._key] = loc
        return loc

    async def _call(self, client, function: str, args: tuple, kwargs: dict, call_id: str,
                    ctx: tuple | None = None):
        locs = _Locations.of(client)
        failover = config.get_seconds("processes.failover-timeout")
        deadline = time.monotonic() + config.get_seconds("processes.call-timeout")
        min_incarnation = 0
        backoff = 0.005
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"call {self._name!r}.{function} timed out")
            loc = await self._resolve(client, locs, min_incarnation, failover)
            inc = loc["incarnation"]
            if function == "_foundation_call":
                call_args = [inc, args[0], list(args[1]), args[2], call_id, ctx]
            else:
                call_args = [inc, *args]
            send = asyncio.ensure_future(
                client.rpc(loc["worker"]).foundation_process_call(
                    actor_key=loc["actor_key"], function=function,
                    args=[to_serialize(a) for a in call_args],
                )
            )
            # Wait for the reply, unless the supervisor announces a newer incarnation
            # meanwhile (the worker died while the call was connecting or running).
            while not send.done() and locs.latest.get(self._key, -1) <= inc:
                waiter = asyncio.ensure_future(locs.event(self._key).wait())
                await asyncio.wait([send, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            if not send.done():
                # the process moved while we were waiting: retry there (same call id)
                send.cancel()
                locs.cache.pop(self._key, None)
                min_incarnation = locs.latest[self._key]
                continue
            try:
                resp = send.result()
            except (OSError, CommClosedError):
                locs.cache.pop(self._key, None)
                # the worker is gone or going: the supervisor knows within milliseconds
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                min_incarnation = inc  # re-resolve; a restart bumps it
                continue
            tag, value = resp["result"]
            if tag == "ok":
                return value
            if tag == "error":
                raise value
            # stale or moving: a newer incarnation is (or will be) there
            locs.cache.pop(self._key, None)
            min_incarnation = max(inc, value) + 1 if tag == "stale" else inc + 1


class _MethodProxy:
    def __init__(self, handle: SingletonHandle, method: str):
        self._handle = handle
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> CallFuture:
        return self._handle._submit("_foundation_call", (self._method, args, kwargs), {})

    def __repr__(self) -> str:
        return f"<method {self._method} of {self._handle!r}>"


def _rebuild_handle(name, class_name, methods, coroutines, replica_of, key):
    return SingletonHandle(name, class_name, methods, coroutines, replica_of=replica_of, key=key)


def _in_loop(client: distributed.Client) -> bool:
    try:
        return asyncio.get_running_loop() is client.loop.asyncio_loop
    except RuntimeError:
        return False


def _handle_from_info(info: dict[str, Any], name: Hashable,
                      replica_of: str | None = None) -> SingletonHandle:
    return SingletonHandle(
        name, info["class_name"], frozenset(info["methods"]), frozenset(info["coroutines"]),
        replica_of=replica_of, key=info["name_key"],
    )


def _start_args(cls: type, name: Hashable, args: tuple, kwargs: dict) -> dict[str, Any]:
    if not isinstance(cls, type):
        raise TypeError(
            f"start_singleton/start_replicated take a class, not {type(cls).__name__}; pass "
            "the class itself and its constructor arguments."
        )
    mode, interval = _options(cls)
    class_name, methods, coroutines = _class_interface(cls)
    return {
        "name_key": name_key(name), "display": repr(name), "spec": _spec(cls, args, kwargs),
        "class_name": class_name, "mode": mode, "interval": interval,
        "methods": sorted(methods), "coroutines": sorted(coroutines),
    }


def _options(cls: type) -> tuple[str, float]:
    mode = getattr(cls, "foundation_checkpoint", None) or config.get("processes.checkpoint")
    if mode not in ("call", "interval", "never"):
        raise ValueError(
            f"checkpoint mode {mode!r} of {cls.__qualname__} is not one of 'call', 'interval', "
            "'never' (class attribute foundation_checkpoint or foundation.processes.checkpoint)."
        )
    return mode, config.get_seconds("processes.checkpoint-interval")


def _spec(cls: type, args: tuple, kwargs: dict) -> bytes:
    try:
        return pickle.dumps((cls, args, kwargs))
    except Exception as exc:
        raise TypeError(
            f"{cls.__qualname__} or its arguments cannot be pickled ({exc}); pass picklable "
            "arguments (open files, locks and clients must be created inside __init__)."
        ) from exc


class ProcessManager:
    """Supervised processes (the Elixir ``Foundation.ProcessManager``).

    All methods are static and act through the current Dask client
    (:func:`foundation_dask.connect` is called if there is none). On an asynchronous
    client they return awaitables.
    """

    @staticmethod
    def start_singleton(cls: type, *args: Any, name: Hashable, **kwargs: Any) -> SingletonHandle:
        """Start ``cls(*args, **kwargs)`` as the one live instance named ``name``.

        Parameters
        ----------
        cls
            The class. Define ``checkpoint(self) -> state`` and ``restore(self, state)`` to
            keep state across restarts; the class attribute ``foundation_checkpoint``
            (``"call"``, ``"interval"`` or ``"never"``) overrides the config default.
        *args, **kwargs
            Constructor arguments.
        name
            Cluster-wide name: a string or a tuple such as ``("trace_coordinator", tid)``.

        Returns
        -------
        SingletonHandle
            A handle on the instance; a second call with the same name returns a handle
            on the same instance (the arguments of that call are ignored).
        """
        msg = _start_args(cls, name, args, kwargs)
        client = current_client()

        async def start():
            info = await client.scheduler.foundation_process_start(**msg)
            return _handle_from_info(info, name)

        return client.sync(start)

    @staticmethod
    def start_replicated(cls: type, *args: Any, name: Hashable,
                         **kwargs: Any) -> dict[str, SingletonHandle]:
        """Start one instance of ``cls`` on every worker, and on every worker that joins.

        Returns
        -------
        dict
            ``{worker address: handle}`` of the instances running now. Instances are not
            moved when their worker leaves (see :meth:`lookup_replicated`).
        """
        msg = _start_args(cls, name, args, kwargs)
        client = current_client()

        async def start():
            infos = await client.scheduler.foundation_replicated_start(**msg)
            return {w: _handle_from_info(i, (name, w), replica_of=w) for w, i in infos.items()}

        return client.sync(start)

    @staticmethod
    def lookup_replicated(name: Hashable) -> dict[str, SingletonHandle]:
        """``{worker: handle}`` of the live instances of a replicated process."""
        client = current_client()

        async def look():
            infos = await client.scheduler.foundation_replicated_lookup(name_key=name_key(name))
            return {w: _handle_from_info(i, (name, w), replica_of=w) for w, i in infos.items()}

        return client.sync(look)

    @staticmethod
    def lookup(name: Hashable) -> SingletonHandle | None:
        """A handle on the singleton named ``name``, or ``None`` if there is none."""
        client = current_client()
        key = name_key(name)

        async def look():
            for info in await client.scheduler.foundation_process_list():
                if info["name_key"] == key and info["kind"] == "singleton":
                    return _handle_from_info(info, name)
            return None

        return client.sync(look)

    @staticmethod
    def find(prefix: str) -> list[tuple[tuple, SingletonHandle]]:
        """``(name, handle)`` of every singleton whose name is a tuple starting with
        ``prefix``, e.g. ``find("trace_coordinator")``."""
        client = current_client()

        async def look():
            found = []
            for info in await client.scheduler.foundation_process_list():
                norm = json.loads(info["name_key"])
                if (info["kind"] == "singleton" and isinstance(norm, list)
                        and norm[:2] == ["__tuple__", prefix]):
                    name = _denorm(norm)
                    found.append((name, _handle_from_info(info, name)))
            return found

        return client.sync(look)

    @staticmethod
    def stop(name: Hashable) -> bool:
        """Stop the singleton (or every instance of the replicated process) ``name``.

        Returns ``True`` if something was stopped.
        """
        return scheduler_call("foundation_process_stop", name_key=name_key(name))

    @staticmethod
    def list_processes() -> pd.DataFrame:
        """A DataFrame of every supervised process: name, class, worker, state, restarts..."""
        import pandas as pd

        client = current_client()
        rows = client.sync(client.scheduler.foundation_process_list)
        cols = ["name", "kind", "class_name", "worker", "state", "incarnation", "restarts",
                "checkpoints", "checkpoint_age", "error"]
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
