"""Any process: what crosses a Channels link, and how a message becomes bytes.

The channel names and their wire indices, the priority order of batches, the flow
control constants, the ``route_message`` priorities, and the publisher-side steps run
before anything is queued: validation of the channel, serialisation, the size check and
the publisher's trace context.

Frames
------
Both directions of a link carry the same frame::

    (acked, control, records)

``acked`` counts the record-carrying frames of the other side processed since the
last frame (the sender keeps each such frame until it is acknowledged, and queues its
records again when the link breaks first). ``control`` holds subscription changes
``("sub", request id, channel, number of subscriptions of the process)`` and
``("bye", -1, 0, 0)`` (process -> scheduler), or ``(request id, channel, baseline)``
acknowledgements (scheduler -> process; ``baseline``: ``(publisher, incarnation,
seq)`` of the last message the hub received from each publisher of the channel).
``records`` holds the messages: ``(channel, seq, timestamp, pickled payload, trace)``
from a publisher, ``(channel, publisher, seq, timestamp, pickled payload, trace,
incarnation)`` to a subscriber, where a payload of :data:`MARKER` (no message) says
the hub dropped that publisher's messages up to ``seq``. A receiver drops what it
already has by the publisher's sequence numbers and counts the gaps as missed.
Payloads stay pickled bytes until a subscriber's :meth:`Subscription.get` unpickles
them.
"""

from __future__ import annotations

import pickle
from types import MappingProxyType
from typing import Any

import cloudpickle
import dask.config
from dask.utils import parse_bytes, parse_timedelta

from foundation_dask import config
from foundation_dask.tracecontext import current as _current_trace

#: The channels, in the order used on the wire.
CHANNELS: tuple[str, ...] = ("control", "events", "telemetry", "data")
#: Channel name -> wire index.
INDEX: dict[str, int] = {name: i for i, name in enumerate(CHANNELS)}
#: Index of ``control``, the channel whose messages a publisher never drops.
CONTROL = INDEX["control"]
#: Channel indices in the order batches are filled: control, events, data, telemetry.
PRIORITY_ORDER: tuple[int, ...] = tuple(
    INDEX[c] for c in ("control", "events", "data", "telemetry")
)
#: ``route_message`` priorities.
ROUTES = MappingProxyType({"high": "control", "normal": "events", "low": "telemetry"})

#: Unacknowledged batches a sender keeps in flight on a link.
WINDOW = 2
#: Most messages in one batch.
MAX_BATCH = 128
#: Batches stop growing past this many payload bytes (a batch holds at least one message).
MAX_BATCH_BYTES = 1 << 20

#: The payload of a gap marker (a pickle is never empty).
MARKER = b""

#: The publisher of messages broadcast by scheduler-side code.
SCHEDULER_PUBLISHER = "scheduler"


def channel_index(channel: str) -> int:
    """The wire index of ``channel``.

    Raises
    ------
    ValueError
        Unknown channel.
    """
    try:
        return INDEX[channel]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown channel {channel!r}; valid channels are {', '.join(CHANNELS)}."
        ) from None


def setting(name: str) -> Any:
    """``foundation.channels.<name>`` from dask config, else the packaged default (some
    test harnesses replace the whole dask config)."""
    return dask.config.get(
        f"foundation.channels.{name}", default=config.defaults["foundation"]["channels"][name]
    )


def byte_setting(name: str) -> int:
    """``foundation.channels.<name>`` as a number of bytes (``"64MiB"`` or an int)."""
    raw = setting(name)
    return int(raw) if isinstance(raw, int) else int(parse_bytes(raw))


def connect_timeout() -> float:
    """Seconds of dask config ``distributed.comm.timeouts.connect``."""
    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


_size_cache: tuple[Any, int] = (None, 0)


def _max_message_size() -> int:
    global _size_cache
    raw = setting("max-message-size")
    cached_raw, value = _size_cache
    if raw != cached_raw:
        value = int(raw) if isinstance(raw, int) else int(parse_bytes(raw))
        _size_cache = (raw, value)
    return value


def serialize(payload: Any) -> bytes:
    """Pickle ``payload``, falling back to cloudpickle for what pickle cannot do by
    reference (lambdas, classes defined in ``__main__`` or in modules registered for
    pickling by value).

    Raises
    ------
    TypeError
        Neither can serialise it.
    """
    fallback: bytes | None = None
    try:
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    else:
        if b"__main__" not in blob:
            by_value = cloudpickle.list_registry_pickle_by_value()
            if not by_value or not any(name.encode() in blob for name in by_value):
                return blob
        fallback = blob
    try:
        return cloudpickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        if fallback is not None:
            return fallback
        kind = type(payload)
        raise TypeError(
            f"Channels cannot serialise a message of type {kind.__module__}.{kind.__qualname__}: "
            f"{exc}. Send plain data (numbers, strings, tuples, lists, dicts, arrays) or make "
            "the object picklable (define __getstate__/__reduce__, or leave out handles such "
            "as locks, sockets, open files and clients)."
        ) from exc


def trace_context() -> tuple | None:
    """The publisher's trace context as a plain ``(trace_id, span_id)``, or ``None``
    outside any trace."""
    try:
        ctx = _current_trace()
    except Exception:  # tracing must never break publishing
        return None
    return None if ctx is None else tuple(ctx)


def check_size(blob: bytes) -> None:
    """Check a serialised message against ``foundation.channels.max-message-size``.

    Raises
    ------
    ValueError
        The message is larger.
    """
    limit = _max_message_size()
    if len(blob) > limit:
        raise ValueError(
            f"Message of {len(blob):,} bytes (serialised) exceeds the channel limit of "
            f"{limit:,} bytes. Send a reference instead (a key, a path, a Dask future) or "
            "raise the limit with dask config 'foundation.channels.max-message-size', e.g. "
            "dask.config.set({'foundation.channels.max-message-size': '8MiB'})."
        )
