"""Scheduler: :class:`ChannelHub`, which serves every process's link and fans messages
out by priority.

The hub accepts links (the ``foundation_channels_link`` handler) and keeps reading each
one for as long as it stays open. It fans every batch out into one bounded queue per
channel and per subscribing process, and a writer per process takes batches from them
in priority order, with at most :data:`~._wire.WINDOW` unacknowledged in flight, so a
backlog waits in the priority queues rather than in the socket.

Nothing is lost across a link break: the state of a process (its queues, its batches
not yet acknowledged, its subscriptions) outlives the comm and is resumed when the
process links again with the same token; unacknowledged batches go back to the front
of their priority queues, so ``control`` stays ahead of ``telemetry`` while they are
sent again. Records a publisher sends twice are dropped by its sequence numbers. A
full queue (``foundation.channels.subscriber-buffer`` messages or
``subscriber-buffer-bytes`` bytes; ``control`` is never dropped) drops its oldest
records and tells the subscriber with a gap marker, from which it counts them as
missed. The state of a process goes when the process closes its link, when a new link
of the process (another token) replaces a broken one, or
``foundation.channels.replay-window`` after the scheduler removed the client or worker
without the process linking again (a partition longer than Dask's TCP timeout, a
client that reconnects): within the window the process gets all it missed; after it,
the messages queued for it are gone and its subscriptions count them as missed from
the publishers' sequence numbers. A link id is bound to the comm that holds it: a second link
under the id of a live one is refused, and the live one stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask.utils import parse_timedelta
from distributed.comm.core import CommClosedError
from distributed.core import Status

from foundation_dask.core.channels._wire import (
    CHANNELS,
    CONTROL,
    MARKER,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    PRIORITY_ORDER,
    SCHEDULER_PUBLISHER,
    WINDOW,
    byte_setting,
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


def incarnation(token: str) -> int:
    """The public number of a link token, carried with the records of its publisher so
    that subscribers tell two incarnations of one endpoint apart (the token itself, which
    resumes a link, is never sent to other processes)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=6).digest(), "big")


class _Peer:
    """A process linked to the hub, as seen by the hub; outlives its comm."""

    __slots__ = (
        "endpoint", "kind", "token", "inc", "comm", "queues", "nbytes", "skips", "subs",
        "acks", "owed", "unacked", "wake", "closed", "task", "published", "delivered",
        "dropped", "breaks", "expiry",
    )

    def __init__(self, endpoint: str, kind: str, token: str):
        self.endpoint = endpoint
        self.kind = kind
        self.token = token
        self.inc = incarnation(token)
        self.comm: Comm | None = None
        self.queues: list[deque[tuple]] = [deque() for _ in CHANNELS]
        self.nbytes = [0] * len(CHANNELS)
        # per channel: (publisher, incarnation) -> highest sequence number dropped and not
        # yet told to the process
        self.skips: list[dict[tuple[str, int], int]] = [{} for _ in CHANNELS]
        self.subs = [0] * len(CHANNELS)
        self.acks: list[tuple] = []
        self.owed = 0
        self.unacked: deque[list[tuple]] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task | None = None
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.breaks = 0
        self.expiry: asyncio.TimerHandle | None = None


class ChannelHub(SchedulerExtension):
    """Scheduler side of Channels: accepts links, fans messages out by priority.

    Attributes
    ----------
    message_count
        Messages received by the hub since it started (each once, however often its
        publisher sent it).
    messages_by_channel
        The same, per channel name.
    dropped_by_channel
        Messages dropped, per channel name: from the hub's per-subscriber queues, and
        from publishers' outboxes (the gaps in their sequence numbers).
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
        self.buffer_bytes = byte_setting("subscriber-buffer-bytes")
        # per channel: (publisher, incarnation) -> highest sequence number received
        self._received: list[dict[tuple[str, int], int]] = [{} for _ in CHANNELS]
        self._seq = [0] * len(CHANNELS)
        self.started = time.time()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "foundation_channels_link": self.link,
            "foundation_channels_info": self.info,
        }

    # -- links --------------------------------------------------------------------------

    async def link(
        self, comm: Comm, endpoint: str, kind: str = "client", token: str = ""
    ) -> Status:
        """Serve the link of one process until it closes."""
        peer = self.peers.get(endpoint)
        if peer is not None and peer.token != token:
            if peer.comm is not None and not peer.comm.closed():
                error = (
                    f"Channels link {endpoint!r} is held by another connection "
                    f"({peer.comm.peer_address}); this one ({comm.peer_address}) is refused. "
                    "A link id belongs to the connection that opened it: link each client "
                    "with its own id (every distributed.Client has one)."
                )
                logger.warning("Channels: %s", error)
                await comm.write({"foundation_channels": 0, "error": error})
                return Status.dont_reply
            self._drop(peer)  # a new link of the process replaces its broken one
            peer = None
        resumed = peer is not None
        if peer is None:
            peer = _Peer(endpoint, kind, token)
            self.peers[endpoint] = peer
        else:
            self._detach(peer)  # its own reconnect: an older comm goes
            if peer.expiry is not None:  # back within the replay window
                peer.expiry.cancel()
                peer.expiry = None
        peer.comm = comm
        peer.owed = 0
        try:
            await comm.write({"foundation_channels": 1, "resumed": resumed})
            peer.task = asyncio.ensure_future(self._write_loop(peer, comm))
            peer.wake.set()
            while peer.comm is comm:
                acked, ctrl, records = await comm.read()
                if acked:
                    unacked = peer.unacked
                    for _ in range(min(acked, len(unacked))):
                        unacked.popleft()
                    peer.wake.set()
                for op in ctrl:
                    self._control(peer, op)
                if records:
                    peer.published += self._fanout(endpoint, peer.inc, records)
                    peer.owed += 1
                    peer.wake.set()
        except (CommClosedError, OSError):
            pass
        except Exception:
            logger.exception("Channels link of %s failed", endpoint)
        finally:
            self._detach(peer, comm)
        return Status.dont_reply

    def _control(self, peer: _Peer, op: tuple) -> None:
        kind = op[0]
        if kind == "bye":
            self._drop(peer)
            return
        if kind != "sub":
            logger.warning("Channels: unknown control op %r from %s", op, peer.endpoint)
            return
        _, req, ch, n = op
        prev = peer.subs[ch]
        peer.subs[ch] = n
        if n > 0:
            self._subscribers[ch].add(peer)
        else:
            self._subscribers[ch].discard(peer)
            peer.queues[ch].clear()
            peer.nbytes[ch] = 0
            peer.skips[ch].clear()
        if req >= 0 or (prev == 0 and n > 0):
            # where each publisher stands: the subscription counts gaps from there
            baseline = [(pub, inc, seq) for (pub, inc), seq in self._received[ch].items()]
            peer.acks.append((req, ch, baseline if n > 0 else []))
            peer.wake.set()

    def _detach(self, peer: _Peer, comm: Comm | None = None) -> None:
        """Forget the comm of ``peer`` (only if it is ``comm``, when given); its batches
        not acknowledged go back to the front of their queues."""
        old = peer.comm
        if old is None or (comm is not None and old is not comm):
            return
        peer.comm = None
        peer.breaks += 1
        unacked = peer.unacked
        while unacked:
            batch = unacked.pop()
            for rec in reversed(batch):
                ch = rec[0]
                peer.queues[ch].appendleft(rec)
                peer.nbytes[ch] += len(rec[4])
        for ch in range(len(CHANNELS)):
            if peer.queues[ch]:
                self._trim(peer, ch)
        task = peer.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        peer.task = None
        old.abort()

    def _drop(self, peer: _Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        if peer.expiry is not None:
            peer.expiry.cancel()
            peer.expiry = None
        if self.peers.get(peer.endpoint) is peer:
            del self.peers[peer.endpoint]
        for subs in self._subscribers:
            subs.discard(peer)
        for q in peer.queues:
            q.clear()
        peer.unacked.clear()
        comm, peer.comm = peer.comm, None
        peer.wake.set()
        if peer.task is not None and not peer.task.done():
            peer.task.cancel()
        if comm is not None:
            comm.abort()

    def _trim(self, peer: _Peer, ch: int) -> None:
        """Drop the oldest records of queue ``ch`` beyond its bounds (``control`` is
        never dropped), remembering for the gap markers where each publisher stands."""
        if ch == CONTROL:
            return
        q = peer.queues[ch]
        limit, limit_bytes = self.buffer, self.buffer_bytes
        skips = peer.skips[ch]
        n = 0
        while len(q) > limit or (peer.nbytes[ch] > limit_bytes and len(q) > 1):
            old = q.popleft()
            peer.nbytes[ch] -= len(old[4])
            key = (old[1], old[6])
            if skips.get(key, -1) < old[2]:
                skips[key] = old[2]
            if old[4]:  # a gap marker carries no message of its own
                n += 1
        if n:
            peer.dropped += n
            self.dropped_by_channel[CHANNELS[ch]] += n

    def _fanout(self, publisher: str, inc: int, records: tuple) -> int:
        """Queue ``records`` of ``publisher`` for every subscriber; returns how many were
        new (records sent again after a link break are dropped here)."""
        counts = [0] * len(CHANNELS)
        subscribers = self._subscribers
        received = self._received
        limit, limit_bytes = self.buffer, self.buffer_bytes
        key = (publisher, inc)
        touched: set[_Peer] = set()
        for rec in records:
            ch, seq = rec[0], rec[1]
            last = received[ch].get(key, -1)
            if seq <= last:
                continue  # sent again after a link break: the hub has it
            if seq > last + 1:  # the publisher's outbox dropped these
                self.dropped_by_channel[CHANNELS[ch]] += seq - last - 1
            received[ch][key] = seq
            counts[ch] += 1
            peers = subscribers[ch]
            if not peers:
                continue
            blob = rec[3]
            size = len(blob)
            out = (ch, publisher, seq, rec[2], blob, rec[4], inc)
            for peer in peers:
                q = peer.queues[ch]
                q.append(out)
                peer.nbytes[ch] += size
                if len(q) > limit or peer.nbytes[ch] > limit_bytes:
                    self._trim(peer, ch)
            touched.update(peers)
        total = 0
        by_channel = self.messages_by_channel
        for ch, n in enumerate(counts):
            if n:
                by_channel[CHANNELS[ch]] += n
                total += n
        self.message_count += total
        for peer in touched:
            peer.wake.set()
        return total

    def _take(self, peer: _Peer) -> list[tuple]:
        out: list[tuple] = []
        nbytes = 0
        for ch in PRIORITY_ORDER:
            skips = peer.skips[ch]
            if skips:
                # before the queue's records: the dropped ones are older than all of them
                out.extend((ch, pub, seq, 0.0, MARKER, None, inc)
                           for (pub, inc), seq in skips.items())
                skips.clear()
            q = peer.queues[ch]
            taken = 0
            while q and len(out) < MAX_BATCH and nbytes < MAX_BATCH_BYTES:
                rec = q.popleft()
                size = len(rec[4])
                taken += size
                nbytes += size
                out.append(rec)
            peer.nbytes[ch] -= taken
            if len(out) >= MAX_BATCH or nbytes >= MAX_BATCH_BYTES:
                break
        return out

    async def _write_loop(self, peer: _Peer, comm: Comm) -> None:
        try:
            while peer.comm is comm:
                await peer.wake.wait()
                peer.wake.clear()
                while peer.comm is comm:
                    records = self._take(peer) if len(peer.unacked) < WINDOW else []
                    if not (records or peer.owed or peer.acks):
                        break
                    msg = (peer.owed, peer.acks, records)
                    peer.owed = 0
                    peer.acks = []
                    if records:
                        peer.unacked.append(records)
                        peer.delivered += len(records)
                    await comm.write(msg)
        except (CommClosedError, OSError):
            self._detach(peer, comm)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Channels: writing to %s failed", peer.endpoint)
            self._detach(peer, comm)

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
        self._fanout(SCHEDULER_PUBLISHER, 0, ((ch, seq, time.time(), blob, trace_context()),))
        return seq

    # -- hooks and info -----------------------------------------------------------------

    def _lost(self, endpoint: str) -> None:
        """The scheduler removed ``endpoint``: keep its state (a subscriber's queues, a
        publisher's sequence numbers) for the replay window, in case the process links
        again."""
        peer = self.peers.get(endpoint)
        if peer is None:
            self._forget_publisher(endpoint)
            return
        window = float(parse_timedelta(setting("replay-window"), "s") or 0)
        if window <= 0 or peer.closed:
            self._drop(peer)
            self._forget_publisher(endpoint)
            return
        if peer.expiry is None:
            peer.expiry = asyncio.get_running_loop().call_later(window, self._expire, peer)

    def _expire(self, peer: _Peer) -> None:
        peer.expiry = None
        if peer.comm is None and not peer.closed:
            logger.info("Channels: %s did not come back within the replay window; its "
                        "queued messages are dropped", peer.endpoint)
            self._drop(peer)
            self._forget_publisher(peer.endpoint)

    def _forget_publisher(self, endpoint: str) -> None:
        if endpoint in self.peers:
            return
        for received in self._received:
            for key in [k for k in received if k[0] == endpoint]:
                del received[key]

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        self._lost(worker)

    def remove_client(self, client: str) -> None:
        self._lost(client)

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
                    "linked": p.comm is not None,
                    "subscriptions": {CHANNELS[i]: n for i, n in enumerate(p.subs) if n},
                    "queued": sum(len(q) for q in p.queues),
                    "queued_bytes": sum(p.nbytes),
                    "in_flight": len(p.unacked),
                    "published": p.published,
                    "delivered": p.delivered,
                    "dropped": p.dropped,
                    "breaks": p.breaks,
                }
                for p in self.peers.values()
            },
        }
