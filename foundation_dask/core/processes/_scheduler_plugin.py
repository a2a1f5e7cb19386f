"""Scheduler: the supervisor of Foundation processes, its records and replicated groups.

:class:`Supervisor` (the scheduler extension ``"processes"``) keeps one
:class:`_Record` per supervised instance (singletons, and each replica of a replicated
process) and one :class:`_Group` per replicated process. It places instances on
workers, restarts singletons whose worker died, hands them off when their worker
retires, fences old incarnations, keeps their checkpoints (on disk too, see
``_checkpoints``) and tells watching clients when a process moved or was stopped.
Nothing is kept per name once a process is stopped (or a replica lost): its record
and lock go, and the incarnations of one name still only grow, because every new
record starts above :attr:`Supervisor.incarnation_floor`. Every process has
an owner, decided by the scheduler from the caller's registry identity token: the
client (or the worker, for a task) that started it, or ``"cluster"``. Stopping
another owner's process needs ``force=True``, unless that owner has left the cluster.
:func:`scheduler_processes` and :meth:`Supervisor.records_named` are the readers for
code that runs inside the scheduler process (dashboard pages).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError

from foundation_dask.core.plugin import SchedulerExtension, extension
from foundation_dask.core.processes._checkpoints import persist, persisted
from foundation_dask.core.processes._lease import LeaseTable
from foundation_dask.core.processes._names import MOVED_OP, STOPPED_OP, name_from_key, name_key
from foundation_dask.core.processes._records import _Group, _NameLocks, _Record, check_options
from foundation_dask.core.processes._wire import plain_loads, plain_start_args
from foundation_dask.core.registry._core import CLUSTER_OWNER, error_reply
from foundation_dask.core.registry._scheduler_plugin import UNKNOWN_IDENTITY
from foundation_dask.errors import (
    NotOwnerError,
    ProcessLostError,
    ProcessNotFoundError,
    ProcessPermissionError,
    ProcessStartError,
)

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.plugin import FoundationSchedulerPlugin

logger = logging.getLogger(__name__)


class Supervisor(SchedulerExtension):
    """Scheduler side: the table of supervised processes and their placement.

    Parameters
    ----------
    scheduler
        The scheduler it runs in.
    plugin
        The Foundation scheduler plugin that hosts it.
    """

    name = "processes"

    def __init__(self, scheduler: distributed.Scheduler, plugin: FoundationSchedulerPlugin):
        super().__init__(scheduler, plugin)
        self.records: dict[str, _Record] = {}
        self.groups: dict[str, _Group] = {}
        self.locks = _NameLocks()  # per name, while held or waited for
        self.watchers: set[str] = set()  # clients that cache process locations
        # above every incarnation of a record forgotten since the scheduler started: a
        # name started again after stop() goes on counting from it, so an old handle
        # sees its incarnation as stale (one number for all names, none kept per name)
        self.incarnation_floor = 0
        self.leases = LeaseTable()
        self._background: set[asyncio.Future[Any]] = set()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_process_start": self.start_singleton,
            "foundation_process_where": self.where,
            "foundation_process_watch": self.watch,
            "foundation_process_checkpoint": self.save_checkpoint,
            "foundation_process_stop": self._handle_stop,
            "foundation_process_list": self.list,
            "foundation_process_lookup": self.lookup,
            "foundation_process_named": self.named,
            "foundation_replicated_start": self.start_replicated,
            "foundation_replicated_lookup": self.lookup_replicated,
            "foundation_process_renew": self.renew,
        }

    async def start(self) -> None:
        self._spawn(self._watch_leases(min(0.1, self.leases.lease / 8)))

    def renew(self, worker: str, live: dict[str, int] | None = None) -> dict[str, Any]:
        """A worker renews its lease; the reply names its instances that were replaced
        meanwhile (``fenced``: it destroys them). A worker whose lease had run out is
        back: the singletons waiting for a worker are placed again."""
        came_back = self.leases.expired(worker)
        self.leases.renew(worker)
        if came_back:
            self._place_pending()
        # each instance has its own actor key, which a record holds from before its
        # creation until it is replaced: any other is of a replaced or stopped instance
        current = {r.actor_key for r in self.records.values()}
        return {"fenced": [k for k in (live or {}) if k not in current]}

    async def _watch_leases(self, period: float) -> None:
        """Restart elsewhere the singletons of workers whose lease ran out (cut off)."""
        while True:
            await asyncio.sleep(period)
            for rec in builtins.list(self.records.values()):
                worker = rec.worker
                if (rec.kind == "singleton" and rec.state == "running" and worker is not None
                        and self.leases.expired(worker)):
                    silent = self.leases.silent_for(worker)
                    self._replace(rec, f"no lease renewal from {worker} for {silent:.1f} s",
                                  worker)

    def watch(self, client: str) -> None:
        """``client`` caches locations: tell it when a process moves or stops."""
        if client in self.scheduler.clients:
            self.watchers.add(client)

    def remove_client(self, client: str) -> None:
        self.watchers.discard(client)

    # -- readers inside the scheduler ----------------------------------------------------

    def records_named(self, first: str) -> builtins.list[tuple[tuple[Any, ...], _Record]]:
        """The records of the processes whose name is a tuple starting with ``first``.

        For code of the scheduler process that reads processes of one family, e.g.
        ``records_named("trace_coordinator")``: every trace's coordinator (ElixirScope).

        Returns
        -------
        list of (tuple, _Record)
            ``(name, record)`` pairs, the name decoded (a tuple such as
            ``("trace_coordinator", "t1")``), in the order the processes were started.
            Replicas are named ``("__replica__", group key, worker)``.
        """
        return [
            (rec.name, rec)
            for rec in builtins.list(self.records.values())
            if isinstance(rec.name, tuple) and rec.name and rec.name[0] == first
        ]

    # -- placement -----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def count_on(self, worker: str) -> int:
        """Number of live Foundation processes hosted by ``worker``."""
        return sum(
            1 for r in self.records.values() if r.worker == worker and r.state == "running"
        )

    def _choose_worker(self, exclude: Collection[str]) -> str | None:
        candidates = [
            ws.address for ws in self.scheduler.running
            if ws.address not in exclude and not self.leases.expired(ws.address)
        ]
        if not candidates:
            return None
        load = {a: 0 for a in candidates}
        for r in self.records.values():
            if r.worker in load and r.state in ("running", "starting"):
                load[r.worker] += 1
        return min(candidates, key=lambda a: (load[a], a))

    def _broadcast_moved(self, rec: _Record) -> None:
        self._broadcast({"op": MOVED_OP, "name_key": rec.key, "incarnation": rec.incarnation})

    def _broadcast(self, msg: dict[str, Any]) -> None:
        for client in self.watchers:
            bcomm = self.scheduler.client_comms.get(client)
            if bcomm is not None:
                with contextlib.suppress(Exception):  # a closing comm
                    bcomm.send(msg)

    async def _create_on(self, rec: _Record, worker: str) -> None:
        rec.actor_key = f"foundation-process-{uuid.uuid4().hex[:12]}-{rec.incarnation}"
        rec.token = secrets.token_hex(16)
        rec.checkpoint_error = None
        status = await self.scheduler.rpc(worker).foundation_process_create(
            actor_key=rec.actor_key,
            name_key=rec.key,
            display=rec.display,
            incarnation=rec.incarnation,
            spec=rec.spec,
            checkpoint=rec.checkpoint,
            mode=rec.mode,
            interval=rec.interval,
            token=rec.token,
        )
        if status == "closing":
            raise OSError(f"worker {worker} is closing")
        self.leases.renew(worker)
        rec.worker = worker
        rec.state = "running"
        rec.error = None
        rec.history.append(
            {"time": time.time(), "incarnation": rec.incarnation, "worker": worker}
        )

    async def _place(self, rec: _Record, *, exclude: Collection[str] = frozenset(),
                     raise_errors: bool = False) -> None:
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
                rec.failed_on = worker
                rec.notify()
                logger.error("Process %s failed to start on %s: %s", rec.display, worker, exc)
                if raise_errors:
                    self._forget(rec)
                    raise ProcessStartError(
                        f"{rec.class_name} could not be started as {rec.display} on {worker}: "
                        f"{type(exc).__name__}: {exc}",
                        name=rec.public_name(), worker=worker,
                    ) from exc
                return
            rec.notify()
            self._broadcast_moved(rec)
            return

    def _drop(self, rec: _Record, state: str) -> None:
        """Forget ``rec`` (``state``: ``"stopped"``, or ``"lost"`` for a replica whose
        worker left) and tell watching clients, whose calls to it then fail at once."""
        rec.state = state
        rec.worker = None
        self._forget(rec)
        rec.notify()
        self._broadcast({"op": STOPPED_OP, "name_key": rec.key,
                         "incarnation": rec.incarnation, "state": state})

    def _forget(self, rec: _Record) -> None:
        if self.records.get(rec.key) is rec:
            del self.records[rec.key]
        self.incarnation_floor = max(self.incarnation_floor, rec.incarnation + 1)

    def _first_incarnation(self, replaced: _Record | None) -> int:
        """The incarnation of a new record of a name, above any it had before."""
        floor = self.incarnation_floor
        return floor if replaced is None else max(floor, replaced.incarnation + 1)

    def _replace(self, rec: _Record, reason: str, worker: str) -> None:
        """Restart ``rec`` on a worker other than ``worker``, whose instance counts as
        replaced from now on: if that worker comes back it destroys it at its next lease
        renewal, even when the successor can only be placed there, or not yet."""
        rec.state = "restarting"
        rec.actor_key = None
        self._spawn(self._restart(rec, reason, {worker}))

    async def _restart(self, rec: _Record, reason: str, exclude: Collection[str]) -> None:
        async with self.locks.hold(rec.key):
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
        async with self.locks.hold(rec.key):
            if self.records.get(rec.key) is not rec or rec.worker != worker:
                return
            old_key, old_token = rec.actor_key, rec.token
            rec.state = "moving"
            try:
                final = await self.scheduler.rpc(worker).foundation_process_freeze(
                    actor_key=old_key, token=old_token
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
            await self.scheduler.rpc(worker).foundation_process_destroy(
                actor_key=old_key, token=old_token
            )

    # -- hooks ---------------------------------------------------------------------------

    def add_worker(self, worker: str) -> None:
        self.leases.renew(worker)
        self._place_pending()
        for group in self.groups.values():
            self._spawn(self._start_replica(group, worker))

    def _place_pending(self) -> None:
        """Place the singletons waiting for a worker (one joined, or came back)."""
        for rec in builtins.list(self.records.values()):
            if rec.state == "pending":
                self._spawn(self._restart_pending(rec))

    async def _restart_pending(self, rec: _Record) -> None:
        async with self.locks.hold(rec.key):
            if rec.state == "pending" and self.records.get(rec.key) is rec:
                await self._place(rec)

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        self.leases.forget(worker)
        for rec in builtins.list(self.records.values()):
            if rec.worker != worker:
                continue
            if rec.kind == "replica":
                self._drop(rec, "lost")
            elif rec.state in ("running", "starting"):
                self._replace(rec, f"worker {worker} left", worker)

    def log_event(self, topic: str, msg: Any) -> None:
        if (
            isinstance(msg, dict)
            and msg.get("action") == "worker-status-change"
            and msg.get("status") == "closing_gracefully"
        ):
            for rec in builtins.list(self.records.values()):
                if rec.worker == topic and rec.kind == "singleton" and rec.state == "running":
                    self._spawn(self._handoff(rec, topic))

    async def close(self) -> None:
        for task in builtins.list(self._background):
            task.cancel()

    # -- handlers ------------------------------------------------------------------------

    def _caller(self, token: object) -> str | None:
        """The connected client or worker whose registry identity token is ``token``."""
        registry = extension(self.scheduler, "registry")
        return None if registry is None else registry.owner_of(token)

    async def start_singleton(
        self, name_key: str, display: str, spec: bytes, class_name: str, mode: str,
        interval: float, methods: builtins.list[str], coroutines: builtins.list[str],
        token: str | None = None, cluster: bool = False,
    ) -> dict[str, Any]:
        """Start the singleton ``name_key`` unless it runs; its info, with ``existed``
        (it ran already) and, for a new one, ``restored`` (from a checkpoint file).

        Its owner is the caller of identity ``token`` (``"cluster"`` with ``cluster``);
        an unknown token gets :data:`UNKNOWN_IDENTITY` and starts nothing.
        """
        check_options(display, mode, interval)
        caller = self._caller(token)
        if caller is None:
            return dict(UNKNOWN_IDENTITY)
        async with self.locks.hold(name_key):
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
                    incarnation=self._first_incarnation(rec),
                    owner=CLUSTER_OWNER if cluster else caller,
                )
                rec.checkpoint = persisted(name_key)  # from before a cluster restart
                self.records[name_key] = rec
                await self._place(rec, raise_errors=True)
                info = rec.info()
                info["existed"] = False
                info["restored"] = rec.checkpoint is not None
        return info

    async def where(self, name_key: str, min_incarnation: int = 0,
                    timeout: float = 60) -> dict[str, Any]:
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
                raise ProcessLostError(f"{rec.display} failed to restart: {rec.error}",
                                       name=rec.public_name(), worker=rec.failed_on)
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

    def save_checkpoint(self, name_key: str, incarnation: int, state: bytes | None,
                        token: str | None = None, error: str | None = None) -> str:
        """Keep ``state`` as the checkpoint of ``name_key``; ``"stale"`` (and nothing
        kept) when ``incarnation`` is not the running one. ``state=None`` with ``error``
        reports a ``checkpoint()`` that raised.

        Raises
        ------
        PermissionError
            When ``token`` is not the one the supervisor gave the running instance: only
            the worker hosting it may write its checkpoint.
        """
        rec = self.records.get(name_key)
        if rec is None or rec.incarnation != incarnation or rec.state not in ("running",):
            return "stale"
        if token is None or not secrets.compare_digest(token, rec.token):
            raise ProcessPermissionError(
                f"Only the instance of {rec.display} on {rec.worker} may write its "
                "checkpoint; this one was refused and the process is unchanged.",
                name=rec.display, worker=rec.worker,
            )
        if state is None:
            self._checkpoint_failing(rec, error or "checkpoint() failed")
            return "OK"
        if rec.checkpoint_error is not None:
            logger.info("Checkpoints of %s work again", rec.display)
            self._publish_event(("checkpoint_recovered", {"name": rec.display,
                                                          "worker": rec.worker}))
            rec.checkpoint_error = None
        rec.checkpoint = state
        rec.checkpoint_incarnation = incarnation
        rec.checkpoint_time = time.time()
        rec.n_checkpoints += 1
        if rec.kind == "singleton":
            persist(name_key, state)
        return "OK"

    def _checkpoint_failing(self, rec: _Record, error: str) -> None:
        rec.checkpoint_failures += 1
        if rec.checkpoint_error is None:
            logger.warning("checkpoint() of %s on %s fails: %s; its calls are answered "
                           "without checkpoints (foundation.processes.checkpoint-errors)",
                           rec.display, rec.worker, error)
            self._publish_event(("checkpoint_failing", {
                "name": rec.display, "worker": rec.worker, "error": error}))
        rec.checkpoint_error = error

    def _publish_event(self, message: Any) -> None:
        hub = extension(self.scheduler, "channels")
        if hub is not None:
            try:
                hub.publish("events", message)
            except Exception:
                logger.exception("Could not publish %r on the events channel", message)

    def checkpoint_state(self, rec: _Record) -> Any | None:
        """The ``checkpoint()`` state of ``rec``'s last checkpoint as plain data, or
        ``None`` (no checkpoint, or one that names classes or functions).

        For readers inside the scheduler (dashboard pages): nothing of the checkpoint
        is imported or run, only builtin containers and scalars are built.
        """
        return plain_loads(rec.checkpoint)

    def start_args(self, rec: _Record) -> tuple[builtins.list[Any], dict[str, Any]] | None:
        """The constructor arguments of ``rec`` as plain data, or ``None``; its class is
        not imported (as for :meth:`checkpoint_state`)."""
        return plain_start_args(rec.spec)

    async def stop(self, name_key: str) -> bool:
        """Stop the singleton, or every replica of the replicated process, ``name_key``;
        ``True`` if there was one."""
        group = self.groups.pop(name_key, None)
        recs = (
            [r for r in self.records.values() if r.group == name_key]
            if group is not None
            else [r for r in [self.records.get(name_key)] if r is not None]
        )
        for rec in recs:
            async with self.locks.hold(rec.key):
                worker, actor_key = rec.worker, rec.actor_key
                rec.incarnation += 1  # fence the old instance
                self._drop(rec, "stopped")
                persist(rec.key, None)
                if actor_key is not None and worker in self.scheduler.workers:
                    with contextlib.suppress(Exception):
                        await self.scheduler.rpc(worker).foundation_process_destroy(
                            actor_key=actor_key, token=rec.token
                        )
        return bool(recs) or group is not None

    def owner(self, name_key: str) -> str | None:
        """The owner of the singleton or replicated process ``name_key``, or ``None``."""
        group = self.groups.get(name_key)
        rec = self.records.get(name_key)
        if group is not None:
            return group.owner
        return None if rec is None else rec.owner

    async def _handle_stop(self, name_key: str, token: str | None = None,
                           force: bool = False) -> dict[str, Any]:
        """:meth:`stop` for the caller of identity ``token``: another owner's process
        needs ``force`` (not a ``"cluster"`` one, nor one whose owner has left)."""
        caller = self._caller(token)
        if caller is None:
            return dict(UNKNOWN_IDENTITY)
        owner = self.owner(name_key)
        registry = extension(self.scheduler, "registry")
        if (owner is not None and owner not in (caller, CLUSTER_OWNER) and not force
                and registry is not None and registry.is_live_owner(owner)):
            display = repr(name_from_key(name_key))
            return error_reply(NotOwnerError(
                f"{display} was started by {owner}, not by the caller ({caller}); it is "
                "still running: pass force=True to stop it anyway",
                key=display, owner=owner))
        return {"error": None, "stopped": await self.stop(name_key)}

    def lookup(self, name_key: str) -> dict[str, Any]:
        """``{"singleton": info}``, ``{"replicated": {worker: info}}`` (its running
        replicas) or ``{}`` when nothing has the name ``name_key``."""
        rec = self.records.get(name_key)
        if rec is not None and rec.kind == "singleton":
            return {"singleton": rec.info()}
        if name_key in self.groups:
            return {"replicated": self.lookup_replicated(name_key)}
        return {}

    def named(self, first: str) -> builtins.list[dict[str, Any]]:
        """Infos of the singletons whose name is a tuple starting with ``first``."""
        return [rec.info() for _, rec in self.records_named(first) if rec.kind == "singleton"]

    async def _start_replica(self, group: _Group, worker: str) -> dict[str, Any] | None:
        key = name_key(("__replica__", group.key, worker))
        async with self.locks.hold(key):
            if key in self.records or self.groups.get(group.key) is not group:
                rec = self.records.get(key)
                return rec.info() if rec else None
            rec = _Record(
                key=key, display=f"{group.display}@{worker}", spec=group.spec,
                class_name=group.class_name, mode=group.mode, interval=group.interval,
                methods=group.methods, coroutines=group.coroutines,
                kind="replica", group=group.key, pinned=worker, owner=group.owner,
                incarnation=self._first_incarnation(None),
            )
            self.records[key] = rec
            await self._place(rec, raise_errors=True)
            return rec.info() if key in self.records else None

    async def start_replicated(
        self, name_key: str, display: str, spec: bytes, class_name: str, mode: str,
        interval: float, methods: builtins.list[str], coroutines: builtins.list[str],
        token: str | None = None, cluster: bool = False,
    ) -> dict[str, Any]:
        """Start the replicated process ``name_key`` on every running worker (and, from
        then on, on each worker that joins); ``{worker: info}`` of its replicas. Owner
        and ``token`` as for :meth:`start_singleton`."""
        check_options(display, mode, interval)
        caller = self._caller(token)
        if caller is None:
            return dict(UNKNOWN_IDENTITY)
        group = self.groups.get(name_key)
        if group is None:
            group = _Group(name_key, display, spec, class_name, mode, interval, methods,
                           coroutines, CLUSTER_OWNER if cluster else caller)
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
        """``{worker: info}`` of the running replicas of the replicated process
        ``name_key``; :class:`ProcessNotFoundError` if there is no such process."""
        if name_key not in self.groups:
            raise ProcessNotFoundError(f"No replicated process named {name_key}",
                                       name=name_from_key(name_key))
        return {
            r.pinned: r.info()
            for r in self.records.values()
            if r.group == name_key and r.state == "running" and r.pinned is not None
        }

    def list(self) -> builtins.list[dict[str, Any]]:
        """The info of every supervised instance (singletons and replicas)."""
        return [rec.info() for rec in self.records.values()]


def scheduler_processes(scheduler: distributed.Scheduler) -> list[dict[str, Any]]:
    """The supervisor's table, read inside the scheduler process (empty without the
    Foundation plugin).

    Parameters
    ----------
    scheduler
        The scheduler (e.g. of a dashboard page).

    Returns
    -------
    list of dict
        One :meth:`Supervisor.list` entry per supervised instance.
    """
    supervisor = extension(scheduler, "processes")
    return [] if supervisor is None else supervisor.list()
