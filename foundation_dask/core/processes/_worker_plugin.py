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
from collections.abc import Callable, Iterable
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from distributed.protocol import pickle

from foundation_dask import config
from foundation_dask._compat import run_in_actor_thread
from foundation_dask.core.plugin import WorkerExtension
from foundation_dask.core.processes._lease import WorkerLease
from foundation_dask.core.processes._wire import join_checkpoint, split_checkpoint
from foundation_dask.errors import ProcessError, ProcessPermissionError
from foundation_dask.tracecontext import SpanScope, TraceContext, attach, detach

if TYPE_CHECKING:
    import distributed
    from tornado.ioloop import PeriodicCallback

    from foundation_dask.core.plugin import FoundationWorkerPlugin

logger = logging.getLogger(__name__)

#: How many recent call results an instance remembers (and checkpoints) for retries.
APPLIED_CALLS_KEPT = 32

#: A call's answer: ``("ok", pickled result)``, ``("error", exception)``, or
#: ``("stale", n)`` / ``("moving", n)`` with the incarnation ``n`` this host is. It
#: travels as plain msgpack, the exception pickled.
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
                 applied: OrderedDict[str, bytes], token: str):
        self._worker = worker
        self._instance = instance
        self._actor_key = actor_key
        self._name_key = name_key
        self._display = display
        self._incarnation = incarnation
        self._mode = mode if hasattr(instance, "checkpoint") else "never"
        self._interval = interval
        self._applied: OrderedDict[str, bytes] = applied  # call id -> pickled result
        self._lease: WorkerLease | None = None  # set by WorkerProcesses.create
        self._token = token  # what the supervisor gave this incarnation: its checkpoints
        # carry it, and the supervisor's own requests (freeze, destroy) too
        self._checkpoint_error: str | None = None
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
        return join_checkpoint(pickle.dumps(state), pickle.dumps(list(self._applied.items())))

    def _try_snapshot(self) -> bytes | BaseException:
        try:
            return self._snapshot()
        except Exception as exc:
            return exc

    async def _send_checkpoint(self, snap: bytes) -> bool:
        if snap == self._last_sent and self._checkpoint_error is None:
            return True
        # an answer waits for its checkpoint, but not past the lease: a cut-off
        # instance's call is then not acknowledged ("fenced"), and is retried elsewhere
        lease = self._lease
        status = await asyncio.wait_for(
            self._worker.scheduler.foundation_process_checkpoint(
                name_key=self._name_key, incarnation=self._incarnation, state=snap,
                token=self._token,
            ),
            timeout=None if lease is None else max(0.001, lease.until - time.monotonic()),
        )
        if status != "OK":
            self._stopped = True
            return False
        self._checkpoint_error = None
        self._last_sent = snap
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        return True

    async def _checkpoint_failed(self, exc: BaseException) -> ProcessError | None:
        """Report a ``checkpoint()`` (or its pickling) that raised to the supervisor; the
        error a call returns under ``foundation.processes.checkpoint-errors: raise``."""
        error = f"{type(exc).__name__}: {exc}"
        if self._checkpoint_error is None:
            logger.warning("checkpoint() of %s failed: %s", self._display, error)
        self._checkpoint_error = error
        try:
            await self._worker.scheduler.foundation_process_checkpoint(
                name_key=self._name_key, incarnation=self._incarnation, state=None,
                token=self._token, error=error,
            )
        except Exception as report:  # the supervisor is unreachable: the log has it
            logger.warning("Could not report the failing checkpoint of %s: %s",
                           self._display, report)
        if config.get("processes.checkpoint-errors") == "raise":
            return ProcessError(
                f"checkpoint() of {self._display} failed ({error}): the call was applied, "
                "but its state is not checkpointed; fix checkpoint(), or set "
                "foundation.processes.checkpoint-errors: warn to answer calls meanwhile.",
                name=self._display, worker=self._worker.address,
            )
        return None

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
            result: bytes | None
            error: BaseException | None
            snap: bytes | BaseException | None
            if iscoroutinefunction(func):
                token = attach(trace)
                try:
                    with SpanScope(label, "actor", {"process": self._display}, trace):
                        result, error = self._remember(call_id, label,
                                                       await func(*args, **kwargs))
                except Exception as exc:
                    result, error = None, exc
                finally:
                    detach(token)
                snap = self._try_snapshot() if take else None
            else:
                def run() -> tuple[bytes | None, BaseException | None,
                                   bytes | BaseException | None]:
                    token = attach(trace)
                    res: bytes | None
                    err: BaseException | None
                    try:
                        with SpanScope(label, "actor", {"process": self._display}, trace):
                            res, err = self._remember(call_id, label, func(*args, **kwargs))
                    except Exception as exc:
                        res, err = None, exc
                    finally:
                        detach(token)
                    return res, err, (self._try_snapshot() if take else None)

                result, error, snap = await self._in_actor_thread(run)
            self._dirty = True
            if isinstance(snap, BaseException):
                failed = await self._checkpoint_failed(snap)
                error = error or failed
            elif snap is not None:
                try:
                    sent = await self._send_checkpoint(snap)
                except asyncio.TimeoutError:
                    return ("fenced", self._incarnation)
                if not sent:
                    return ("stale", self._incarnation)
            if error is not None:
                return ("error", error)
            return ("ok", result)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._drained.set()

    def _remember(self, call_id: str, label: str,
                  result: Any) -> tuple[bytes | None, BaseException | None]:
        """The pickled ``result``, remembered for retries of ``call_id``; a result that
        cannot be pickled is an error of this call alone (and not remembered)."""
        try:
            blob: bytes = pickle.dumps(result)
        except Exception as exc:
            return None, TypeError(
                f"{label} returned a {type(result).__name__} that cannot be pickled ({exc}); "
                "its effect was applied, but the result cannot be sent or checkpointed: "
                "return picklable values (plain data, not locks, files or clients)."
            )
        self._applied[call_id] = blob
        while len(self._applied) > APPLIED_CALLS_KEPT:
            self._applied.popitem(last=False)
        return blob, None

    async def _foundation_getattr(self, incarnation: int, attr: str) -> Reply:
        if self._stopped or incarnation != self._incarnation:
            return ("stale", self._incarnation)
        if self._frozen:
            return ("moving", self._incarnation)
        value = getattr(self._instance, attr)
        try:
            return ("ok", pickle.dumps(value))
        except Exception as exc:
            return ("error", TypeError(
                f"attribute {attr!r} of {self._display} is a {type(value).__name__} that "
                f"cannot be pickled ({exc}); read it through a method returning plain data."))

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
            snap = await self._in_actor_thread(self._try_snapshot)
            if isinstance(snap, BaseException):
                await self._checkpoint_failed(snap)
            else:
                await self._send_checkpoint(snap)


def _instantiate(spec: bytes, checkpoint: bytes | None,
                 ) -> tuple[Any, OrderedDict[str, bytes]]:
    """The instance of ``spec`` (pickled class and arguments), restored from
    ``checkpoint`` when there is one, and its remembered (pickled) call results."""
    cls, args, kwargs = pickle.loads(spec)
    instance = cls(*args, **kwargs)
    applied: OrderedDict[str, bytes] = OrderedDict()
    if checkpoint is not None:
        state_blob, applied_blob = split_checkpoint(checkpoint)
        applied.update(pickle.loads(applied_blob))
        state = pickle.loads(state_blob)
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
        self.lease = WorkerLease(worker, self._live_incarnations, self._fence)

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
        self.lease.start()

    async def _tick(self) -> None:
        for host in list(self.hosts.values()):
            try:
                await host._tick()
            except Exception:
                logger.exception("interval checkpoint of %s", host._display)

    async def create(self, actor_key: str, name_key: str, display: str, incarnation: int,
                     spec: bytes, checkpoint: bytes | None, mode: str, interval: float,
                     token: str) -> str:
        """Instantiate (and restore) an instance here: ``"OK"``, or ``"closing"`` when
        this worker is closing (the supervisor places it on another worker).

        ``token`` is the supervisor's secret of this incarnation: its checkpoints carry
        it, and only a request with it may freeze or destroy the instance.
        """
        w = self.worker
        if w.status.name != "running":
            return "closing"
        if actor_key in self.hosts:
            raise ValueError(f"An instance {actor_key} runs here already; the supervisor "
                             "names each instance it creates afresh.")
        try:
            instance, applied = await w.loop.run_in_executor(
                w.executors["actor"], _instantiate, spec, checkpoint
            )
        except RuntimeError as exc:
            if "after shutdown" in str(exc):  # the worker started closing meanwhile
                return "closing"
            raise
        host = _Host(w, instance, actor_key, name_key, display, incarnation, mode, interval,
                     applied, token)
        host._lease = self.lease
        self.hosts[actor_key] = host
        self.lease.granted()
        return "OK"

    async def call(self, actor_key: str, function: str, incarnation: int, target: str,
                   payload: bytes | None = None, call_id: str = "",
                   ctx: list[Any] | None = None) -> dict[str, Any]:
        """Run ``function`` of the host ``actor_key`` for a handle that expects it to be
        ``incarnation``: ``"_foundation_call"`` of the method ``target`` (``payload``:
        the pickled ``(args, kwargs)``, ``None`` for none; ``call_id`` names the call
        for retries; ``ctx`` the caller's trace context), or ``"_foundation_getattr"``
        of the attribute ``target``."""
        host = self.hosts.get(actor_key)
        if host is None:
            reply: Reply = ("stale", -1)
        elif not self.lease.valid():
            reply = ("fenced", incarnation)  # cut off from the supervisor for too long
        elif function == "_foundation_call":
            args, kwargs = pickle.loads(payload) if payload is not None else ((), {})
            reply = await host._foundation_call(incarnation, target, args, kwargs, call_id,
                                                tuple(ctx) if ctx else None)
        elif function == "_foundation_getattr":
            reply = await host._foundation_getattr(incarnation, target)
        else:
            reply = ("stale", -1)
        if reply[0] in ("ok", "error") and not self.lease.valid():
            reply = ("fenced", incarnation)  # the lease ran out while it ran: no late answer
        elif reply[0] == "error":
            reply = ("error", self._pickled_error(reply[1], host, target))
        return {"result": reply}

    def _pickled_error(self, exc: BaseException, host: _Host | None, target: str) -> bytes:
        try:
            blob: bytes = pickle.dumps(exc)
        except Exception as why:
            display = host._display if host is not None else "the process"
            blob = pickle.dumps(ProcessError(
                f"{display}.{target} raised {type(exc).__name__}: {exc}; that exception "
                f"cannot be pickled ({why}), so this error stands for it.",
                name=display, worker=self.worker.address))
        return blob

    def _supervised(self, actor_key: str, token: str | None, action: str) -> _Host | None:
        host = self.hosts.get(actor_key)
        if host is not None and token != host._token:
            raise ProcessPermissionError(
                f"Only the supervisor may {action} {host._display} (the request did not carry "
                "its token); stop it with ProcessManager.stop(name).",
                name=host._display, worker=self.worker.address,
            )
        return host

    async def freeze(self, actor_key: str, token: str | None = None) -> bytes | None:
        """Stop the host ``actor_key`` taking calls; its final checkpoint once the calls
        in flight are done (``None`` without checkpoints). Only the supervisor may
        (``token``: the one given at :meth:`create`)."""
        host = self._supervised(actor_key, token, "freeze")
        if host is None:
            return None
        return await host._freeze()

    def destroy(self, actor_key: str, token: str | None = None) -> str:
        """Forget the host ``actor_key``; it answers no call from now on. Only the
        supervisor may (``token``: the one given at :meth:`create`)."""
        if self._supervised(actor_key, token, "destroy") is not None:
            self._forget(actor_key)
        return "OK"

    def _forget(self, actor_key: str) -> None:
        host = self.hosts.pop(actor_key, None)
        if host is not None:
            host._stopped = True

    def _live_incarnations(self) -> dict[str, int]:
        return {k: h._incarnation for k, h in self.hosts.items() if not h._stopped}

    def _fence(self, actor_keys: Iterable[str]) -> None:
        for key in actor_keys:
            self._forget(key)

    def live(self) -> dict[str, tuple[str, int]]:
        """``{actor key: (name key, incarnation)}`` of the instances answering here."""
        return {
            k: (h._name_key, h._incarnation) for k, h in self.hosts.items() if not h._stopped
        }

    async def teardown(self) -> None:
        self.lease.stop()
        if self._pc is not None:
            self._pc.stop()
        for key in list(self.hosts):
            self._forget(key)
