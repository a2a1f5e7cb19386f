"""Client and worker: handles on supervised processes, and the call path to them.

A :class:`SingletonHandle` sends each method call straight to the worker that hosts
the instance (``foundation_process_call``), with the incarnation it expects and a
call id. Where instances run is cached per client (:class:`_Locations`); the
supervisor tells the client when a process moves, and a call in flight then retries
on the new incarnation with the same call id. When a process is stopped (or a replica
lost with its worker) the supervisor says so too: the client forgets the name, and a
call in flight fails at once (:class:`ProcessNotFoundError`, :class:`ProcessLostError`
for a replica). Handles pickle, so tasks on workers use them too (through the worker's
client).

A handle follows its name, as :meth:`ProcessManager.lookup` does: after ``stop(name)``
its calls raise :class:`ProcessNotFoundError` until a process is started under that
name again, and then reach the new instance, with that instance's own incarnation.
The supervisor gives every instance of a name a higher incarnation than the ones
before it (even once it forgot the name), and an instance refuses calls carrying any
incarnation but its own, so no call meant for an earlier instance is applied by a
later one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import time
import uuid
from collections.abc import Callable, Generator, Hashable
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError
from distributed.protocol.pickle import dumps, loads

from foundation_dask import config
from foundation_dask._compat import add_client_stream_handler
from foundation_dask.core._client import current_client, scheduler_call
from foundation_dask.core.processes._lease import lease_seconds
from foundation_dask.core.processes._names import MOVED_OP, STOPPED_OP, name_key
from foundation_dask.errors import ProcessLostError, ProcessNotFoundError
from foundation_dask.tracecontext import current

if TYPE_CHECKING:
    import distributed


#: The attribute of a Dask client that holds its :class:`_Locations`.
_ATTRIBUTE = "_foundation_locations"


class _Notice:
    """Fired when the supervisor announces a process moved (to ``incarnation``) or was
    stopped (``gone``: ``"stopped"``, or ``"lost"`` for a replica whose worker left);
    firing calls the wakers of the calls waiting for it."""

    __slots__ = ("fired", "gone", "incarnation", "wakers")

    def __init__(self) -> None:
        self.fired = False
        self.incarnation = -1
        self.gone: str | None = None
        self.wakers: set[Callable[..., None]] = set()

    def fire(self, incarnation: int, gone: str | None) -> None:
        self.fired, self.incarnation, self.gone = True, incarnation, gone
        for wake in list(self.wakers):
            wake()


class _Locations:
    """Per-client cache of process locations, invalidated by the supervisor.

    Every entry is per name, and all of a name's go when the supervisor announces it
    stopped: a client that starts and stops many names keeps none of them.
    """

    def __init__(self, client: distributed.Client):
        self.client = client
        self.cache: dict[str, dict[str, Any]] = {}
        self.moved: dict[str, _Notice] = {}  # names with calls waiting for a reply now
        self.latest: dict[str, int] = {}  # newest incarnation announced per name
        self.stops = 0  # stop notices received: a location resolved across one is not kept
        add_client_stream_handler(client, MOVED_OP, self._on_moved)
        add_client_stream_handler(client, STOPPED_OP, self._on_stopped)
        self._watched = False
        self._watching: asyncio.Future[Any] | None = None

    async def watched(self) -> None:
        """Return once the supervisor sends this client its notices.

        Asked by a request, not a message on the client's stream: once it is answered,
        every notice about a process the client then resolves reaches it (a request
        that failed is made again by the next call).
        """
        if self._watched:
            return
        if self._watching is None or (self._watching.done()
                                      and (self._watching.cancelled()
                                           or self._watching.exception() is not None)):
            self._watching = asyncio.ensure_future(
                self.client.scheduler.foundation_process_watch(client=self.client.id))
        await asyncio.shield(self._watching)
        self._watched = True

    def _on_moved(self, name_key: str, incarnation: int) -> None:
        self.latest[name_key] = max(self.latest.get(name_key, -1), incarnation)
        loc = self.cache.get(name_key)
        if loc is not None and loc["incarnation"] < incarnation:
            del self.cache[name_key]
        self._notify(name_key, incarnation, None)

    def _on_stopped(self, name_key: str, incarnation: int, state: str = "stopped") -> None:
        if self.latest.get(name_key, -1) <= incarnation:
            self.latest.pop(name_key, None)
        loc = self.cache.get(name_key)
        if loc is not None and loc["incarnation"] <= incarnation:
            del self.cache[name_key]
        self.stops += 1
        self._notify(name_key, incarnation, state)

    def _notify(self, name_key: str, incarnation: int, gone: str | None) -> None:
        notice = self.moved.pop(name_key, None)
        if notice is not None:
            notice.fire(incarnation, gone)

    async def wait(self, key: str, send: asyncio.Future[Any]) -> _Notice:
        """Wait until ``send`` is done or the supervisor announces that process ``key``
        moved or stopped; the notice waited for (``fired`` in the second case)."""
        notice = self.moved.get(key)
        if notice is None:
            notice = self.moved[key] = _Notice()
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(*_: Any) -> None:
            if not woken.done():
                woken.set_result(None)

        send.add_done_callback(wake)
        notice.wakers.add(wake)
        try:
            await woken
        finally:
            send.remove_done_callback(wake)
            notice.wakers.discard(wake)
            if not notice.wakers and self.moved.get(key) is notice:
                del self.moved[key]  # nobody waits: keep no entry for the name
        return notice

    @classmethod
    def of(cls, client: distributed.Client) -> _Locations:
        """The cache of ``client`` (kept on the client object, made on first use)."""
        locs: _Locations | None = getattr(client, _ATTRIBUTE, None)
        if locs is None:
            locs = cls(client)
            setattr(client, _ATTRIBUTE, locs)
        return locs


_call_counter = itertools.count()
_process_id = uuid.uuid4().hex[:12]


class CallFuture:
    """The pending result of a method call through a :class:`SingletonHandle`.

    ``.result(timeout=None)`` blocks for it; on an asynchronous client the future can
    be awaited. Mirrors :class:`distributed.ActorFuture`.
    """

    def __init__(self, fut: concurrent.futures.Future[Any] | asyncio.Future[Any], label: str):
        self._fut = fut
        self._label = label

    def result(self, timeout: float | None = None) -> Any:
        """The call's result (or its exception raised), waiting at most ``timeout``
        seconds on a synchronous client."""
        if isinstance(self._fut, asyncio.Future):
            return self._fut.result()
        return self._fut.result(timeout)

    def done(self) -> bool:
        """Whether the call has finished."""
        return self._fut.done()

    def __await__(self) -> Generator[Any, None, Any]:
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

    Calls go through the client the handle was made with (``client=`` of the
    :class:`ProcessManager` method that returned it), else through the current client
    (``foundation_dask.connect()`` is called if there is none); an unpickled handle
    uses the current client of its process.
    """

    def __init__(self, name: Hashable, class_name: str, methods: frozenset[str],
                 coroutines: frozenset[str], *, replica_of: str | None = None,
                 key: str | None = None, client: distributed.Client | None = None):
        self._name = name
        self._key = key or name_key(name)
        self._class_name = class_name
        self._methods = methods
        self._coroutines = coroutines
        self._replica_of = replica_of
        self._client = client

    @property
    def __foundation_process__(self) -> str:
        """The supervisor's key of this process (the registry follows its host)."""
        return self._key

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_handle,
            (self._name, self._class_name, self._methods, self._coroutines,
             self._replica_of, self._key),
        )

    @property
    def name(self) -> Hashable:
        """The process name (a replica's is ``(name, worker)``)."""
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
        fut = self._submit("_foundation_getattr", attr)
        if isinstance(fut._fut, asyncio.Future):
            return fut  # awaitable on an asynchronous client
        return fut.result()

    def info(self) -> dict[str, Any]:
        """Where the process runs now: worker, incarnation, state, restarts...

        Asks the supervisor through the handle's client; an awaitable on an
        asynchronous client.
        """
        return scheduler_call(
            "foundation_process_where", client=self._client, name_key=self._key,
            min_incarnation=0, timeout=config.get_seconds("processes.failover-timeout"),
        )

    # the call machinery ------------------------------------------------------------

    def _submit(self, function: str, target: str, args: tuple[Any, ...] = (),
                kwargs: dict[str, Any] | None = None) -> CallFuture:
        """Send ``function`` (``"_foundation_call"`` of the method ``target`` with
        ``args`` and ``kwargs``, or ``"_foundation_getattr"`` of the attribute
        ``target``) to the instance."""
        client = self._client or current_client()
        call_id = f"{_process_id}-{next(_call_counter)}"
        ctx = current()
        # the arguments travel as one pickle (none for a call without any); the rest of
        # the request is plain msgpack, so no value of it is serialised on its own
        payload = _pickle_arguments(self._name, target, args, kwargs) if args or kwargs else None
        coro = self._call(client, function, target, payload, call_id, ctx and tuple(ctx))
        label = f"{self._name!r}.{target}"
        if client.asynchronous and _in_loop(client):
            return CallFuture(asyncio.ensure_future(coro), label)
        # tornado types IOLoop without asyncio_loop; a client's loop always has it
        loop = client.loop.asyncio_loop  # type: ignore[union-attr]
        return CallFuture(asyncio.run_coroutine_threadsafe(coro, loop), label)

    async def _resolve(self, client: distributed.Client, locs: _Locations,
                       min_incarnation: int, timeout: float) -> dict[str, Any]:
        loc = locs.cache.get(self._key)
        if loc is not None and loc["incarnation"] >= min_incarnation:
            return loc
        stops = locs.stops
        loc = await client.scheduler.foundation_process_where(
            name_key=self._key, min_incarnation=min_incarnation, timeout=timeout
        )
        if loc.get("missing"):
            raise self._gone("missing") from None
        if locs.stops == stops:  # else the answer may predate a stop it would outlive
            locs.cache[self._key] = loc
        return loc

    def _gone(self, why: str) -> ProcessLostError | ProcessNotFoundError:
        """The error of a call to a process that is no more: ``why`` is ``"missing"``
        (the supervisor has no such name), ``"stopped"`` or ``"lost"`` (announced while
        the call was in flight)."""
        if self._replica_of and why != "stopped":
            return ProcessLostError(
                f"{self!r}: its worker left; replicated instances live and die with "
                "their worker. Use ProcessManager.lookup_replicated() for the current ones.",
                name=self._name, worker=self._replica_of,
            )
        if why == "missing":
            return ProcessNotFoundError(
                f"No process named {self._name!r} (stopped, or never started).",
                name=self._name,
            )
        return ProcessNotFoundError(
            f"{self._name!r} was stopped while this call was in flight; whether the call "
            "took effect is unknown, and its state is gone with the stopped process.",
            name=self._name,
        )

    async def _call(self, client: distributed.Client, function: str, target: str,
                    payload: bytes | None, call_id: str,
                    ctx: tuple[Any, ...] | None = None) -> Any:
        locs = _Locations.of(client)
        await locs.watched()
        failover = config.get_seconds("processes.failover-timeout")
        deadline = time.monotonic() + config.get_seconds("processes.call-timeout")
        min_incarnation = 0
        backoff = 0.005
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"call {self._name!r}.{target} timed out")
            loc = await self._resolve(client, locs, min_incarnation, failover)
            inc = loc["incarnation"]
            send = asyncio.ensure_future(
                client.rpc(loc["worker"]).foundation_process_call(
                    actor_key=loc["actor_key"], function=function, incarnation=inc,
                    target=target, payload=payload, call_id=call_id, ctx=ctx,
                )
            )
            # Wait for the reply, unless the supervisor announces a newer incarnation
            # meanwhile (the worker died while the call was connecting or running), or
            # that the process was stopped.
            newer = locs.latest.get(self._key, -1)
            gone: str | None = None
            while not send.done() and newer <= inc and gone is None:
                notice = await locs.wait(self._key, send)
                if notice.fired and notice.incarnation >= inc:
                    gone = notice.gone
                newer = max(newer, locs.latest.get(self._key, -1),
                            notice.incarnation if notice.gone is None else -1)
            if not send.done():
                send.cancel()
                locs.cache.pop(self._key, None)
                if gone is not None:
                    raise self._gone(gone)
                # the process moved while we were waiting: retry there (same call id)
                min_incarnation = newer
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
                return loads(value)
            if tag == "error":
                raise loads(value)
            if tag == "fenced":
                # its worker has been cut off from the supervisor for longer than the
                # lease: a successor is (or will be) elsewhere, if we can reach the
                # supervisor to learn where
                locs.cache.pop(self._key, None)
                await self._fenced(client, locs, inc, loc["worker"], failover)
                min_incarnation = inc + 1
                continue
            # stale or moving: a newer incarnation is (or will be) there
            locs.cache.pop(self._key, None)
            min_incarnation = max(inc, value) + 1 if tag == "stale" else inc + 1


    async def _fenced(self, client: distributed.Client, locs: _Locations, inc: int,
                      worker: str, failover: float) -> None:
        """Wait (one lease at most) to learn of the successor of a fenced instance."""
        lease, margin = lease_seconds()
        try:
            await asyncio.wait_for(self._resolve(client, locs, inc + 1, failover),
                                   min(failover, 2 * lease + margin))
        except (asyncio.TimeoutError, OSError, CommClosedError):
            raise ProcessLostError(
                f"{self._name!r}: its instance on {worker} stopped answering because that "
                f"worker lost contact with the scheduler for longer than its lease "
                f"({lease:g} s, foundation.processes.lease), and the scheduler, which "
                "knows of the instance that replaces it, is not reachable from here "
                "either (a network partition?). No answer of the cut-off instance is "
                "given; the call took effect only if its checkpoint reached the scheduler "
                "first.", name=self._name, worker=worker) from None


class _MethodProxy:
    """``handle.method``: calling it sends the call."""

    def __init__(self, handle: SingletonHandle, method: str):
        self._handle = handle
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> CallFuture:
        return self._handle._submit("_foundation_call", self._method, args, kwargs)

    def __repr__(self) -> str:
        return f"<method {self._method} of {self._handle!r}>"


def _pickle_arguments(name: Hashable, method: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any] | None) -> bytes:
    try:
        blob: bytes = dumps((args, kwargs or {}))
    except Exception as exc:
        raise TypeError(
            f"the arguments of {name!r}.{method} cannot be pickled ({exc}); pass plain data, "
            "not locks, files or clients."
        ) from exc
    return blob


def _rebuild_handle(name: Hashable, class_name: str, methods: frozenset[str],
                    coroutines: frozenset[str], replica_of: str | None,
                    key: str) -> SingletonHandle:
    return SingletonHandle(name, class_name, methods, coroutines, replica_of=replica_of, key=key)


def _in_loop(client: distributed.Client) -> bool:
    try:
        # see _submit for the asyncio_loop of a client's loop
        return asyncio.get_running_loop() is client.loop.asyncio_loop  # type: ignore[union-attr]
    except RuntimeError:
        return False


def handle_from_info(info: dict[str, Any], name: Hashable, replica_of: str | None = None,
                     client: distributed.Client | None = None) -> SingletonHandle:
    """A handle on the instance the supervisor's ``info`` describes, named ``name``;
    bound to ``client`` when one is given."""
    return SingletonHandle(
        name, info["class_name"], frozenset(info["methods"]), frozenset(info["coroutines"]),
        replica_of=replica_of, key=info["name_key"], client=client,
    )
