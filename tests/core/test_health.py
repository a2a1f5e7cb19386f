"""HealthMonitor on real clusters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import dask
import pandas as pd
import psutil
import pytest
from distributed.utils_test import captured_logger, gen_cluster

import foundation_dask as fd
from foundation_dask.core.health import (
    WORKER_METRIC,
    ClusterHealth,
    NodeHealth,
)
from tests.support import wait_for, worker_names


async def health_when(
    c: Any, condition: Callable[[ClusterHealth], bool], timeout: float = 20.0, **kwargs: Any
) -> ClusterHealth:
    """Ask for the cluster health until ``condition`` holds for the report."""
    deadline = time.monotonic() + timeout
    health = None
    while time.monotonic() < deadline:
        health = await fd.HealthMonitor.get_cluster_health(client=c, **kwargs)
        if condition(health):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s; last report:\n{health}")


def have_load(health: ClusterHealth) -> bool:
    return bool(health.nodes) and all(n.load_avg is not None for n in health.nodes)


@pytest.mark.timeout(60)
@gen_cluster(client=True, worker_kwargs={"memory_limit": "2 GiB"})
async def test_cluster_health_nodes(c, s, a, b) -> None:
    await fd.install_plugins(c)
    health = await health_when(c, have_load)

    assert isinstance(health, ClusterHealth)
    assert health.cluster.connected_nodes == 2
    assert {n.node for n in health.nodes} == {a.address, b.address}
    assert abs(health.timestamp - time.time()) < 60
    by_address = {n.node: n for n in health.nodes}
    for worker in (a, b):
        node = by_address[worker.address]
        assert isinstance(node, NodeHealth)
        assert node.name == str(worker.name)
        assert node.nthreads == worker.state.nthreads
        assert node.cores == psutil.cpu_count()
        assert node.load_avg >= 0
        assert node.load_per_core == pytest.approx(node.load_avg / node.cores)
        assert node.memory_limit == 2 * 2**30
        assert node.memory_bytes > 0
        assert node.memory == pytest.approx(100 * node.memory_bytes / node.memory_limit)
        assert node.threads is not None and node.threads >= 1
        assert node.process_count >= 0
        assert 0 <= node.last_seen < 10
        assert node.event_loop_lag >= 0
        assert node.worker_status == "running"
    # the load average is the custom metric that arrives with heartbeats
    assert s.workers[a.address].metrics[WORKER_METRIC]["load_avg"][0] >= 0

    health = await health_when(c, lambda h: h.status == "healthy")
    assert all(n.status == "healthy" and n.reasons == [] for n in health.nodes)
    assert health.thresholds == {
        "degraded_cpu": 90.0,
        "degraded_memory": 85.0,
        "degraded_event_loop_lag": 1.0,
        "unreachable_after": 10.0,
    }

    # both workers run on this host: its spare capacity is counted once, from the
    # most recent figures
    assert len({n.host for n in health.nodes}) == 1
    fresh = min(health.nodes, key=lambda n: n.last_seen)
    expected = max(0.0, fresh.cores - fresh.load_avg)
    assert health.available_capacity() == pytest.approx(expected)
    assert 0 <= health.available_capacity() <= fresh.cores

    mem = health.performance.memory_usage
    assert mem.bytes == sum(n.memory_bytes for n in health.nodes)
    assert mem.limit == 4 * 2**30
    assert mem.percent == pytest.approx(100 * mem.bytes / mem.limit)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_frame_and_reprs(c, s, a, b) -> None:
    await fd.install_plugins(c)
    health = await health_when(c, have_load)

    frame = health.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 2
    for column in ["node", "name", "status", "reasons", "load_avg", "load_per_core", "cores",
                   "nthreads", "cpu", "memory", "memory_bytes", "process_count", "threads",
                   "tasks", "event_loop_lag", "last_seen"]:
        assert column in frame.columns
    assert set(frame["node"]) == {a.address, b.address}
    assert frame["load_avg"].notna().all()

    text = str(health)
    assert text == repr(health)
    assert "2 nodes" in text
    assert a.address in text and b.address in text
    assert "load" in text.splitlines()[1]

    page = health._repr_html_()
    assert page.count("<tr>") == 3  # header and two nodes
    assert a.address in page
    assert "color:" in page


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_degraded_nodes(c, s, a, b) -> None:
    await fd.install_plugins(c)
    await health_when(c, have_load)

    # thresholds from the scheduler's config
    with dask.config.set({"foundation.health.degraded-cpu": -1}):
        health = await fd.HealthMonitor.get_cluster_health()
    assert [n.status for n in health.nodes] == ["degraded", "degraded"]
    for node in health.nodes:
        assert any(r.startswith("cpu ") and "> -1%" in r for r in node.reasons), node.reasons
    assert health.status == "critical"
    assert health.available_capacity() == 0
    assert health.counts() == {"healthy": 0, "degraded": 2, "unreachable": 0}
    assert "degraded" in health._repr_html_()
    assert "cpu " in health.to_frame()["reasons"].iloc[0]

    # thresholds as arguments
    health = await fd.HealthMonitor.get_cluster_health(degraded_event_loop_lag=-1)
    assert all(n.status == "degraded" for n in health.nodes)
    assert all(any("event-loop lag" in r for r in n.reasons) for n in health.nodes)
    assert health.thresholds["degraded_event_loop_lag"] == -1


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_unreachable_and_removed_node(c, s, a, b) -> None:
    await fd.install_plugins(c)
    await health_when(c, have_load)

    a.periodic_callbacks["heartbeat"].stop()
    try:
        health = await health_when(
            c,
            lambda h: h.node(a.address).status == "unreachable"
            and h.node(b.address).status == "healthy",
            unreachable_after=1.5,
        )
        reasons = health.node(a.address).reasons
        assert len(reasons) == 1 and reasons[0].startswith("not heard from for")
        assert health.node(a.address).last_seen > 1.5
        assert health.status == "degraded"
    finally:
        a.periodic_callbacks["heartbeat"].start()
    await health_when(c, lambda h: h.node(a.address).status == "healthy", unreachable_after=1.5)

    await b.close()
    health = await health_when(c, lambda h: h.cluster.connected_nodes == 1)
    assert [n.node for n in health.nodes] == [a.address]
    with pytest.raises(KeyError):
        health.node(b.address)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_performance_rates(c, s, a, b) -> None:
    await fd.install_plugins(c)
    await c.gather(c.map(lambda x: x + 1, range(20)))

    health = await health_when(c, lambda h: h.performance.tasks_per_sec > 0)
    perf = health.performance
    assert perf.tasks_total >= 20
    assert perf.transitions_per_sec > 0
    assert 0 < perf.window <= 11
    assert perf.message_throughput_per_sec >= 0
    assert perf.messages_total is None or perf.messages_total >= 0
    hub = s.extensions["foundation"]["channels"]
    if getattr(hub, "message_count", None) is None:
        assert perf.messages_total is None and perf.message_throughput_per_sec == 0


# ------------------------------------------------------------------ subprocess cluster


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_health_on_subprocess_cluster(fd_client, subprocess_cluster) -> None:
    names = worker_names(fd_client)
    health = wait_for(
        lambda: (h := fd.HealthMonitor.get_cluster_health())
        and have_load(h)
        and h.status == "healthy"
        and h
    )
    assert health.cluster.connected_nodes == 2
    assert {n.name for n in health.nodes} == {"w0", "w1"}
    for node in health.nodes:
        assert node.node == names[node.name]
        assert node.nthreads == 1
        assert node.memory_limit == 2 * 2**30
        assert node.cores == psutil.cpu_count()
        assert node.threads >= 1  # OS threads of the worker process (the pool starts lazily)

    subprocess_cluster.kill("w1")
    health = wait_for(
        lambda: (h := fd.HealthMonitor.get_cluster_health()).cluster.connected_nodes == 1 and h
    )
    assert [n.name for n in health.nodes] == ["w0"]


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_bad_thresholds_are_clear_errors(c, s, a, b) -> None:
    with pytest.raises(ValueError, match="degraded_cpu must be a number of percent.*'abc'"):
        await fd.HealthMonitor.get_cluster_health(degraded_cpu="abc", client=c)
    with pytest.raises(ValueError, match="unreachable_after must be a duration.*'soon'"):
        await fd.HealthMonitor.get_cluster_health(unreachable_after="soon", client=c)
    # a bad setting on the scheduler: named, and no traceback in the scheduler's log
    with captured_logger("distributed.core") as log:
        with dask.config.set({"foundation.health.degraded-cpu": "abc"}), \
                pytest.raises(ValueError, match="setting foundation.health.degraded-cpu"):
            await fd.HealthMonitor.get_cluster_health(client=c)
        # a raw request with a bad value gets the message as data
        reply = await c.scheduler.foundation_health(degraded_memory="lots")
    assert "degraded_memory must be a number" in reply["error"]
    assert "Exception while handling op" not in log.getvalue()
    health = await fd.HealthMonitor.get_cluster_health(degraded_cpu=50, client=c)
    assert health.thresholds["degraded_cpu"] == 50.0
