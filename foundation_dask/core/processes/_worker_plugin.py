"""Worker: the hosted instances of supervised processes and the calls to them.

:class:`WorkerProcesses` (the worker extension ``"processes"``) creates instances when
the supervisor places them here, answers handles' calls, freezes instances for a
hand-off and destroys them. Each instance is wrapped in a :class:`_Host` that fences
calls of other incarnations, remembers recent call results (so a retried call is not
applied twice) and takes checkpoints after each call or on an interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from distributed.protocol import pickle
from distributed.protocol.serialize import to_serialize

from foundation_dask import config
from foundation_dask._compat import run_in_actor_thread
from foundation_dask.core.plugin import WorkerExtension
from foundation_dask.tracecontext import SpanScope, TraceContext, attach, detach

if TYPE_CHECKING:
    import distributed
    from tornado.ioloop import PeriodicCallback

    from foundation_dask.core.plugin import FoundationWorkerPlugin

logger = logging.getLogger(__name__)

#: How many recent call results an instance remembers (and checkpoints) for retries.
APPLIED_CALLS_KEPT = 32

#: A call's answer: ``("ok", result)``, ``("error", exception)``, or ``("stale", n)`` /
#: ``("moving", n)`` with the incarnation ``n`` this host is.
Reply = tuple[str, Any]


class _Host:
    """A hosted instance plus its fencing, checkpointing and call bookkeeping.

    Methods run the way Dask runs actor methods: synchronous ones in the worker's
    single actor thread (``Worker.executors["actor"]``, through Dask's own
    ``_run_actor`` so ``get_worker()`` and the profiler see them), ``async`` ones on
    the worker's event loop.
    """

    def __init__(self, worker: distributed.Worker, instance: Any, actor_key: str,
                 name_key: str, display: str, incarnation: int, mode: str, interval: float,
                 applied: OrderedDict[str, Any]):
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

    def _snapshot(self) -> bytes:
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

    def _in_actor_thread(self, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return run_in_actor_thread(self._worker, self._actor_key, func, *args)

    async def _foundation_call(self, incarnation: int, method: str, args: tuple[Any, ...],
                               kwargs: dict[str, Any], call_id: str,
                               ctx: tuple[Any, ...] | None = None) -> Reply:
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
            result: Any
            error: BaseException | None
            snap: bytes | None
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
                def run() -> tuple[Any, BaseException | None, bytes | None]:
                    token = attach(trace)
                    res: Any
                    err: BaseException | None
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

    async def _foundation_getattr(self, incarnation: int, attr: str) -> Reply:
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
        snap: bytes = await self._in_actor_thread(self._snapshot)
        return snap

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


def _instantiate(spec: bytes, checkpoint: bytes | None) -> tuple[Any, OrderedDict[str, Any]]:
    """The instance of ``spec`` (pickled class and arguments), restored from
    ``checkpoint`` when there is one, and its remembered call results."""
    cls, args, kwargs = pickle.loads(spec)
    instance = cls(*args, **kwargs)
    applied: OrderedDict[str, Any] = OrderedDict()
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
    """Worker side: creates, freezes and destroys hosted instances.

    Parameters
    ----------
    worker
        The worker it runs in.
    plugin
        The Foundation worker plugin that hosts it.
    """

    name = "processes"

    def __init__(self, worker: distributed.Worker, plugin: FoundationWorkerPlugin):
        super().__init__(worker, plugin)
        self.hosts: dict[str, _Host] = {}
        self._pc: PeriodicCallback | None = None

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

    async def create(self, actor_key: str, name_key: str, display: str, incarnation: int,
                     spec: bytes, checkpoint: bytes | None, mode: str, interval: float) -> str:
        """Instantiate (and restore) an instance here: ``"OK"``, or ``"closing"`` when
        this worker is closing (the supervisor places it on another worker)."""
        w = self.worker
        if w.status.name != "running":
            return "closing"
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

    async def call(self, actor_key: str, function: str, args: list[Any]) -> dict[str, Any]:
        """Run ``function`` of the host ``actor_key``: a method call or an attribute read."""
        host = self.hosts.get(actor_key)
        if host is None or function not in ("_foundation_call", "_foundation_getattr"):
            return {"result": to_serialize(("stale", -1))}
        return {"result": to_serialize(await getattr(host, function)(*args))}

    async def freeze(self, actor_key: str) -> bytes | None:
        """Stop the host ``actor_key`` taking calls; its final checkpoint once the calls
        in flight are done (``None`` without checkpoints)."""
        host = self.hosts.get(actor_key)
        if host is None:
            return None
        return await host._freeze()

    def destroy(self, actor_key: str) -> str:
        """Forget the host ``actor_key``; it answers no call from now on."""
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
