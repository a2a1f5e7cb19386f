"""Channels: priority publish/subscribe over Dask's comm layer.

Four channels exist, in priority order ``control`` > ``events`` > ``data`` >
``telemetry``. Any process of the cluster (a client, code running in a task or an
actor on a worker) can :meth:`Channels.broadcast` to a channel and
:meth:`Channels.subscribe` to one.

Design
------
Every process keeps one *link* to the scheduler: a dedicated comm opened with
:func:`distributed.comm.connect` and served on the scheduler by the
``foundation_channels_link`` RPC handler of :class:`ChannelHub`, which keeps reading
from it for as long as it stays open. Both directions carry the same frame::

    (acked, control, records)

``acked`` counts the record-carrying frames of the other side processed since the
last frame, ``control`` holds subscription changes ``("sub", request id, channel,
number of subscriptions of the process)`` (process -> scheduler) or the request ids
acknowledged (scheduler -> process), ``records`` the messages: ``(channel, seq,
timestamp, pickled payload, trace, dropped)`` from a publisher (``dropped``: messages of
that channel its outbox dropped since its previous record), ``(channel, publisher, seq,
timestamp, pickled payload, trace, missed)`` to a subscriber. Payloads stay pickled
bytes until a subscriber's :meth:`Subscription.get` unpickles them.

* Publishers serialise with pickle (cloudpickle when needed) in the calling thread,
  assign a per-publisher, per-channel sequence number and append to a per-process
  *outbox* with one queue per channel. A flusher coroutine on the event loop writes
  batches taken in priority order (control, events, data, telemetry). The outbox
  queues are bounded (``foundation.channels.publisher-buffer``, ``control`` excepted):
  when the scheduler cannot keep up or is unreachable, the oldest messages are dropped
  and every subscriber of the channel gets them counted as missed.
* The hub fans each batch out into one bounded queue per channel and per
  subscribing process, and a writer per process again takes batches in priority
  order.
* Each side keeps at most :data:`WINDOW` unacknowledged batches in flight, so a
  backlog waits in the priority queues rather than in first-in-first-out socket
  buffers: a ``control`` message published after a flood of ``telemetry`` overtakes
  whatever part of the flood has not been sent yet.
* Subscribers hold a bounded buffer (``foundation.channels.subscriber-buffer``); when
  it is full the oldest message is dropped and counted, in :attr:`Message.missed` of
  the next delivered message and in :attr:`Subscription.missed`. The hub's queues
  are bounded the same way and report their drops with the next message.

Messages of one publisher on one channel are delivered in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import itertools
import logging
import pickle
import reprlib
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cloudpickle
import dask.config
from dask.utils import parse_bytes, parse_timedelta
from distributed import get_worker
from distributed.comm import connect
from distributed.comm.core import CommClosedError
from distributed.core import Status

from foundation_dask import config
from foundation_dask.core._client import current_client, scheduler_call
from foundation_dask.core.plugin import PLUGIN_NAME, SchedulerExtension, WorkerExtension

if TYPE_CHECKING:
    import distributed
    from distributed import Scheduler, Worker
    from distributed.comm import Comm
    from tornado.ioloop import IOLoop

    from foundation_dask.core.plugin import FoundationSchedulerPlugin, FoundationWorkerPlugin

logger = logging.getLogger(__name__)

__all__ = [
    "CHANNELS",
    "ChannelHub",
    "Channels",
    "Message",
    "Subscription",
    "SubscriptionClosedError",
    "WorkerChannels",
]

#: The channels, in the order used on the wire.
CHANNELS: tuple[str, ...] = ("control", "events", "telemetry", "data")
_INDEX = {name: i for i, name in enumerate(CHANNELS)}
#: Index of ``control``, the channel whose messages a publisher never drops.
CONTROL = _INDEX["control"]
#: Channel indices in the order batches are filled: control, events, data, telemetry.
PRIORITY_ORDER: tuple[int, ...] = tuple(
    _INDEX[c] for c in ("control", "events", "data", "telemetry")
)
#: ``route_message`` priorities.
ROUTES = MappingProxyType({"high": "control", "normal": "events", "low": "telemetry"})

#: Unacknowledged batches a sender keeps in flight on a link.
WINDOW = 2
#: Most messages in one batch.
MAX_BATCH = 128
#: Batches stop growing past this many payload bytes (a batch holds at least one message).
MAX_BATCH_BYTES = 1 << 20

_SCHEDULER_PUBLISHER = "scheduler"


class SubscriptionClosedError(RuntimeError):
    """The subscription was closed."""


# --------------------------------------------------------------------------------------
# Validation and serialisation (publisher side, before anything is queued)
# --------------------------------------------------------------------------------------


def _channel_index(channel: str) -> int:
    try:
        return _INDEX[channel]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown channel {channel!r}; valid channels are {', '.join(CHANNELS)}."
        ) from None


def _setting(name: str) -> Any:
    """``foundation.channels.<name>`` from dask config, else the packaged default (some
    test harnesses replace the whole dask config)."""
    return dask.config.get(
        f"foundation.channels.{name}", default=config.defaults["foundation"]["channels"][name]
    )


_size_cache: tuple[Any, int] = (None, 0)


def _max_message_size() -> int:
    global _size_cache
    raw = _setting("max-message-size")
    cached_raw, value = _size_cache
    if raw != cached_raw:
        value = int(raw) if isinstance(raw, int) else int(parse_bytes(raw))
        _size_cache = (raw, value)
    return value


def _serialize(payload: Any) -> bytes:
    """Pickle ``payload``, falling back to cloudpickle for what pickle cannot do by
    reference (lambdas, classes defined in ``__main__`` or in modules registered for
    pickling by value)."""
    try:
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    else:
        if b"__main__" not in blob:
            by_value = cloudpickle.list_registry_pickle_by_value()
            if not by_value or not any(name.encode() in blob for name in by_value):
                return blob
    try:
        return cloudpickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        if blob is not None:
            return blob
        kind = type(payload)
        raise TypeError(
            f"Channels cannot serialise a message of type {kind.__module__}.{kind.__qualname__}: "
            f"{exc}. Send plain data (numbers, strings, tuples, lists, dicts, arrays) or make "
            "the object picklable (define __getstate__/__reduce__, or leave out handles such "
            "as locks, sockets, open files and clients)."
        ) from exc


def _trace_context() -> tuple | None:
    """The publisher's trace context, when tracing is in use in this process."""
    scope = sys.modules.get("foundation_dask.scope.context")
    if scope is None:
        return None
    try:
        ctx = scope.current()
    except Exception:  # tracing must never break publishing
        return None
    return None if ctx is None else tuple(ctx)


def _check_size(blob: bytes) -> None:
    limit = _max_message_size()
    if len(blob) > limit:
        raise ValueError(
            f"Message of {len(blob):,} bytes (serialised) exceeds the channel limit of "
            f"{limit:,} bytes. Send a reference instead (a key, a path, a Dask future) or "
            "raise the limit with dask config 'foundation.channels.max-message-size', e.g. "
            "dask.config.set({'foundation.channels.max-message-size': '8MiB'})."
        )


# --------------------------------------------------------------------------------------
# Messages and subscriptions
# --------------------------------------------------------------------------------------


@dataclass(repr=False)
class Message:
    """One message delivered to a subscription.

    Attributes
    ----------
    channel
        The channel it was broadcast on.
    payload
        The broadcast object (a copy, round-tripped through pickle).
    publisher
        The client id or the worker address of the publishing process
        (``"scheduler"`` for messages published by scheduler-side code).
    seq
        Sequence number of the message among those of its publisher on its channel,
        starting at 0; a gap means messages were dropped (see ``missed``).
    timestamp
        ``time.time()`` in the publishing process when it was broadcast.
    missed
        How many messages this subscription dropped right before this one (0 normally).
    received
        ``time.time()`` in the subscribing process when the message reached it.
    trace
        ``(trace_id, span_id)`` of the publisher's trace context when it broadcast
        inside a :mod:`foundation_dask.scope` trace, else ``None``.
    """

    channel: str
    payload: Any
    publisher: str
    seq: int
    timestamp: float
    missed: int = 0
    received: float = 0.0
    trace: tuple | None = None

    def __repr__(self) -> str:
        missed = f", missed={self.missed}" if self.missed else ""
        return (
            f"Message(channel={self.channel!r}, seq={self.seq}, publisher={self.publisher!r}"
            f"{missed}, payload={reprlib.repr(self.payload)})"
        )


def _wake_future(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Subscription:
    """The messages of one channel, as received by this process.

    Returned by :meth:`Channels.subscribe`. Holds at most ``buffer`` messages; when
    full, the oldest is dropped and counted in :attr:`missed` and in the ``missed``
    field of the next message returned. A subscription stays active until
    :meth:`close` is called (also on leaving a ``with`` block).

    Attributes
    ----------
    channel
        The subscribed channel.
    buffer_size
        Capacity of the buffer.
    missed
        Total number of messages dropped for this subscription so far.
    received
        Number of messages that reached this subscription (delivered or dropped
        locally).
    """

    def __init__(
        self,
        channel: str,
        link: _Link,
        buffer_size: int,
        handler: Callable[[Message], Any] | None = None,
    ):
        self.channel = channel
        self._ch = _INDEX[channel]
        self._link = link
        self.buffer_size = buffer_size
        self.missed = 0
        self._pending_missed = 0
        self._buf: deque[tuple[tuple, float]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._async_waiters: list[asyncio.Future] = []
        self._closed = False
        self._handler = handler
        self._thread: threading.Thread | None = None
        self.received = 0

    # -- delivery (event loop of the link) --------------------------------------------

    def _put_many(self, records: list[tuple], received: float) -> None:
        with self._cond:
            if self._closed:
                return
            buf = self._buf
            limit = self.buffer_size
            for rec in records:
                if rec[6]:
                    self.missed += rec[6]
                if len(buf) >= limit:
                    old, _ = buf.popleft()
                    self._pending_missed += old[6] + 1
                    self.missed += 1
                buf.append((rec, received))
            self.received += len(records)
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for fut in waiters:
            loop = fut.get_loop()
            if loop is self._link.aloop:
                _wake_future(fut)
            else:
                loop.call_soon_threadsafe(_wake_future, fut)

    def _pop(self) -> tuple[tuple, int, float] | None:
        # called with the lock held
        if not self._buf:
            return None
        rec, received = self._buf.popleft()
        missed = self._pending_missed + rec[6]
        self._pending_missed = 0
        return rec, missed, received

    def _take(self) -> tuple[tuple, int, float] | None:
        """The next buffered item, or ``None`` (called with the lock held).

        Raises
        ------
        SubscriptionClosedError
            When the subscription is closed.
        """
        if self._closed:
            raise SubscriptionClosedError(f"Subscription to channel {self.channel!r} is closed")
        return self._pop()

    def _timed_out(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"No message on channel {self.channel!r} within {timeout}s")

    def _remaining(self, deadline: float | None, now: float,
                   timeout: float | None) -> float | None:
        """Seconds from ``now`` to ``deadline`` (``None``: no deadline, wait without end).

        Raises
        ------
        TimeoutError
            When the deadline has passed (``timeout`` is the one the caller gave).
        """
        if deadline is None:
            return None
        remaining = deadline - now
        if remaining <= 0:
            raise self._timed_out(timeout)
        return remaining

    def _message(self, item: tuple[tuple, int, float]) -> Message:
        rec, missed, received = item
        ch, publisher, seq, ts, blob, trace = rec[:6]
        try:
            payload = pickle.loads(blob)
        except Exception as exc:
            raise RuntimeError(
                f"Cannot deserialise message {seq} of {publisher!r} on channel "
                f"{self.channel!r} ({len(blob)} bytes): {exc!r}. Make the classes it uses "
                "importable in this process."
            ) from exc
        return Message(
            CHANNELS[ch], payload, publisher, seq, ts, missed, received,
            tuple(trace) if trace else None,
        )

    # -- consuming ----------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Message:
        """Wait for and return the next message.

        Parameters
        ----------
        timeout
            Seconds to wait; ``None`` waits until a message arrives or the
            subscription is closed.

        Returns
        -------
        Message

        Raises
        ------
        TimeoutError
            When nothing arrives within ``timeout`` seconds.
        SubscriptionClosedError
            When the subscription is (or gets) closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (item := self._take()) is None:
                self._cond.wait(self._remaining(deadline, time.monotonic(), timeout))
        return self._message(item)

    async def aget(self, timeout: float | None = None) -> Message:
        """Asynchronous :meth:`get`, for use on an event loop.

        Parameters
        ----------
        timeout
            Seconds to wait; ``None`` waits until a message arrives.

        Returns
        -------
        Message
            The next message, as :meth:`get` returns it.

        Raises
        ------
        TimeoutError
            When nothing arrives within ``timeout`` seconds (by the loop's clock).
        SubscriptionClosedError
            When the subscription is (or gets) closed.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._cond:
                item = self._take()
                if item is None:
                    fut = loop.create_future()
                    self._async_waiters.append(fut)
            if item is not None:
                return self._message(item)
            try:
                await asyncio.wait_for(fut, self._remaining(deadline, loop.time(), timeout))
            except (TimeoutError, asyncio.TimeoutError):
                with self._cond:
                    item = self._pop()
                if item is not None:
                    return self._message(item)
                raise self._timed_out(timeout) from None

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        try:
            return self.get()
        except SubscriptionClosedError:
            raise StopIteration from None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.aget()
        except SubscriptionClosedError:
            raise StopAsyncIteration from None

    @property
    def buffered(self) -> int:
        """Number of messages waiting in the buffer."""
        return len(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- handler ------------------------------------------------------------------------

    def _start_handler(self) -> None:
        if self._handler is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run_handler, name=f"foundation-channels-{self.channel}", daemon=True
        )
        self._thread.start()

    def _run_handler(self) -> None:
        handler = self._handler
        assert handler is not None
        while True:
            try:
                msg = self.get()
            except SubscriptionClosedError:
                return
            except Exception:
                logger.exception("Channels: cannot deliver a message on %r", self.channel)
                continue
            try:
                handler(msg)
            except Exception:
                logger.exception(
                    "Channels: handler %r failed on %r", getattr(handler, "__name__", handler), msg
                )

    # -- closing ------------------------------------------------------------------------

    def _mark_closed(self) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._buf.clear()
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for fut in waiters:
            with contextlib.suppress(RuntimeError):  # loop closed
                fut.get_loop().call_soon_threadsafe(_wake_future, fut)
        return True

    def close(self) -> None:
        """Stop receiving; drop buffered messages and wake any waiting :meth:`get`.

        Idempotent. Also stops the ``handler`` thread (waiting for a running handler
        call to return when called from another thread).
        """
        if not self._mark_closed():
            return
        self._link.remove_subscription(self)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        handler = f" handler={getattr(self._handler, '__name__', self._handler)!r}" if (
            self._handler is not None
        ) else ""
        return (
            f"<Subscription channel={self.channel!r} buffered={self.buffered}/"
            f"{self.buffer_size} missed={self.missed}{handler}{state}>"
        )

    def _repr_html_(self) -> str:
        rows = [
            ("Channel", self.channel),
            ("Buffered", f"{self.buffered} / {self.buffer_size}"),
            ("Missed", str(self.missed)),
            ("Received", str(self.received)),
            ("Handler", getattr(self._handler, "__name__", repr(self._handler))
             if self._handler is not None else "none"),
            ("State", "closed" if self._closed else "open"),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return f"<div><strong>Subscription</strong><table>{body}</table></div>"


# --------------------------------------------------------------------------------------
# The per-process link to the scheduler
# --------------------------------------------------------------------------------------


class _Link:
    """One process's connection to the :class:`ChannelHub`: outbox, flusher, reader and
    the subscriptions of the process. Thread-safe entry points: :meth:`publish`,
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
        self.aloop: asyncio.AbstractEventLoop = loop.asyncio_loop  # type: ignore[attr-defined]
        self.address = address
        self.connection_args = connection_args
        self.endpoint = endpoint
        self.kind = kind
        self._alive = alive
        self._lock = threading.Lock()
        self._outbox: list[deque[tuple]] = [deque() for _ in CHANNELS]
        self._queued = 0
        self._limit = int(_setting("publisher-buffer"))
        self._dropped = [0] * len(CHANNELS)  # not yet reported to the hub
        self._ctrl: list[tuple] = []
        self._seq = [0] * len(CHANNELS)
        self._subs: list[list[Subscription]] = [[] for _ in CHANNELS]
        self._sleeping = False
        self._wake = asyncio.Event()
        self._comm: Comm | None = None
        self._up = False
        self._closed = False
        self._start: concurrent.futures.Future | None = None
        self._in_flight = 0
        self._owed = 0
        self._req = itertools.count()
        self._pending_acks: dict[int, asyncio.Future] = {}
        self._drain_waiters: list[asyncio.Future] = []
        self._tasks: set[asyncio.Task] = set()
        self.sent = 0

    def __repr__(self) -> str:
        state = "up" if self._up else ("closed" if self._closed else "down")
        return f"<Channels link {self.endpoint} -> {self.address} {state} queued={self._queued}>"

    # -- any thread ---------------------------------------------------------------------

    def in_loop(self) -> bool:
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
                self._dropped[ch] += 1
            q.append((ch, seq, ts, blob, trace))
            self._queued += 1
            wake = self._sleeping
            self._sleeping = False
        if wake:
            self._wake_flusher()
        if not self._up:
            self.start_soon()
        return seq

    def start_soon(self) -> concurrent.futures.Future:
        """Connect in the background unless connected or connecting."""
        with self._lock:
            fut = self._start
            if fut is None or (fut.done() and not self._up):
                if self._closed:
                    raise RuntimeError(f"Channels link of {self.endpoint} is closed")
                fut = asyncio.run_coroutine_threadsafe(self._connect(), self.aloop)
                self._start = fut
        return fut

    async def started(self) -> None:
        if not self._up:
            await asyncio.wrap_future(self.start_soon())

    def wait_started(self, timeout: float | None = None) -> None:
        if not self._up:
            self.start_soon().result(timeout)

    def remove_subscription(self, sub: Subscription) -> None:
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
            await comm.write(
                {"op": "foundation_channels_link", "endpoint": self.endpoint, "kind": self.kind}
            )
            hello = await comm.read()
        except BaseException:
            comm.abort()
            raise
        if not (isinstance(hello, dict) and hello.get("foundation_channels")):
            comm.abort()
            raise RuntimeError(
                f"The scheduler at {self.address} has no Foundation channels hub. Install the "
                "Foundation plugins first: foundation_dask.install_plugins(client) (done by "
                "foundation_dask.connect())."
            )
        if self._closed:
            comm.abort()
            raise RuntimeError(f"Channels link of {self.endpoint} is closed")
        with self._lock:
            self._comm = comm
            self._up = True
            self._in_flight = 0
            self._owed = 0
            # Subscription counts are absolute, so re-sending them is idempotent.
            self._ctrl = [("sub", -1, ch, len(s)) for ch, s in enumerate(self._subs) if s]
            self._sleeping = False
        for coro in (self._flush_loop(comm), self._read_loop(comm)):
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._wake.set()

    def _take(self) -> list[tuple]:
        # called with the lock held
        out: list[tuple] = []
        nbytes = 0
        for ch in PRIORITY_ORDER:
            q = self._outbox[ch]
            while q and len(out) < MAX_BATCH and nbytes < MAX_BATCH_BYTES:
                rec = q.popleft()
                nbytes += len(rec[3])
                dropped = self._dropped[ch]
                if dropped:
                    self._dropped[ch] = 0
                out.append((*rec, dropped))
            if len(out) >= MAX_BATCH or nbytes >= MAX_BATCH_BYTES:
                break
        self._queued -= len(out)
        return out

    async def _flush_loop(self, comm: Comm) -> None:
        try:
            while self._comm is comm:
                with self._lock:
                    ctrl, self._ctrl = self._ctrl, []
                    records = self._take() if self._in_flight < WINDOW else []
                    owed, self._owed = self._owed, 0
                    if not (ctrl or records or owed):
                        self._sleeping = True
                        self._wake.clear()
                if not (ctrl or records or owed):
                    await self._wake.wait()
                    continue
                if records:
                    self._in_flight += 1
                    self.sent += len(records)
                await comm.write((owed, ctrl, records))
        except (CommClosedError, OSError) as exc:
            self._broken(comm, exc)
        except Exception as exc:
            logger.exception("Channels link %s: flusher failed", self.endpoint)
            self._broken(comm, exc)

    async def _read_loop(self, comm: Comm) -> None:
        exc: BaseException | None = None
        try:
            while self._comm is comm:
                acked, acks, records = await comm.read()
                if acked:
                    self._in_flight -= acked
                    self._wake.set()
                    if self._drain_waiters:
                        self._check_drained()
                for req in acks:
                    fut = self._pending_acks.pop(req, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
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
        if self._queued == 0 and self._in_flight <= 0:
            waiters, self._drain_waiters = self._drain_waiters, []
            for fut in waiters:
                _wake_future(fut)

    async def drained(self) -> None:
        """Wait until every queued message has been received by the hub."""
        while True:
            fut = self.aloop.create_future()
            self._drain_waiters.append(fut)
            self._check_drained()
            await fut
            if self._queued == 0 and self._in_flight <= 0:
                return

    def _broken(self, comm: Comm, exc: BaseException | None) -> None:
        with self._lock:
            if self._comm is not comm:
                return
            self._comm = None
            self._up = False
            lost = self._in_flight
            self._in_flight = 0
        comm.abort()
        self._wake.set()
        pending, self._pending_acks = self._pending_acks, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(CommClosedError(f"Channels link to {self.address} closed"))
        if self._closed:
            return
        if not self._alive():
            # the owning client or worker is gone: so are its subscriptions
            self._shutdown()
            return
        pending = any(self._subs) or self._queued
        logger.log(
            logging.WARNING if lost else logging.INFO,
            "Channels link %s -> %s closed (%s); %d batch(es) were in flight%s",
            self.endpoint, self.address, exc, lost, "; reconnecting" if pending else "",
        )
        if pending:
            task = asyncio.ensure_future(self._reconnect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconnect(self) -> None:
        delay = 0.1
        while not (self._closed or self._up) and self._alive() and (
            any(self._subs) or self._queued
        ):
            await asyncio.sleep(delay)
            try:
                await self.started()
            except Exception as exc:
                logger.info("Channels link %s: reconnect failed: %s", self.endpoint, exc)
                delay = min(delay * 2, 5.0)

    async def subscribe(self, sub: Subscription) -> None:
        await self.started()
        fut = self.aloop.create_future()
        req = next(self._req)
        self._pending_acks[req] = fut
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
        if self._up and (self._queued or self._in_flight):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.drained(), flush_timeout)
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
        for fut in list(self._pending_acks.values()) + self._drain_waiters:
            if not fut.done():
                fut.cancel()
        self._pending_acks.clear()
        self._drain_waiters.clear()


_client_links: weakref.WeakKeyDictionary[distributed.Client, _Link] = weakref.WeakKeyDictionary()
_client_links_lock = threading.Lock()


def _client_link(client: distributed.Client) -> _Link:
    with _client_links_lock:
        link = _client_links.get(client)
        if link is not None and not link._closed:
            return link
        if client.status not in ("running", "connecting", "newly-created"):
            raise RuntimeError(f"Client {client.id} is {client.status}")
        ref = weakref.ref(client)

        def alive() -> bool:
            c = ref()
            return c is not None and c.status == "running"

        link = _Link(
            loop=client.loop,
            address=client.scheduler.address,
            connection_args=client.security.get_connection_args("client"),
            endpoint=client.id,
            kind="client",
            alive=alive,
        )
        _client_links[client] = link
        return link


def _worker_channels(worker: Worker) -> WorkerChannels | None:
    plugin = worker.extensions.get(PLUGIN_NAME)
    if plugin is None:
        return None
    return plugin.extensions.get("channels")


def _resolve(client: distributed.Client | None) -> _Link:
    if client is None:
        try:
            worker = get_worker()
        except ValueError:
            worker = None
        if worker is not None:
            ext = _worker_channels(worker)
            if ext is not None:
                return ext.link
        client = current_client()
    return _client_link(client)


def _connect_timeout() -> float:
    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


# --------------------------------------------------------------------------------------
# Public facade
# --------------------------------------------------------------------------------------


class Channels:
    """Priority publish/subscribe between every process of the cluster.

    ``control`` messages are delivered before queued ``events``, which go before
    ``data``, which go before ``telemetry``; messages of one publisher on one channel
    keep their order. Works from a client (blocking, or returning awaitables on an
    asynchronous client) and from code running in tasks and actors on workers, which
    use their worker's own connection to the scheduler.

    Examples
    --------
    >>> import foundation_dask as fd
    >>> fd.Channels.broadcast("control", ("start_trace", trace_id, scope))  # doctest: +SKIP
    >>> with fd.Channels.subscribe("telemetry") as sub:                     # doctest: +SKIP
    ...     msg = sub.get(timeout=1.0)
    """

    #: Channel names.
    CHANNELS: tuple[str, ...] = CHANNELS
    #: ``route_message`` priority -> channel.
    ROUTES = ROUTES

    @staticmethod
    def broadcast(
        channel: str, message: Any, *, client: distributed.Client | None = None
    ) -> int | Awaitable[int]:
        """Publish ``message`` to every subscriber of ``channel``.

        The message is validated and serialised in the calling thread, then queued in
        this process's outbox and sent in the background; the call does not wait for
        delivery (see :meth:`flush`).

        Parameters
        ----------
        channel
            One of :attr:`CHANNELS`.
        message
            Any picklable object; subscribers receive an equal copy.
        client
            Client to publish through. Default: the worker's connection inside a task
            or an actor, else the default client (see
            :func:`foundation_dask.core._client.current_client`).

        Returns
        -------
        int or awaitable
            The message's sequence number (per publisher and channel); an awaitable
            resolving to it when called on the event loop (asynchronous client).

        Raises
        ------
        ValueError
            Unknown channel, or message larger than
            ``foundation.channels.max-message-size``.
        TypeError
            The message cannot be serialised.
        """
        ch = _channel_index(channel)
        blob = _serialize(message)
        _check_size(blob)
        link = _resolve(client)
        seq = link.publish(ch, blob, _trace_context())
        if link.in_loop():

            async def _sent() -> int:
                await link.started()
                return seq

            return _sent()
        if not link._up:
            link.wait_started(_connect_timeout())
        return seq

    @staticmethod
    def subscribe(
        channel: str,
        handler: Callable[[Message], Any] | None = None,
        *,
        buffer: int | None = None,
        client: distributed.Client | None = None,
    ) -> Subscription | Awaitable[Subscription]:
        """Receive the messages broadcast to ``channel`` from now on.

        Every subscription gets every message, including several subscriptions to
        the same channel in one process.

        Parameters
        ----------
        channel
            One of :attr:`CHANNELS`.
        handler
            Optional callable, called as ``handler(message)`` for each message in a
            dedicated thread (never on the event loop); exceptions are logged.
        buffer
            Messages held before the oldest is dropped (and counted as missed).
            Default: dask config ``foundation.channels.subscriber-buffer``.
        client
            Client to subscribe through (default as in :meth:`broadcast`).

        Returns
        -------
        Subscription or awaitable
            Active once returned; an awaitable resolving to it when called on the
            event loop (asynchronous client).

        Raises
        ------
        ValueError
            Unknown channel or non-positive buffer.
        TypeError
            ``handler`` is not callable.
        """
        ch = _channel_index(channel)
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        size = int(buffer if buffer is not None else _setting("subscriber-buffer"))
        if size < 1:
            raise ValueError(f"Subscription buffer must hold at least 1 message, got {size}")
        link = _resolve(client)
        sub = Subscription(CHANNELS[ch], link, size, handler)

        async def _subscribe() -> Subscription:
            await link.subscribe(sub)
            sub._start_handler()
            return sub

        if link.in_loop():
            return _subscribe()
        return asyncio.run_coroutine_threadsafe(_subscribe(), link.aloop).result(
            _connect_timeout() + 30
        )

    @classmethod
    def route_message(
        cls,
        message: Any,
        priority: str = "normal",
        *,
        client: distributed.Client | None = None,
    ) -> int | Awaitable[int]:
        """Broadcast ``message`` on the channel of ``priority``.

        Parameters
        ----------
        message
            Any picklable object.
        priority
            ``"high"`` (``control``), ``"normal"`` (``events``) or ``"low"``
            (``telemetry``).
        client
            As in :meth:`broadcast`.

        Returns
        -------
        int or awaitable
            As :meth:`broadcast`.

        Raises
        ------
        ValueError
            Unknown priority (and the errors of :meth:`broadcast`).
        """
        try:
            channel = ROUTES[priority]
        except (KeyError, TypeError):
            raise ValueError(
                f"Unknown priority {priority!r}; use one of "
                + ", ".join(f"{p!r} ({c})" for p, c in ROUTES.items())
            ) from None
        return cls.broadcast(channel, message, client=client)

    @staticmethod
    def flush(
        timeout: float | None = 10.0, *, client: distributed.Client | None = None
    ) -> None | Awaitable[None]:
        """Wait until this process's queued messages have reached the scheduler.

        Parameters
        ----------
        timeout
            Seconds to wait at most.
        client
            As in :meth:`broadcast`.

        Raises
        ------
        TimeoutError
            When the outbox is not drained in time.
        """
        link = _resolve(client)

        async def _flush() -> None:
            try:
                await asyncio.wait_for(link.started(), timeout)
                await asyncio.wait_for(link.drained(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"Channels outbox of {link.endpoint} not drained within {timeout}s "
                    f"({link._queued} queued)"
                ) from None

        if link.in_loop():
            return _flush()
        asyncio.run_coroutine_threadsafe(_flush(), link.aloop).result()
        return None

    @staticmethod
    def info(*, client: distributed.Client | None = None) -> dict[str, Any] | Awaitable[dict]:
        """Per-channel subscriber and message counts, from the scheduler.

        Returns
        -------
        dict
            ``{"channels": {name: {"subscriptions", "processes", "messages",
            "dropped"}}, "message_count": int, "peers": {...}}``.
        """
        return scheduler_call("foundation_channels_info", client=client)


# --------------------------------------------------------------------------------------
# Scheduler side
# --------------------------------------------------------------------------------------


class _Peer:
    """A process linked to the hub, as seen by the hub."""

    __slots__ = (
        "endpoint", "kind", "comm", "queues", "missed", "subs", "acks", "owed",
        "in_flight", "wake", "closed", "task", "published", "delivered",
    )

    def __init__(self, endpoint: str, kind: str, comm: Comm):
        self.endpoint = endpoint
        self.kind = kind
        self.comm = comm
        self.queues: list[deque[tuple]] = [deque() for _ in CHANNELS]
        self.missed = [0] * len(CHANNELS)
        self.subs = [0] * len(CHANNELS)
        self.acks: list[int] = []
        self.owed = 0
        self.in_flight = 0
        self.wake = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task | None = None
        self.published = 0
        self.delivered = 0


class ChannelHub(SchedulerExtension):
    """Scheduler side of Channels: accepts links, fans messages out by priority.

    Attributes
    ----------
    message_count
        Messages received by the hub since it started.
    messages_by_channel
        The same, per channel name.
    dropped_by_channel
        Messages dropped, per channel name: from the hub's per-subscriber queues, and
        from publishers' outboxes (as the publishers report them).
    """

    name = "channels"

    def __init__(self, scheduler: Scheduler, plugin: FoundationSchedulerPlugin):
        super().__init__(scheduler, plugin)
        self.message_count = 0
        self.messages_by_channel: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        self.dropped_by_channel: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        self.peers: dict[str, _Peer] = {}
        self._subscribers: list[set[_Peer]] = [set() for _ in CHANNELS]
        self.buffer = int(_setting("subscriber-buffer"))
        self._seq = [0] * len(CHANNELS)
        self.started = time.time()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_channels_link": self.link,
            "foundation_channels_info": self.info,
        }

    # -- links --------------------------------------------------------------------------

    async def link(self, comm: Comm, endpoint: str, kind: str = "client") -> Status:
        """Serve the link of one process until it closes."""
        old = self.peers.get(endpoint)
        if old is not None:
            self._drop(old)
        peer = _Peer(endpoint, kind, comm)
        self.peers[endpoint] = peer
        try:
            await comm.write({"foundation_channels": 1})
            peer.task = asyncio.ensure_future(self._write_loop(peer))
            while not peer.closed:
                acked, ctrl, records = await comm.read()
                if acked:
                    peer.in_flight -= acked
                    peer.wake.set()
                for op in ctrl:
                    self._control(peer, op)
                if records:
                    self._fanout(endpoint, records)
                    peer.published += len(records)
                    peer.owed += 1
                    peer.wake.set()
        except (CommClosedError, OSError):
            pass
        except Exception:
            logger.exception("Channels link of %s failed", endpoint)
        finally:
            self._drop(peer)
        return Status.dont_reply

    def _control(self, peer: _Peer, op: tuple) -> None:
        kind, req, ch, n = op
        if kind != "sub":
            logger.warning("Channels: unknown control op %r from %s", op, peer.endpoint)
            return
        peer.subs[ch] = n
        if n > 0:
            self._subscribers[ch].add(peer)
        else:
            self._subscribers[ch].discard(peer)
            peer.queues[ch].clear()
            peer.missed[ch] = 0
        if req >= 0:
            peer.acks.append(req)
            peer.wake.set()

    def _drop(self, peer: _Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        if self.peers.get(peer.endpoint) is peer:
            del self.peers[peer.endpoint]
        for subs in self._subscribers:
            subs.discard(peer)
        for q in peer.queues:
            q.clear()
        peer.wake.set()
        if peer.task is not None and not peer.task.done():
            peer.task.cancel()
        peer.comm.abort()

    def _fanout(self, publisher: str, records: tuple) -> None:
        counts = [0] * len(CHANNELS)
        subscribers = self._subscribers
        limit = self.buffer
        touched: set[_Peer] = set()
        for rec in records:
            ch = rec[0]
            counts[ch] += 1
            peers = subscribers[ch]
            dropped = rec[5]  # by the publisher's outbox: missed by every subscriber
            if dropped:
                self.dropped_by_channel[CHANNELS[ch]] += dropped
                for peer in peers:
                    peer.missed[ch] += dropped
            if not peers:
                continue
            out = (ch, publisher, rec[1], rec[2], rec[3], rec[4])
            for peer in peers:
                q = peer.queues[ch]
                if len(q) >= limit:
                    q.popleft()
                    peer.missed[ch] += 1
                    self.dropped_by_channel[CHANNELS[ch]] += 1
                q.append(out)
            touched.update(peers)
        self.message_count += len(records)
        by_channel = self.messages_by_channel
        for ch, n in enumerate(counts):
            if n:
                by_channel[CHANNELS[ch]] += n
        for peer in touched:
            peer.wake.set()

    def _take(self, peer: _Peer) -> list[tuple]:
        out: list[tuple] = []
        nbytes = 0
        for ch in PRIORITY_ORDER:
            q = peer.queues[ch]
            while q and len(out) < MAX_BATCH and nbytes < MAX_BATCH_BYTES:
                rec = q.popleft()
                missed = peer.missed[ch]
                if missed:
                    peer.missed[ch] = 0
                nbytes += len(rec[4])
                out.append((*rec, missed))
            if len(out) >= MAX_BATCH or nbytes >= MAX_BATCH_BYTES:
                break
        return out

    async def _write_loop(self, peer: _Peer) -> None:
        comm = peer.comm
        try:
            while not peer.closed:
                await peer.wake.wait()
                peer.wake.clear()
                while not peer.closed:
                    records = self._take(peer) if peer.in_flight < WINDOW else []
                    if not (records or peer.owed or peer.acks):
                        break
                    msg = (peer.owed, peer.acks, records)
                    peer.owed = 0
                    peer.acks = []
                    if records:
                        peer.in_flight += 1
                        peer.delivered += len(records)
                    await comm.write(msg)
        except (CommClosedError, OSError):
            self._drop(peer)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Channels: writing to %s failed", peer.endpoint)
            self._drop(peer)

    # -- scheduler-side publishing ------------------------------------------------------

    def publish(self, channel: str, message: Any) -> int:
        """Broadcast ``message`` on ``channel`` from scheduler-side code.

        Returns
        -------
        int
            The sequence number (publisher ``"scheduler"``).
        """
        ch = _channel_index(channel)
        blob = _serialize(message)
        _check_size(blob)
        seq = self._seq[ch]
        self._seq[ch] = seq + 1
        self._fanout(_SCHEDULER_PUBLISHER, ((ch, seq, time.time(), blob, _trace_context()),))
        return seq

    # -- hooks and info -----------------------------------------------------------------

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        peer = self.peers.get(worker)
        if peer is not None:
            self._drop(peer)

    def remove_client(self, client: str) -> None:
        peer = self.peers.get(client)
        if peer is not None:
            self._drop(peer)

    async def close(self) -> None:
        for peer in list(self.peers.values()):
            self._drop(peer)

    def info(self) -> dict[str, Any]:
        """Per-channel subscription and message counts."""
        channels = {}
        for ch, name in enumerate(CHANNELS):
            peers = self._subscribers[ch]
            channels[name] = {
                "subscriptions": sum(p.subs[ch] for p in peers),
                "processes": len(peers),
                "messages": self.messages_by_channel[name],
                "dropped": self.dropped_by_channel[name],
            }
        return {
            "channels": channels,
            "message_count": self.message_count,
            "since": self.started,
            "peers": {
                p.endpoint: {
                    "kind": p.kind,
                    "subscriptions": {CHANNELS[i]: n for i, n in enumerate(p.subs) if n},
                    "queued": sum(len(q) for q in p.queues),
                    "in_flight": p.in_flight,
                    "published": p.published,
                    "delivered": p.delivered,
                }
                for p in self.peers.values()
            },
        }


# --------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------


class WorkerChannels(WorkerExtension):
    """Worker side of Channels: the worker's link, shared by its tasks and actors."""

    name = "channels"

    def __init__(self, worker: Worker, plugin: FoundationWorkerPlugin):
        super().__init__(worker, plugin)
        self._link: _Link | None = None
        self._lock = threading.Lock()

    @property
    def link(self) -> _Link:
        """The worker's link to the hub (connected on first use)."""
        with self._lock:
            if self._link is None:
                worker = self.worker
                ref = weakref.ref(worker)

                def alive() -> bool:
                    w = ref()
                    return w is not None and w.status == Status.running

                self._link = _Link(
                    loop=worker.loop,
                    address=worker.scheduler.address,
                    connection_args=worker.connection_args,
                    endpoint=worker.address,
                    kind="worker",
                    alive=alive,
                )
            return self._link

    async def teardown(self) -> None:
        if self._link is not None:
            await self._link.close()
