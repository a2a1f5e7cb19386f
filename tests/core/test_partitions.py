"""Several hosts on one machine (network namespaces on a bridge, ``tests/network.py``):
what a real cut of the network does, and what comes back after it heals.

The scheduler runs on host ``h0``, worker ``k`` on ``h<k+1>``, the test process is a
client on the same network. Dask's TCP timeout is lowered to 12 s in every process so
that a cut of 20 s makes the scheduler drop the cut-off side, as a longer cut does with
the default 30 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import dask.config
import pytest
from distributed import fire_and_forget

import foundation_dask as fd
from tests.network import (
    Hosts,
    SlowLinkUnavailable,
    require_namespaces,
    require_slow_links,
    unavailable,
)
from tests.support import SubprocessCluster, wait_for

pytestmark = [pytest.mark.partition, pytest.mark.slow]

TCP_TIMEOUT = "12s"
CUT = 20.0


class NetCluster:
    def __init__(self, hosts: Hosts, cluster: SubprocessCluster):
        self.hosts, self.cluster = hosts, cluster


@pytest.fixture
def net_cluster(tmp_path) -> Iterator:
    """Factory: ``net_cluster(n_workers, **scheduler_config)`` starts the hosts and a
    cluster on them and connects this process."""
    require_namespaces()
    made: list[tuple[Hosts, SubprocessCluster]] = []

    def start(n_workers: int = 1, tcp_timeout: str = TCP_TIMEOUT, **config: str) -> NetCluster:
        hosts = Hosts(n_workers + 1).start()
        cluster = SubprocessCluster(tmp_path, launcher=hosts.launcher)
        made.append((hosts, cluster))
        cluster.env["DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP"] = tcp_timeout
        dask.config.set({"distributed.comm.timeouts.tcp": tcp_timeout})
        for key, value in config.items():
            cluster.env[f"DASK_FOUNDATION__{key.upper()}"] = value
        cluster.start(n_workers)
        fd.connect(cluster.address).wait_for_workers(n_workers, timeout=60)
        return NetCluster(hosts, cluster)

    with dask.config.set({"distributed.comm.timeouts.tcp": TCP_TIMEOUT}):
        try:
            yield start
        finally:
            fd.close()
            for hosts, cluster in made:
                cluster.close()
                hosts.close()


def publish(n: int, period: float, channel: str = "telemetry", every: int = 0) -> int:
    """Broadcast ``0..n-1`` on ``channel`` (and every ``every``-th also on control)."""
    for i in range(n):
        fd.Channels.broadcast(channel, i)
        if every and i % every == 0:
            fd.Channels.broadcast("control", i)
        time.sleep(period)
    return n


class Reader:
    """Reads a subscription in a thread until ``last`` arrives or it idles."""

    def __init__(self, sub: fd.Subscription, last: int):
        self.sub, self.last = sub, last
        self.messages: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                msg = self.sub.get(timeout=90)
            except Exception:
                return
            self.messages.append(msg)
            if msg.payload == self.last:
                return

    @property
    def payloads(self) -> list:
        return [m.payload for m in self.messages]


def _cut_client_while(net: NetCluster, reader: Reader, seconds: float) -> None:
    wait_for(lambda: len(reader.messages) >= 20, timeout=60)
    net.hosts.cut_client()
    deadline = time.monotonic() + seconds
    wait_for(lambda: time.monotonic() >= deadline, timeout=seconds + 10, period=0.2)
    net.hosts.heal_client()


@pytest.mark.timeout(240)
def test_a_cut_off_subscriber_gets_every_message_after_the_heal(net_cluster):
    net = net_cluster(1)
    client = fd.connect()
    n = int((CUT + 25) / 0.05)
    with fd.Channels.subscribe("telemetry") as tele, fd.Channels.subscribe("control") as ctrl:
        reader, control = Reader(tele, n - 1), Reader(ctrl, (n - 1) // 10 * 10)
        # the publisher outlives the client's futures, which Dask cancels when the
        # scheduler loses the client
        fire_and_forget(client.submit(publish, n, 0.05, "telemetry", 10, pure=False))
        _cut_client_while(net, reader, CUT)
        reader.thread.join(timeout=120)
        control.thread.join(timeout=120)
    # the scheduler lost this client during the cut (and the client reconnected)
    assert client.status == "running"
    assert reader.payloads == list(range(n)) and tele.missed == 0
    assert control.payloads == list(range(0, n, 10)) and ctrl.missed == 0
    # control is never behind telemetry, also while the backlog is sent again: each
    # control message arrived no later than the telemetry message published after it
    tele_at = {m.payload: m.received for m in reader.messages}
    for m in control.messages:
        if m.payload + 1 < n:
            assert m.received <= tele_at[m.payload + 1] + 1e-3, m.payload


@pytest.mark.timeout(240)
def test_beyond_the_replay_window_the_loss_is_counted_exactly(net_cluster):
    net = net_cluster(1, channels__replay_window="3s")
    client = fd.connect()
    n = int((CUT + 25) / 0.05)
    with fd.Channels.subscribe("telemetry") as tele:
        reader = Reader(tele, n - 1)
        fire_and_forget(client.submit(publish, n, 0.05, pure=False))
        _cut_client_while(net, reader, CUT)
        reader.thread.join(timeout=120)
    got = reader.payloads
    assert got == sorted(set(got)) and got[-1] == n - 1  # in order, once each
    lost = n - len(got)
    assert lost > 0 and tele.missed == lost


def register_here(name: str) -> str:
    """Register a service owned by the worker running this task."""
    from distributed import get_worker

    fd.ServiceMesh.register_service(name, get_worker().address, capabilities=["probe"])
    fd.ProcessRegistry.register(("entry", name), get_worker().address)
    return get_worker().address


@pytest.mark.timeout(240)
def test_entries_of_a_cut_off_host_are_hidden_until_it_heals(net_cluster):
    net = net_cluster(2, health__unreachable_after="2s")
    client = fd.connect()
    workers = sorted(client.scheduler_info()["workers"])
    for i, w in enumerate(workers):
        assert client.submit(register_here, f"svc{i}", workers=[w], pure=False).result() == w
    client.submit(register_here, "svc-x", workers=[workers[0]], pure=False).result()
    fd.ProcessRegistry.register("from-client", 1)

    def names() -> set:
        return {s.name for s in fd.ServiceMesh.discover_services(capabilities=["probe"])}

    assert names() == {"svc0", "svc1", "svc-x"}
    host = next(i for i in range(1, 3) if net.hosts.address(i) in workers[0])
    net.hosts.cut(host)
    # hidden while its host is not heard from; the other host's, and the client's, stay
    wait_for(lambda: names() == {"svc1"}, timeout=30)
    assert fd.ProcessRegistry.lookup("from-client").value == 1
    assert fd.ProcessRegistry.lookup(("entry", "svc1")).value == workers[1]
    assert fd.ProcessRegistry.lookup(("entry", "svc0")) is None
    net.hosts.heal(host)
    # back within Dask's TCP timeout: the worker was never removed, its entries return
    wait_for(lambda: names() == {"svc0", "svc1", "svc-x"}, timeout=30)
    assert fd.ProcessRegistry.lookup(("entry", "svc0")).value == workers[0]


def _hosted(dask_worker) -> int:
    return len(dask_worker.extensions["foundation"].extensions["processes"].hosts)


CUT_SIDE_CLIENT = """
import json, sys, time
sys.path.insert(0, {repo!r})
import foundation_dask as fd
fd.connect({address!r})
ledger = fd.ProcessManager.lookup("ledger")
print("ready", flush=True)
end = time.time() + {seconds}
with open({log!r}, "a") as log:
    i = 0
    while time.time() < end:
        t0 = time.time()
        try:
            inst, n = ledger.append(("b", i)).result(timeout=30)
            row = {{"who": "b", "item": i, "ok": True, "instance": inst, "t0": t0,
                    "t1": time.time()}}
        except Exception as exc:
            row = {{"who": "b", "item": i, "ok": False, "error": type(exc).__name__,
                    "message": str(exc)[:300], "t0": t0, "t1": time.time()}}
        log.write(json.dumps(row) + "\\n"); log.flush()
        i += 1
        time.sleep(0.05)
"""


#: The lease of the singleton tests, and their cut: longer than the lease, shorter than
#: Dask's TCP timeout (so Dask never removes the cut-off worker: only the lease acts).
LEASE = "3s"
SHORT_CUT = 9.0
#: The TCP timeout of the short-cut tests, Dask's default: a cut of SHORT_CUT closes no
#: connection, so the cut-off worker stays in the cluster. (TCP retransmissions back off,
#: 0.2, 0.4 ... 6.4 s: data sent as the cut begins is next sent 12.6 s later, so under a
#: 12 s timeout a 9 s cut closes the connections that were sending, and the scheduler
#: drops a busy worker.)
SHORT_CUT_TCP_TIMEOUT = "30s"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["call", "interval"])
def test_a_cut_off_singleton_never_answers_beside_its_successor(net_cluster, tmp_path, mode):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests._helpers import IntervalLedger, Ledger

    net = net_cluster(3, processes__lease=LEASE)
    client = fd.connect()
    cls = Ledger if mode == "call" else IntervalLedger
    ledger = fd.ProcessManager.start_singleton(cls, name="ledger")
    for i in range(5):
        ledger.append(("a", -1 - i)).result(timeout=30)
    host_worker = fd.ProcessManager.list_processes()["worker"].iloc[0]
    host = next(i for i in range(1, 4) if f"//{net.hosts.address(i)}:" in host_worker)
    log = tmp_path / "calls.jsonl"
    script = CUT_SIDE_CLIENT.format(repo=str(Path(__file__).parents[2]),
                                    address=net.cluster.address, seconds=SHORT_CUT + 10,
                                    log=str(log))
    # a client on the same host as the instance: cut off with it
    b = subprocess.Popen(net.hosts.command(host, [sys.executable, "-c", script]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=net.cluster.env)
    try:
        assert b.stdout is not None and b"ready" in b.stdout.readline()
        rows: list[dict] = []

        def call_a(i: int) -> None:
            t0 = time.time()
            try:
                inst, _ = ledger.append(("a", i)).result(timeout=60)
                rows.append({"who": "a", "item": i, "ok": True, "instance": inst, "t0": t0,
                             "t1": time.time()})
            except Exception as exc:
                rows.append({"who": "a", "item": i, "ok": False, "error": type(exc).__name__,
                             "t0": t0, "t1": time.time()})

        for i in range(10):
            call_a(i)
        net.hosts.cut(host)
        cut_at = time.time()
        i = 10
        while time.time() < cut_at + SHORT_CUT:
            call_a(i)
            i += 1
        net.hosts.heal(host)
        for j in range(i, i + 10):
            call_a(j)
        b.wait(timeout=120)
    finally:
        if b.poll() is None:
            b.kill()
    rows += [json.loads(line) for line in log.read_text().splitlines()]
    ok = [r for r in rows if r["ok"]]
    spans: dict[str, list[float]] = {}
    for r in ok:
        lo, hi = spans.setdefault(r["instance"], [r["t1"], r["t1"]])
        spans[r["instance"]] = [min(lo, r["t1"]), max(hi, r["t1"])]
    assert len(spans) == 2, spans  # the first instance, then one successor
    (first, s1), (second, s2) = sorted(spans.items(), key=lambda kv: kv[1][0])
    # never two instances answering: every answer of the old one came before the first
    # answer of the new one
    assert s1[1] < s2[0], (s1, s2)
    # the client on the cut-off side got clear errors, not a hang and not stale answers
    b_rows = [r for r in rows if r["who"] == "b"]
    b_failed = [r for r in b_rows if not r["ok"]]
    assert b_failed and all(r["t1"] - r["t0"] < 31 for r in b_rows), (
        cut_at, b_rows[:3], b_rows[-3:], len(b_rows))
    assert any(r["error"] == "ProcessLostError" for r in b_failed), b_failed[:3]
    # the successor answered only after the old lease had certainly run out: the last
    # renewal came at most a quarter lease before the cut
    assert s2[0] - cut_at > 0.75 * 3.0
    final = ledger.all().result(timeout=30)
    if mode == "call":  # no acknowledged call lost: the state holds every answered one
        acked = {(r["who"], r["item"]) for r in ok}
        assert acked <= {tuple(x) for x in final}
    # after the heal the old instance is destroyed: its worker, still in the cluster
    # (the cut was shorter than Dask's TCP timeout), hosts nothing
    rows_now = fd.ProcessManager.list_processes()
    assert len(rows_now) == 1 and rows_now["incarnation"].iloc[0] >= 1
    assert host_worker in client.scheduler_info()["workers"]
    wait_for(lambda: client.run(_hosted, workers=[host_worker])[host_worker] == 0, timeout=30)


@pytest.mark.timeout(240)
def test_a_singleton_whose_only_worker_was_cut_off_comes_back_after_the_heal(net_cluster):
    from tests._helpers import Ledger

    net = net_cluster(1, tcp_timeout=SHORT_CUT_TCP_TIMEOUT, processes__lease=LEASE)
    client = fd.connect()
    ledger = fd.ProcessManager.start_singleton(Ledger, name="only")
    first = {ledger.append(i).result(timeout=30)[0] for i in range(5)}
    worker = fd.ProcessManager.list_processes()["worker"].iloc[0]

    def state() -> str:
        return fd.ProcessManager.list_processes()["state"].iloc[0]

    net.hosts.cut(1)
    # the lease runs out: the supervisor gives the instance up, with nowhere else to go
    wait_for(lambda: state() != "running", timeout=60, period=0.2)
    net.hosts.heal(1)
    # the worker renews its lease again: the singleton is placed on it anew, and the
    # replaced instance is destroyed, not answering again beside its successor
    instance, count = ledger.append(5).result(timeout=90)
    assert first == {next(iter(first))} and instance not in first
    assert count == 6  # the checkpoint of every answered call came along
    assert ledger.all().result(timeout=30) == list(range(6))
    rows = fd.ProcessManager.list_processes()
    assert rows["state"].tolist() == ["running"] and rows["worker"].iloc[0] == worker
    assert worker in client.scheduler_info()["workers"]  # the cut closed no connection
    wait_for(lambda: client.run(_hosted, workers=[worker])[worker] == 1, timeout=30)


@pytest.mark.timeout(600)
def test_an_optimization_cut_one_host_at_a_time_gives_the_undisturbed_result(net_cluster,
                                                                           tmp_path):
    import functools

    from foundation_dask import dspex
    from tests._helpers import gated_needs_demos, make_examples, metric, program

    net = net_cluster(3, tcp_timeout=SHORT_CUT_TCP_TIMEOUT, processes__lease=LEASE)
    trainset, valset = make_examples(18), make_examples(18, 60)
    # exhaustive search: every candidate on every example, so the run lasts while each
    # host is cut in turn and its history does not depend on timing (the race under
    # faults: tests/dspex/test_optimize.py, a third of the workers killed)
    search = dspex.BootstrapFewShotWithRandomSearch(
        metric, num_candidate_programs=4, max_bootstrapped_demos=3, max_labeled_demos=3,
        seed=3, racing=False)
    kwargs = dict(num_candidate_programs=4, max_bootstrapped_demos=3, max_labeled_demos=3,
                  seed=3, valset=valset, display_progress=False, optimizer=search)
    # the last validation example waits for the gate: the run outlasts the three cuts
    gate = tmp_path / "gate"
    lm = functools.partial(gated_needs_demos, gate=str(gate), held="review 77:")
    gate.touch()
    quiet = dspex.DistributedOptimizer.optimize_program_distributed(
        program(lm), trainset, metric, **kwargs)
    gate.unlink()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "r", dspex.DistributedOptimizer.optimize_program_distributed(
            program(lm), trainset, metric, optimization_id="cut", **kwargs)))
    thread.start()
    coordinator = wait_for(
        lambda: fd.ProcessManager.lookup(("optimization_coordinator", "cut")), timeout=60)
    cuts = 0
    for host in (1, 2, 3):
        if not thread.is_alive():
            break
        # some evaluations between two cuts, if any are left but the held one
        progress = coordinator.get_progress().result(timeout=60)["evaluations_completed"]
        until = time.monotonic() + 20
        wait_for(lambda p=progress, u=until: time.monotonic() > u or not thread.is_alive()
                 or coordinator.get_progress().result(timeout=60)["evaluations_completed"]
                 > p + 5, timeout=90)
        net.hosts.cut(host)
        cuts += thread.is_alive()
        deadline = time.monotonic() + SHORT_CUT
        wait_for(lambda d=deadline: time.monotonic() > d, timeout=SHORT_CUT + 5, period=0.2)
        net.hosts.heal(host)
    gate.touch()
    thread.join(timeout=400)
    assert cuts == 3  # each third of the cluster was cut off while the run went on
    faulty = box["r"]
    assert faulty.status == "completed"
    assert faulty.best_score == quiet.best_score
    assert faulty.best_program.dump_state() == quiet.best_program.dump_state()
    assert len(faulty.history) == len(quiet.history)  # no evaluation lost or repeated


@pytest.mark.timeout(240)
def test_a_slow_lossy_link_delivers_in_order_and_calls_answer(net_cluster):
    from foundation_dask.demo import KeyValueStore

    require_slow_links()
    net = net_cluster(2)
    client = fd.connect()
    workers = sorted(client.scheduler_info()["workers"])
    slow = next(i for i in (1, 2) if f"//{net.hosts.address(i)}:" in workers[0])
    try:
        # the worker's packets, through its namespace's netfilter queue
        net.hosts.slow(slow, delay="40ms", jitter="20ms", loss="3%")
    except SlowLinkUnavailable as exc:  # the kernel has no netfilter queue
        unavailable(str(exc))
    n = 400
    with fd.Channels.subscribe("telemetry") as sub:
        reader = Reader(sub, n - 1)
        client.submit(publish, n, 0.005, workers=[workers[0]], pure=False).result(timeout=120)
        reader.thread.join(timeout=120)
    assert reader.payloads == list(range(n)) and sub.missed == 0
    kv = fd.ProcessManager.start_singleton(KeyValueStore, name="kv-slow")
    for i in range(20):
        assert kv.put(f"k{i}", i).result(timeout=60) == i + 1
    net.hosts.heal(slow)
