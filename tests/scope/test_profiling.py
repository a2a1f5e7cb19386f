"""Cluster profiling (``scope.start_cluster_profiling`` / ``analyze_cluster_performance``)
on a real cluster of two single-thread worker processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import distributed
import pandas as pd
import pytest

import foundation_dask as fd
from foundation_dask import scope
from foundation_dask.core.plugin import extension
from foundation_dask.scope.profiling import (
    ALL_EXTENSIONS,
    EXTENSION_COLUMNS,
    HOTSPOT_COLUMNS,
    NODE_COLUMNS,
    PROFILER_NAME,
    count_innermost_frames,
    function_stats,
)
from tests.support import SubprocessCluster, wait_for, worker_names

WINDOW_MS = 3000


def hot_spin(n: int) -> int:
    """Pure-Python CPU work: the hotspot the tests look for."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def destroy_profiler(dask_worker: distributed.Worker) -> int:
    """Make this worker's profiler stop answering (its host is dropped, the supervisor
    still lists it): calls to it hang until the caller's timeout."""
    procs = extension(dask_worker, "processes")
    hosts = {k: h for k, h in procs.hosts.items() if type(h._instance).__name__ == "NodeProfiler"}
    for key, host in hosts.items():
        procs.destroy(key, host._token)  # as the supervisor would: with the host's token
    return len(hosts)


def idle(client: distributed.Client) -> bool:
    return not any(client.processing().values())



@pytest.fixture(scope="module")
def workers(cluster_client: distributed.Client) -> tuple[str, str]:
    busy, quiet = sorted(cluster_client.scheduler_info()["workers"])
    return busy, quiet


@contextlib.contextmanager
def busy_loops(n: int = 2) -> Iterator[list[subprocess.Popen]]:
    """``n`` processes spinning in a pure-Python loop: a machine busy with other work."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=30)


def profile_naps_then_spins(c: distributed.Client, busy: str) -> dict[str, Any]:
    """A profiling window where ``busy`` first sleeps in ``nap`` (0.68 s in 9 tasks),
    then runs ``hot_spin``; analysed right away (waiting for the window's end)."""
    c.gather(c.submit(hot_spin, 10, workers=[busy], pure=False))  # warm up
    with fd.Channels.subscribe("control") as control:
        t0 = time.monotonic()
        session = scope.start_cluster_profiling(duration_ms=WINDOW_MS)
        naps = [c.submit(nap, 0.01, workers=[busy], pure=False) for _ in range(8)]
        naps.append(c.submit(nap, 0.6, workers=[busy], pure=False))
        c.gather(naps)  # all inside the window, before the CPU work
        spins = [c.submit(hot_spin, 300_000, workers=[busy], pure=False) for _ in range(80)]
        report = scope.analyze_cluster_performance()
        elapsed = time.monotonic() - t0
        announced = control.get(timeout=10).payload
        while announced[0] != "start_profiling":  # other control traffic
            announced = control.get(timeout=10).payload
    c.cancel(spins + naps)
    wait_for(lambda: idle(c), timeout=60)
    return {"session": session, "report": report, "elapsed": elapsed, "announced": announced}


@pytest.fixture(scope="module")
def busy_window(cluster_client: distributed.Client,
                workers: tuple[str, str]) -> dict[str, Any]:
    """One profiling window with work pinned to one worker; analysed three ways."""
    c = cluster_client
    busy, quiet = workers
    window = profile_naps_then_spins(c, busy)
    session, report = window["session"], window["report"]
    # a threshold between the two nodes' CPU (how much CPU the busy worker gets depends
    # on what else runs on the machine)
    cpu = report.node_details.set_index("node")["cpu"]
    threshold = round((cpu[busy] + cpu[quiet]) / 2, 1)
    with dask.config.set({"foundation.scope.bottleneck-cpu": threshold}):
        low_cpu = session.analyze()
    with dask.config.set({"foundation.scope.bottleneck-cpu": 10_000}):
        high_cpu = session.analyze()
    return {**window, "low_cpu": low_cpu, "high_cpu": high_cpu, "cpu_threshold": threshold}


@pytest.mark.timeout(180)
def test_session_and_report_shape(busy_window: dict[str, Any], workers: tuple[str, str]):
    session, report = busy_window["session"], busy_window["report"]
    busy, quiet = workers
    assert set(session.profilers) == {busy, quiet}
    assert session.duration_ms == WINDOW_MS
    assert session.collection_time == session.started_at + WINDOW_MS
    assert busy_window["announced"] == ("start_profiling", WINDOW_MS, session.started_at)
    # analysing right away waited for the window instead of cutting it short
    assert busy_window["elapsed"] >= WINDOW_MS / 1000
    assert any("waited" in note for note in report.notes)

    overview = report.cluster_overview
    assert overview["nodes"] == overview["profiled_nodes"] == 2
    assert overview["healthy_nodes"] >= 1  # the busy node may be "degraded" by its CPU
    assert overview["total_cores"] >= 1
    assert overview["tasks_executed"] >= 9
    assert overview["tasks_per_sec"] == pytest.approx(overview["tasks_executed"] / 3.0)
    assert overview["memory_bytes"] > 0
    assert overview["samples"] > 0

    details = report.node_details
    assert isinstance(details, pd.DataFrame)
    assert list(details.columns) == NODE_COLUMNS
    assert sorted(details["node"]) == sorted(workers)
    assert set(details["status"]) == {"success"}
    rows = details.set_index("node")
    assert rows.loc[busy, "tasks_executed"] >= 9
    assert rows.loc[quiet, "tasks_executed"] == 0
    assert rows.loc[busy, "cpu"] > rows.loc[quiet, "cpu"]
    assert (rows["memory_bytes"] > 0).all()
    assert (rows["threads"] >= 1).all()
    assert (rows["process_count"] == 0).all()  # the profilers themselves are not counted
    assert (rows["event_loop_lag"] >= 0).all()
    assert (rows["window_s"] >= WINDOW_MS / 1000 * 0.95).all()
    assert report.to_frame().equals(details)
    html = report._repr_html_()
    assert "hot_spin" in html and busy in html
    assert "PerformanceReport" in repr(report) and "hot_spin" in repr(report)


@pytest.mark.timeout(180)
def test_top_hotspot_is_the_hot_function(busy_window: dict[str, Any],
                                         workers: tuple[str, str]):
    hotspots = busy_window["report"].code_hotspots
    busy, _ = workers
    assert list(hotspots.columns) == HOTSPOT_COLUMNS
    assert len(hotspots) <= 20
    top = hotspots.iloc[0]
    assert top["name"] == "hot_spin"
    assert top["function"] == "tests.scope.test_profiling.hot_spin"
    assert top["location"] == f"{__file__}:{hot_spin.__code__.co_firstlineno}"
    assert top["samples"] > 0
    assert top["self_time_s"] > 0 and top["self_wall_s"] > 0
    assert top["total_time_s"] >= top["self_time_s"]
    assert top["total_wall_s"] >= top["self_wall_s"]
    assert top["nodes"] == [busy]
    assert top["calls"] >= 1
    assert hotspots["self_time_s"].is_monotonic_decreasing
    # ranked by CPU time, wall time beside it: the sleeping function's 0.68 s are wall
    assert hotspots.attrs["clock"] == busy_window["report"].cluster_overview["hotspot_clock"]
    assert hotspots.attrs["clock"] == "cpu"
    naps = hotspots[hotspots["name"] == "nap"]
    assert len(naps) == 1 and naps.iloc[0]["calls"] == 9
    assert naps.iloc[0]["self_wall_s"] == pytest.approx(0.68, abs=0.25)
    assert naps.iloc[0]["self_time_s"] < naps.iloc[0]["self_wall_s"] / 2
    overview = busy_window["report"].cluster_overview
    assert 0 < overview["profiled_cpu_s"] <= overview["window_s"] * 1.5
    assert 0 < overview["sampler_cpu_s"] < overview["profiled_cpu_s"]


@pytest.mark.timeout(240)
def test_hot_function_ranks_first_on_a_loaded_machine(cluster_client: distributed.Client,
                                                       workers: tuple[str, str],
                                                       busy_window: dict[str, Any]):
    # two processes compete for the CPU with the workers: the sleeping function gets a
    # sampler running on time, the CPU-bound one a starved one; CPU time still ranks
    busy, _ = workers
    with busy_loops(2):
        report = profile_naps_then_spins(cluster_client, busy)["report"]
    hotspots = report.code_hotspots
    assert hotspots.iloc[0]["name"] == "hot_spin", hotspots.head(5)
    naps = hotspots[hotspots["name"] == "nap"]
    assert len(naps) == 1 and naps.iloc[0]["calls"] == 9
    assert naps.iloc[0]["self_wall_s"] == pytest.approx(0.68, abs=0.25)
    assert naps.iloc[0]["self_time_s"] < naps.iloc[0]["self_wall_s"] / 2
    assert report.cluster_overview["hotspot_clock"] == "cpu"


@pytest.mark.timeout(180)
def test_imbalance_and_idle_suggestions(busy_window: dict[str, Any], workers: tuple[str, str]):
    report = busy_window["report"]
    busy, quiet = workers
    executed = report.node_details.set_index("node")["tasks_executed"]
    by_kind = {s["kind"]: s for s in report.optimization_suggestions}

    imbalance = by_kind["task_imbalance"]
    numbers = imbalance["numbers"]
    assert numbers["max_node"] == busy and numbers["min_node"] == quiet
    assert numbers["max"] == executed[busy] and numbers["min"] == 0
    assert numbers["factor"] == 2
    assert busy in imbalance["message"] and quiet in imbalance["message"]
    assert f"executed {int(executed[busy])} tasks" in imbalance["message"]

    idle_nodes = by_kind["idle_nodes"]
    assert idle_nodes["numbers"]["idle_nodes"] == [quiet]
    assert idle_nodes["numbers"]["busy_nodes"] == [busy]
    assert idle_nodes["numbers"]["per_node"][quiet]["tasks_executed"] == 0
    assert quiet in idle_nodes["message"] and busy in idle_nodes["message"]
    assert "process_imbalance" not in by_kind


@pytest.mark.timeout(180)
def test_straggler_detected(busy_window: dict[str, Any], workers: tuple[str, str]):
    busy, _ = workers
    stragglers = {
        b["prefix"]: b for b in busy_window["report"].performance_bottlenecks
        if b["type"] == "straggler"
    }
    # (on a loaded machine some hot_spin tasks may be stragglers too)
    nap_b = stragglers["nap"]
    assert nap_b["affected_nodes"] == [busy]
    assert nap_b["tasks"] == 9
    assert nap_b["threshold"] == 3
    assert nap_b["median_s"] < 0.1
    slowest = nap_b["values"][0]
    assert slowest["duration_s"] >= 0.6 and slowest["node"] == busy
    assert slowest["ratio"] > 3


@pytest.mark.timeout(180)
def test_cpu_threshold_comes_from_dask_config(busy_window: dict[str, Any],
                                              workers: tuple[str, str]):
    busy, _ = workers
    low = busy_window["low_cpu"]
    cpu = [b for b in low.performance_bottlenecks if b["type"] == "cpu_bottleneck"]
    threshold = busy_window["cpu_threshold"]
    assert len(cpu) == 1
    assert cpu[0]["affected_nodes"] == [busy]
    assert cpu[0]["threshold"] == threshold
    assert cpu[0]["values"][busy] > threshold
    assert low.thresholds["bottleneck-cpu"] == threshold
    assert busy_window["report"].thresholds["bottleneck-cpu"] == 80
    high = busy_window["high_cpu"]
    assert not [b for b in high.performance_bottlenecks if b["type"] == "cpu_bottleneck"]
    # analysing again gives the same window figures
    again = low.node_details.set_index("node")["tasks_executed"]
    first = busy_window["report"].node_details.set_index("node")["tasks_executed"]
    assert again.equals(first)


@pytest.mark.timeout(180)
def test_dask_profile_source(cluster_client: distributed.Client, workers: tuple[str, str],
                             busy_window: dict[str, Any]):
    c = cluster_client
    busy, quiet = workers
    session = scope.start_cluster_profiling(1500, {"source": "dask"})
    spins = [c.submit(hot_spin, 300_000, workers=[busy], pure=False) for _ in range(20)]
    report = scope.analyze_cluster_performance(session)
    c.cancel(spins)
    wait_for(lambda: idle(c), timeout=60)
    assert report.cluster_overview["profile_source"] == "dask"
    # Dask's profiler has no CPU times: its hotspots rank by the wall time of busy threads
    assert report.cluster_overview["hotspot_clock"] == "wall"
    assert any("'dask' source has no CPU times" in note for note in report.notes)
    assert report.code_hotspots["self_time_s"].equals(report.code_hotspots["self_wall_s"])
    top = report.code_hotspots.iloc[0]
    assert top["name"] == "hot_spin"
    assert top["samples"] > 0 and top["nodes"] == [busy]
    assert report.node_details.set_index("node").loc[quiet, "samples"] == 0


def _handlers(dask_scheduler: distributed.Scheduler) -> dict[str, int]:
    return {op: id(fn) for op, fn in dask_scheduler.handlers.items()}


@pytest.mark.timeout(180)
def test_foundation_itself_is_profiled_on_the_scheduler(cluster_client: distributed.Client):
    """A session also meters Foundation's own extensions on the scheduler, for its window."""
    from foundation_dask.views import SchedulerExtensionsView
    from tests._helpers import Ledger

    c = cluster_client
    own = c.run_on_scheduler(_handlers)
    session = scope.start_cluster_profiling(duration_ms=WINDOW_MS)
    assert session.scheduler_meter
    assert c.run_on_scheduler(_handlers) != own  # Foundation's handlers are metered
    for i in range(100):
        fd.Channels.broadcast("telemetry", i)
    ledger = fd.ProcessManager.start_singleton(Ledger, name="metered-ledger")
    try:
        for i in range(5):
            ledger.append(i).result(timeout=30)
        report = scope.analyze_cluster_performance(session)
    finally:
        fd.ProcessManager.stop("metered-ledger")
    table = report.scheduler_extensions
    assert list(table.columns) == EXTENSION_COLUMNS
    assert table["subsystem"].iloc[-1] == ALL_EXTENSIONS
    rows = table.set_index("subsystem")
    # the broadcasts (sent in batches) and the singleton's start and calls
    assert rows.loc["channels", "calls"] >= 1, table
    assert rows.loc["processes", "calls"] >= 1, table
    parts = rows.drop(ALL_EXTENSIONS)
    assert list(parts.seconds) == sorted(parts.seconds, reverse=True)
    assert rows.loc[ALL_EXTENSIONS, "seconds"] == pytest.approx(parts.seconds.sum())
    assert rows.loc[ALL_EXTENSIONS, "calls"] == parts.calls.sum()
    assert 0 < rows.loc[ALL_EXTENSIONS, "share"] < 1
    overview = report.cluster_overview
    assert overview["scheduler_extensions_s"] == pytest.approx(parts.seconds.sum())
    assert overview["scheduler_metered_s"] >= WINDOW_MS / 1000 * 0.9
    assert "Foundation on the scheduler" in repr(report)
    assert "Foundation on the scheduler" in report._repr_html_()
    # the meter ended with the window: the scheduler's handlers are its own again, and
    # what runs after the window is not counted
    wait_for(lambda: c.run_on_scheduler(_handlers) == own, timeout=30)
    for i in range(50):
        fd.Channels.broadcast("telemetry", i)
    again = session.analyze().scheduler_extensions
    assert again.equals(table)
    view = SchedulerExtensionsView()
    view.update(report)
    assert list(view.source.data["subsystem"]) == list(parts.index)
    assert "Foundation on the scheduler" in view.summary.text


@pytest.mark.timeout(180)
def test_analysis_before_the_end_without_waiting(busy_window: dict[str, Any]):
    session = scope.start_cluster_profiling(5000)
    report = scope.analyze_cluster_performance(wait=False)
    assert any("window still open" in note for note in report.notes)
    assert set(report.node_details["status"]) == {"success"}
    assert (report.node_details["window_s"] < 5).all()
    assert session.remaining_s > 0


@pytest.mark.timeout(180)
def test_node_that_does_not_answer_is_rpc_failed(cluster_client: distributed.Client,
                                                 workers: tuple[str, str],
                                                 busy_window: dict[str, Any]):
    c = cluster_client
    busy, quiet = workers
    session = scope.start_cluster_profiling(500)
    assert c.run(destroy_profiler, workers=[quiet]) == {quiet: 1}
    report = scope.analyze_cluster_performance(session, timeout=1.0)
    rows = report.node_details.set_index("node")
    assert rows.loc[busy, "status"] == "success"
    assert rows.loc[quiet, "status"] == "rpc_failed"
    assert "TimeoutError" in rows.loc[quiet, "error"]
    assert report.cluster_overview["failed_nodes"] == [quiet]
    assert report.cluster_overview["profiled_nodes"] == 1
    # the health of the node is still reported
    assert rows.loc[quiet, "health"] == "healthy"
    assert fd.ProcessManager.stop(PROFILER_NAME)


@pytest.mark.timeout(180)
def test_worker_that_died_is_unreachable(tmp_path: Path) -> None:
    cluster = SubprocessCluster(tmp_path).start(2)
    try:
        with distributed.Client(cluster.address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
            fd.install_plugins(c)
            names = worker_names(c)
            with c.as_current():
                session = scope.start_cluster_profiling(300)
                assert set(session.profilers) == set(names.values())
                cluster.kill("w1")
                wait_for(lambda: len(c.scheduler_info()["workers"]) == 1, timeout=60)
                report = scope.analyze_cluster_performance(session, timeout=5)
        rows = report.node_details.set_index("node")
        assert rows.loc[names["w0"], "status"] == "success"
        assert rows.loc[names["w1"], "status"] == "unreachable"
        assert "left the cluster" in rows.loc[names["w1"], "error"]
        assert report.cluster_overview["failed_nodes"] == [names["w1"]]
    finally:
        cluster.close()


@pytest.mark.timeout(30)
def test_invalid_arguments_explain() -> None:
    with pytest.raises(ValueError, match="positive"):
        scope.start_cluster_profiling(0)
    with pytest.raises(ValueError, match="unknown profiling options"):
        scope.start_cluster_profiling(100, {"sources": "dask"})
    with pytest.raises(ValueError, match="source must be one of"):
        scope.start_cluster_profiling(100, "source=perf")


def _node(name: str, count: int, *children: dict[str, Any]) -> dict[str, Any]:
    return {
        "identifier": f"{name};f.py;1", "count": count,
        "description": {"filename": "f.py", "name": name, "line_number": 1, "line": ""},
        "children": {c["identifier"]: c for c in children},
    }


def test_innermost_frames_of_dask_trees_are_counted() -> None:
    # samples: 7 x run -> work -> loop, 1 x run -> a, 1 x run -> b. Dask's worker
    # profile does not count the innermost frame: loop, a and b keep a count of 0.
    tree = _node("root", 9, _node("run", 9, _node("work", 7, _node("loop", 0)),
                                  _node("a", 0), _node("b", 0)))
    tree["identifier"] = "root"
    fixed = count_innermost_frames(tree)
    stats = {k[1]: v for k, v in function_stats(fixed).items()}
    assert stats["loop"]["self"] == 7  # work's 7 samples minus its children's 0
    assert stats["work"]["self"] == 0
    assert stats["a"]["self"] == stats["b"]["self"] == 1
    assert stats["run"]["self"] == 0
    assert stats["run"]["total"] == 9
