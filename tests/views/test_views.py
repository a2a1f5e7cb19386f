"""Bokeh views on a real cluster: data after update(), changes after a second update()."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import foundation_dask as fd
from foundation_dask import scope
from foundation_dask.core._client import worker_infos
from foundation_dask.views import (
    STATUS_COLOURS,
    ClusterHealthView,
    FlameGraphView,
    HotspotsView,
    ProcessesView,
    TracesView,
    TraceTimelineView,
    View,
)
from foundation_dask.views.traces import ERROR_FILL
from tests._helpers import Counter, busy
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_views", ROOT / "benchmarks" /
                                                  "bench_views.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def workers_of(client: Client) -> set[str]:
    return set(worker_infos(client))


def traced_leaf(i: int) -> int:
    with scope.span("leaf.inner", i=i):
        return i * 2


def explode(i: int) -> None:
    raise ZeroDivisionError(f"bad input {i}")


# --------------------------------------------------------------------------- health


@pytest.mark.timeout(60)
def test_cluster_health_view(cluster_client: Client) -> None:
    workers = workers_of(cluster_client)
    view = ClusterHealthView()
    view.update()
    nodes = view.source["nodes"].data
    assert set(nodes["node"]) == workers
    assert len(nodes["node"]) == 2
    assert set(nodes["status"]) <= {"healthy", "degraded", "unreachable"}
    assert nodes["status_colour"] == [STATUS_COLOURS[s] for s in nodes["status"]]
    assert np.isfinite(nodes["cpu"]).all()
    assert (np.asarray(nodes["memory_bytes"]) > 0).all()
    assert "2 nodes" in view.summary.text

    # the load average comes with the workers' heartbeats
    def loaded() -> bool:
        view.update()
        return bool(np.isfinite(view.source["nodes"].data["load_avg"]).all())

    wait_for(loaded, timeout=30)
    history = view.source["history"].data
    points = len(history["time"])
    assert points >= 2  # one point per update
    assert set(view.slots) == workers
    for slot in view.slots.values():
        for metric in ("cpu", "memory", "load"):
            assert len(history[f"{metric}_{slot}"]) == points
        assert math.isfinite(history[f"load_{slot}"][-1])
    assert sum(len(f.renderers) for f in view.figures.values()) == 3 * len(workers)
    # the rolling window keeps ``history`` points
    small = ClusterHealthView(history=3)
    for _ in range(5):
        small.update()
    assert len(small.source["history"].data["time"]) == 3


@pytest.mark.timeout(120)
def test_health_view_worker_removed() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster,
                                                                 set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        fd.install_plugins(c)
        view = ClusterHealthView(client=c)
        view.update()
        before = set(view.source["nodes"].data["node"])
        assert before == workers_of(c)
        leaving = sorted(before)[0]
        leaving_slot = view.slots[leaving]
        c.retire_workers([leaving])

        def gone() -> bool:
            view.update()
            return leaving not in view.source["nodes"].data["node"]

        wait_for(gone, timeout=30)
        assert set(view.source["nodes"].data["node"]) == before - {leaving}
        assert leaving not in view.slots
        assert f"cpu_{leaving_slot}" not in view.source["history"].data
        assert sum(len(f.renderers) for f in view.figures.values()) == 3

        # views given a client read that client's cluster, not the default one
        with c.as_current():
            fd.ProcessManager.start_singleton(Counter, name="views-other-cluster")
        processes = ProcessesView(client=c)
        processes.update()
        assert processes.source.data["name"] == ["'views-other-cluster'"]
        traces = TracesView(client=c)
        traces.update()
        assert traces.source.data["trace_id"] == []


# --------------------------------------------------------------------------- processes


@pytest.mark.timeout(60)
def test_processes_view(cluster_client: Client) -> None:
    view = ProcessesView()
    view.update()
    name = f"views-counter-{time.monotonic_ns()}"
    assert f"'{name}'" not in view.source.data["name"]

    fd.ProcessManager.start_singleton(Counter, name=name)
    view.update()
    data = view.source.data
    row = data["name"].index(f"'{name}'")
    assert data["state"][row] == "running"
    assert data["state_colour"][row] == STATUS_COLOURS["running"]
    assert data["worker"][row] in workers_of(cluster_client)
    assert data["kind"][row] == "singleton"
    assert data["class_name"][row].endswith("Counter")

    fd.ProcessManager.stop(name)
    view.update()
    assert f"'{name}'" not in view.source.data["name"]


# --------------------------------------------------------------------------- traces


@pytest.mark.timeout(60)
def test_traces_view(cluster_client: Client) -> None:
    trace = scope.start_cluster_trace("views-active", options={"sample": 1})
    try:
        active = TracesView()
        active.update()
        data = active.source.data
        row = data["trace_id"].index(trace.trace_id)
        assert data["scope"][row] == "views-active"
        assert data["status"][row] == "active"
        assert data["status_colour"][row] == STATUS_COLOURS["active"]
        assert abs(data["started_at"][row] - time.time() * 1000) < 60_000
        assert math.isnan(data["completed_at"][row])
        assert data["options"][row] == "sample=1"

        selected = []
        active.on_select(selected.append)
        active.select(trace.trace_id)
        assert active.selected_trace == trace.trace_id
        assert list(active.source.selected.indices) == [row]
        assert selected == [trace.trace_id]

        scope.stop_trace(trace.trace_id)
        active.update()
        assert trace.trace_id not in active.source.data["trace_id"]
        assert active.selected_trace is None and selected[-1] is None

        everything = TracesView(include_completed=True)
        everything.update()
        data = everything.source.data
        row = data["trace_id"].index(trace.trace_id)
        assert data["status"][row] == "completed"
        assert math.isfinite(data["completed_at"][row])
        assert data["completed_at"][row] >= data["started_at"][row]
    finally:
        scope.forget_trace(trace.trace_id)


@pytest.mark.timeout(90)
def test_trace_timeline_from_real_trace(cluster_client: Client) -> None:
    with scope.trace("views-timeline") as t:
        with scope.span("client.block"):
            cluster_client.gather(cluster_client.map(traced_leaf, range(8), pure=False))
        with pytest.raises(ZeroDivisionError):
            cluster_client.submit(explode, 1, pure=False).result()
    data = t.collect()
    try:
        view = TraceTimelineView()
        view.update(data)
        spans = view.source["spans"].data
        timeline = data.timeline
        assert len(spans["span_id"]) == len(timeline) > 8
        assert set(view.lanes) == set(timeline["lane"])
        assert set(spans["kind"]) >= {"trace", "span", "task"}
        assert view.figure.yaxis.major_label_overrides == dict(enumerate(view.lanes))
        assert (np.asarray(spans["right"]) >= np.asarray(spans["left"])).all()
        assert min(spans["left"]) == 0
        # bars sit inside their lane
        lane_index = {lane: i for i, lane in enumerate(view.lanes)}
        for lane, bottom, top in zip(spans["lane"], spans["bottom"], spans["top"], strict=True):
            assert lane_index[lane] - 0.5 < bottom < top < lane_index[lane] + 0.5
        # the failed task is red, with its error in the hover data
        errors = [i for i, s in enumerate(spans["status"]) if s == "error"]
        assert errors
        assert all(spans["color"][i] == ERROR_FILL for i in errors)
        assert any("ZeroDivisionError" in spans["error"][i] for i in errors)

        # cross-node parent/child links (the notebook's spans are parents of the tasks)
        links = view.source["links"].data
        assert len(links["child"]) == data.summary["cross_node_links"] > 0
        index = {sid: i for i, sid in enumerate(spans["span_id"])}
        for parent, child, pnode, cnode, x1, y0, y1 in zip(
            links["parent"], links["child"], links["parent_node"], links["child_node"],
            links["x1"], links["y0"], links["y1"], strict=True,
        ):
            p, c = index[parent], index[child]
            assert pnode == spans["node"][p] != cnode == spans["node"][c]
            assert x1 == spans["left"][c]
            assert spans["bottom"][p] < y0 < spans["top"][p]
            assert spans["bottom"][c] < y1 < spans["top"][c]
        assert "cross-node links" in view.summary.text

        # the same from the timeline frame, and through the view's own fetch
        framed = TraceTimelineView()
        framed.update(timeline)
        assert list(framed.source["spans"].data["span_id"]) == list(spans["span_id"])
        fetched = TraceTimelineView(trace_id=t.trace_id)
        fetched.update()
        assert len(fetched.source["spans"].data["span_id"]) == len(timeline)
        # at most max_spans bars: the longest
        capped = TraceTimelineView(max_spans=5)
        capped.update(data)
        kept = capped.source["spans"].data["duration_ms"]
        assert len(kept) == 5
        assert min(kept) >= sorted(timeline["duration_ms"])[-5]
        capped.clear()
        assert len(capped.source["spans"].data["span_id"]) == 0
    finally:
        scope.forget_trace(t.trace_id)


# --------------------------------------------------------------------------- scheduler side


def _scheduler_side(dask_scheduler):
    from foundation_dask.core.health import scheduler_health
    from foundation_dask.core.processes import scheduler_processes
    from foundation_dask.scope import scheduler_traces

    return {
        "health": scheduler_health(dask_scheduler),
        "processes": scheduler_processes(dask_scheduler),
        "traces": scheduler_traces(dask_scheduler),
    }


async def _scheduler_trace(trace_id, dask_scheduler=None):
    from foundation_dask.scope import scheduler_trace_data

    return await scheduler_trace_data(dask_scheduler, trace_id)


@pytest.mark.timeout(90)
def test_scheduler_side_fetch(cluster_client: Client) -> None:
    """The functions the dashboard pages use read the same thing inside the scheduler."""
    name = f"views-sched-{time.monotonic_ns()}"
    fd.ProcessManager.start_singleton(Counter, name=name)
    with scope.trace("views-scheduler") as t:
        cluster_client.gather(cluster_client.map(traced_leaf, range(4), pure=False))
    try:
        side = cluster_client.run_on_scheduler(_scheduler_side)
        health = ClusterHealthView()
        health.update(side["health"])
        assert set(health.source["nodes"].data["node"]) == workers_of(cluster_client)

        processes = ProcessesView()
        processes.update(side["processes"])
        assert f"'{name}'" in processes.source.data["name"]

        traces = TracesView(include_completed=True)
        traces.update(side["traces"])
        data = traces.source.data
        row = data["trace_id"].index(t.trace_id)
        assert data["scope"][row] == "views-scheduler"
        assert data["status"][row] == "completed"  # from the coordinator's checkpoint

        collected = cluster_client.run_on_scheduler(_scheduler_trace, t.trace_id)
        timeline = TraceTimelineView()
        timeline.update(collected)
        spans = timeline.source["spans"].data
        assert list(spans["name"]).count("leaf.inner") == 4
        assert list(spans["kind"]).count("task") == 4
        assert {n for n in spans["node"]} <= workers_of(cluster_client)
    finally:
        fd.ProcessManager.stop(name)
        scope.forget_trace(t.trace_id)


# --------------------------------------------------------------------------- profiling


@pytest.mark.timeout(120)
def test_hotspots_and_flame_graph_from_real_profiles(cluster_client: Client) -> None:
    cluster_client.run(busy, 0.0)  # the workers import busy's module before the window
    session = scope.start_cluster_profiling(1500)
    start = time.time()
    cluster_client.gather(cluster_client.map(busy, [1.0, 1.0], pure=False))
    report = scope.analyze_cluster_performance(session)

    hot = HotspotsView()
    hot.update(report)
    data = hot.source.data
    assert any(f.endswith("busy") for f in data["function"]), report.code_hotspots
    assert len(data["function"]) == len(report.code_hotspots) <= 20
    assert list(data["self_time_s"]) == sorted(data["self_time_s"], reverse=True)
    assert hot.figure.y_range.factors == list(reversed(data["label"]))
    row = next(i for i, f in enumerate(data["function"]) if f.endswith("busy"))
    assert data["samples"][row] > 0 and data["total_time_s"][row] >= data["self_time_s"][row]
    assert set(data["nodes"][row].split(", ")) <= workers_of(cluster_client)

    flame = FlameGraphView()
    flame.update(report)
    names = flame.source.data["name"]
    assert names[0] == "all" and "busy" in names
    assert (np.asarray(flame.source.data["right"]) <= 1 + 1e-9).all()

    # Dask's own profile of the workers: {worker: call tree} and one merged tree
    trees = cluster_client.profile(start=start, merge_workers=False)
    hot.update(trees)
    assert any(f.endswith("busy") for f in hot.source.data["function"])
    flame.update(cluster_client.profile(start=start))
    assert "busy" in flame.source.data["name"]
    assert flame.figure.title.text.startswith("Flame graph:")


# --------------------------------------------------------------------------- contract


@pytest.mark.timeout(60)
def test_views_take_large_synthetic_data() -> None:
    bench = _bench()
    health = ClusterHealthView(history=1000)
    clock = time.time()
    for k in range(1001):
        health.update(bench.synthetic_health(32, clock + k))
    assert len(health.source["nodes"].data["node"]) == 32
    assert len(health.source["history"].data["time"]) == 1000
    assert len(health.slots) == 32
    history = pd.DataFrame([
        {"time": clock - k, "node": n, "cpu": 1.0, "memory": 2.0, "load_avg": 3.0}
        for k in range(1000) for n in health.slots
    ])
    health.set_history(history)
    slot = next(iter(health.slots.values()))
    assert len(health.source["history"].data[f"load_{slot}"]) == 1000
    assert set(health.source["history"].data[f"load_{slot}"]) == {3.0}

    timeline = TraceTimelineView()
    frame = bench.synthetic_timeline(10_000, 32)
    timeline.update(frame)
    assert len(timeline.source["spans"].data["span_id"]) == 10_000
    assert len(timeline.lanes) == frame["lane"].nunique()
    assert len(timeline.source["links"].data["child"]) > 0

    processes = ProcessesView()
    processes.update(bench.synthetic_processes(1000))
    assert len(processes.source.data["name"]) == 1000
    traces = TracesView(include_completed=True)
    traces.update(bench.synthetic_traces(200))
    assert len(traces.source.data["trace_id"]) == 200
    hot = HotspotsView()
    hot.update(bench.synthetic_hotspots(20))
    assert len(hot.figure.y_range.factors) == 20
    flame = FlameGraphView()
    flame.update(bench.synthetic_profile(depth=4, breadth=3))
    assert len(flame.source.data["name"]) == sum(3**k for k in range(5))


@pytest.mark.timeout(30)
def test_flame_graph_gives_uncounted_samples_to_callees() -> None:
    """Trees of Dask's worker profiler do not count innermost frames; the flame graph
    distributes those samples like the hotspots analysis does."""
    from foundation_dask.scope.profiling import count_innermost_frames
    from foundation_dask.views.profiling import flame_columns

    tree = _bench().synthetic_profile(depth=3, breadth=3)

    def uncount_leaves(node: dict) -> None:
        for child in node["children"].values():
            if child["children"]:
                uncount_leaves(child)
            else:
                child["count"] = 0

    uncount_leaves(tree)
    direct = flame_columns(tree, 0.01, min_fraction=0.0, innermost_uncounted=True)
    fixed = flame_columns(count_innermost_frames(tree), 0.01, min_fraction=0.0)
    raw = flame_columns(tree, 0.01, min_fraction=0.0)
    assert len(direct["name"]) == len(fixed["name"]) == len(raw["name"]) + 27
    for column in ("left", "right", "count"):
        np.testing.assert_allclose(direct[column], fixed[column])
    view = FlameGraphView()
    view.update(tree)  # a bare tree is taken as Dask's
    assert len(view.source.data["name"]) == len(direct["name"])


@pytest.mark.timeout(30)
def test_view_contract_and_async_fetch() -> None:
    bench = _bench()
    report = bench.synthetic_health(3, time.time())

    async def fetch():
        return report

    view = ClusterHealthView(fetch=fetch)
    assert isinstance(view, View)
    assert view.root is not None and set(view.source) == {"nodes", "history"}
    with pytest.raises(TypeError, match="update_async"):
        view.update()
    asyncio.run(view.update_async())
    assert len(view.source["nodes"].data["node"]) == 3
    with pytest.raises(TypeError, match="ClusterHealth"):
        view.update(42)
    with pytest.raises(TypeError, match="TraceData"):
        TraceTimelineView().update([1, 2])
    with pytest.raises(ValueError, match="trace_id"):
        TraceTimelineView().update()


@pytest.mark.timeout(60)
def test_library_does_not_import_bokeh() -> None:
    code = (
        "import sys, foundation_dask, foundation_dask.cluster, foundation_dask.core.health, "
        "foundation_dask.core.processes, foundation_dask.scope.tracing, "
        "foundation_dask.scope.collect\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'bokeh')\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.timeout(60)
def test_views_embed_standalone() -> None:
    """Every view serialises into a standalone document with inline BokehJS (how
    notebooks embed them, with no internet)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    bench = _bench()
    views = {
        ClusterHealthView(): bench.synthetic_health(4, time.time()),
        ProcessesView(): bench.synthetic_processes(5),
        TracesView(include_completed=True): bench.synthetic_traces(3),
        TraceTimelineView(): bench.synthetic_timeline(200, 4),
        HotspotsView(): bench.synthetic_hotspots(5),
        FlameGraphView(): bench.synthetic_profile(depth=3, breadth=2),
    }
    for view, data in views.items():
        view.update(data)
        html = file_html(view.root, INLINE, title=view.title)
        assert "cdn.bokeh.org" not in html and len(html) > 100_000, type(view).__name__


@pytest.mark.timeout(30)
def test_table_columns_fit_their_content() -> None:
    """Columns are as wide as their longest value or title: a full address is not cut to
    "tcp://127", a status not to "healt"; widths follow new data."""
    from bokeh.models import ColumnDataSource

    from foundation_dask.views.base import (
        column_width,
        fit_widths,
        make_table,
        set_data,
        text_px,
    )

    source = ColumnDataSource({"node": ["tcp://127.0.0.1:1"], "cpu": [1.0]})
    table = make_table(source, [("node", "Address"), ("cpu", "CPU %", "percent")])
    assert table.autosize_mode == "none"
    node, cpu = table.columns
    short = node.width
    assert short >= text_px("tcp://127.0.0.1:1")
    set_data(source, {"node": ["tcp://127.0.0.1:43719", "tcp://10.0.0.5:8786"],
                      "cpu": [100.0, math.nan]})
    fit_widths(table)
    assert node.width > short >= column_width("Address", [])
    assert node.width >= text_px("tcp://127.0.0.1:43719") + 10
    assert cpu.width >= text_px("CPU %") and cpu.width >= text_px("100.0")
    assert text_px("degraded") > text_px("healthy") > text_px("ok")


@pytest.mark.timeout(30)
def test_trace_lanes_are_named_by_node_and_thread() -> None:
    """A span without a thread is in its node's lane ("tcp://... / nan" was shown); a
    thread id in a float column reads as an integer."""
    from foundation_dask.scope.collect import _lane_names

    frame = pd.DataFrame({"node": ["tcp://127.0.0.1:43719", "tcp://127.0.0.1:43719", None],
                          "thread": [np.nan, 140544866338496.0, "MainThread"]})
    assert _lane_names(frame) == ["tcp://127.0.0.1:43719",
                                  "tcp://127.0.0.1:43719 / 140544866338496", "MainThread"]


@pytest.mark.timeout(30)
def test_progress_view_takes_snapshots_and_says_the_last_best() -> None:
    """The progress snapshots an optimization returns (``evaluations_completed``,
    ``current_best_score``) draw the plot; the status gives the last best candidate's
    score (the result's best score), not 0.0 or the highest along the way."""
    from foundation_dask.views.optimization import OptimizationProgressView

    view = OptimizationProgressView("opt")
    assert view.note.visible
    view.update([
        {"evaluations_completed": 4, "current_best_score": 50.0, "completion_percent": 20.0,
         "rate": 2.0},
        {"evaluations_completed": 8, "current_best_score": 100.0, "completion_percent": 60.0,
         "rate": 2.0},
        {"evaluations_completed": 12, "current_best_score": 96.7, "completion_percent": 100.0,
         "rate": 2.0},
    ])
    assert list(view.source.data["evaluations"]) == [4, 8, 12]
    assert list(view.source.data["best_score"]) == [50.0, 100.0, 96.7]
    assert "best 96.7%" in view.status.text and "100.0% done" in view.status.text
    assert not view.note.visible
    view.update([])
    assert view.note.visible


@pytest.mark.timeout(30)
def test_empty_plots_say_how_to_fill_them() -> None:
    """Each plot without data carries a visible note naming what will appear and how to
    start it; the note goes once there is data."""
    view = ClusterHealthView()
    view.update([])
    assert all(n.visible and "workers" in n.text for n in view.notes.values())
    timeline = TraceTimelineView()
    timeline.clear()
    assert timeline.note.visible and "start_cluster_trace" in timeline.note.text
    hotspots = HotspotsView()
    hotspots.update(pd.DataFrame())
    assert hotspots.note.visible and "start_cluster_profiling" in hotspots.note.text
