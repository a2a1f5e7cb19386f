"""Client and worker: handles on supervised processes, and the call path to them.

A :class:`SingletonHandle` sends each method call straight to the worker that hosts
the instance (``foundation_process_call``), with the incarnation it expects and a
call id. Where instances run is cached per client (:class:`_Locations`); the
supervisor tells the client when a process moves, and a call in flight then retries
on the new incarnation with the same call id. Handles pickle, so tasks on workers use
them too (through the worker's client).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import time
import uuid
from collections.abc import Generator, Hashable
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError
from distributed.protocol.pickle import loads
from distributed.protocol.serialize import to_serialize

from foundation_dask import config
from foundation_dask._compat import add_client_stream_handler, send_to_scheduler
from foundation_dask.core._client import current_client, scheduler_call
from foundation_dask.core.processes._names import MOVED_OP, name_key
from foundation_dask.errors import ProcessLostError, ProcessNotFoundError
from foundation_dask.tracecontext import current

if TYPE_CHECKING:
    import distributed


#: The attribute of a Dask client that holds its :class:`_Locations`.
_ATTRIBUTE = "_foundation_locations"


class _Locations:
    """Per-client cache of process locations, invalidated by the supervisor."""

    def __init__(self, client: distributed.Client):
        self.client = client
        self.cache: dict[str, dict[str, Any]] = {}
        self.moved: dict[str, asyncio.Event] = {}
        self.latest: dict[str, int] = {}  # newest incarnation announced per name
        add_client_stream_handler(client, MOVED_OP, self._on_moved)
        send_to_scheduler(client, {"op": "foundation_process_watch"})

    def _on_moved(self, name_key: str, incarnation: int) -> None:
        self.latest[name_key] = max(self.latest.get(name_key, -1), incarnation)
        loc = self.cache.get(name_key)
        if loc is not None and loc["incarnation"] < incarnation:
            del self.cache[name_key]
        event = self.moved.pop(name_key, None)
        if event is not None:
            event.set()

    def event(self, key: str) -> asyncio.Event:
        """Set when the supervisor announces that process ``key`` moved."""
        ev = self.moved.get(key)
        if ev is None:
            ev = self.moved[key] = asyncio.Event()
        return ev

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
        fut = self._submit("_foundation_getattr", (attr,), {})
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

    def _submit(self, function: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> CallFuture:
        client = self._client or current_client()
        call_id = f"{_process_id}-{next(_call_counter)}"
        ctx = current()
        coro = self._call(client, function, args, kwargs, call_id, ctx and tuple(ctx))
        label = f"{self._name!r}.{args[0] if function == '_foundation_getattr' else function}"
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
        loc = await client.scheduler.foundation_process_where(
            name_key=self._key, min_incarnation=min_incarnation, timeout=timeout
        )
        if loc.get("missing"):
            if self._replica_of:
                raise ProcessLostError(
                    f"{self!r}: its worker left; replicated instances live and die with "
                    "their worker. Use ProcessManager.lookup_replicated() for the current ones.",
                    name=self._name, worker=self._replica_of,
                ) from None
            raise ProcessNotFoundError(
                f"No process named {self._name!r} (stopped, or never started).",
                name=self._name,
            ) from None
        locs.cache[self._key] = loc
        return loc

    async def _call(self, client: distributed.Client, function: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any], call_id: str,
                    ctx: tuple[Any, ...] | None = None) -> Any:
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
                return loads(value)
            if tag == "error":
                raise value
            # stale or moving: a newer incarnation is (or will be) there
            locs.cache.pop(self._key, None)
            min_incarnation = max(inc, value) + 1 if tag == "stale" else inc + 1


class _MethodProxy:
    """``handle.method``: calling it sends the call."""

    def __init__(self, handle: SingletonHandle, method: str):
        self._handle = handle
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> CallFuture:
        return self._handle._submit("_foundation_call", (self._method, args, kwargs), {})

    def __repr__(self) -> str:
        return f"<method {self._method} of {self._handle!r}>"


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
