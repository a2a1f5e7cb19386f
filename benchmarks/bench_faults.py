"""A soak of faults: worker processes killed and rejoined, hosts cut off and healed.

Run (from the repository root, as root for the partitions):
``python benchmarks/bench_faults.py [--kills 50] [--partitions 10]``

Kills: a scheduler and three worker processes on loopback. Throughout, a thread calls a
supervised ``Ledger`` singleton (checkpoint after every call) with unique items, the
client publishes on ``telemetry`` to its own subscription through the hub, each
worker registers an entry when it joins, and an ``Evaluate`` runs over the cluster. Each
cycle SIGKILLs the worker holding the singleton and starts a new one. Printed: calls
lost (answered but not in the final state) and applied twice, messages lost, stale
registry entries (of a dead worker, visible after the scheduler removed it), the
failover time (kill to the first answer of the new instance: median and max, target
< 0.5 s), whether the evaluation lost an example; and, in the same run, a plain Dask
Actor under the same kills: its state after each kill (lost) and the time until a
replacement made by hand answers.

Partitions (needs root and iproute2; skipped otherwise): the scheduler and three
workers each on a host of its own (network namespaces), lease 3 s; each cycle cuts the
host of the singleton off for 5 s, then heals it. Printed: calls lost and applied
twice, answers by two instances at once (target 0), the failover time after the cut
(target < lease + 0.5 s). Then this client is cut off for 20 s, beyond Dask's TCP timeout
(12 s here), while a worker publishes on a channel and with ``Worker.log_event``: what
each delivers after the heal (target for channels: all, within the replay window).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import foundation_dask as fd  # noqa: E402
from foundation_dask import dspex  # noqa: E402
from tests._helpers import (  # noqa: E402
    Classify,
    Counter,
    Ledger,
    make_examples,
    metric,
    needs_demos,
    register_worker_entry,
)
from tests.support import LedgerCaller as Caller  # noqa: E402
from tests.support import SubprocessCluster, wait_for, worker_names  # noqa: E402


def _ledger_worker() -> str:
    return str(fd.ProcessManager.list_processes()["worker"].iloc[0])


def kills(n: int, tmp: Path) -> None:
    cluster = SubprocessCluster(tmp)
    # 50 kills aimed at one worker each time also hit chunks of the evaluation: let Dask
    # run a chunk again however often its worker died (by default, 3 deaths mark it a
    # task that kills its workers: KilledWorker)
    cluster.env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "1000"
    cluster.start(3)
    try:
        client = fd.connect(cluster.address)
        client.wait_for_workers(3, timeout=60)
        for w in client.scheduler_info()["workers"]:
            client.submit(register_worker_entry, "bench-worker", workers=[w], pure=False).result()
        ledger = fd.ProcessManager.start_singleton(Ledger, name="ledger")
        caller = Caller(ledger)
        received: list[int] = []
        sub = fd.Channels.subscribe("telemetry", buffer=10**6)
        stop = threading.Event()

        def publish() -> int:
            i = 0
            while not stop.is_set():
                fd.Channels.broadcast("telemetry", ("bench", i))
                i += 1
                time.sleep(0.005)
            return i

        def drain() -> None:
            while True:
                try:
                    payload = sub.get(timeout=30).payload
                    if isinstance(payload, tuple) and payload[:1] == ("bench",):
                        received.append(payload[1])
                except Exception:
                    return

        published: list[int] = []
        pub = threading.Thread(target=lambda: published.append(publish()), daemon=True)
        reader = threading.Thread(target=drain, daemon=True)
        pub.start()
        reader.start()
        evaluation: dict = {}
        def evaluate() -> None:
            with dspex.context(lm=dspex.DummyLM(lambda p: needs_demos(p, delay=0.05))):
                try:
                    evaluation["r"] = dspex.Evaluate(devset=make_examples(600), metric=metric,
                                                     display_progress=False)(
                        dspex.Predict(Classify))
                except Exception as exc:
                    evaluation["error"] = exc

        ev = threading.Thread(target=evaluate, daemon=True)
        ev.start()
        failovers, stale = [], 0
        wait_for(lambda: caller.instance_now(), timeout=60)
        for _ in range(n):
            host = _ledger_worker()
            name = {a: k for k, a in worker_names(client).items()}[host]
            before = caller.instance_now()
            t_kill = time.time()
            cluster.kill(name)
            failovers.append(caller.first_answer_after(t_kill, before) - t_kill)
            wait_for(lambda h=host: h not in client.scheduler_info()["workers"], timeout=60)
            stale += fd.ProcessRegistry.lookup(("bench-worker", host)) is not None
            new = cluster.add_worker()
            addr = wait_for(lambda w=new: worker_names(client).get(w), timeout=60)
            client.submit(register_worker_entry, "bench-worker", workers=[addr],
                          pure=False).result()
        ev.join(timeout=600)
        stop.set()
        pub.join(timeout=30)
        caller.stop()
        reader.join(timeout=60)
        final = ledger.all().result(timeout=60)
        acked = [item for _, _, item in caller.acked]
        counts = collections.Counter(final)
        result = evaluation.get("r")
        print(f"== {n} SIGKILLs of the singleton's worker (and a new worker each time)")
        print(f"singleton: {len(acked)} calls answered, lost {len(set(acked) - set(final))}, "
              f"applied twice {sum(1 for c in counts.values() if c > 1)}; failover median "
              f"{statistics.median(failovers) * 1e3:.0f} ms, max {max(failovers) * 1e3:.0f} ms "
              "(target < 500 ms)")
        print(f"channels: published {published[0]}, received {len(received)}, lost "
              f"{published[0] - len(set(received))}, missed {sub.missed}")
        print(f"registry: stale entries after the scheduler removed a worker: {stale}")
        if "error" in evaluation:
            print(f"evaluation: failed: {type(evaluation['error']).__name__}: "
                  f"{str(evaluation['error'])[:200]}")
        if result is not None:
            errors = result.frame["error"].dropna()
            print(f"evaluation: {len(result.frame)} of 600 examples evaluated, {len(errors)} "
                  f"failed{': ' + str(errors.iloc[0])[:200] if len(errors) else ''}")
        sub.close()
        actor_baseline(client, cluster, min(n, 10))
    finally:
        fd.close()
        cluster.close()


def actor_baseline(client, cluster: SubprocessCluster, n: int) -> None:
    """A plain Dask Actor under the same kills: its state goes with its worker."""
    lost, recovery, failing = [], [], []
    for _ in range(n):
        fut = client.submit(Counter, actor=True, pure=False)
        actor = fut.result()
        for _ in range(20):
            actor.incr().result()
        host = next(iter(client.who_has([fut])[fut.key]))
        name = {a: k for k, a in worker_names(client).items()}[host]
        t_kill = time.time()
        cluster.kill(name)
        with contextlib.suppress(Exception):  # the next call fails (or times out): it is gone
            actor.incr().result(timeout=5)
        failing.append(time.time() - t_kill)
        again = client.submit(Counter, actor=True, pure=False).result()
        value = again.incr().result()
        recovery.append(time.time() - t_kill)
        lost.append(20 - (value - 1))
        new = cluster.add_worker()
        wait_for(lambda w=new: worker_names(client).get(w), timeout=60)
    print(f"plain Dask Actor, {n} kills: state lost every time ({statistics.mean(lost):.0f} "
          f"of 20 increments); its next call failed after median "
          f"{statistics.median(failing):.2f} s (max {max(failing):.2f} s, timeout 5 s), then "
          f"a replacement made by hand answered: median {statistics.median(recovery):.2f} s "
          "after the kill")


def overlaps(acked: list[tuple[float, str, int]]) -> int:
    """Answers of an instance given after its successor had answered."""
    first: dict[str, float] = {}
    order: list[str] = []
    for t, inst, _ in sorted(acked):
        if inst not in first:
            first[inst] = t
            order.append(inst)
    nxt = {a: first[b] for a, b in zip(order, order[1:], strict=False)}
    return sum(1 for t, inst, _ in acked if inst in nxt and t > nxt[inst])


def partitions(n: int, tmp: Path) -> None:
    from tests.network import Hosts, namespaces_problem

    problem = namespaces_problem()
    if problem is not None:
        print(f"== partitions skipped: {problem}")
        return
    with Hosts(4) as hosts:
        cluster = SubprocessCluster(tmp, launcher=hosts.launcher)
        cluster.env["DASK_FOUNDATION__PROCESSES__LEASE"] = "3s"
        cluster.start(3)
        try:
            client = fd.connect(cluster.address)
            client.wait_for_workers(3, timeout=60)
            ledger = fd.ProcessManager.start_singleton(Ledger, name="ledger-net")
            caller = Caller(ledger)
            wait_for(lambda: caller.instance_now(), timeout=60)
            failovers = []
            for _ in range(n):
                host_worker = str(fd.ProcessManager.list_processes()["worker"].iloc[0])
                i = next(k for k in range(1, 4) if f"//{hosts.address(k)}:" in host_worker)
                before = caller.instance_now()
                t_cut = time.time()
                hosts.cut(i)
                failovers.append(caller.first_answer_after(t_cut, before) - t_cut)
                deadline = t_cut + 5
                wait_for(lambda d=deadline: time.time() > d, timeout=10, period=0.1)
                hosts.heal(i)
                wait_for(lambda w=host_worker: client.run(_hosted, workers=[w]).get(w) == 0,
                         timeout=60)
            caller.stop()
            final = ledger.all().result(timeout=60)
            acked = [item for _, _, item in caller.acked]
            counts = collections.Counter(final)
            print(f"== {n} cuts of the singleton's host for 5 s (lease 3 s)")
            print(f"singleton: {len(acked)} calls answered, lost "
                  f"{len(set(acked) - set(final))}, applied twice "
                  f"{sum(1 for c in counts.values() if c > 1)}, answers beside a successor "
                  f"{overlaps(caller.acked)}; failover after the cut median "
                  f"{statistics.median(failovers):.2f} s, max {max(failovers):.2f} s "
                  "(target < 3.5 s)")
        finally:
            fd.close()
            cluster.close()


def _publish_both(n: int, period: float) -> int:
    """On a worker: ``0..n-1`` on the ``events`` channel and as ``Worker.log_event``."""
    from distributed import get_worker

    worker = get_worker()
    for i in range(n):
        fd.Channels.broadcast("events", ("cut", i))
        worker.log_event("bench-cut", i)
        time.sleep(period)
    return n


def client_cut(tmp: Path, seconds: float = 20.0) -> None:
    """This client cut off for longer than Dask's TCP timeout (12 s here) while a worker
    publishes through Channels and through ``Worker.log_event``: what each delivers."""
    import dask.config
    from distributed import fire_and_forget

    from tests.network import Hosts, namespaces_problem

    if namespaces_problem() is not None:
        return
    with dask.config.set({"distributed.comm.timeouts.tcp": "12s"}), Hosts(2) as hosts:
        cluster = SubprocessCluster(tmp, launcher=hosts.launcher)
        cluster.env["DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP"] = "12s"
        cluster.start(1)
        try:
            client = fd.connect(cluster.address)
            client.wait_for_workers(1, timeout=60)
            n = int((seconds + 20) / 0.05)
            events: list[int] = []
            client.subscribe_topic("bench-cut", lambda event: events.append(event[1]))
            sub = fd.Channels.subscribe("events", buffer=10**6)
            fire_and_forget(client.submit(_publish_both, n, 0.05, pure=False))
            got: list[int] = []
            while not got:
                got.append(sub.get(timeout=60).payload[1])
            hosts.cut_client()
            deadline = time.time() + seconds
            wait_for(lambda: time.time() > deadline, timeout=seconds + 10, period=0.2)
            hosts.heal_client()
            while len(got) < n:
                try:
                    got.append(sub.get(timeout=60).payload[1])
                except TimeoutError:
                    break
            print(f"== this client cut off for {seconds:.0f} s (beyond the 12 s TCP timeout), "
                  f"a worker publishing {n} messages")
            print(f"channels (replay window 30 s): received {len(set(got))}, lost "
                  f"{n - len(set(got))}, missed {sub.missed}; Worker.log_event: received "
                  f"{len(set(events))}, lost {n - len(set(events))} (and not counted)")
            sub.close()
        finally:
            fd.close()
            cluster.close()


def _hosted(dask_worker) -> int:
    return len(dask_worker.extensions["foundation"].extensions["processes"].hosts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kills(args.kills, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        partitions(args.partitions, Path(tmp))
    if args.partitions:
        with tempfile.TemporaryDirectory() as tmp:
            client_cut(Path(tmp))


if __name__ == "__main__":
    main()
