"""Client and worker: :class:`Channels`, the public face of priority publish/subscribe.

Called from a client (blocking, or returning awaitables on an asynchronous client)
and from code running in tasks and actors on workers. Each call picks the link of its
process: the worker's own (:mod:`._worker_plugin`) inside a task or an actor, else the
link of the client it is given or of the current client (:mod:`._link`).
"""

from __future__ import annotations

import asyncio
import numbers
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dask.utils import parse_bytes
from distributed import get_worker

from foundation_dask.core._client import current_client, scheduler_call
from foundation_dask.core.channels._link import Link, client_link
from foundation_dask.core.channels._subscription import Message, Subscription
from foundation_dask.core.channels._wire import (
    CHANNELS,
    ROUTES,
    byte_setting,
    channel_index,
    check_size,
    connect_timeout,
    serialize,
    setting,
    trace_context,
)
from foundation_dask.core.plugin import extension

if TYPE_CHECKING:
    import distributed


def _resolve(client: distributed.Client | None) -> Link:
    """The link to act through: ``client``'s; without one, the worker's inside a task or
    an actor, else the current client's."""
    if client is None:
        try:
            worker = get_worker()
        except ValueError:
            worker = None
        if worker is not None:
            ext = extension(worker, "channels")
            if ext is not None:
                return ext.link
        client = current_client()
    return client_link(client)


def _positive_int(name: str, value: Any, what: str) -> int:
    """``value`` as a positive int.

    Raises
    ------
    TypeError
        Not an int (floats, strings and booleans are refused rather than rounded).
    ValueError
        Less than 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive int ({what}), got {value!r} "
            f"({type(value).__name__}); pass e.g. {name}=1000, or leave it out for the default."
        )
    if value < 1:
        raise ValueError(f"{name} must be a positive int ({what}), got {value}.")
    return int(value)


class Channels:
    """Priority publish/subscribe between every process of the cluster.

    ``control`` messages are delivered before queued ``events``, which go before
    ``data``, which go before ``telemetry``; messages of one publisher on one channel
    keep their order. Works from a client (blocking, or returning awaitables on an
    asynchronous client) and from code running in tasks and actors on workers, which
    use their worker's own connection to the scheduler.

    A namespace class, as Foundation's Channels module: its functions are static methods
    (``fd.Channels.broadcast(...)``) and it holds no state of its own (that lives in each
    process's link).

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
        delivery (see :meth:`flush`). A message sent while the link is broken, or not yet
        acknowledged when it broke, is sent (again) after the reconnect; subscribers get
        it once.

        Parameters
        ----------
        channel
            One of :attr:`CHANNELS`.
        message
            Any picklable object; subscribers receive an equal copy.
        client
            Client to publish through. Default: the worker's connection inside a task
            or an actor, else the current client (``distributed.get_client()``; without
            one, connects with :func:`foundation_dask.connect`).

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
        FoundationNotInstalledError
            The scheduler has no Foundation plugin (connect with
            :func:`foundation_dask.connect`, or call
            :func:`foundation_dask.install_plugins`).
        ClusterConnectionError
            The scheduler refused the link (its id is held by another live connection).
        """
        ch = channel_index(channel)
        blob = serialize(message)
        check_size(blob)
        link = _resolve(client)
        seq = link.publish(ch, blob, trace_context())
        if link.in_loop():

            async def _sent() -> int:
                await link.started()
                return seq

            return _sent()
        if not link._up:
            link.wait_started(connect_timeout())
        return seq

    @staticmethod
    def subscribe(
        channel: str,
        handler: Callable[[Message], Any] | None = None,
        *,
        buffer: int | None = None,
        buffer_bytes: int | str | None = None,
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
            Messages held before the oldest is dropped (and counted as missed), a
            positive int. Default: dask config ``foundation.channels.subscriber-buffer``.
        buffer_bytes
            Bytes of serialised payloads held before the oldest messages are dropped
            (and counted as missed; never ``control`` ones), a positive int or a size
            such as ``"16MiB"``. Default: dask config
            ``foundation.channels.subscriber-buffer-bytes``.
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
            Unknown channel, or ``buffer`` / ``buffer_bytes`` less than 1.
        TypeError
            ``handler`` is not callable, or ``buffer`` / ``buffer_bytes`` is not an int.
        FoundationNotInstalledError
            The scheduler has no Foundation plugin (connect with
            :func:`foundation_dask.connect`).
        """
        ch = channel_index(channel)
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        size = _positive_int(
            "buffer", setting("subscriber-buffer") if buffer is None else buffer,
            "messages held before the oldest is dropped",
        )
        if buffer_bytes is None:
            nbytes = byte_setting("subscriber-buffer-bytes")
        else:
            if isinstance(buffer_bytes, str):
                try:
                    buffer_bytes = parse_bytes(buffer_bytes)
                except ValueError:
                    raise ValueError(
                        f"buffer_bytes must be a positive int or a size such as '16MiB', "
                        f"got {buffer_bytes!r}."
                    ) from None
            nbytes = _positive_int(
                "buffer_bytes", buffer_bytes, "bytes held before the oldest are dropped"
            )
        link = _resolve(client)
        sub = Subscription(CHANNELS[ch], link, size, handler, nbytes)

        async def _subscribe() -> Subscription:
            await link.subscribe(sub)
            sub._start_handler()
            return sub

        if link.in_loop():
            return _subscribe()
        return asyncio.run_coroutine_threadsafe(_subscribe(), link.aloop).result(
            connect_timeout() + 30
        )

    @staticmethod
    def route_message(
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
        return Channels.broadcast(channel, message, client=client)

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

        Parameters
        ----------
        client
            Client to ask through (default: the current client).

        Returns
        -------
        dict
            ``{"channels": {name: {"subscriptions", "processes", "messages",
            "dropped"}}, "message_count": int, "peers": {...}}``.
        """
        return scheduler_call("foundation_channels_info", client=client)
