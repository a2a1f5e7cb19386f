"""Scheduler: :class:`ChannelHub`, which serves every process's link and fans messages
out by priority.

The hub accepts links (the ``foundation_channels_link`` handler) and keeps reading each
one for as long as it stays open. It fans every batch out into one bounded queue per
channel and per subscribing process, and a writer per process takes batches from them
in priority order, with at most :data:`~._wire.WINDOW` unacknowledged in flight, so a
backlog waits in the priority queues rather than in the socket. A full queue drops its
oldest message and reports the drop with the next message of that channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError
from distributed.core import Status

from foundation_dask.core.channels._wire import (
    CHANNELS,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    PRIORITY_ORDER,
    SCHEDULER_PUBLISHER,
    WINDOW,
    channel_index,
    check_size,
    serialize,
    setting,
    trace_context,
)
from foundation_dask.core.plugin import SchedulerExtension

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.comm import Comm

    from foundation_dask.core.plugin import FoundationSchedulerPlugin

logger = logging.getLogger("foundation_dask.core.channels")


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
        self.buffer = int(setting("subscriber-buffer"))
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
        ch = channel_index(channel)
        blob = serialize(message)
        check_size(blob)
        seq = self._seq[ch]
        self._seq[ch] = seq + 1
        self._fanout(SCHEDULER_PUBLISHER, ((ch, seq, time.time(), blob, trace_context()),))
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
