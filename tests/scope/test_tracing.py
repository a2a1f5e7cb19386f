"""ElixirScope tracing on real clusters: propagation, collection, correlation, failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import worker_client

import foundation_dask as fd
from foundation_dask import scope
from foundation_dask.scope.tracing import TraceNotFoundError
from tests.support import wait_for, worker_names

#: threads per worker of the module's cluster_client (nested tasks need a second one)
CLUSTER_THREADS = 2


@scope.traced
def leaf(i: int) -> int:
    return i * 2


def fan_out(i: int) -> int:
    with scope.span("fan_out.inner", i=i), worker_client() as c:
        return c.submit(leaf, i, pure=False).result()


def explode(i: int) -> None:
    raise ZeroDivisionError(f"bad input {i}")


class Accumulator:
    def __init__(self) -> None:
        self.total = 0

    def add(self, x: int) -> int:
        with scope.span("accumulate"):
            self.total += x
        return self.total

    async def aadd(self, x: int) -> int:
        self.total += x
        return self.total


def rows(data, **match):
    ev = data.events
    for k, v in match.items():
        ev = ev[ev[k] == v]
    return ev


@pytest.mark.timeout(120)
def test_context_follows_tasks_nested_tasks_actors(cluster_client):
    c = cluster_client
    acc = fd.ProcessManager.start_singleton(Accumulator, name="acc-trace")
    with scope.trace("propagation") as t:
        with scope.span("submit-step"):
            assert c.gather(c.map(fan_out, range(4), pure=False)) == [0, 2, 4, 6]
        assert dask.delayed(leaf)(21).compute() == 42
        acc.add(5).result()
        acc.aadd(1).result()
        with pytest.raises(ZeroDivisionError):
            c.submit(explode, 7).result()
    data = scope.collect_trace_data(t.trace_id)
    ev = data.events
    by_id = ev.set_index("span_id")

    root = rows(data, kind="trace").iloc[0]
    assert root["name"] == "propagation" and root["parent_id"] is None
    step = rows(data, name="submit-step").iloc[0]
    assert step["parent_id"] == root["span_id"]

    # tasks submitted from the notebook are children of the span they were submitted in
    tasks = rows(data, kind="task", name="fan_out")
    assert len(tasks) == 4 and set(tasks["parent_id"]) == {step["span_id"]}
    assert set(tasks["node"]) <= set(c.scheduler_info()["workers"])
    # spans inside a task are children of the task; tasks submitted inside them, theirs
    inner = rows(data, name="fan_out.inner")
    assert len(inner) == 4 and set(inner["parent_id"]) == set(tasks["span_id"])
    leaf_tasks = rows(data, kind="task", name="leaf")
    nested = leaf_tasks[leaf_tasks["parent_id"].isin(set(inner["span_id"]))]
    assert len(nested) == 4
    # @traced inside each nested task is the task's child
    leaf_spans = rows(data, kind="span", name="leaf")
    assert set(leaf_spans["parent_id"]) >= set(nested["span_id"])
    # delayed compute carries the context too
    assert (leaf_tasks["parent_id"] == root["span_id"]).sum() == 1

    # supervised process calls carry it explicitly
    calls = rows(data, kind="actor")
    assert set(calls["name"]) == {"Accumulator.add", "Accumulator.aadd"}
    assert set(calls["parent_id"]) == {root["span_id"]}
    inside = rows(data, name="accumulate").iloc[0]
    assert by_id.loc[inside["parent_id"], "name"] == "Accumulator.add"

    # the error: type, message, traceback, node, span
    err = data.errors.iloc[0]
    assert len(data.errors) == 1
    assert err["error_type"] == "ZeroDivisionError" and "bad input 7" in err["error_message"]
    assert "explode" in err["traceback"] and err["node"] in c.scheduler_info()["workers"]

    assert data.summary["cross_node_links"] > 0
    assert data.summary["critical_path"][0]["name"] == "propagation"
    assert data.timeline["start_ns"].is_monotonic_increasing
    assert not data.partial
    assert ev["span_id"].is_unique
    fd.ProcessManager.stop("acc-trace")


@pytest.mark.timeout(120)
def test_trace_lifecycle_and_bad_input(cluster_client):
    t = scope.start_cluster_trace(scope="lifecycle", options="sample=0.5, verbose")
    assert t.info()["options"] == {"sample": "0.5", "verbose": True}
    active = scope.active_traces()
    assert t.trace_id in set(active["trace_id"])
    same = scope.start_cluster_trace(scope="lifecycle", trace_id=t.trace_id)
    assert same.info()["started_at"] == t.info()["started_at"]
    done = scope.stop_trace(t.trace_id, results={"ok": 1})
    assert done["status"] == "completed" and done["results"] == {"ok": 1}
    assert t.trace_id not in set(scope.active_traces()["trace_id"])
    assert t.trace_id in set(scope.active_traces(include_completed=True)["trace_id"])

    with pytest.raises(TraceNotFoundError, match="No trace 'nope'"):
        scope.collect_trace_data("nope")
    with pytest.raises(TraceNotFoundError):
        scope.stop_trace("nope")
    with pytest.raises(ValueError, match="look like JSON"):
        scope.start_cluster_trace(scope="x", options="{bad json")
    with pytest.raises(ValueError, match="has no key"):
        scope.start_cluster_trace(scope="x", options="=3")
    with pytest.raises(TypeError, match="options must be"):
        scope.start_cluster_trace(scope="x", options=42)
    with pytest.raises(ValueError, match="not valid"):
        scope.start_cluster_trace(scope="x", trace_id="has:colon")
    with pytest.raises(ValueError, match="timeout"):
        scope.collect_trace_data(t.trace_id, timeout=0)
    scope.forget_trace(t.trace_id)
    with pytest.raises(TraceNotFoundError):
        scope.collect_trace_data(t.trace_id)


@pytest.mark.timeout(120)
def test_spans_outside_a_trace_record_nothing(cluster_client):
    from foundation_dask.tracecontext import recorder

    before = {k: len(v) for k, v in recorder.buffers.items()}
    with scope.span("nothing"):
        leaf(1)
    assert {k: len(v) for k, v in recorder.buffers.items()} == before
    assert scope.current() is None


@pytest.mark.timeout(120)
def test_a_cancelled_task_is_not_a_lost_one(cluster_client):
    """A task the client cancels while it runs (as a race cancels the chunks of a
    candidate it stopped) is no error of the trace; the one that finishes is there."""
    from tests._helpers import busy

    c = cluster_client
    with scope.trace("cancelled") as traced:
        doomed = c.submit(busy, 1.0, pure=False)
        wait_for(lambda: any(doomed.key in keys for keys in c.processing().values()), 30)
        c.cancel([doomed])
        kept = c.submit(busy, 0.05, pure=False)
        kept.result(timeout=30)

    def finished() -> list | None:
        ev = scope.collect_trace_data(traced.trace_id).events
        return [ev] if (ev["key"] == kept.key).any() else None

    events = wait_for(finished, 30, what="the finished task in the trace")[0]
    assert not (events["status"] != "ok").any(), events[events["status"] != "ok"]


def block_loop(flag: str, seconds: float) -> None:
    """Run by client.run on the worker's event loop: it cannot answer meanwhile."""
    Path(flag).write_text("blocked")
    time.sleep(seconds)


@pytest.mark.timeout(120)
def test_unresponsive_node_gives_partial_result(cluster_client, tmp_path):
    c = cluster_client
    with scope.trace("partial") as t:
        c.gather(c.map(leaf, range(4), pure=False))
    stuck = sorted(c.scheduler_info()["workers"])[0]
    # block that worker's event loop for a while (client.run runs plain functions on it)
    flag = tmp_path / "blocked"
    blocker = threading.Thread(
        target=c.run, args=(block_loop, str(flag), 6), kwargs={"workers": [stuck]}
    )
    blocker.start()
    wait_for(flag.exists)
    data = scope.collect_trace_data(t.trace_id, timeout=0.5)
    # bounded by the per-node timeout, not by the stall: the node is still blocked
    stalled = blocker.is_alive()
    blocker.join()
    assert stalled
    assert data.missing_nodes == [stuck]
    assert data.partial
    assert "missing" in repr(data)
    # the scheduler still saw every task
    assert len(rows(data, kind="task")) == 4
    # and clocks were measured for the nodes that answered, with an error bound
    other = [w for w in c.scheduler_info()["workers"] if w != stuck][0]
    assert abs(data.clock[other]["offset_ms"]) < 1000 and data.clock[other]["error_ms"] >= 0


def slow(i: int) -> int:
    time.sleep(0.05)
    return i


@pytest.mark.timeout(180)
def test_worker_death_mid_trace(fd_client, subprocess_cluster):
    c = fd_client
    with scope.trace("dying") as t:
        c.gather(c.map(slow, range(6), pure=False))
        victim = worker_names(c)["w0"]
        subprocess_cluster.kill("w0")
        c.gather(c.map(slow, range(6, 12), pure=False))
    data = scope.collect_trace_data(t.trace_id, timeout=5)
    assert victim in data.lost_nodes and data.partial
    tasks = rows(data, kind="task", name="slow")
    done = tasks[tasks["status"] == "ok"]
    assert sorted(done["key"]) == sorted(set(done["key"])) and len(done) == 12  # all seen once
    # tasks the scheduler sent to the dying worker before it noticed the death are listed
    # as lost there, and ran again elsewhere
    lost = tasks[tasks["error_type"] == "TaskLost"]
    assert set(lost["node"]) <= {victim} and set(lost["key"]) <= set(done["key"]), (
        victim, lost[["node", "key", "error_message"]].to_dict("records"), worker_names(c))
    assert victim not in data.missing_nodes


@pytest.mark.timeout(180)
def test_trace_coordinator_survives_sigkill(fd_client, subprocess_cluster):
    t = scope.start_cluster_trace(scope="survivor", options={"level": 2})
    info = t.info()
    pid_addr = t.coordinator.info()["worker"]
    names = {a: n for n, a in worker_names(fd_client).items()}
    subprocess_cluster.kill(names[pid_addr])
    after = t.info()
    assert after == info  # restored from its checkpoint on the other worker
    assert t.coordinator.info()["worker"] != pid_addr
    assert t.stop()["status"] == "completed"


def span_here(trace_id: str, span_id: int) -> int:
    """Record one span of the trace in this process (run on the scheduler)."""
    with scope.continue_trace((trace_id, span_id)), scope.span("on-scheduler"):
        pass
    return 1


def held_for(trace_id: str, dask_scheduler=None, dask_worker=None) -> list[str]:
    """What the scheduler or worker this runs on still keeps for ``trace_id``."""
    from foundation_dask.core.plugin import extension
    from foundation_dask.scope.tracing import TraceCoordinator
    from foundation_dask.tracecontext import recorder

    host = dask_scheduler if dask_scheduler is not None else dask_worker
    held = [f"recorder.{name}" for name in ("buffers", "dropped")
            if trace_id in getattr(recorder, name)]
    if trace_id in getattr(extension(host, "scope"), "tasks", {}):
        held.append("ScopeExtension.tasks")
    hosts = getattr(extension(host, "processes"), "hosts", {}) if dask_worker else {}
    held += [
        "coordinator" for h in list(hosts.values())
        if isinstance(h._instance, TraceCoordinator)
        and h._instance.state["trace_id"] == trace_id
    ]
    return held


@pytest.mark.timeout(180)
def test_forget_trace_frees_the_scheduler_and_the_workers(fd_client):
    c = fd_client
    with scope.trace("forgotten") as t:
        c.gather(c.map(leaf, range(20), pure=False))
        root = scope.current()
        assert c.run_on_scheduler(span_here, t.trace_id, root.span_id) == 1
    workers = sorted(c.scheduler_info()["workers"])
    assert "ScopeExtension.tasks" in c.run_on_scheduler(held_for, t.trace_id)
    assert "recorder.buffers" in c.run_on_scheduler(held_for, t.trace_id)
    on_workers = c.run(held_for, t.trace_id)
    assert sum("recorder.buffers" in held for held in on_workers.values()) >= 1
    assert sum(held.count("coordinator") for held in on_workers.values()) == 1

    scope.forget_trace(t.trace_id)
    assert c.run_on_scheduler(held_for, t.trace_id) == []
    assert c.run(held_for, t.trace_id) == {w: [] for w in workers}
    assert fd.ProcessManager.lookup(("trace_coordinator", t.trace_id)) is None
    with pytest.raises(TraceNotFoundError):
        scope.collect_trace_data(t.trace_id)
