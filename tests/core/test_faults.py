"""A short soak of faults (``benchmarks/bench_faults.py`` is the long one): worker
processes SIGKILLed and replaced while a singleton is called, channels carry traffic and
an evaluation runs. Nothing answered is lost or applied twice, no message is lost, no
entry of a dead worker stays visible."""

from __future__ import annotations

import collections
import threading
import time

import pytest

import foundation_dask as fd
from foundation_dask import dspex
from tests._helpers import (
    Classify,
    Ledger,
    make_examples,
    metric,
    needs_demos,
    register_worker_entry,
)
from tests.support import LedgerCaller, wait_for, worker_names

pytestmark = pytest.mark.slow


@pytest.mark.timeout(420)
def test_kills_lose_nothing(subprocess_cluster):
    # kills aimed at the singleton's worker also hit chunks of the evaluation: let Dask
    # run a chunk again however often (by default 3 deaths give KilledWorker)
    subprocess_cluster.env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "100"
    subprocess_cluster.start(3)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(3, timeout=60)
    for w in client.scheduler_info()["workers"]:
        client.submit(register_worker_entry, "soak-worker", workers=[w], pure=False).result()
    ledger = fd.ProcessManager.start_singleton(Ledger, name="soak")
    caller = LedgerCaller(ledger)
    sub = fd.Channels.subscribe("events", buffer=10**6)
    sent = 0
    evaluation: dict = {}

    def evaluate() -> None:
        with dspex.context(lm=dspex.DummyLM(lambda p: needs_demos(p, delay=0.02))):
            try:
                evaluation["r"] = dspex.Evaluate(devset=make_examples(200), metric=metric,
                                                 display_progress=False)(
                    dspex.Predict(Classify))
            except Exception as exc:  # shown by the assertion below
                evaluation["error"] = exc

    ev = threading.Thread(target=evaluate, daemon=True)
    ev.start()
    stale = []
    wait_for(caller.instance_now, timeout=60)
    for _ in range(5):
        host = str(fd.ProcessManager.list_processes()["worker"].iloc[0])
        name = {a: k for k, a in worker_names(client).items()}[host]
        before = caller.instance_now()
        for _ in range(50):
            fd.Channels.broadcast("events", ("soak", sent))
            sent += 1
        t_kill = time.time()
        subprocess_cluster.kill(name)
        caller.first_answer_after(t_kill, before)
        wait_for(lambda h=host: h not in client.scheduler_info()["workers"], timeout=60)
        stale.append(fd.ProcessRegistry.lookup(("soak-worker", host)))
        new = subprocess_cluster.add_worker()
        addr = wait_for(lambda w=new: worker_names(client).get(w), timeout=60)
        client.submit(register_worker_entry, "soak-worker", workers=[addr], pure=False).result()
    ev.join(timeout=300)
    caller.stop()
    assert "r" in evaluation, evaluation
    final = ledger.all().result(timeout=60)
    acked = [item for _, _, item in caller.acked]
    assert acked and set(acked) <= set(final)  # nothing answered is lost
    assert max(collections.Counter(final).values()) == 1  # nothing applied twice
    assert len({inst for _, inst, _ in caller.acked}) == 6  # one instance per kill
    assert stale == [None] * 5
    got = []
    while len(got) < sent:
        payload = sub.get(timeout=30).payload
        if isinstance(payload, tuple) and payload[:1] == ("soak",):
            got.append(payload[1])
    assert got == list(range(sent)) and sub.missed == 0
    sub.close()
    result = evaluation["r"]
    assert len(result.frame) == 200 and result.frame["error"].isna().all()
