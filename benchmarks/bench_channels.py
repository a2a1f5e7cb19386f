"""Channels benchmark: latency, burst throughput and priority, against Dask's own
structured events (``Worker.log_event`` -> ``Client.subscribe_topic``).

Run with ``python benchmarks/bench_channels.py``. Starts an embedded cluster with two
worker processes (``foundation_dask.connect(n_workers=2)``); publishers run in a task
on a worker, subscribers in this (client) process.
"""

from __future__ import annotations

import argparse
import threading
import time

import foundation_dask as fd

LATENCY_TOPIC = "bench-channels-latency"
BURST_TOPIC = "bench-channels-burst"


# -- code running on a worker ------------------------------------------------------------


def _paced(send, n: int, rate: float) -> None:
    period = 1.0 / rate
    start = time.perf_counter()
    for i in range(n):
        target = start + i * period
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)


def channels_paced(channel: str, n: int, rate: float) -> int:
    _paced(lambda i: fd.Channels.broadcast(channel, (i, time.time())), n, rate)
    return n


def events_paced(topic: str, n: int, rate: float) -> int:
    from distributed import get_worker

    worker = get_worker()
    _paced(lambda i: worker.log_event(topic, {"i": i, "t": time.time()}), n, rate)
    return n


def channels_burst(channel: str, n: int) -> float:
    t0 = time.time()
    for i in range(n):
        fd.Channels.broadcast(channel, i)
    return time.time() - t0


def abort_worker_link(dask_worker) -> None:
    """Run on a worker's event loop (``client.run``): abort its channel link's comm."""
    from foundation_dask.core.plugin import extension

    comm = extension(dask_worker, "channels").link._comm
    if comm is not None:
        comm.abort()


def events_burst(topic: str, n: int) -> float:
    from distributed import get_worker

    worker = get_worker()
    t0 = time.time()
    for i in range(n):
        worker.log_event(topic, {"i": i, "t": time.time()})
    return time.time() - t0


def flood_then_control(n: int) -> float:
    for i in range(n):
        fd.Channels.broadcast("telemetry", i)
    fd.Channels.broadcast("control", "stop")
    return time.time()


def control_position(n: int) -> dict:
    """Subscribe to telemetry and control; report where control arrived among the flood."""
    with fd.Channels.subscribe("telemetry", buffer=2 * n) as tel, \
            fd.Channels.subscribe("control") as ctl:
        control = ctl.get(timeout=120)
        telemetry = [tel.get(timeout=120) for _ in range(n)]
    return {
        "position": sum(1 for m in telemetry if m.received < control.received),
        "control_latency_ms": 1000 * (control.received - control.timestamp),
        "missed": tel.missed + ctl.missed,
    }


def stall_event_loop(seconds: float, marker: str) -> None:
    """Run on a worker's event loop (``client.run``): the worker reads nothing meanwhile."""
    open(marker, "w").close()
    time.sleep(seconds)


# -- measurements -----------------------------------------------------------------------


def _ms(values: list[float], q: float) -> float:
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def latency_channels(client, worker: str, n: int, rate: float) -> dict:
    with fd.Channels.subscribe("events") as sub:
        client.submit(channels_paced, "events", 50, rate, workers=[worker], pure=False).result()
        for _ in range(50):  # warm-up: link set-up, imports
            sub.get(timeout=30)
        fut = client.submit(channels_paced, "events", n, rate, workers=[worker], pure=False)
        get_lat, arrival_lat = [], []
        for _ in range(n):
            msg = sub.get(timeout=30)
            now = time.time()
            get_lat.append(now - msg.timestamp)
            arrival_lat.append(msg.received - msg.timestamp)
        fut.result()
        assert sub.missed == 0
    return {"get": get_lat, "arrival": arrival_lat}


def latency_events(client, worker: str, n: int, rate: float) -> list[float]:
    lat: list[float] = []
    done = threading.Event()

    def handler(event) -> None:
        _, msg = event
        lat.append(time.time() - msg["t"])
        if len(lat) >= n + 50:
            done.set()

    client.subscribe_topic(LATENCY_TOPIC, handler)
    try:
        client.submit(events_paced, LATENCY_TOPIC, 50, rate, workers=[worker], pure=False).result()
        client.submit(events_paced, LATENCY_TOPIC, n, rate, workers=[worker], pure=False).result()
        done.wait(30)
    finally:
        client.unsubscribe_topic(LATENCY_TOPIC)
    return lat[50:]


def burst_channels(client, worker: str, n: int) -> dict:
    with fd.Channels.subscribe("data") as sub:
        client.submit(channels_burst, "data", 10, workers=[worker], pure=False).result()
        for _ in range(10):
            sub.get(timeout=30)
        t0 = time.time()
        fut = client.submit(channels_burst, "data", n, workers=[worker], pure=False)
        received, first_ts, last = 0, None, t0
        seqs_ok = True
        prev = None
        while received + sub.missed < n:
            try:
                msg = sub.get(timeout=5)
            except TimeoutError:
                break
            if first_ts is None:
                first_ts = msg.timestamp
            if prev is not None and msg.seq != prev + 1 + msg.missed:
                seqs_ok = False
            prev = msg.seq
            received += 1
            last = time.time()
        publish_s = fut.result()
        return {
            "received": received,
            "lost": n - received,
            "missed": sub.missed,
            "seconds": last - first_ts,
            "publish_seconds": publish_s,
            "ordered": seqs_ok,
        }


def burst_with_breaks(client, worker: str, n: int, breaks: int) -> dict:
    """A burst during which the comms of the subscriber's link (this client) and of the
    publisher's link (the worker) are aborted ``breaks`` times each."""
    from foundation_dask.core.channels._link import client_link

    link = client_link(client)
    with fd.Channels.subscribe("data", buffer=2 * n) as sub:
        client.submit(channels_burst, "data", 10, workers=[worker], pure=False).result()
        for _ in range(10):
            sub.get(timeout=30)
        fut = client.submit(channels_burst, "data", n, workers=[worker], pure=False)
        msgs = []
        step = n // (2 * breaks + 1)
        done = 0
        while len(msgs) < n:
            try:
                msgs.append(sub.get(timeout=10))
            except TimeoutError:
                break
            if done < 2 * breaks and len(msgs) >= (done + 1) * step:
                if done % 2 == 0:
                    comm = link._comm
                    if comm is not None:
                        link.aloop.call_soon_threadsafe(comm.abort)
                else:
                    client.run(abort_worker_link, workers=[worker])
                done += 1
        fut.result()
        seqs = [m.seq for m in msgs]
        return {
            "received": len(msgs),
            "unique": len(set(seqs)),
            "in_order": all(a < b for a, b in zip(seqs, seqs[1:], strict=False)),
            "missed": sub.missed,
            "breaks": done,
            "seconds": (msgs[-1].received - msgs[0].timestamp) if msgs else float("nan"),
        }


def burst_events(client, worker: str, n: int) -> dict:
    times: list[float] = []
    first: list[float] = []

    def handler(event) -> None:
        if not first:
            first.append(event[1]["t"])
        times.append(time.time())

    client.subscribe_topic(BURST_TOPIC, handler)
    try:
        publish_s = client.submit(events_burst, BURST_TOPIC, n, workers=[worker],
                                  pure=False).result()
        # wait until nothing more arrives for 2 s (or everything arrived)
        seen, stable_since = -1, time.time()
        while len(times) < n and time.time() - stable_since < 2:
            if len(times) != seen:
                seen, stable_since = len(times), time.time()
            time.sleep(0.05)
    finally:
        client.unsubscribe_topic(BURST_TOPIC)
    received = len(times)
    return {
        "received": received,
        "lost": n - received,
        "seconds": (times[-1] - first[0]) if times else float("nan"),
        "publish_seconds": publish_s,
    }


def priority(client, worker: str, n: int) -> dict:
    with fd.Channels.subscribe("telemetry", buffer=2 * n) as tel, \
            fd.Channels.subscribe("control") as ctl:
        client.submit(flood_then_control, 10, workers=[worker], pure=False).result()
        for _ in range(10):
            tel.get(timeout=30)
        ctl.get(timeout=30)
        fut = client.submit(flood_then_control, n, workers=[worker], pure=False)
        control = ctl.get(timeout=60)
        telemetry = [tel.get(timeout=60) for _ in range(n)]
        fut.result()
    before = sum(1 for m in telemetry if m.received < control.received)
    already = sum(1 for m in telemetry if m.received < control.timestamp)
    return {
        "position": before,  # 0 = control arrived first
        "delivered_before_control_published": already,
        "overtaken": n - before,
        "control_latency_ms": 1000 * (control.received - control.timestamp),
    }


def priority_stalled(client, publisher: str, subscriber: str, n: int) -> dict:
    """The subscribing worker stops reading for 2 s while the flood and the control
    message are published: they queue at the scheduler, where control jumps the queue."""
    import os
    import tempfile

    fut = client.submit(control_position, n, workers=[subscriber], pure=False)

    def subscribed() -> bool:
        ch = fd.Channels.info()["channels"]
        return ch["telemetry"]["subscriptions"] == 1 and ch["control"]["subscriptions"] == 1

    deadline = time.time() + 60
    while not subscribed() and time.time() < deadline:
        time.sleep(0.01)
    marker = os.path.join(tempfile.mkdtemp(), "stalled")
    stall = threading.Thread(target=client.run, args=(stall_event_loop, 2.0, marker),
                             kwargs={"workers": [subscriber]})
    stall.start()
    while not os.path.exists(marker):
        time.sleep(0.01)
    before = fd.Channels.info()["channels"]
    client.submit(flood_then_control, n, workers=[publisher], pure=False).result()

    def at_hub() -> bool:  # the whole flood and the control message reached the scheduler
        ch = fd.Channels.info()["channels"]
        return (ch["telemetry"]["messages"] - before["telemetry"]["messages"] == n
                and ch["control"]["messages"] - before["control"]["messages"] == 1)

    while not at_hub() and time.time() < deadline + 60:
        time.sleep(0.01)
    queued = fd.Channels.info()["peers"][subscriber]["queued"]
    stall.join()
    return {**fut.result(), "queued_at_scheduler": queued}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--flood", type=int, default=10_000)
    args = parser.parse_args()

    client = fd.connect(n_workers=2, threads_per_worker=1, processes=True)
    try:
        client.wait_for_workers(2)
        worker = sorted(client.scheduler_info()["workers"])[0]
        print(f"cluster: {client.scheduler.address}, 2 worker processes; publisher {worker}")

        ch = latency_channels(client, worker, args.latency_messages, args.rate)
        ev = latency_events(client, worker, args.latency_messages, args.rate)
        med_ch, p99_ch = _ms(ch["get"], 0.5), _ms(ch["get"], 0.99)
        med_ev, p99_ev = _ms(ev, 0.5), _ms(ev, 0.99)
        print(f"\nLatency worker -> client subscriber, {args.latency_messages} msgs "
              f"at {args.rate:.0f} msgs/s")
        print(f"  Channels (sub.get() in a thread)  median {med_ch:6.3f} ms   "
              f"p99 {p99_ch:6.3f} ms")
        print(f"  Channels (arrival in process)     median {_ms(ch['arrival'], .5):6.3f} ms   "
              f"p99 {_ms(ch['arrival'], .99):6.3f} ms")
        print(f"  log_event -> subscribe_topic      median {med_ev:6.3f} ms   "
              f"p99 {p99_ev:6.3f} ms   (received {len(ev)})")
        print(f"  ratio Channels / log_event        median {med_ch / med_ev:5.2f}x   "
              f"p99 {p99_ch / p99_ev:5.2f}x")

        bc = burst_channels(client, worker, args.burst)
        be = burst_events(client, worker, args.burst)
        print(f"\nBurst of {args.burst:,} messages, worker -> client")
        print(f"  Channels   {bc['received'] / bc['seconds']:>9,.0f} msgs/s  "
              f"received {bc['received']:,}  lost {bc['lost']:,} (counted missed "
              f"{bc['missed']:,})  in order {bc['ordered']}  "
              f"(publisher enqueued in {bc['publish_seconds']:.3f} s)")
        print(f"  log_event  {be['received'] / be['seconds']:>9,.0f} msgs/s  "
              f"received {be['received']:,}  lost {be['lost']:,}  "
              f"(publisher done in {be['publish_seconds']:.3f} s)")

        bb = burst_with_breaks(client, worker, args.burst, 3)
        print(f"  Channels, {bb['breaks']} link breaks during the burst (subscriber's and "
              f"publisher's comms aborted in turn): {bb['received'] / bb['seconds']:,.0f} "
              f"msgs/s  received {bb['received']:,} (unique {bb['unique']:,})  lost "
              f"{args.burst - bb['received']:,} (counted missed {bb['missed']:,})  in order "
              f"{bb['in_order']}")

        pr = priority(client, worker, args.flood)
        other = sorted(client.scheduler_info()["workers"])[1]
        ps = priority_stalled(client, worker, other, args.flood)
        print(f"\nControl published right after a {args.flood:,}-message telemetry flood")
        print(f"  live subscriber (client):     control arrived at position "
              f"{pr['position']:,} (0 = first); "
              f"{pr['delivered_before_control_published']:,} telemetry messages had been "
              f"delivered before control was published, control overtook all "
              f"{pr['overtaken']:,} still queued; control latency "
              f"{pr['control_latency_ms']:.1f} ms")
        print(f"  stalled subscriber (worker):  control arrived at position "
              f"{ps['position']:,} (0 = first); {ps['queued_at_scheduler']:,} messages were "
              f"queued at the scheduler for it; missed {ps['missed']}")

        burst_ok = bc["received"] / bc["seconds"] >= 20_000 and bc["lost"] == 0
        breaks_ok = bb["received"] == bb["unique"] == args.burst and bb["in_order"]
        counted_ok = bb["received"] + bb["missed"] == args.burst
        print("\nTargets: median <= 2 ms at 200 msgs/s: "
              f"{'OK' if med_ch <= 2 else 'MISSED'}; >= 20k msgs/s burst with no loss: "
              f"{'OK' if burst_ok else 'MISSED'}; nothing lost or doubled across link breaks: "
              f"{'OK' if breaks_ok else 'MISSED'} (every loss counted exactly: "
              f"{'OK' if counted_ok else 'MISSED'})"
              f"; control first past the queued flood: "
              f"{'OK' if pr['overtaken'] > 0 and ps['position'] <= 512 else 'MISSED'}")
        print(f"hub: {fd.Channels.info()['message_count']:,} "
              "messages received by the scheduler's ChannelHub")
    finally:
        fd.close()


if __name__ == "__main__":
    main()
