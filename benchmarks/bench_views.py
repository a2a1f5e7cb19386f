"""Refresh cost of the Bokeh views with synthetic data of a large cluster.

Run: ``python benchmarks/bench_views.py [--nodes 32] [--spans 10000] [--history 1000]
[--repeat 20]``

For each view, prints the median Python time of ``view.update(data)`` with synthetic
data of that size (32 nodes, 10k spans, a full window of 1k history points per node...)
next to the time of building a plain pandas DataFrame of the same data, and their ratio;
then the time Bokeh takes to build the message carrying the changes to a browser. Then,
for each notebook panel (``LiveDashboard``, ``OptimizationDashboard``, ``UnifiedDashboard``)
fed the same data through its views' fetch functions, the kernel CPU time of one refresh
tick (``panel.refresh()``: the views' updates and the messages to the page, made and
handed to the widgets; no cluster, no browser), against a 20 ms budget. Exits with status
1 if a view's refresh costs 100 ms or more, or a panel's median tick 20 ms or more.

The ``synthetic_*`` functions are also used by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

#: Largest acceptable refresh, seconds.
BUDGET_S = 0.100
#: Largest acceptable kernel CPU time of one panel refresh tick, seconds.
PANEL_BUDGET_S = 0.020

STATUSES = ["healthy", "degraded", "unreachable"]
KINDS = ["span", "task", "actor", "message", "event"]


def synthetic_health(nodes: int, timestamp: float, seed: int = 0) -> dict[str, Any]:
    """A ``foundation_health`` reply with ``nodes`` nodes."""
    rng = np.random.default_rng(seed)
    node_health = []
    for i in range(nodes):
        limit = 4 * 2**30
        used = int(rng.integers(2**28, limit))
        load = float(rng.uniform(0, 8))
        node_health.append({
            "node": f"tcp://10.0.{i // 250}.{i % 250}:40000", "name": f"worker-{i:03d}",
            "status": STATUSES[i % 3], "reasons": [] if i % 3 == 0 else ["cpu 95.0% > 90%"],
            "host": f"host-{i // 4}", "load_avg": load, "load_per_core": load / 8, "cores": 8,
            "nthreads": 2, "cpu": float(rng.uniform(0, 200)), "memory": 100 * used / limit,
            "memory_bytes": used, "memory_limit": limit, "process_count": int(i % 5),
            "threads": 12, "tasks": int(rng.integers(0, 100)), "executing": int(i % 3),
            "event_loop_lag": float(rng.uniform(0, 0.05)), "last_seen": 0.5,
            "worker_status": "running",
        })
    used = sum(n["memory_bytes"] for n in node_health)
    limit = sum(n["memory_limit"] for n in node_health)
    return {
        "timestamp": timestamp,
        "cluster": {"connected_nodes": nodes, "node_health": node_health},
        "performance": {
            "message_throughput_per_sec": 120.0, "messages_total": 10_000,
            "tasks_per_sec": 55.0, "tasks_total": 5000, "transitions_per_sec": 400.0,
            "window": 10.0,
            "memory_usage": {"bytes": used, "limit": limit, "percent": 100 * used / limit},
        },
        "thresholds": {},
    }


def synthetic_processes(n: int, nodes: int = 32) -> list[dict[str, Any]]:
    """``n`` supervised-process records as the supervisor lists them."""
    states = ["running"] * 8 + ["restarting", "failed"]
    return [
        {"name": f"'service-{i:05d}'", "kind": "singleton" if i % 4 else "replica",
         "class_name": "app.Service", "worker": f"tcp://10.0.0.{i % nodes}:40000",
         "state": states[i % len(states)], "incarnation": i % 3, "restarts": i % 3,
         "checkpoints": i, "checkpoint_age": 0.5 if i % 2 else None,
         "error": "RuntimeError: boom" if states[i % len(states)] == "failed" else None}
        for i in range(n)
    ]


def synthetic_traces(n: int) -> list[dict[str, Any]]:
    """``n`` trace records (``trace_id``, ``scope``, ``status``, times in ms...)."""
    now = time.time() * 1000
    return [
        {"trace_id": f"{i:032x}", "scope": f"scope-{i % 7}",
         "status": "active" if i % 3 else "completed", "started_at": now - 1000 * i,
         "completed_at": None if i % 3 else now - 1000 * i + 500, "options": {"i": i}}
        for i in range(n)
    ]


def synthetic_timeline(spans: int, nodes: int = 32, threads: int = 4,
                       seed: int = 0) -> pd.DataFrame:
    """A frame like ``TraceData.timeline``: a tree of ``spans`` spans over the nodes."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"{i + 1:016x}" for i in range(spans)], dtype=object)
    parent_index = np.concatenate([[-1], (rng.random(spans - 1) * np.arange(1, spans))
                                   .astype(np.int64)])
    depth = np.zeros(spans, dtype=np.int64)
    for i in range(1, spans):
        depth[i] = depth[parent_index[i]] + 1
    start = 1_700_000_000_000_000_000 + rng.integers(0, 2 * 10**9, spans)
    duration = rng.integers(10_000, 50_000_000, spans)
    node_i = rng.integers(0, nodes, spans)
    thread_i = rng.integers(0, threads, spans)
    node = np.array([f"tcp://10.0.0.{k}:40000" for k in range(nodes)], dtype=object)[node_i]
    thread = np.array([f"Dask-Worker-Thread-{k}" for k in range(threads)], dtype=object)[
        thread_i]
    error = rng.random(spans) < 0.02
    frame = pd.DataFrame({
        "trace_id": "t" * 32,
        "span_id": ids,
        "parent_id": np.where(parent_index >= 0, ids[np.maximum(parent_index, 0)], None),
        "name": np.array([f"func_{k}" for k in range(50)], dtype=object)[
            rng.integers(0, 50, spans)],
        "kind": np.array(KINDS, dtype=object)[rng.integers(0, len(KINDS), spans)],
        "node": node,
        "thread": thread,
        "start_ns": start,
        "end_ns": start + duration,
        "duration_ms": duration / 1e6,
        "status": np.where(error, "error", "ok"),
        "error_type": np.where(error, "ValueError", None),
        "error_message": np.where(error, "bad input", None),
        "depth": np.minimum(depth, 12),
    })
    frame["lane"] = frame["node"] + " / " + frame["thread"]
    return frame.sort_values("start_ns", kind="stable").reset_index(drop=True)


def synthetic_hotspots(n: int = 20) -> pd.DataFrame:
    """A ``code_hotspots`` frame of ``n`` functions."""
    return pd.DataFrame({
        "function": [f"package.module_{i % 5}.Class.method_{i}" for i in range(n)],
        "name": [f"method_{i}" for i in range(n)],
        "location": [f"/src/package/module_{i % 5}.py:{10 * i}" for i in range(n)],
        "self_time_s": np.linspace(10, 0.1, n),
        "total_time_s": np.linspace(20, 0.2, n),
        "samples": np.arange(n, 0, -1) * 100,
        "total_samples": np.arange(n, 0, -1) * 200,
        "calls": pd.array([i * 10 if i % 2 else None for i in range(n)], dtype="Int64"),
        "nodes": [[f"tcp://10.0.0.{k}:40000" for k in range(i % 4 + 1)] for i in range(n)],
        "filename": [f"/src/package/module_{i % 5}.py" for i in range(n)],
        "line": [10 * i for i in range(n)],
    })


def synthetic_profile(depth: int = 6, breadth: int = 4) -> dict[str, Any]:
    """A call tree in Dask's profile format with ``breadth ** depth`` leaves."""
    counter = iter(range(10**9))

    def node(level: int, budget: int) -> dict[str, Any]:
        k = next(counter)
        children = {}
        if level < depth:
            share = budget // (breadth + 1)
            for _ in range(breadth):
                child = node(level + 1, share)
                children[child["identifier"]] = child
        return {
            "count": budget,
            "identifier": f"func_{k};/src/module_{k % 9}.py;{k}",
            "description": {"filename": f"/src/module_{k % 9}.py", "name": f"func_{k}",
                            "line_number": k, "line": f"call_{k}()"},
            "children": children,
        }

    root = node(0, 10 * (breadth + 1) ** depth)
    root["identifier"] = "root"
    return root


def synthetic_optimizations(n: int, evaluations: int, step: int) -> list[dict[str, Any]]:
    """``dspex.list_optimizations()`` rows: ``n`` optimizations, ``step`` evaluations in."""
    now = time.time()
    return [
        {"optimization_id": f"opt-{i}", "status": "running" if i == 0 else "completed",
         "completion_percent": 100.0 * min(step, evaluations) / evaluations if i == 0
         else 100.0, "current_best_score": 80.0 + i, "evaluations_completed": step,
         "total_evaluations": evaluations, "rate": 12.5, "estimated_completion_time": now + 9,
         "workers": 32, "started_at": now - 60 * i, "finished_at": None}
        for i in range(n)
    ]


def synthetic_history(points: int) -> list[dict[str, Any]]:
    """``dspex.optimization_history()`` rows: ``points`` progress snapshots."""
    return [{"evaluations": 10 * k, "best_score": min(100.0, 50 + k), "running_score": 40 + k,
             "rate": 12.0, "completion_percent": 100.0 * k / max(points, 1),
             "time": time.time() - points + k} for k in range(points)]


def synthetic_evaluations(n: int, nodes: int) -> list[dict[str, Any]]:
    """A coordinator's evaluation records (worker, duration, error)."""
    return [{"worker": f"tcp://10.0.0.{i % nodes}:40000", "duration": 0.02 + (i % 7) / 1000,
             "error": None if i % 50 else "ValueError"} for i in range(n)]


def panel_costs(args: argparse.Namespace) -> list[tuple[str, float, float, float, int]]:
    """Kernel CPU time of one refresh tick of each panel, one tick a second: ``(panel,
    median s, mean s, max s, messages per tick)``."""
    from foundation_dask.widgets import LiveDashboard, OptimizationDashboard, UnifiedDashboard
    from foundation_dask.widgets._base import _panes

    clock = [time.time()]
    traces = synthetic_traces(20)
    followed = traces[1]["trace_id"]  # an active one
    timelines = [synthetic_timeline(args.spans, args.nodes, seed=k) for k in range(2)]
    processes = synthetic_processes(2 * args.nodes, args.nodes)
    history = synthetic_history(300)
    evaluations = synthetic_evaluations(3000, args.nodes)
    step = [0]

    def health() -> dict[str, Any]:
        clock[0] += 1.0
        return synthetic_health(args.nodes, clock[0], seed=int(clock[0]) % 7)

    def optimizations() -> list[dict[str, Any]]:
        step[0] += 10
        return synthetic_optimizations(3, 3000, step[0])

    def feed(live: Any, opt: Any) -> None:
        if live is not None:
            live.health._fetch = health
            live.processes._fetch = lambda: processes
            live.traces._fetch = lambda: traces
            live.timeline._fetch = lambda: timelines[step[0] // 10 % 2]
            live.timeline.trace_id = followed  # followed while its trace is active
        if opt is not None:
            opt.optimizations._fetch = optimizations
            opt.progress._fetch = lambda: history[: 10 + step[0] // 10 % 290]
            opt.workers._fetch = lambda: evaluations[: 100 + step[0]]

    out = []
    for cls in (LiveDashboard, OptimizationDashboard, UnifiedDashboard):
        panel = cls(refresh=None, autostart=False)
        live = panel if isinstance(panel, LiveDashboard) else getattr(panel, "live", None)
        opt = panel if isinstance(panel, OptimizationDashboard) else getattr(panel, "opt", None)
        feed(live, opt)
        for _ in range(3):  # warm up: lines for every node, the first full data
            panel.refresh()
        panes = _panes(panel.widget)
        sent0 = sum(p.patches_sent for p in panes)
        samples = []
        for _ in range(args.repeat):
            t0 = time.thread_time()
            panel.refresh()
            samples.append(time.thread_time() - t0)
            if live is not None:  # the followed timeline's pace is in seconds: one tick a
                live._timeline_next -= 1.0  # second, without sleeping
        per_tick = (sum(p.patches_sent for p in panes) - sent0) // args.repeat
        assert not panel.errors, panel.errors
        out.append((f"{cls.__name__} ({args.nodes} nodes"
                    + (f", {args.spans:,} spans followed" if live is not None else "") + ")",
                    statistics.median(samples), statistics.mean(samples), max(samples),
                    per_tick))
        panel.close()
    return out


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--spans", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    from bokeh.document import Document
    from bokeh.protocol import Protocol

    from foundation_dask.views import (
        ClusterHealthView,
        FlameGraphView,
        HotspotsView,
        ProcessesView,
        TracesView,
        TraceTimelineView,
    )

    results = []
    events: list[Any] = []
    protocol = Protocol()

    def in_document(view: Any) -> Any:
        doc = Document()
        doc.add_root(view.root)
        doc.on_change(events.append)
        return view

    def patch_time(view_fn: Callable[[], Any]) -> float:
        """Median time to build the PATCH-DOC message of one refresh's changes (what a
        Bokeh server sends to the browser)."""
        samples = []
        for _ in range(max(3, args.repeat // 4)):
            events.clear()
            view_fn()
            changes = [e for e in events if hasattr(e, "to_serializable")]
            t0 = time.perf_counter()
            if changes:
                protocol.create("PATCH-DOC", changes)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def measure(label: str, view_fn: Callable[[], Any], base_fn: Callable[[], Any]) -> None:
        view_s = median_time(view_fn, args.repeat)
        base_s = median_time(base_fn, args.repeat)
        results.append((label, view_s, base_s, patch_time(view_fn)))

    # health: a full window of history, then one more refresh (stream + rollover)
    health = in_document(ClusterHealthView(history=args.history))
    clock = [time.time()]
    report = synthetic_health(args.nodes, clock[0])
    for _ in range(args.history):
        clock[0] += 1.0
        report["timestamp"] = clock[0]
        health.update(report)
    assert len(health.source["history"].data["time"]) == args.history

    def health_refresh() -> None:
        clock[0] += 1.0
        health.update(synthetic_health(args.nodes, clock[0], seed=int(clock[0]) % 7))

    measure(f"ClusterHealthView ({args.nodes} nodes, {args.history} points kept)",
            health_refresh,
            lambda: pd.DataFrame(synthetic_health(args.nodes, clock[0])["cluster"]
                                 ["node_health"]))

    history = pd.DataFrame([
        {"time": clock[0] - k, "node": n["node"], "cpu": n["cpu"], "memory": n["memory"],
         "load_avg": n["load_avg"]}
        for k in range(args.history) for n in report["cluster"]["node_health"]
    ])
    history_records = history.to_dict("list")
    measure(f"ClusterHealthView.set_history ({len(history):,} rows)",
            lambda: health.set_history(history), lambda: pd.DataFrame(history_records))

    # tables skip unchanged data: alternate two versions so that every refresh changes
    processes = synthetic_processes(args.processes, args.nodes)
    moved = [dict(p, worker="tcp://10.0.9.9:40000") if i == 0 else p
             for i, p in enumerate(processes)]
    pview = in_document(ProcessesView())
    turn = [0]

    def alternate(view: Any, versions: list[Any]) -> None:
        turn[0] += 1
        view.update(versions[turn[0] % 2])

    measure(f"ProcessesView ({args.processes} processes)",
            lambda: alternate(pview, [processes, moved]), lambda: pd.DataFrame(processes))

    traces = synthetic_traces(args.traces)
    stopped = [dict(t, status="completed") if i == 1 else t for i, t in enumerate(traces)]
    tview = in_document(TracesView(include_completed=True))
    measure(f"TracesView ({args.traces} traces)", lambda: alternate(tview, [traces, stopped]),
            lambda: pd.DataFrame(traces))

    timeline = synthetic_timeline(args.spans, args.nodes)
    timeline_records = {c: timeline[c].tolist() for c in timeline.columns}
    tl = in_document(TraceTimelineView())
    measure(f"TraceTimelineView ({args.spans:,} spans, {args.nodes} nodes)",
            lambda: tl.update(timeline), lambda: pd.DataFrame(timeline_records))

    hot = synthetic_hotspots(20)
    hot_records = hot.to_dict("records")
    hview = in_document(HotspotsView())
    measure("HotspotsView (20 functions)", lambda: hview.update(hot),
            lambda: pd.DataFrame(hot_records))

    tree = synthetic_profile()
    fview = in_document(FlameGraphView())
    flat: list[dict[str, Any]] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        flat.append({"count": node["count"], **node["description"]})
        todo.extend(node["children"].values())
    fview.update(tree)
    drawn = len(fview.source.data["name"])
    measure(f"FlameGraphView ({len(flat):,} frames, {drawn:,} wide enough to draw)",
            lambda: fview.update(tree), lambda: pd.DataFrame(flat))
    from foundation_dask.views.profiling import flame_columns

    measure(f"flame_columns, every frame drawn ({len(flat):,})",
            lambda: flame_columns(tree, 0.01, min_fraction=0.0), lambda: pd.DataFrame(flat))

    width = max(len(r[0]) for r in results)
    print(f"{'view':<{width}}  {'update':>10}  {'DataFrame':>10}  {'ratio':>6}  "
          f"{'patch msg':>10}")
    failed = False
    for label, view_s, base_s, patch_s in results:
        flag = "" if view_s < BUDGET_S else f"  over the {BUDGET_S * 1000:.0f} ms budget"
        failed |= bool(flag)
        print(f"{label:<{width}}  {view_s * 1000:8.2f}ms  {base_s * 1000:8.2f}ms  "
              f"{view_s / base_s:6.2f}  {patch_s * 1000:8.2f}ms{flag}")
    print("update: view.update(data), views attached to a Bokeh Document; DataFrame: "
          "pd.DataFrame of the same data; ratio: update / DataFrame; patch msg: building "
          "the Bokeh PATCH-DOC message of one update's changes (not in the budget).")

    panels = panel_costs(args)
    width = max(len(r[0]) for r in panels)
    print(f"\n{'panel refresh tick':<{width}}  {'CPU median':>10}  {'mean':>9}  {'max':>9}  "
          f"{'msgs':>5}")
    for label, median_s, mean_s, max_s, msgs in panels:
        flag = "" if median_s < PANEL_BUDGET_S else (
            f"  over the {PANEL_BUDGET_S * 1000:.0f} ms budget")
        failed |= bool(flag)
        print(f"{label:<{width}}  {median_s * 1000:8.2f}ms  {mean_s * 1000:7.2f}ms  "
              f"{max_s * 1000:7.2f}ms  {msgs:>5}{flag}")
    print("panel refresh tick: kernel CPU time (thread) of panel.refresh() with the data "
          "above, messages to the page included, one tick a second (the followed timeline "
          "redraws at the pace its cost allows: LiveDashboard.timeline_cpu_share); budget on "
          "the median tick; msgs: messages sent per tick.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
