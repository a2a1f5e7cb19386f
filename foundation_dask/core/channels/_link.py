"""Client and worker: the link of one process to the scheduler's hub.

Every process keeps one :class:`Link`: a dedicated comm opened with
:func:`distributed.comm.connect` and served on the scheduler by the
``foundation_channels_link`` handler of the hub, which keeps reading from it for as long
as it stays open. The link holds the process's *outbox* (one bounded queue per
channel, ``control`` unbounded), a flusher coroutine that writes batches taken in
priority order with at most :data:`~._wire.WINDOW` unacknowledged in flight, a reader
that hands received batches to the process's subscriptions, and reconnection while
the process has subscriptions or queued messages.

Nothing is lost across a link break: batches sent but not yet acknowledged by the hub
are kept, and queued again at the front of the outbox when the link breaks, so they are
sent first after the reconnect (in priority order: ``control`` ahead of ``telemetry``);
the hub drops what it already had by sequence number. The link presents a random token
with its endpoint, which resumes its state at the hub. Before it opens, the link asks
the scheduler whether the Foundation plugin runs there, and raises
:class:`~foundation_dask.errors.FoundationNotInstalledError` when not (without trying
again for ``NOT_INSTALLED_RECHECK`` seconds). A client's link is made by
:func:`client_link`; a worker's belongs to its worker extension.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed.comm import connect
from distributed.comm.core import CommClosedError

from foundation_dask.core.channels._subscription import wake_future
from foundation_dask.core.channels._wire import (
    CHANNELS,
    CONTROL,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    PRIORITY_ORDER,
    WINDOW,
    setting,
)
from foundation_dask.core.plugin import PLUGIN_NAME
from foundation_dask.errors import ClusterConnectionError, FoundationNotInstalledError

if TYPE_CHECKING:
    import distributed
    from distributed.comm import Comm
    from tornado.ioloop import IOLoop

    from foundation_dask.core.channels._subscription import Subscription

logger = logging.getLogger("foundation_dask.core.channels")

#: Seconds a link that found no Foundation plugin on the scheduler raises that again
#: without asking the scheduler.
NOT_INSTALLED_RECHECK = 5.0


class Link:
    """One process's connection to the hub (:class:`ChannelHub`): outbox, flusher, reader
    and the subscriptions of the process. Thread-safe entry points: :meth:`publish`,
    :meth:`start_soon`, :meth:`remove_subscription`."""

    def __init__(
        self,
        *,
        loop: IOLoop,
        address: str,
        connection_args: dict[str, Any],
        endpoint: str,
        kind: str,
        alive: Callable[[], bool],
    ):
        # an attribute of tornado's asyncio-backed IOLoop, which IOLoop's stubs do not declare
        self.aloop: asyncio.AbstractEventLoop = loop.asyncio_loop  # type: ignore[attr-defined]
        self.address = address
        self.connection_args = connection_args
        self.endpoint = endpoint
        self.kind = kind
        self._alive = alive
        self._lock = threading.Lock()
        self._outbox: list[deque[tuple]] = [deque() for _ in CHANNELS]
        self._queued = 0
        self._limit = int(setting("publisher-buffer"))
        self._token = secrets.token_hex(16)
        self._unacked: deque[list[tuple]] = deque()
        self._not_installed: tuple[float, FoundationNotInstalledError] | None = None
        self._ctrl: list[tuple] = []
        self._seq = [0] * len(CHANNELS)
        self._subs: list[list[Subscription]] = [[] for _ in CHANNELS]
        self._sleeping = False
        self._wake = asyncio.Event()
        self._comm: Comm | None = None
        self._up = False
        self._closed = False
        self._start: concurrent.futures.Future | None = None
        self._owed = 0
        self._req = itertools.count()
        self._pending_acks: dict[int, tuple[asyncio.Future, Subscription]] = {}
        self._drain_waiters: list[asyncio.Future] = []
        self._tasks: set[asyncio.Task] = set()
        self._watching = False
        self.sent = 0
        self.dropped = 0
        self.breaks = 0

    def __repr__(self) -> str:
        state = "up" if self._up else ("closed" if self._closed else "down")
        return f"<Channels link {self.endpoint} -> {self.address} {state} queued={self._queued}>"

    # -- any thread ---------------------------------------------------------------------

    def in_loop(self) -> bool:
        """Whether the caller runs on the link's event loop."""
        try:
            return asyncio.get_running_loop() is self.aloop
        except RuntimeError:
            return False

    def _wake_flusher(self) -> None:
        if self.in_loop():
            self._wake.set()
        else:
            self.aloop.call_soon_threadsafe(self._wake.set)

    def publish(self, ch: int, blob: bytes, trace: tuple | None = None) -> int:
        """Queue a serialised message on channel index ``ch``; returns its sequence number.

        When the channel's outbox queue is full (``control`` excepted) the oldest message
        is dropped (subscribers count the gap in the sequence numbers as missed).

        Raises
        ------
        RuntimeError
            The link is closed.
        FoundationNotInstalledError
            The scheduler has no Foundation plugin.
        """
        if self._not_installed is not None:
            self._check_installed()
        ts = time.time()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"Channels link of {self.endpoint} is closed")
            seq = self._seq[ch]
            self._seq[ch] = seq + 1
            q = self._outbox[ch]
            if len(q) >= self._limit and ch != CONTROL:
                q.popleft()
                self._queued -= 1
                self.dropped += 1
            q.append((ch, seq, ts, blob, trace))
            self._queued += 1
            wake = self._sleeping
            self._sleeping = False
        if wake:
            self._wake_flusher()
        if not self._up:
            self.start_soon()
        return seq

    def _check_installed(self) -> None:
        """Raise the scheduler's recent "no Foundation plugin" answer again."""
        state = self._not_installed
        if state is not None:
            if time.monotonic() - state[0] < NOT_INSTALLED_RECHECK:
                raise FoundationNotInstalledError(str(state[1]), address=self.address)
            self._not_installed = None

    def start_soon(self) -> concurrent.futures.Future:
        """Connect in the background unless connected or connecting.

        Raises
        ------
        FoundationNotInstalledError
            The scheduler answered lately that it has no Foundation plugin.
        """
        if self._not_installed is not None:
            self._check_installed()
        with self._lock:
            fut = self._start
            if fut is None or (fut.done() and not self._up):
                if self._closed:
                    raise RuntimeError(f"Channels link of {self.endpoint} is closed")
                fut = asyncio.run_coroutine_threadsafe(self._connect(), self.aloop)
                self._start = fut
        return fut

    async def started(self) -> None:
        """Wait until the link is connected (connecting if needed)."""
        if not self._up:
            await asyncio.wrap_future(self.start_soon())

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until the link is connected (from a thread off the event loop)."""
        if not self._up:
            self.start_soon().result(timeout)

    def remove_subscription(self, sub: Subscription) -> None:
        """Forget ``sub`` and tell the hub the new subscription count of its channel."""
        with self._lock:
            subs = self._subs[sub._ch]
            if sub not in subs:
                return
            subs.remove(sub)
            self._ctrl.append(("sub", -1, sub._ch, len(subs)))
            wake = self._sleeping and self._up
            self._sleeping = False
        if wake:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._wake_flusher()

    # -- event loop ---------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._up:
            return
        comm = await connect(self.address, **self.connection_args)
        try:
            # a plain Dask scheduler answers this too (no traceback in its log)
            await comm.write({"op": "get_metadata", "keys": [PLUGIN_NAME, "scheduler_plugin"],
                              "default": False})
            installed = await comm.read()
            if installed is True:
                await comm.write({"op": "foundation_channels_link", "endpoint": self.endpoint,
                                  "kind": self.kind, "token": self._token})
                hello = await comm.read()
        except BaseException:
            comm.abort()
            raise
        if installed is not True:
            comm.abort()
            exc = FoundationNotInstalledError(
                f"The scheduler at {self.address} has no Foundation plugin, so Channels (and "
                "what uses them) cannot work there. Connect with "
                f"foundation_dask.connect({self.address!r}), or install the plugins on this "
                "client's cluster with foundation_dask.install_plugins(client).",
                address=self.address,
            )
            if self._not_installed is None:
                logger.warning("Channels link %s: %s", self.endpoint, exc)
            self._not_installed = (time.monotonic(), exc)
            raise exc
        if not (isinstance(hello, dict) and hello.get("foundation_channels")):
            comm.abort()
            error = hello.get("error") if isinstance(hello, dict) else None
            raise ClusterConnectionError(
                error or f"The scheduler at {self.address} refused the Channels link of "
                f"{self.endpoint}: {hello!r}",
                address=self.address,
            )
        if self._closed:
            comm.abort()
            raise RuntimeError(f"Channels link of {self.endpoint} is closed")
        with self._lock:
            self._comm = comm
            self._up = True
            self._owed = 0
            # Subscription counts are absolute, so re-sending them is idempotent.
            self._ctrl = [("sub", -1, ch, len(s)) for ch, s in enumerate(self._subs) if s]
            self._sleeping = False
        coros = [self._flush_loop(comm), self._read_loop(comm)]
        if not self._watching:
            self._watching = True
            coros.append(self._watch_owner())
        for coro in coros:
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._wake.set()

    async def _watch_owner(self) -> None:
        """Close the link (telling the hub, which then forgets this process at once)
        when its client or worker closes; a process that is only cut off (a client
        reconnecting) keeps it, and the hub keeps its queues for the replay window."""
        while not self._closed:
            await asyncio.sleep(OWNER_CHECK_INTERVAL)
            if not self._alive():
                await self.close()
                return

    def _take(self) -> list[tuple]:
        # called with the lock held
        out: list[tuple] = []
        nbytes = 0
        for ch in PRIORITY_ORDER:
            q = self._outbox[ch]
            while q and len(out) < MAX_BATCH and nbytes < MAX_BATCH_BYTES:
                rec = q.popleft()
                nbytes += len(rec[3])
                out.append(rec)
            if len(out) >= MAX_BATCH or nbytes >= MAX_BATCH_BYTES:
                break
        self._queued -= len(out)
        return out

    async def _flush_loop(self, comm: Comm) -> None:
        unacked = self._unacked
        try:
            while self._comm is comm:
                with self._lock:
                    ctrl, self._ctrl = self._ctrl, []
                    records = self._take() if len(unacked) < WINDOW else []
                    owed, self._owed = self._owed, 0
                    if records:
                        unacked.append(records)
                    elif not (ctrl or owed):
                        self._sleeping = True
                        self._wake.clear()
                if not (ctrl or records or owed):
                    await self._wake.wait()
                    continue
                if records:
                    self.sent += len(records)
                await comm.write((owed, ctrl, records))
        except (CommClosedError, OSError) as exc:
            self._broken(comm, exc)
        except Exception as exc:
            logger.exception("Channels link %s: flusher failed", self.endpoint)
            self._broken(comm, exc)

    async def _read_loop(self, comm: Comm) -> None:
        exc: BaseException | None = None
        unacked = self._unacked
        try:
            while self._comm is comm:
                acked, acks, records = await comm.read()
                if acked:
                    with self._lock:
                        for _ in range(min(acked, len(unacked))):
                            unacked.popleft()
                    self._wake.set()
                    if self._drain_waiters:
                        self._check_drained()
                for req, ch, baseline in acks:
                    self._acknowledged(req, ch, baseline)
                if records:
                    self._dispatch(records)
                    self._owed += 1
                    self._wake.set()
        except (CommClosedError, OSError) as e:
            exc = e
        except Exception as e:
            logger.exception("Channels link %s: reader failed", self.endpoint)
            exc = e
        finally:
            self._broken(comm, exc)

    def _acknowledged(self, req: int, ch: int, baseline: list) -> None:
        """The hub took a subscription change: start the new subscription from
        ``baseline``, or (``req`` -1: the hub holds no state of this process any more)
        count what the channel's subscriptions missed meanwhile."""
        if req < 0:
            for sub in list(self._subs[ch]):
                sub._resync(baseline)
            return
        pending = self._pending_acks.pop(req, None)
        if pending is None:
            return
        fut, sub = pending
        sub._start(baseline)
        if not fut.done():
            fut.set_result(None)

    def _dispatch(self, records: tuple) -> None:
        now = time.time()
        by_ch: dict[int, list[tuple]] = {}
        for rec in records:
            lst = by_ch.get(rec[0])
            if lst is None:
                by_ch[rec[0]] = [rec]
            else:
                lst.append(rec)
        for ch, recs in by_ch.items():
            for sub in list(self._subs[ch]):
                sub._put_many(recs, now)

    def _check_drained(self) -> None:
        if self._queued == 0 and not self._unacked:
            waiters, self._drain_waiters = self._drain_waiters, []
            for fut in waiters:
                wake_future(fut)

    async def drained(self) -> None:
        """Wait until every queued message has been received by the hub."""
        while True:
            fut = self.aloop.create_future()
            self._drain_waiters.append(fut)
            self._check_drained()
            await fut
            if self._queued == 0 and not self._unacked:
                return

    def _broken(self, comm: Comm, exc: BaseException | None) -> None:
        with self._lock:
            if self._comm is not comm:
                return
            self._comm = None
            self._up = False
            # sent again first after the reconnect; the hub drops what it already has
            unacked = self._unacked
            resent = 0
            while unacked:
                batch = unacked.pop()
                resent += len(batch)
                for rec in reversed(batch):
                    self._outbox[rec[0]].appendleft(rec)
            self._queued += resent
            self.breaks += 1
        comm.abort()
        self._wake.set()
        pending, self._pending_acks = self._pending_acks, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(CommClosedError(f"Channels link to {self.address} closed"))
        if self._closed:
            return
        if not self._alive():
            # the owning client or worker is gone: so are its subscriptions
            self._shutdown()
            return
        backlog = any(self._subs) or self._queued
        logger.info(
            "Channels link %s -> %s closed (%s); %d message(s) not acknowledged are queued "
            "again%s", self.endpoint, self.address, exc, resent,
            "; reconnecting" if backlog else "",
        )
        if backlog:
            task = asyncio.ensure_future(self._reconnect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconnect(self) -> None:
        # at once first (the hub queues for this process meanwhile, within its bounds),
        # then backing off
        delay = 0.0
        while not (self._closed or self._up) and self._alive() and (
            any(self._subs) or self._queued
        ):
            await asyncio.sleep(delay)
            delay = max(delay, 0.05)
            try:
                await self.started()
            except FoundationNotInstalledError:
                return  # logged once by _connect; publishing raises it
            except Exception as exc:
                logger.info("Channels link %s: reconnect failed: %s", self.endpoint, exc)
                delay = min(delay * 2, 5.0)

    async def subscribe(self, sub: Subscription) -> None:
        """Add ``sub`` and wait until the hub has acknowledged it."""
        await self.started()
        fut = self.aloop.create_future()
        req = next(self._req)
        self._pending_acks[req] = (fut, sub)
        with self._lock:
            subs = self._subs[sub._ch]
            subs.append(sub)
            self._ctrl.append(("sub", req, sub._ch, len(subs)))
            self._sleeping = False
        self._wake.set()
        try:
            await fut
        except BaseException:
            self._pending_acks.pop(req, None)
            self.remove_subscription(sub)
            raise

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Flush briefly, then close the comm and every subscription of this process."""
        if self._closed:
            return
        if self._up and (self._queued or self._unacked):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.drained(), flush_timeout)
        comm = self._comm
        if comm is not None:
            # the hub forgets this process's state now, not when the process leaves
            with contextlib.suppress(Exception):
                await asyncio.wait_for(comm.write((self._owed, [("bye", -1, 0, 0)], [])), 1.0)
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            comm, self._comm = self._comm, None
            self._up = False
            subs = [s for lst in self._subs for s in lst]
            start = self._start
        if start is not None and not start.done():
            start.cancel()
        for sub in subs:
            sub._mark_closed()
        if comm is not None:
            comm.abort()
        self._wake.set()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for fut in [f for f, _ in self._pending_acks.values()] + self._drain_waiters:
            if not fut.done():
                fut.cancel()
        self._pending_acks.clear()
        self._drain_waiters.clear()


#: Seconds between two checks that the link's client or worker is still open.
OWNER_CHECK_INTERVAL = 0.5

_client_links: weakref.WeakKeyDictionary[distributed.Client, Link] = weakref.WeakKeyDictionary()
_client_links_lock = threading.Lock()


def client_link(client: distributed.Client) -> Link:
    """The link of ``client`` (one per client), made on first use and connected by it.

    Raises
    ------
    RuntimeError
        The client is closing or closed.
    """
    with _client_links_lock:
        link = _client_links.get(client)
        if link is not None and not link._closed:
            return link
        if client.status not in ("running", "connecting", "newly-created"):
            raise RuntimeError(f"Client {client.id} is {client.status}")
        ref = weakref.ref(client)

        def alive() -> bool:  # closing or gone; "connecting" is a client cut off
            c = ref()
            return c is not None and c.status not in ("closing", "closed")

        loop = client.loop
        if loop is None:
            raise RuntimeError(f"Client {client.id} has no event loop")
        link = Link(
            loop=loop,
            address=client.scheduler.address,
            connection_args=client.security.get_connection_args("client"),
            endpoint=client.id,
            kind="client",
            alive=alive,
        )
        _client_links[client] = link
        return link

