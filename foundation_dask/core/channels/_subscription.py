"""Client and worker: the receiving end of a channel, :class:`Subscription`, and the
:class:`Message` it returns.

A subscription belongs to one process's link (:mod:`._link`), which fills its bounded
buffer from the event loop; consumers take messages in any thread (:meth:`~Subscription.get`,
iteration, a ``handler`` thread) or on an event loop (:meth:`~Subscription.aget`,
``async for``). Payloads are unpickled only when taken.

A subscription keeps, per publisher, the sequence number of the last message that
reached it: a message it already has (sent again after a link break) is dropped, and
a gap (messages a full buffer dropped, at the publisher, at the scheduler or here) is
counted in :attr:`Subscription.missed`, each message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import reprlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foundation_dask._html import html_repr
from foundation_dask.core.channels._wire import CHANNELS, CONTROL, INDEX
from foundation_dask.errors import SubscriptionClosedError

if TYPE_CHECKING:
    from foundation_dask.core.channels._link import Link

logger = logging.getLogger("foundation_dask.core.channels")


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
        How many messages this subscription missed right before this one (0 normally):
        messages of the same publisher on the channel that never reached it (dropped by
        a full buffer at the publisher or the scheduler), and messages of any publisher
        its own full buffer dropped.
    received
        ``time.time()`` in the subscribing process when the message reached it.
    trace
        ``(trace_id, span_id)`` of the publisher's trace context when it broadcast
        inside an ElixirScope trace, else ``None``.
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


def wake_future(fut: asyncio.Future) -> None:
    """Resolve ``fut`` unless it is done (on its loop)."""
    if not fut.done():
        fut.set_result(None)


class Subscription:
    """The messages of one channel, as received by this process.

    Returned by :meth:`Channels.subscribe`. Holds at most ``buffer`` messages and
    ``buffer_bytes`` bytes of serialised payloads; beyond either, the oldest are
    dropped and counted in :attr:`missed` and in the ``missed`` field of the next
    message returned (``control`` messages are never dropped for the byte bound).
    Messages of one publisher arrive once each and in order, also across breaks of
    the link. A subscription stays active until :meth:`close` is called (also on
    leaving a ``with`` block).

    Attributes
    ----------
    channel
        The subscribed channel.
    buffer_size
        Capacity of the buffer, in messages.
    buffer_bytes
        Capacity of the buffer, in bytes of serialised payloads.
    missed
        Total number of messages this subscription missed so far: every message
        broadcast on its channel while it was active that it did not receive, or
        received and dropped from its full buffer.
    received
        Number of messages that reached this subscription (delivered or dropped
        locally).
    """

    def __init__(
        self,
        channel: str,
        link: Link,
        buffer_size: int,
        handler: Callable[[Message], Any] | None = None,
        buffer_bytes: int = 64 << 20,
    ):
        self.channel = channel
        self._ch = INDEX[channel]
        self._link = link
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.missed = 0
        self._pending_missed = 0
        # (record, time received, messages of its publisher missed right before it)
        self._buf: deque[tuple[tuple, float, int]] = deque()
        self._nbytes = 0
        # (publisher, incarnation) -> last sequence number that reached this subscription;
        # None until the hub has acknowledged it (what arrives before is not for it)
        self._last: dict[tuple[str, int], int] | None = None
        self._cond = threading.Condition(threading.Lock())
        self._async_waiters: list[asyncio.Future] = []
        self._closed = False
        self._handler = handler
        self._thread: threading.Thread | None = None
        self.received = 0

    # -- delivery (event loop of the link) --------------------------------------------

    def _start(self, baseline: list) -> None:
        """Start receiving from where each publisher stood when the hub took it."""
        with self._cond:
            self._last = {(pub, inc): seq for pub, inc, seq in baseline}

    def _resync(self, baseline: list) -> None:
        """The hub starts afresh for this process: count what each publisher this
        subscription heard from sent meanwhile that never came."""
        with self._cond:
            last = self._last
            if last is None:
                return
            for pub, inc, seq in baseline:
                key = (pub, inc)
                prev = last.get(key)
                if prev is None:
                    last[key] = seq
                elif seq > prev:
                    self.missed += seq - prev
                    self._pending_missed += seq - prev
                    last[key] = seq

    def _put_many(self, records: list[tuple], received: float) -> None:
        with self._cond:
            last = self._last
            if self._closed or last is None:
                return
            buf = self._buf
            limit, limit_bytes = self.buffer_size, self.buffer_bytes
            control = self._ch == CONTROL
            n = 0
            for rec in records:
                key = (rec[1], rec[6])
                seq = rec[2]
                prev = last.get(key, -1)
                if seq <= prev:
                    continue  # already here: sent again after a link break
                last[key] = seq
                blob = rec[4]
                if not blob:  # a gap marker (MARKER): the hub dropped up to seq
                    gap = seq - prev
                    self.missed += gap
                    self._pending_missed += gap
                    continue
                gap = seq - prev - 1
                if gap:
                    self.missed += gap
                n += 1
                buf.append((rec, received, gap))
                self._nbytes += len(blob)
                while len(buf) > limit or (
                    self._nbytes > limit_bytes and len(buf) > 1 and not control
                ):
                    old, _, old_gap = buf.popleft()
                    self._nbytes -= len(old[4])
                    self._pending_missed += old_gap + 1
                    self.missed += 1
            if not n:
                return
            self.received += n
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for fut in waiters:
            loop = fut.get_loop()
            if loop is self._link.aloop:
                wake_future(fut)
            else:
                loop.call_soon_threadsafe(wake_future, fut)

    def _pop(self) -> tuple[tuple, int, float] | None:
        # called with the lock held
        if not self._buf:
            return None
        rec, received, gap = self._buf.popleft()
        self._nbytes -= len(rec[4])
        missed = self._pending_missed + gap
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
            raise SubscriptionClosedError(
                f"Subscription to channel {self.channel!r} is closed", channel=self.channel
            )
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

    @property
    def buffered_bytes(self) -> int:
        """Bytes of serialised payloads waiting in the buffer."""
        return self._nbytes

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
            self._nbytes = 0
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for fut in waiters:
            with contextlib.suppress(RuntimeError):  # loop closed
                fut.get_loop().call_soon_threadsafe(wake_future, fut)
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
        handler = self._handler
        return html_repr(repr(self), "Subscription", fields=[
            ("Channel", self.channel),
            ("Buffered", f"{self.buffered} / {self.buffer_size}"),
            ("Buffered bytes", f"{self._nbytes:,} / {self.buffer_bytes:,}"),
            ("Missed", self.missed),
            ("Received", self.received),
            ("Handler", "none" if handler is None else getattr(handler, "__name__", repr(handler))),
            ("State", "closed" if self._closed else "open"),
        ])
