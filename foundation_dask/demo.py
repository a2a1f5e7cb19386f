"""Client and worker: ``foundation-dask demo``, a guided tour of the toolkit on the
embedded cluster.

Each step prints what it does and what it measured. The classes and functions here
run on the workers, so they live in an importable module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from foundation_dask.core.channels import Channels
from foundation_dask.core.cluster import close, connect
from foundation_dask.core.health import HealthMonitor
from foundation_dask.core.processes import ProcessManager
from foundation_dask.core.registry import ServiceMesh


class KeyValueStore:
    """A tiny supervised key-value store: its state survives worker deaths."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes = 0

    def put(self, key: str, value: Any) -> int:
        self.data[key] = value
        self.writes += 1
        return self.writes

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def where(self) -> tuple[str, int]:
        from distributed import get_worker

        return get_worker().address, os.getpid()

    def checkpoint(self) -> dict[str, Any]:
        return {"data": self.data, "writes": self.writes}

    def restore(self, state: dict[str, Any]) -> None:
        self.data = state["data"]
        self.writes = state["writes"]


def publish_from_worker(i: int) -> str:
    """A task that reports progress on the telemetry channel."""
    from distributed import get_worker

    addr = get_worker().address
    Channels.broadcast("telemetry", {"task": i, "worker": addr, "progress": 1.0})
    return addr


class HealthRecorder:
    """Samples the cluster health every ``interval`` seconds in a thread: the CPU,
    memory and load history the report shows, as the live panel collects it.

    Use as a context manager; :attr:`last` is the newest report, :meth:`frame` the
    history (``time``, ``node``, ``cpu``, ``memory``, ``load_avg``).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last: Any = None
        self.rows: list[tuple[float, str, Any, Any, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-health", daemon=True)

    def sample(self) -> Any:
        """Read the health once and record it."""
        health: Any = HealthMonitor.get_cluster_health()  # a ClusterHealth (a sync client)
        self.last = health
        self.rows.extend((health.timestamp, n.node, n.cpu, n.memory, n.load_avg)
                         for n in health.cluster.node_health)
        return health

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a worker restarting: the next sample
                self.sample()
            self._stop.wait(self.interval)

    def frame(self) -> Any:
        """The recorded history, one row per node and sample."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["time", "node", "cpu", "memory", "load_avg"])

    def __enter__(self) -> HealthRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class _Printer:
    def __init__(self, out: Callable[[str], None]):
        self.out = out
        self.t0 = time.perf_counter()
        self.step = 0

    def header(self, title: str) -> None:
        self.step += 1
        self.out(f"\n[{time.perf_counter() - self.t0:6.1f}s] {self.step}. {title}")

    def line(self, text: str) -> None:
        self.out(f"    {text}")


def run_demo(*, n_workers: int = 2, quick: bool = False, llm: bool = True,
             out_dir: str = "foundation-report",
             out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the tour; return the figures it printed.

    Parameters
    ----------
    n_workers
        Worker processes of the embedded cluster.
    quick
        Fewer examples (the CI run of the demo).
    llm
        Run the DSPEx part with the local language model.
    out_dir
        Where the HTML report and the trace files go.
    out
        Where the text goes (``print`` by default).
    """
    p = _Printer(out)
    summary: dict[str, Any] = {}
    p.header("Zero-config cluster: foundation_dask.connect()")
    client = connect(n_workers=n_workers, silence_logs=logging.ERROR)
    try:
        client.wait_for_workers(n_workers, timeout=120)
        p.line(f"scheduler {client.scheduler.address}, {n_workers} worker processes")
        p.line(f"Dask dashboard: {client.dashboard_link}")
        with HealthRecorder() as recorder:
            _foundation_tour(client, p, summary, n_workers)
            if llm:
                _dspex_tour(client, p, summary, n_workers, quick, out_dir, recorder)
        p.header(f"Done in {time.perf_counter() - p.t0:.1f}s")
        summary["wall_time_s"] = time.perf_counter() - p.t0
    finally:
        close()
    return summary


def _foundation_tour(client: Any, p: _Printer, summary: dict[str, Any], n_workers: int) -> None:
    p.header("Supervised singleton: one live KeyValueStore named 'kv'")
    kv = ProcessManager.start_singleton(KeyValueStore, name="kv")
    for i in range(10):
        kv.put(f"k{i}", i * i).result()
    holder, pid = kv.where().result()
    p.line(f"10 writes; it lives on {holder} (pid {pid})")
    same = ProcessManager.start_singleton(KeyValueStore, name="kv")
    p.line(f"starting 'kv' again returns the same instance: get('k3') = "
           f"{same.get('k3').result()}")

    p.header("Failover: SIGKILL the worker process holding 'kv'")
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    value = kv.get("k9").result()
    failover = time.perf_counter() - t0
    now, _ = kv.where().result()
    info = kv.info()
    p.line(f"first answered call after the kill: {failover * 1000:.0f} ms, "
           f"get('k9') = {value} (state restored from its last checkpoint)")
    p.line(f"now on {now}, incarnation {info['incarnation']}")
    summary["failover_s"] = failover
    summary["state_kept"] = value == 81

    p.header("Channels: control / events / telemetry / data")
    with Channels.subscribe("telemetry") as sub:
        client.wait_for_workers(n_workers, timeout=120)
        workers = client.gather(client.map(publish_from_worker, range(6), pure=False))
        got = [sub.get(timeout=10) for _ in range(6)]
    p.line(f"6 tasks on {len(set(workers))} workers broadcast on 'telemetry'; "
           f"the notebook received {len(got)}, in order per publisher")
    with Channels.subscribe("control") as control:
        Channels.route_message(("start_trace", "t-1", "demo"), priority="high")
        msg = control.get(timeout=10)
    p.line(f"route_message(..., priority='high') arrived on '{msg.channel}': {msg.payload}")

    p.header("Service mesh: register and discover by capability")
    ServiceMesh.register_service(
        "kv-store", kv, capabilities=["storage", "kv"], metadata={"tier": "demo"}
    )
    found = ServiceMesh.discover_services(capabilities=["kv"], metadata={"tier": "demo"})
    p.line(f"discover_services(capabilities=['kv']) -> {[s.name for s in found]}")
    p.line(f"through the discovered handle: get('k1') = {found[0].handle.get('k1').result()}")

    p.header("Cluster health")
    _print_health(client, p, summary, n_workers)

    p.header("Supervised processes")
    for text in ProcessManager.list_processes()[
        ["name", "kind", "worker", "state", "incarnation", "restarts"]
    ].to_string(index=False).splitlines():
        p.line(text)


def _print_health(client: Any, p: _Printer, summary: dict[str, Any], n_workers: int) -> Any:
    client.wait_for_workers(n_workers, timeout=120)
    deadline = time.monotonic() + 15  # a restarted worker reports after its heartbeat
    while True:
        health = HealthMonitor.get_cluster_health()
        frame = health.to_frame()
        if frame["load_avg"].notna().all() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    cols = [c for c in ("node", "status", "cpu", "memory", "load_avg", "cores",
                        "process_count") if c in frame.columns]
    for text in frame[cols].to_string(index=False).splitlines():
        p.line(text)
    summary["nodes"] = health.cluster.connected_nodes
    return health


def _dspex_tour(client: Any, p: _Printer, summary: dict[str, Any], n_workers: int,
                quick: bool, out_dir: str, recorder: HealthRecorder) -> None:
    from foundation_dask import dspex, scope
    from foundation_dask.dspex.datasets import (
        SENTIMENT_INSTRUCTIONS,
        load_sentiment,
        sentiment_metric,
    )
    from foundation_dask.dspex.orchestration import coordinator_name
    from foundation_dask.scope.collect import critical_path_text

    sizes = (30, 30, 60) if quick else (40, 40, 120)
    candidates = 4 if quick else 12
    train, dev, test = load_sentiment(n_train=sizes[0], n_dev=sizes[1], n_test=sizes[2])
    lm = dspex.LocalLM(cache=False)
    dspex.configure(lm=lm)  # as a DSPy user does: the setting travels with every task
    program = dspex.Predict(dspex.Signature("review -> sentiment", SENTIMENT_INSTRUCTIONS))
    p.header(f"DSPEx: sentiment task with the local model {lm.model} "
             f"({len(train)} train / {len(dev)} validation / {len(test)} test)")
    evaluate = dspex.Evaluate(devset=test, metric=sentiment_metric, display_progress=True)
    before = evaluate(program)
    p.line(f"zero-shot accuracy on the held-out test split: {before.score:.1f}%")
    summary["accuracy_before"] = before.score

    p.header(f"Traced distributed optimization ({candidates} random-search candidates), "
             "one worker killed on the way")
    scope.start_cluster_profiling(duration_ms=600_000)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = dspex.DistributedOptimizer.optimize_program_distributed(
                program, train, sentiment_metric, valset=dev,
                num_candidate_programs=candidates, max_bootstrapped_demos=4,
                max_labeled_demos=4, seed=0, optimization_id="demo", trace=True,
                display_progress=True, timeout=None,
            )
        except BaseException as exc:  # reported below
            box["error"] = exc

    thread = threading.Thread(target=run, name="demo-optimization")
    thread.start()
    coordinator = None
    killed = None
    while thread.is_alive():
        thread.join(0.05)
        coordinator = coordinator or ProcessManager.lookup(coordinator_name("demo"))
        if coordinator is None or killed is not None:
            continue
        progress = coordinator.get_progress().result()
        busy = {w: len(keys) for w, keys in client.processing().items() if keys}
        # a race's plan shrinks as candidates stop: its percent done jumps near the end
        if progress["completion_percent"] >= 25 and busy:
            # kill a worker in the middle of evaluating: its chunks must run again
            victim = max(sorted(busy), key=busy.get)
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            killed = victim
            p.out(f"\n    killed worker {victim} (pid {pid}) at "
                  f"{progress['completion_percent']:.0f}% with {busy[victim]} evaluation "
                  "tasks running: they run again elsewhere")
    if "error" in box:
        raise box["error"]
    result = box["result"]
    p.line(f"optimization {result.optimization_id}: {result.status} in "
           f"{result.wall_time:.1f}s, best validation score {result.best_score:.1f}%")
    after = evaluate(result.best_program)
    p.line(f"accuracy on the held-out test split: {before.score:.1f}% -> {after.score:.1f}% "
           f"({len(result.best_program.demos)} demos)")
    summary.update(accuracy_after=after.score, optimization_wall_time_s=result.wall_time,
                   killed_worker=killed, trace_id=result.trace_id)

    p.header("Cluster health after the kill")
    _print_health(client, p, summary, n_workers)

    p.header("Trace of the optimization (ElixirScope)")
    data = scope.collect_trace_data(result.trace_id, timeout=15)
    s = data.summary
    lost = data.events[data.events["error_type"] == "TaskLost"]
    p.line(f"{s['spans']} events from {len(s['nodes'])} nodes in {s['duration_ms'] / 1000:.1f}s;"
           f" by kind: {s['by_kind']}")
    p.line(f"lost with the killed worker and re-run elsewhere: {len(lost)} evaluation tasks; "
           f"lost nodes: {data.lost_nodes or 'none'}")
    p.line("critical path: " + critical_path_text(s["critical_path"]))
    for r in data.slow_examples(3).itertuples():
        p.line(f"slow example #{r.index} on {r.node}: {r.duration_ms:.0f} ms, {r.why}")
    summary["lost_tasks"] = len(lost)
    summary["trace_events"] = s["spans"]

    p.header("Hottest code across the cluster (profiling during the optimization)")
    report = scope.analyze_cluster_performance(wait=False)
    for r in report.code_hotspots.head(5).itertuples():
        p.line(f"{r.self_time_s:7.2f} s CPU  ({r.self_wall_s:.2f} s wall)  {r.function}")
    summary["top_hotspot"] = (report.code_hotspots["function"].iloc[0]
                              if len(report.code_hotspots) else None)

    p.header(f"Report in {out_dir}/")
    try:
        history = dspex.optimization_history(result.optimization_id)
    except Exception:  # the coordinator is gone: the snapshots the run returned
        history = result.progress
    recorder.sample()  # the health at the end of the run, as the live panel shows it
    paths = write_report(out_dir, data, report, result, health=recorder.last,
                         health_history=recorder.frame(), progress=history)
    for name, path in paths.items():
        p.line(f"{name:10s} {path}")
    summary["report"] = paths


def write_report(out_dir: str, data: Any, report: Any, result: Any, *, health: Any = None,
                 health_history: Any = None, progress: Any = None) -> dict[str, str]:
    """The static HTML report (Bokeh views, inline) and the trace in JSON and Perfetto.

    Parameters
    ----------
    out_dir
        The folder written.
    data, report, result
        The trace (``scope.collect_trace_data``), the performance report
        (``scope.analyze_cluster_performance``) and the optimization's result.
    health, health_history
        The last cluster health and the history recorded during the run
        (:class:`HealthRecorder`); default the health now, without history.
    progress
        The optimization's progress snapshots (``dspex.optimization_history``);
        default ``result.progress``.
    """
    from pathlib import Path

    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models.widgets import Div
    from bokeh.resources import INLINE

    from foundation_dask.views import (
        ClusterHealthView,
        HotspotsView,
        SchedulerExtensionsView,
        TraceTimelineView,
    )
    from foundation_dask.views.optimization import OptimizationProgressView

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    health_view = ClusterHealthView()
    health_view.update(health)
    if health_history is not None and len(health_history):
        health_view.set_history(health_history)
    timeline = TraceTimelineView()
    timeline.update(data)
    hotspots = HotspotsView()
    hotspots.update(report.code_hotspots)
    extensions = SchedulerExtensionsView()
    extensions.update(report)
    progress_view = OptimizationProgressView(result.optimization_id)
    progress_view.update(result.progress if progress is None else progress)
    best = "-" if result.best_score is None else f"{result.best_score:.1f}%"
    layout = column(
        Div(text=f"<h1>foundation_dask demo</h1><p>Optimization {result.optimization_id}: "
                 f"{result.status}, best validation score {best}, trace {result.trace_id}</p>",
            sizing_mode="stretch_width"),
        health_view.root, progress_view.root, timeline.root, hotspots.root, extensions.root,
        sizing_mode="stretch_width",
    )
    html_path = folder / "report.html"
    html_path.write_text(file_html(layout, resources=INLINE, title="foundation_dask demo"))
    json_path = folder / "trace.json"
    perfetto_path = folder / "trace.perfetto.json"
    data.to_json(str(json_path))
    data.to_chrome_trace(str(perfetto_path))
    return {"report": str(html_path), "trace": str(json_path), "perfetto": str(perfetto_path)}
