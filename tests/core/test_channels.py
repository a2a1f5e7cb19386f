"""Channels: priority pub/sub between clients, tasks and the scheduler.

In-process tests use ``gen_cluster``; whatever crosses process boundaries (workers
publishing, workers subscribing, worker death) runs on a subprocess cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import pytest
from distributed import Client, Event, Variable
from distributed.utils_test import captured_logger, gen_cluster

import foundation_dask as fd
from foundation_dask.core.channels import (
    MAX_BATCH,
    WINDOW,
    Channels,
    Message,
    Subscription,
    SubscriptionClosedError,
)
from foundation_dask.core.channels._link import Link, client_link
from foundation_dask.core.plugin import extension
from foundation_dask.errors import ClusterConnectionError, FoundationNotInstalledError
from tests.support import async_wait_for, wait_for, worker_names

# Worker processes of the subprocess cluster may not be able to import this module: ship the
# functions below by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def hub_of(s):
    return extension(s, "channels")


# -- functions run in tasks on workers --------------------------------------------------------


def publish_range(channel: str, n: int, tag: str = "") -> list[int]:
    return [fd.Channels.broadcast(channel, (tag, i)) for i in range(n)]


def publish_range_together(channel: str, n: int, tag: str, event: str) -> list[int]:
    """Connect, wait for the distributed event ``event``, then publish ``n`` messages."""
    from distributed import Event

    fd.Channels.broadcast("data", "connect")
    assert Event(event).wait(timeout=60)
    return publish_range(channel, n, tag)


def collect(channel: str, n: int, timeout: float = 30.0) -> list[tuple]:
    with fd.Channels.subscribe(channel) as sub:
        msgs = [sub.get(timeout=timeout) for _ in range(n)]
    return [(m.payload, m.publisher, m.seq, m.missed) for m in msgs]


def subscribe_and_return(channels: tuple[str, ...]) -> str:
    from distributed import get_worker

    for channel in channels:
        fd.Channels.subscribe(channel)  # stays active in the worker until closed
    return get_worker().address


def control_position(n: int) -> tuple[int, list[int], int]:
    """Subscribe to telemetry and control; return how many telemetry messages arrived
    before the control message, the telemetry sequence numbers and the missed count."""
    with fd.Channels.subscribe("telemetry", buffer=2 * n) as tel, \
            fd.Channels.subscribe("control") as ctl:
        control = ctl.get(timeout=60)
        telemetry = [tel.get(timeout=60) for _ in range(n)]
        missed = tel.missed + ctl.missed
    before = sum(1 for m in telemetry if m.received < control.received)
    return before, [m.seq for m in telemetry], missed


def stall_event_loop(fifo: str, marker: str) -> None:
    """Run on a worker's event loop (``client.run``): block it until ``fifo`` is written,
    which makes the worker a subscriber that reads nothing for a while."""
    Path(marker).touch()
    with open(fifo) as f:
        f.read()


class Emitter:
    """An actor publishing from a method running in a thread and from one running on the
    worker's event loop."""

    def emit(self, n: int) -> list[int]:
        return [fd.Channels.broadcast("events", ("sync", i)) for i in range(n)]

    async def aemit(self, n: int) -> list[int]:
        return [await fd.Channels.broadcast("events", ("async", i)) for i in range(n)]

    async def alisten(self) -> Any:
        async with await fd.Channels.subscribe("control") as sub:
            await fd.Channels.broadcast("control", "ping")
            return (await sub.aget(timeout=5)).payload


def publish_until(channel: str, n: int, event: str, size: int = 0) -> int:
    """Publish ``(i, padding)`` for i = 0, 1, ... at a steady pace, at least ``n`` of
    them and on until the distributed event ``event`` is set; return how many."""
    from distributed import Event

    done = Event(event)
    pad = b"p" * size
    i = 0
    while i < n or not done.is_set():
        for _ in range(10):
            fd.Channels.broadcast(channel, (i, pad))
            i += 1
        time.sleep(0.002)  # pacing the publisher, so that the flow spans the link breaks
    fd.Channels.flush(timeout=60)
    return i


def abort_worker_link(dask_worker) -> int:
    """Run on a worker's event loop (``client.run``): abort its channel link's comm, as a
    network failure does; return how often its link broke so far."""
    link = extension(dask_worker, "channels").link
    if link._comm is not None:
        link._comm.abort()
    return link.breaks


def worker_link_breaks(dask_worker) -> int:
    """How often the worker's channel link broke so far, once it is connected again."""
    link = extension(dask_worker, "channels").link
    return link.breaks if link._up else -1


def abort_hub_links(endpoints: list[str], dask_scheduler=None) -> list[int]:
    """Run on the scheduler (``client.run_on_scheduler``): abort the comms the hub holds
    for ``endpoints``; return how often each link broke so far."""
    hub = extension(dask_scheduler, "channels")
    out = []
    for endpoint in endpoints:
        peer = hub.peers[endpoint]
        if peer.comm is not None:
            peer.comm.abort()
        out.append(peer.breaks)
    return out


def publish_sized(channel: str, n: int, size: int) -> int:
    pad = b"p" * size
    for i in range(n):
        fd.Channels.broadcast(channel, (i, pad))
    fd.Channels.flush(timeout=60)
    return n


def collect_after(channel: str, event: str, total_event: str) -> tuple[list[int], int, int]:
    """Subscribe, say so by setting the distributed event ``event``, then (once the event
    ``total_event`` is set) take messages until every one of the publisher's is there or
    counted as missed: return the sequence numbers, the total missed, the sum of the
    messages' ``missed``."""
    from distributed import Event, Variable

    with fd.Channels.subscribe(channel, buffer=100_000, buffer_bytes="1GiB") as sub:
        Event(event).set()
        assert Event(total_event).wait(timeout=120)
        total = Variable(total_event).get(timeout=10)
        seqs, reported = [], 0
        while len(seqs) + sub.missed < total:
            msg = sub.get(timeout=60)
            seqs.append(msg.seq)
            reported += msg.missed
        return seqs, sub.missed, reported


def flood_then_control(n: int) -> None:
    for i in range(n):
        fd.Channels.broadcast("telemetry", i)
    fd.Channels.broadcast("control", "stop")


# -- in-process ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_roundtrip_exact_payload_and_metadata(c, s, a, b):
    await fd.install_plugins(c)
    assert fd.Channels is Channels
    assert Channels.CHANNELS == ("control", "events", "telemetry", "data")
    payload = ("start_trace", 7, {"scope": ("a", ("b", 1.5)), "tags": {"x"}})

    sub = await fd.Channels.subscribe("control")
    try:
        assert isinstance(sub, Subscription)
        before = time.time()
        seq = await fd.Channels.broadcast("control", payload)
        msg = await sub.aget(timeout=5)
        assert isinstance(msg, Message)
        assert msg.payload == payload
        assert type(msg.payload) is tuple and type(msg.payload[2]["scope"][1]) is tuple
        assert msg.channel == "control"
        assert msg.publisher == c.id
        assert msg.seq == seq
        assert before <= msg.timestamp <= msg.received
        assert msg.missed == 0
        assert "control" in repr(msg) and "start_trace" in repr(msg)
        assert "channel='control'" in repr(sub) and "missed=0" in repr(sub)
        html = sub._repr_html_()
        assert "control" in html and "Buffered" in html and "Missed" in html

        with pytest.raises(TimeoutError, match="control"):
            await sub.aget(timeout=0.05)

        hub = hub_of(s)
        assert hub.message_count == 1
        assert hub.messages_by_channel == {"control": 1, "events": 0, "telemetry": 0, "data": 0}
    finally:
        sub.close()
    with pytest.raises(SubscriptionClosedError):
        await sub.aget(timeout=1)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_message_carries_the_publishers_trace_context(c, s, a, b):
    context = pytest.importorskip("foundation_dask.tracecontext")
    await fd.install_plugins(c)
    async with await fd.Channels.subscribe("events") as sub:
        await fd.Channels.broadcast("events", "untraced")
        token = context.attach(context.TraceContext("trace-1", 42))
        try:
            await fd.Channels.broadcast("events", "traced")
        finally:
            context.detach(token)
        untraced, traced = await sub.aget(timeout=5), await sub.aget(timeout=5)
    assert untraced.trace is None
    assert traced.trace == ("trace-1", 42)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_bad_input_sends_nothing(c, s, a, b):
    await fd.install_plugins(c)
    hub = hub_of(s)
    async with await fd.Channels.subscribe("events") as sub:
        first = await fd.Channels.broadcast("events", "first")

        with pytest.raises(ValueError, match="control, events, telemetry, data"):
            fd.Channels.broadcast("nope", 1)
        with pytest.raises(TypeError, match=r"_thread\.lock.*picklable|lock.*picklable"):
            fd.Channels.broadcast("events", threading.Lock())
        with dask.config.set({"foundation.channels.max-message-size": "1KiB"}), \
                pytest.raises(ValueError) as err:
            fd.Channels.broadcast("events", b"x" * 5000)
        text = str(err.value)
        assert "5,0" in text and "1,024" in text
        assert "foundation.channels.max-message-size" in text

        second = await fd.Channels.broadcast("events", "second")
        assert second == first + 1
        await fd.Channels.flush()
        assert hub.message_count == 2  # flush() returns once the hub has them

        m1 = await sub.aget(timeout=5)
        m2 = await sub.aget(timeout=5)
        assert (m1.payload, m2.payload) == ("first", "second")
        assert m2.seq == m1.seq + 1
        with pytest.raises(TimeoutError, match="events"):
            await sub.aget(timeout=0.2)
        assert sub.missed == 0

        # just under the limit goes through, in one piece
        big = b"y" * 1_000_000
        assert await fd.Channels.broadcast("events", big) == second + 1
        assert (await sub.aget(timeout=10)).payload == big


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_route_message(c, s, a, b):
    await fd.install_plugins(c)
    subs = {ch: await fd.Channels.subscribe(ch) for ch in ("control", "events", "telemetry")}
    try:
        await fd.Channels.route_message("h", priority="high")
        await fd.Channels.route_message("n", priority="normal")
        await fd.Channels.route_message("n2")
        await fd.Channels.route_message("l", priority="low")
        with pytest.raises(ValueError, match="urgent.*high"):
            fd.Channels.route_message("u", priority="urgent")

        assert (await subs["control"].aget(timeout=5)).payload == "h"
        assert (await subs["events"].aget(timeout=5)).payload == "n"
        assert (await subs["events"].aget(timeout=5)).payload == "n2"
        assert (await subs["telemetry"].aget(timeout=5)).payload == "l"
        for sub in subs.values():
            with pytest.raises(TimeoutError):
                await sub.aget(timeout=0.1)
    finally:
        for sub in subs.values():
            sub.close()


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_several_subscriptions_per_process_and_info(c, s, a, b):
    await fd.install_plugins(c)
    hub = hub_of(s)
    s1 = await fd.Channels.subscribe("data")
    s2 = await fd.Channels.subscribe("data")
    try:
        info = await fd.Channels.info()
        assert info["channels"]["data"]["subscriptions"] == 2
        assert info["channels"]["data"]["processes"] == 1
        for i in range(3):
            await fd.Channels.broadcast("data", i)
        assert [(await s1.aget(timeout=5)).payload for _ in range(3)] == [0, 1, 2]
        assert [(await s2.aget(timeout=5)).payload for _ in range(3)] == [0, 1, 2]

        s1.close()
        await async_wait_for(lambda: hub.info()["channels"]["data"]["subscriptions"] == 1)
        await fd.Channels.broadcast("data", 3)
        assert (await s2.aget(timeout=5)).payload == 3
        info = await c.scheduler.foundation_channels_info()
        assert info["channels"]["data"]["messages"] == 4
        assert info["message_count"] == hub.message_count == 4
    finally:
        s1.close()
        s2.close()
    await async_wait_for(lambda: hub.info()["channels"]["data"]["subscriptions"] == 0)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_handler_called_in_a_thread(c, s, a, b):
    await fd.install_plugins(c)
    seen: list[tuple[str, Any]] = []

    def handler(msg: Message) -> None:
        if msg.payload == 0:
            raise RuntimeError("a failing handler call does not stop the subscription")
        seen.append((threading.current_thread().name, msg.payload))

    sub = await fd.Channels.subscribe("events", handler=handler)
    try:
        for i in range(5):
            await fd.Channels.broadcast("events", i)
        await async_wait_for(lambda: len(seen) == 4)
        assert [p for _, p in seen] == [1, 2, 3, 4]
        names = {name for name, _ in seen}
        assert names == {"foundation-channels-events"}
        assert threading.current_thread().name not in names
        assert "handler='handler'" in repr(sub)
    finally:
        sub.close()
    assert sub._thread is not None and not sub._thread.is_alive()


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_task_publishes_through_its_worker(c, s, a, b):
    await fd.install_plugins(c)
    async with await fd.Channels.subscribe("events") as sub:
        seqs = await c.submit(publish_range, "events", 3, "t", workers=[a.address])
        msgs = []
        async for msg in sub:
            msgs.append(msg)
            if len(msgs) == 3:
                break
    assert [m.payload for m in msgs] == [("t", 0), ("t", 1), ("t", 2)]
    assert {m.publisher for m in msgs} == {a.address}
    assert [m.seq for m in msgs] == seqs == [0, 1, 2]
    assert a.address in hub_of(s).info()["peers"]


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_actor_methods_publish_and_subscribe(c, s, a, b):
    await fd.install_plugins(c)
    actor = await c.submit(Emitter, workers=[b.address], actor=True)
    async with await fd.Channels.subscribe("events") as sub:
        assert await actor.emit(2) == [0, 1]
        assert await actor.aemit(2) == [2, 3]
        msgs = [await sub.aget(timeout=5) for _ in range(4)]
    assert [m.payload for m in msgs] == [("sync", 0), ("sync", 1), ("async", 0), ("async", 1)]
    assert [m.seq for m in msgs] == [0, 1, 2, 3]
    assert {m.publisher for m in msgs} == {b.address}
    assert await actor.alisten() == "ping"


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_client_leaving_removes_its_subscriptions(c, s, a, b):
    await fd.install_plugins(c)
    hub = hub_of(s)
    c2 = await Client(s.address, asynchronous=True)
    sub = await fd.Channels.subscribe("telemetry", client=c2)
    assert hub.info()["channels"]["telemetry"]["processes"] == 1
    assert c2.id in hub.peers

    await c2.close()
    await async_wait_for(lambda: c2.id not in hub.peers)
    assert hub.info()["channels"]["telemetry"] == {
        "subscriptions": 0, "processes": 0, "messages": 0, "dropped": 0,
    }
    await async_wait_for(lambda: sub.closed)
    with pytest.raises(SubscriptionClosedError):
        await sub.aget(timeout=1)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_control_first_from_a_queued_outbox(c, s, a, b):
    """Publisher-side priority: 10k telemetry queued before the flusher runs, then one
    control message: the control message goes out first."""
    await fd.install_plugins(c)
    n = 10_000
    tel = await fd.Channels.subscribe("telemetry", buffer=2 * n)
    ctl = await fd.Channels.subscribe("control")
    try:
        # Awaiting a broadcast on a connected link does not yield to the event loop, so
        # the whole flood is queued before the flusher gets to run.
        for i in range(n):
            await fd.Channels.broadcast("telemetry", i)
        await fd.Channels.broadcast("control", "stop")
        control = await ctl.aget(timeout=10)
        telemetry = [await tel.aget(timeout=10) for _ in range(n)]
    finally:
        tel.close()
        ctl.close()
    assert control.payload == "stop"
    assert [m.payload for m in telemetry] == list(range(n))
    assert sum(m.received < control.received for m in telemetry) == 0
    assert tel.missed == 0


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_publisher_outbox_is_bounded_and_its_drops_are_counted(c, s, a, b):
    """A publisher whose outbox fills faster than it can send drops the oldest messages
    of the channel (never control ones); every subscriber gets them counted as missed."""
    await fd.install_plugins(c)
    with dask.config.set({"foundation.channels.publisher-buffer": 100}):
        tel = await fd.Channels.subscribe("telemetry", buffer=10_000)  # the link starts here
        ctl = await fd.Channels.subscribe("control")
    try:
        # the flusher cannot run before the loop is yielded: all of it queues
        for i in range(1000):
            await fd.Channels.broadcast("telemetry", i)
        for i in range(150):
            await fd.Channels.broadcast("control", i)
        control = [await ctl.aget(timeout=10) for _ in range(150)]
        telemetry = [await tel.aget(timeout=10) for _ in range(100)]
        with pytest.raises(TimeoutError):
            await tel.aget(timeout=0.2)
    finally:
        tel.close()
        ctl.close()
    assert [m.payload for m in control] == list(range(150))
    assert ctl.missed == 0
    assert [m.payload for m in telemetry] == list(range(900, 1000))
    assert telemetry[0].missed == 900 and telemetry[0].seq == 900
    assert all(m.missed == 0 for m in telemetry[1:])
    assert tel.missed == 900
    info = await fd.Channels.info()
    assert info["channels"]["telemetry"]["dropped"] == 900
    assert info["channels"]["control"]["dropped"] == 0


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_buffer_argument_is_validated(c, s, a, b):
    await fd.install_plugins(c)
    hub = hub_of(s)
    async with await fd.Channels.subscribe("events") as sub:
        for bad in ("x", 2.7, True, None.__class__):
            with pytest.raises(TypeError, match=r"buffer must be a positive int.*got"):
                fd.Channels.subscribe("events", buffer=bad)
        for bad in (0, -3):
            with pytest.raises(ValueError, match=r"buffer must be a positive int.*got -?\d"):
                fd.Channels.subscribe("events", buffer=bad)
        with pytest.raises(TypeError, match="buffer_bytes must be a positive int"):
            fd.Channels.subscribe("events", buffer_bytes=1.5)
        with pytest.raises(ValueError, match="buffer_bytes must be a positive int or a size"):
            fd.Channels.subscribe("events", buffer_bytes="lots")
        # nothing was subscribed, and what was already there keeps working
        assert hub.info()["channels"]["events"]["subscriptions"] == 1
        await fd.Channels.broadcast("events", "still")
        assert (await sub.aget(timeout=5)).payload == "still"
    sized = await fd.Channels.subscribe("events", buffer=7, buffer_bytes="3MiB")
    assert (sized.buffer_size, sized.buffer_bytes) == (7, 3 * 2**20)
    sized.close()


@pytest.mark.timeout(60)
@gen_cluster(client=True, config={"foundation.channels.subscriber-buffer-bytes": "4MiB"})
async def test_subscriber_buffer_is_bounded_in_bytes(c, s, a, b):
    """A subscription that does not read holds at most subscriber-buffer-bytes of big
    messages; the oldest go, counted exactly; control messages are never dropped."""
    await fd.install_plugins(c)
    big = 512 * 1024
    data = await fd.Channels.subscribe("data")
    ctl = await fd.Channels.subscribe("control")
    try:
        assert data.buffer_bytes == 4 * 2**20
        n = 100
        for i in range(n):
            await fd.Channels.broadcast("data", (i, b"d" * big))
        for i in range(12):
            await fd.Channels.broadcast("control", (i, b"c" * big))
        await async_wait_for(lambda: data.received == n and ctl.received == 12)
        assert data.buffered_bytes <= 4 * 2**20
        assert data.buffered == 7  # 7 * 512 KiB (plus pickle framing) fit in 4 MiB
        assert data.missed == n - data.buffered
        got = [await data.aget(timeout=5) for _ in range(data.buffered)]
        assert [m.payload[0] for m in got] == list(range(n - 7, n))
        assert got[0].missed == n - 7 and all(m.missed == 0 for m in got[1:])
        assert data.missed + len(got) == n and data.buffered_bytes == 0
        # control is kept whole, beyond the byte bound
        assert ctl.buffered == 12 and ctl.buffered_bytes > 4 * 2**20
        assert [(await ctl.aget(timeout=5)).payload[0] for _ in range(12)] == list(range(12))
        assert ctl.missed == 0
    finally:
        data.close()
        ctl.close()


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_a_link_id_belongs_to_the_comm_that_opened_it(c, s, a, b):
    """Client B opening a channel link under client A's id is refused; A's link stays."""
    await fd.install_plugins(c)
    hub = hub_of(s)
    async with await fd.Channels.subscribe("events", client=c) as sub:
        a_comm = hub.peers[c.id].comm
        b_client = await Client(s.address, asynchronous=True)
        try:
            assert b_client.loop is not None
            forged = Link(loop=b_client.loop, address=s.address,
                          connection_args=b_client.security.get_connection_args("client"),
                          endpoint=c.id, kind="client", alive=lambda: True)
            with pytest.raises(ClusterConnectionError, match="held by another connection"):
                await forged.started()
            await forged.close()
            assert hub.peers[c.id].comm is a_comm and not a_comm.closed()
            # A's link still works, in both directions, and B's own link is its own
            await fd.Channels.broadcast("events", "from A", client=c)
            await fd.Channels.broadcast("events", "from B", client=b_client)
            got = [await sub.aget(timeout=5), await sub.aget(timeout=5)]
            assert [(m.payload, m.publisher) for m in got] == [
                ("from A", c.id), ("from B", b_client.id)]
            assert sub.missed == 0
        finally:
            await b_client.close()


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_without_the_plugin_a_clear_error_and_no_scheduler_tracebacks(c, s, a, b):
    """A plain Dask cluster (no foundation_dask.connect): Channels raise
    FoundationNotInstalledError naming the fix, and the scheduler logs nothing."""
    with captured_logger("distributed.core", level=logging.WARNING) as log:
        for _ in range(20):
            with pytest.raises(FoundationNotInstalledError, match=r"foundation_dask\.connect"):
                await fd.Channels.broadcast("events", "x")
        with pytest.raises(FoundationNotInstalledError, match="install_plugins") as err:
            await fd.Channels.subscribe("events")
        assert err.value.address == s.address
        assert isinstance(err.value, RuntimeError)
    assert "foundation_channels" not in log.getvalue()
    assert "No handler" not in log.getvalue()
    # once the plugins are there, the same client publishes and subscribes
    await fd.install_plugins(c)
    link = client_link(c)
    link._not_installed = None  # what NOT_INSTALLED_RECHECK seconds do
    async with await fd.Channels.subscribe("events") as sub:
        await fd.Channels.broadcast("events", "now")
        assert (await sub.aget(timeout=5)).payload == "now"


# -- across processes ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_task_broadcasts_to_client(fd_client):
    w0 = worker_names(fd_client)["w0"]
    with fd.Channels.subscribe("telemetry") as sub:
        seqs = fd_client.submit(publish_range, "telemetry", 100, "w", workers=[w0],
                                pure=False).result(timeout=60)
        received = []
        for msg in sub:  # blocking iteration
            received.append(msg)
            if len(received) == 100:
                break
    assert [m.payload for m in received] == [("w", i) for i in range(100)]
    assert [m.seq for m in received] == seqs == list(range(100))
    assert {m.publisher for m in received} == {w0}
    assert sub.missed == 0
    info = fd.Channels.info()
    assert info["channels"]["telemetry"]["messages"] == 100


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_subscriber_receives_client_broadcasts(fd_client):
    w1 = worker_names(fd_client)["w1"]
    fut = fd_client.submit(collect, "control", 20, workers=[w1], pure=False)
    wait_for(lambda: fd.Channels.info()["channels"]["control"]["subscriptions"] == 1, 60)
    assert w1 in fd.Channels.info()["peers"]
    seqs = [fd.Channels.broadcast("control", ("cmd", i)) for i in range(20)]
    got = fut.result(timeout=60)
    assert [p for p, _, _, _ in got] == [("cmd", i) for i in range(20)]
    assert {pub for _, pub, _, _ in got} == {fd_client.id}
    assert [seq for _, _, seq, _ in got] == seqs
    assert all(missed == 0 for *_, missed in got)
    # the worker closed its subscription on leaving the ``with`` block
    wait_for(lambda: fd.Channels.info()["channels"]["control"]["subscriptions"] == 0)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_order_per_publisher_with_two_concurrent_publishers(fd_client):
    names = worker_names(fd_client)
    n = 3000
    go = Event("channels-two-publishers-go", client=fd_client)
    with fd.Channels.subscribe("events", buffer=4 * n) as sub:
        futs = [
            fd_client.submit(publish_range_together, "events", n, name, go.name,
                             workers=[addr], pure=False)
            for name, addr in names.items()
        ]
        # both publishers are connected (and waiting for the event): start them together
        wait_for(lambda: set(names.values()) <= set(fd.Channels.info()["peers"]), 60)
        go.set()
        msgs = [sub.get(timeout=30) for _ in range(2 * n)]
        for f in futs:
            f.result(timeout=60)
        assert sub.missed == 0
    by_publisher: dict[str, list[Message]] = defaultdict(list)
    for m in msgs:
        by_publisher[m.publisher].append(m)
    assert set(by_publisher) == set(names.values())
    for name, addr in names.items():
        own = by_publisher[addr]
        assert [m.payload for m in own] == [(name, i) for i in range(n)]
        assert [m.seq for m in own] == list(range(n))
    # the two publishers really ran concurrently: their messages interleave
    switches = sum(1 for i in range(1, len(msgs)) if msgs[i].publisher != msgs[i - 1].publisher)
    assert switches >= 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slow_subscriber_drops_oldest_and_counts(fd_client):
    w0 = worker_names(fd_client)["w0"]
    with dask.config.set({"foundation.channels.subscriber-buffer": 10}):
        sub = fd.Channels.subscribe("events")
    with sub:
        assert sub.buffer_size == 10
        fd_client.submit(publish_range, "events", 100, "x", workers=[w0],
                         pure=False).result(timeout=60)
        wait_for(lambda: sub.received == 100)
        assert sub.buffered == 10
        assert sub.missed == 90
        first = sub.get(timeout=5)
        assert first.payload == ("x", 90) and first.seq == 90
        assert first.missed == 90
        rest = [sub.get(timeout=5) for _ in range(9)]
        assert [m.payload for m in rest] == [("x", i) for i in range(91, 100)]
        assert all(m.missed == 0 for m in rest)
        with pytest.raises(TimeoutError, match="events"):
            sub.get(timeout=0.2)
        assert sub.missed == 90
        assert "missed=90" in repr(sub)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_control_overtakes_flood_queued_at_the_scheduler(fd_client, tmp_path):
    """Scheduler-side priority: the subscribing worker stops reading while a 10k telemetry
    flood and then a control message reach the scheduler; once it reads again, the
    control message comes before everything but the batches already in flight."""
    names = worker_names(fd_client)
    w0, w1 = names["w0"], names["w1"]
    n = 10_000
    positions = fd_client.submit(control_position, n, workers=[w1], pure=False)

    def subscribed() -> bool:
        ch = fd.Channels.info()["channels"]
        return ch["control"]["subscriptions"] == 1 and ch["telemetry"]["subscriptions"] == 1

    wait_for(subscribed, 60)
    fifo, marker = tmp_path / "release", tmp_path / "stalled"
    os.mkfifo(fifo)
    stall = threading.Thread(
        target=fd_client.run, args=(stall_event_loop, str(fifo), str(marker)),
        kwargs={"workers": [w1]}, daemon=True,
    )
    stall.start()
    try:
        wait_for(marker.exists, 30)
        fd_client.submit(flood_then_control, n, workers=[w0], pure=False).result(timeout=60)

        def all_at_hub() -> bool:
            ch = fd.Channels.info()["channels"]
            return ch["telemetry"]["messages"] == n and ch["control"]["messages"] == 1

        wait_for(all_at_hub, 30)
        queued = fd.Channels.info()["peers"][w1]["queued"]
    finally:
        with open(fifo, "w") as f:
            f.write("go")
        stall.join(30)
    before, seqs, missed = positions.result(timeout=60)
    assert missed == 0
    assert seqs == list(range(n))  # telemetry itself stays in order
    assert queued >= n + 1 - WINDOW * MAX_BATCH  # the flood waited at the scheduler
    assert before <= WINDOW * MAX_BATCH  # control overtook all of it


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_subscriptions_of_a_killed_worker_are_removed(fd_client, subprocess_cluster):
    w0 = worker_names(fd_client)["w0"]
    addr = fd_client.submit(subscribe_and_return, ("events", "control"), workers=[w0],
                            pure=False).result(timeout=60)
    assert addr == w0

    def subs() -> dict[str, int]:
        info = fd.Channels.info()
        return {ch: v["subscriptions"] for ch, v in info["channels"].items()}

    wait_for(lambda: subs()["events"] == 1 and subs()["control"] == 1, 30)
    assert w0 in fd.Channels.info()["peers"]

    subprocess_cluster.kill("w0")
    wait_for(lambda: w0 not in fd.Channels.info()["peers"], 60)
    assert subs() == {"control": 0, "events": 0, "telemetry": 0, "data": 0}
    # the hub keeps serving the others
    with fd.Channels.subscribe("events") as sub:
        fd.Channels.broadcast("events", "still here")
        assert sub.get(timeout=10).payload == "still here"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_nothing_lost_when_links_break_while_messages_flow(fd_client):
    """The comms of a subscriber's link (this client) and of a publisher's link (a
    worker) are aborted several times, from either end, while the publisher sends: every
    message arrives once, in order, and nothing is missed."""
    w0 = worker_names(fd_client)["w0"]
    done = Event("channels-breaks-done", client=fd_client)
    link = client_link(fd_client)
    with fd.Channels.subscribe("events", buffer=1_000_000) as sub:
        fut = fd_client.submit(publish_until, "events", 10_000, done.name,
                               workers=[w0], pure=False)
        wait_for(lambda: sub.received > 100, 60)
        for _ in range(3):
            # the subscriber's comm, aborted in this process
            before = link.breaks
            comm = link._comm
            if comm is not None:
                link.aloop.call_soon_threadsafe(comm.abort)
            wait_for(lambda b=before: link.breaks > b and link._up, 30)
            mark = sub.received
            wait_for(lambda m=mark: sub.received > m + 50, 60)
            # the publisher's comm, aborted in the worker
            before = fd_client.run(abort_worker_link, workers=[w0])[w0]
            wait_for(lambda b=before: fd_client.run(worker_link_breaks,
                                                    workers=[w0])[w0] > b, 30)
            mark = sub.received
            wait_for(lambda m=mark: sub.received > m + 50, 60)
            # both, aborted by the scheduler
            fd_client.run_on_scheduler(abort_hub_links, [fd_client.id, w0])
            mark = sub.received
            wait_for(lambda m=mark: sub.received > m + 50, 60)
        done.set()
        total = fut.result(timeout=120)
        msgs = [sub.get(timeout=60) for _ in range(total)]
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.5)
        assert sub.missed == 0
    assert total >= 10_000
    assert [m.seq for m in msgs] == list(range(total))
    assert [m.payload[0] for m in msgs] == list(range(total))
    assert all(m.missed == 0 for m in msgs)
    assert link.breaks >= 6
    info = fd.Channels.info()
    assert info["peers"][w0]["breaks"] >= 6
    assert info["channels"]["events"]["messages"] == total  # each once at the hub too
    assert info["channels"]["events"]["dropped"] == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_stopped_subscriber_misses_exactly_what_the_scheduler_could_not_keep(
        subprocess_cluster):
    """A subscribing worker is stopped (SIGSTOP) while 1,000 messages of 10 KiB flow to
    it: the scheduler keeps at most subscriber-buffer-bytes for it and drops the oldest;
    once it runs again (SIGCONT) it gets the newest, in order, and ``missed`` is exactly
    the number it did not get, the same the scheduler counts."""
    subprocess_cluster.env["DASK_FOUNDATION__CHANNELS__SUBSCRIBER_BUFFER_BYTES"] = "1MiB"
    subprocess_cluster.start(2)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(2, timeout=60)
    names = worker_names(client)
    w0, w1 = names["w0"], names["w1"]
    n, size = 1000, 10 * 1024
    subscribed = Event("channels-stopped-subscribed", client=client)
    total = Event("channels-stopped-total", client=client)
    fut = client.submit(collect_after, "telemetry", subscribed.name, total.name,
                        workers=[w1], pure=False)
    assert subscribed.wait(timeout=60)
    proc = subprocess_cluster.workers["w1"]
    proc.send_signal(signal.SIGSTOP)
    try:
        assert client.submit(publish_sized, "telemetry", n, size, workers=[w0],
                             pure=False).result(timeout=60) == n
        info = wait_for(lambda: (i := fd.Channels.info())["channels"]["telemetry"]["messages"]
                        == n and i, 60)
        held = info["peers"][w1]
    finally:
        proc.send_signal(signal.SIGCONT)
    assert held["queued_bytes"] <= 2**20  # bounded in bytes at the scheduler
    assert held["queued"] < n
    Variable(total.name, client=client).set(n)
    total.set()
    seqs, missed, reported = fut.result(timeout=120)
    assert missed > 0
    assert len(seqs) + missed == n  # every message delivered once or counted once
    assert seqs == sorted(set(seqs)) and seqs[-1] == n - 1
    assert reported == missed  # and told with the messages that follow each gap
    assert fd.Channels.info()["channels"]["telemetry"]["dropped"] == missed


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_control_stays_ahead_of_telemetry_sent_again_after_a_break(subprocess_cluster):
    """A subscribing worker is stopped while a telemetry flood and then a control message
    queue at the scheduler for it; the scheduler's comm to it is aborted, so the batches
    in flight go back to its queues. Once the worker runs again and links again, control
    comes before everything but what was already in its socket, and telemetry arrives
    complete, once, in order."""
    subprocess_cluster.start(2)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(2, timeout=60)
    names = worker_names(client)
    w0, w1 = names["w0"], names["w1"]
    n = 5000
    positions = client.submit(control_position, n, workers=[w1], pure=False)

    def subscribed() -> bool:
        ch = fd.Channels.info()["channels"]
        return ch["control"]["subscriptions"] == 1 and ch["telemetry"]["subscriptions"] == 1

    wait_for(subscribed, 60)
    proc = subprocess_cluster.workers["w1"]
    proc.send_signal(signal.SIGSTOP)
    try:
        client.submit(flood_then_control, n, workers=[w0], pure=False).result(timeout=60)

        def at_hub() -> dict | None:
            info = fd.Channels.info()
            ch = info["channels"]
            done = ch["telemetry"]["messages"] == n and ch["control"]["messages"] == 1
            return info["peers"][w1] if done else None

        in_flight = wait_for(at_hub, 60)["in_flight"]
        client.run_on_scheduler(abort_hub_links, [w1])
        held = wait_for(lambda: (p := fd.Channels.info()["peers"][w1])["linked"] is False and p)
    finally:
        proc.send_signal(signal.SIGCONT)
    before, seqs, missed = positions.result(timeout=120)
    assert in_flight == WINDOW
    assert held["queued"] == n + 1 and held["in_flight"] == 0  # all of it queued again
    assert missed == 0
    assert seqs == list(range(n))
    assert before <= WINDOW * MAX_BATCH  # only what had reached the worker's socket
    assert fd.Channels.info()["peers"][w1]["breaks"] >= 1
