"""Any process: the analysis of a profiling window, pure functions without cluster access.

Call trees in Dask's format (from :class:`~._sampler.NodeProfiler` or Dask's worker
profile) become per-function self and total times, CPU and wall (:func:`function_stats`),
and the cluster's code hotspots ranked by CPU time where the trees carry it
(:func:`code_hotspots`, :func:`hotspot_clock`); task durations of the window give the
stragglers (:func:`stragglers`); :func:`build_report` applies the thresholds of
``foundation.scope.*`` (:func:`thresholds_from_config`) and assembles the
:class:`~foundation_dask.scope.profiling.PerformanceReport`. See
:mod:`foundation_dask.scope.profiling` for the meaning of each threshold.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes, parse_timedelta

from foundation_dask import config
from foundation_dask.scope.profiling._names import (
    IDLE_FRAMES,
    OWN_FILES,
    SECONDS_KEYS,
    SUCCESS,
    TASK_SPEC_FILE,
    THRESHOLD_KEYS,
)
from foundation_dask.scope.profiling._report import PerformanceReport

if TYPE_CHECKING:
    import pandas as pd


def _is_idle_frame(filename: str, name: str) -> bool:
    return any(filename.endswith(suffix) and name == fn for suffix, fn in IDLE_FRAMES)


def _module_from_path(filename: str) -> str | None:
    """Best guess of the module name of a source file, from ``sys.path``."""
    if not filename or filename.startswith("<"):
        return None
    path = os.path.abspath(filename)
    best = None
    for entry in sys.path:
        base = os.path.abspath(entry or os.curdir)
        if path.startswith(base + os.sep) and (best is None or len(base) > len(best)):
            best = base
    if best is None:
        return None
    rel = os.path.splitext(os.path.relpath(path, best))[0]
    parts = rel.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or None


def count_innermost_frames(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a call tree from Dask's worker profile where innermost frames count.

    Dask's worker profiler does not count the innermost frame of a sample, so its
    node's count is 0 while the caller's count includes the sample. For every node,
    ``count - sum(children's counts)`` samples had one of its children as innermost
    frame: they are given to the only child when there is one (exact), else split evenly
    among the children that never had callees of their own (their count is 0, so they
    were only ever innermost frames), else among all children.
    """

    def fix(node: dict[str, Any], extra: float) -> dict[str, Any]:
        children = list(node["children"].values())
        excess = node["count"] - sum(c["count"] for c in children)
        shares = dict.fromkeys(range(len(children)), 0.0)
        if excess > 0 and children:
            takers = [i for i, c in enumerate(children) if c["count"] == 0] or list(shares)
            for i in takers:
                shares[i] = excess / len(takers)
        return {
            "count": node["count"] + extra,
            "description": node["description"],
            "identifier": node["identifier"],
            "children": {
                c["identifier"]: fix(c, shares[i]) for i, c in enumerate(children)
            },
        }

    return fix(tree, 0.0)


def function_stats(tree: dict[str, Any],
                   interval: float = 0.01) -> dict[tuple[str, str], dict[str, Any]]:
    """Per-function samples and seconds of a call tree whose innermost frames are counted.

    Parameters
    ----------
    tree
        A call tree in Dask's format; nodes may carry ``time`` (wall seconds), else
        their time is ``count * interval``, and ``cpu`` (CPU seconds).
    interval
        Seconds per sample of nodes without ``time``.

    Returns
    -------
    dict
        ``{(filename, name): {"self", "total", "self_s", "total_s", "self_cpu_s",
        "total_cpu_s", "entry", "description", "first_line"}}``: self samples and wall
        seconds (the node's minus its children's, summed over every place of the
        function), total samples and wall seconds (each sample once, also for recursive
        functions), the same in CPU seconds (0 for trees without ``cpu``), whether the
        function was
        called by Dask's task machinery (a task's function), the description of its
        first node and the first line of its code.
    """

    def seconds(node: dict[str, Any]) -> float:
        value = node.get("time")
        return float(value) if value is not None else node["count"] * interval

    stats: dict[tuple[str, str], dict[str, Any]] = {}
    # iterative walk: (node, parent description, functions on the path)
    todo: list[tuple[dict[str, Any], dict[str, Any] | None, frozenset]] = [
        (c, None, frozenset()) for c in tree["children"].values()
    ]
    while todo:
        node, parent, path = todo.pop()
        desc = node["description"]
        if not isinstance(desc, dict):
            continue
        key = (desc.get("filename", ""), desc.get("name", ""))
        entry = stats.get(key)
        if entry is None:
            first = desc.get("first_line")
            if first is None:  # Dask's identifiers end with the function's first line
                tail = str(node.get("identifier", "")).rpartition(";")[2]
                first = int(tail) if tail.isdigit() else desc.get("line_number")
            entry = stats[key] = {"self": 0.0, "total": 0.0, "self_s": 0.0, "total_s": 0.0,
                                  "self_cpu_s": 0.0, "total_cpu_s": 0.0, "entry": False,
                                  "description": desc, "first_line": first}
        children = node["children"].values()
        cpu = float(node.get("cpu") or 0.0)
        entry["self"] += max(0.0, node["count"] - sum(c["count"] for c in children))
        entry["self_s"] += max(0.0, seconds(node) - sum(seconds(c) for c in children))
        entry["self_cpu_s"] += max(0.0, cpu - sum(float(c.get("cpu") or 0.0)
                                                   for c in children))
        if key not in path:
            entry["total"] += node["count"]
            entry["total_s"] += seconds(node)
            entry["total_cpu_s"] += cpu
        parent_file = parent.get("filename", "") if parent else ""
        if (parent is None or parent_file.endswith(TASK_SPEC_FILE)) and not (
            key[0].endswith(TASK_SPEC_FILE)
        ):
            entry["entry"] = True
        sub_path = path | {key}
        todo.extend((c, desc, sub_path) for c in children)
    return stats


HOTSPOT_COLUMNS = [
    "function", "name", "location", "self_time_s", "total_time_s", "self_wall_s",
    "total_wall_s", "samples", "total_samples", "calls", "nodes", "filename", "line",
]


def hotspot_clock(profiles: dict[str, dict[str, Any]]) -> str:
    """``"cpu"`` when every profile carries CPU times (the ``sampler`` source where
    threads have CPU clocks), else ``"wall"``: the time :func:`code_hotspots` ranks by."""
    if profiles and all(r.get("profile_clock") == "cpu" for r in profiles.values()):
        return "cpu"
    return "wall"

NODE_COLUMNS = [
    "node", "name", "status", "error", "health", "cpu", "memory", "memory_bytes",
    "memory_limit", "threads", "process_count", "load_avg", "cores", "nthreads",
    "tasks_executed", "tasks_executing", "tasks_ready", "event_loop_lag",
    "event_loop_lag_mean", "samples", "top_function", "window_s", "host", "pid",
]


#: Columns of :attr:`PerformanceReport.scheduler_extensions`.
EXTENSION_COLUMNS = ["subsystem", "seconds", "calls", "share"]
#: The row of :func:`extensions_frame` that sums the others.
ALL_EXTENSIONS = "all Foundation"


def extensions_frame(figures: dict[str, Any] | None) -> pd.DataFrame:
    """The scheduler meter's figures as a table, most seconds first, and a last row
    (:data:`ALL_EXTENSIONS`) summing them.

    Parameters
    ----------
    figures
        ``{"window_s", "seconds": {subsystem: s}, "calls": {subsystem: n}}`` (what the
        scheduler meter gives); None or nothing metered: an empty table.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`EXTENSION_COLUMNS`: the seconds the subsystem's code held the
        scheduler's event loop, its calls, and ``share``, those seconds over the
        seconds metered.
    """
    import pandas as pd

    seconds = dict((figures or {}).get("seconds") or {})
    if not seconds:
        return pd.DataFrame(columns=EXTENSION_COLUMNS)
    calls = (figures or {}).get("calls") or {}
    window = float((figures or {}).get("window_s") or 0.0)
    rows = sorted(seconds.items(), key=lambda kv: -kv[1])
    rows.append((ALL_EXTENSIONS, sum(seconds.values())))
    return pd.DataFrame(
        [{"subsystem": name, "seconds": float(sec),
          "calls": int(sum(calls.values()) if name == ALL_EXTENSIONS else calls.get(name, 0)),
          "share": sec / window if window > 0 else 0.0} for name, sec in rows],
        columns=EXTENSION_COLUMNS)


def code_hotspots(profiles: dict[str, dict[str, Any]], top: int = 20,
                  task_counts: dict[str, dict[str, int]] | None = None,
                  ) -> tuple[pd.DataFrame, float, dict[str, str | None]]:
    """Top functions by self time summed over the cluster: CPU time when every profile
    carries it (:func:`hotspot_clock`), else the wall time of busy threads.

    Parameters
    ----------
    profiles
        ``{node: get_detailed_metrics() result}`` of the nodes that answered (uses its
        ``profile``, ``profile_source`` and ``profile_interval``).
    top
        Number of rows.
    task_counts
        ``{node: {task prefix: tasks}}`` of the window, for the ``calls`` of functions
        that are the functions of tasks.

    Returns
    -------
    (DataFrame, float, dict)
        The hotspots (columns :data:`HOTSPOT_COLUMNS`: ``self_time_s`` and
        ``total_time_s`` in the time ranked by, ``self_wall_s`` and ``total_wall_s`` in
        wall time; ``frame.attrs["clock"]`` is :func:`hotspot_clock`), the wall seconds
        spent in idle waits (left out of the table) and the top function of each node.
    """
    import pandas as pd

    clock = hotspot_clock(profiles)
    by_cpu = clock == "cpu"
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    idle = 0.0
    node_top: dict[str, str | None] = {}
    for node, result in profiles.items():
        tree = result["profile"]
        if result.get("profile_source") == "dask":
            tree = count_innermost_frames(tree)
        interval = float(result.get("profile_interval") or 0.01)
        best: tuple[float, str] | None = None
        for key, st in function_stats(tree, interval).items():
            filename, name = key
            if filename.endswith(OWN_FILES):
                continue
            if _is_idle_frame(filename, name):
                idle += st["self_s"]
                continue
            row = merged.get(key)
            if row is None:
                desc = st["description"]
                module = desc.get("module") or _module_from_path(filename)
                qualname = desc.get("qualname") or name
                line = st["first_line"] or 0
                row = merged[key] = {
                    "function": f"{module}.{qualname}" if module else qualname,
                    "name": name,
                    "location": f"{filename}:{line}",
                    "self_time_s": 0.0, "total_time_s": 0.0, "self_wall_s": 0.0,
                    "total_wall_s": 0.0, "samples": 0.0, "total_samples": 0.0,
                    "calls": None, "nodes": set(), "filename": filename, "line": line,
                }
            row["samples"] += st["self"]
            row["total_samples"] += st["total"]
            row["self_wall_s"] += st["self_s"]
            row["total_wall_s"] += st["total_s"]
            self_s = st["self_cpu_s"] if by_cpu else st["self_s"]
            row["self_time_s"] += self_s
            row["total_time_s"] += st["total_cpu_s"] if by_cpu else st["total_s"]
            if st["total"] > 0:
                row["nodes"].add(node)
            if st["entry"] and task_counts is not None:
                calls = (task_counts.get(node) or {}).get(name)
                if calls:
                    row["calls"] = (row["calls"] or 0) + calls
            if st["self"] > 0 and (best is None or self_s > best[0]):
                best = (self_s, row["function"])
        node_top[node] = best[1] if best else None
    rows = sorted(
        merged.values(),
        key=lambda r: (-r["self_time_s"], -r["total_time_s"], -r["self_wall_s"], r["function"]),
    )
    rows = [r for r in rows if r["samples"] > 0][:top]
    for r in rows:
        r["nodes"] = sorted(r["nodes"])
        for k in ("samples", "total_samples"):
            r[k] = int(round(r[k])) if float(r[k]).is_integer() else round(r[k], 2)
    frame = pd.DataFrame(rows, columns=HOTSPOT_COLUMNS)
    frame["calls"] = frame["calls"].astype("Int64")
    frame.attrs["clock"] = clock
    return frame, idle, node_top


def _imbalance(values: dict[str, float], factor: float) -> dict[str, Any] | None:
    if len(values) < 2:
        return None
    hi_node = max(values, key=lambda n: (values[n], n))
    lo_node = min(values, key=lambda n: (values[n], n))
    hi, lo = values[hi_node], values[lo_node]
    if hi - lo < 2 or hi <= factor * lo:
        return None
    return {
        "max_node": hi_node, "max": hi, "min_node": lo_node, "min": lo,
        "ratio": hi / lo if lo else math.inf, "factor": factor, "per_node": dict(values),
    }


def stragglers(tasks: list[dict[str, Any]], factor: float, min_tasks: int,
               min_duration: float) -> list[dict[str, Any]]:
    """Tasks much slower than the median of their prefix.

    Parameters
    ----------
    tasks
        ``{"key", "prefix", "node", "duration_s"}`` of the tasks of the window.
    factor
        A task is a straggler above ``factor`` times its prefix's median...
    min_tasks
        ...when its prefix ran at least ``min_tasks`` tasks...
    min_duration
        ...and it took at least ``min_duration`` seconds.

    Returns
    -------
    list of dict
        One ``straggler`` bottleneck per prefix with stragglers.
    """
    by_prefix: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        by_prefix[t["prefix"]].append(t)
    out = []
    for prefix, group in sorted(by_prefix.items()):
        if len(group) < min_tasks:
            continue
        median = statistics.median(t["duration_s"] for t in group)
        slow = [
            t for t in group
            if t["duration_s"] >= min_duration and t["duration_s"] > factor * median
        ]
        if not slow:
            continue
        slow.sort(key=lambda t: -t["duration_s"])
        out.append({
            "type": "straggler",
            "prefix": prefix,
            "affected_nodes": sorted({t["node"] for t in slow}),
            "values": [
                {"key": t["key"], "node": t["node"], "duration_s": t["duration_s"],
                 "ratio": t["duration_s"] / median if median else math.inf}
                for t in slow
            ],
            "median_s": median,
            "tasks": len(group),
            "threshold": factor,
        })
    return out


def thresholds_from_config() -> dict[str, float]:
    """The analysis thresholds from ``foundation.scope.*`` (see
    :mod:`foundation_dask.scope.profiling`)."""
    out = {}
    for key in THRESHOLD_KEYS:
        value = config.get(f"scope.{key}")
        if key in SECONDS_KEYS:
            value = parse_timedelta(value, "s")
        out[key] = float(value)
    return out


def build_report(session: dict[str, Any], nodes: dict[str, dict[str, Any]],
                 health: dict[str, dict[str, Any]], process_counts: dict[str, int],
                 tasks: list[dict[str, Any]], thresholds: dict[str, float],
                 messages: dict[str, Any] | None = None, notes: list[str] | None = None,
                 top: int = 20, scheduler: dict[str, Any] | None = None) -> PerformanceReport:
    """Assemble a :class:`PerformanceReport` from what was gathered (no cluster access).

    Parameters
    ----------
    session
        ``started_at`` (ms), ``duration_ms``, ``options``.
    nodes
        ``{node: {"status": ..., "error": ..., "metrics": get_detailed_metrics()}}``.
    health
        ``{node: NodeHealth fields}`` (may be empty).
    process_counts
        ``{node: Foundation processes other than the profilers}``.
    tasks
        ``{"key", "prefix", "node", "duration_s"}`` of the tasks that ran in the window.
    thresholds
        See :func:`thresholds_from_config`.
    messages
        ``{"messages", "seconds"}``: channel messages over a span of the window.
    notes
        Remarks to carry (waits, partial windows...).
    top
        Rows of ``code_hotspots``.
    scheduler
        The scheduler meter's figures (``window_s``, ``seconds`` and ``calls`` by
        subsystem), None when it did not run.
    """
    import pandas as pd

    notes = list(notes or [])
    ok = {n: r["metrics"] for n, r in nodes.items() if r["status"] == SUCCESS}
    task_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t in tasks:
        task_counts[t["node"]][t["prefix"]] += 1
    hotspots, idle_s, node_top = code_hotspots(ok, top=top, task_counts=task_counts)
    clock = hotspot_clock(ok)
    if ok and clock == "wall":
        sources = {m.get("profile_source") for m in ok.values()}
        notes.append(
            "code hotspots ranked by the wall time of busy threads (a sleeping or waiting "
            "task counts as much as a computing one): "
            + ("the 'dask' source has no CPU times" if sources == {"dask"}
               else "some workers have no per-thread CPU clocks")
        )
    clock_errors = sum(int(m.get("cpu_clock_errors") or 0) for m in ok.values())
    if clock_errors:
        notes.append(f"{clock_errors} samples counted with 0 CPU seconds: their thread's "
                     "CPU clock could not be read (the thread exited)")

    rows = []
    for node in sorted(nodes):
        res = nodes[node]
        m = res.get("metrics") or {}
        h = health.get(node) or {}
        rows.append({
            "node": node,
            "name": m.get("name") or h.get("name"),
            "status": res["status"],
            "error": res.get("error"),
            "health": h.get("status"),
            "cpu": m.get("cpu", h.get("cpu")),
            "memory": m.get("memory", h.get("memory")),
            "memory_bytes": m.get("memory_bytes", h.get("memory_bytes")),
            "memory_limit": m.get("memory_limit", h.get("memory_limit")),
            "threads": m.get("threads", h.get("threads")),
            "process_count": process_counts.get(node, 0),
            "load_avg": m.get("load_avg", h.get("load_avg")),
            "cores": m.get("cores", h.get("cores")),
            "nthreads": m.get("nthreads", h.get("nthreads")),
            "tasks_executed": m.get("tasks_executed"),
            "tasks_executing": m.get("tasks_executing", h.get("executing")),
            "tasks_ready": m.get("tasks_ready"),
            "event_loop_lag": m.get("event_loop_lag", h.get("event_loop_lag")),
            "event_loop_lag_mean": m.get("event_loop_lag_mean"),
            "samples": m.get("samples"),
            "top_function": node_top.get(node),
            "window_s": (m.get("window") or {}).get("elapsed_s"),
            "host": m.get("host") or h.get("host"),
            "pid": m.get("pid"),
        })
    details = pd.DataFrame(rows, columns=NODE_COLUMNS)

    # bottlenecks
    bottlenecks: list[dict[str, Any]] = []
    for kind, column, key in [
        ("cpu_bottleneck", "cpu", "bottleneck-cpu"),
        ("memory_bottleneck", "memory", "bottleneck-memory"),
        ("event_loop_lag", "event_loop_lag", "bottleneck-event-loop-lag"),
    ]:
        values = {
            n: float(m[column]) for n, m in ok.items()
            if m.get(column) is not None and m[column] > thresholds[key]
        }
        if values:
            bottlenecks.append({
                "type": kind, "affected_nodes": sorted(values), "values": values,
                "threshold": thresholds[key],
            })
    bottlenecks += stragglers(
        tasks, thresholds["straggler-factor"], int(thresholds["straggler-min-tasks"]),
        thresholds["straggler-min-duration"],
    )

    # suggestions
    suggestions: list[dict[str, Any]] = []
    factor = thresholds["imbalance-factor"]
    procs = _imbalance({n: float(process_counts.get(n, 0)) for n in ok}, factor)
    if procs:
        suggestions.append({
            "kind": "process_imbalance",
            "message": (
                f"Foundation processes are unbalanced: {procs['max_node']} hosts "
                f"{procs['max']:.0f}, {procs['min_node']} hosts {procs['min']:.0f} "
                f"(more than {factor:g}x). Stop and restart some singletons so the "
                "supervisor places them on the less loaded node."
            ),
            "numbers": procs,
        })
    executed = {n: float(m.get("tasks_executed") or 0) for n, m in ok.items()}
    work = _imbalance(executed, factor)
    if work:
        suggestions.append({
            "kind": "task_imbalance",
            "message": (
                f"Tasks are unbalanced: {work['max_node']} executed {work['max']:.0f} tasks "
                f"in the window, {work['min_node']} executed {work['min']:.0f} (more than "
                f"{factor:g}x). Check worker restrictions, resources and data locality "
                "(client.submit(..., workers=...)), or call client.rebalance()."
            ),
            "numbers": work,
        })
    pressure = {
        n: {"memory": m.get("memory"), "memory_bytes": m.get("memory_bytes"),
            "spilled_bytes": m.get("spilled_bytes"), "worker_status": m.get("worker_status")}
        for n, m in ok.items()
        if (m.get("memory") or 0) >= thresholds["memory-pressure"]
        or (m.get("spilled_bytes") or 0) > 0 or m.get("worker_status") == "paused"
    }
    if pressure:
        parts = ", ".join(
            f"{n} at {v['memory']:.1f}%" + (
                f" ({format_bytes(v['spilled_bytes'])} spilled)" if v["spilled_bytes"] else ""
            )
            for n, v in sorted(pressure.items())
        )
        suggestions.append({
            "kind": "memory_pressure",
            "message": (
                f"Memory pressure on {parts} (threshold {thresholds['memory-pressure']:g}%). "
                "Release results that are no longer needed, persist less, use smaller "
                "partitions, or give the workers more memory."
            ),
            "numbers": {"per_node": pressure, "threshold": thresholds["memory-pressure"]},
        })
    if sum(executed.values()) > 0:
        idle_nodes = sorted(
            n for n, m in ok.items()
            if executed[n] == 0 and (m.get("cpu") or 0.0) < thresholds["idle-cpu"]
        )
        busy = sorted(n for n in ok if executed[n] > 0)
        if idle_nodes:
            per_node = {
                n: {"tasks_executed": int(executed[n]), "cpu": float(ok[n].get("cpu") or 0)}
                for n in sorted(ok)
            }
            suggestions.append({
                "kind": "idle_nodes",
                "message": (
                    "Idle during the window: "
                    + ", ".join(f"{n} (0 tasks, {per_node[n]['cpu']:.1f}% CPU)"
                                for n in idle_nodes)
                    + " while "
                    + ", ".join(f"{n} executed {per_node[n]['tasks_executed']} tasks"
                                for n in busy)
                    + ". Submit more, smaller tasks, remove restrictions pinning work to "
                    "some workers, or scale the cluster down."
                ),
                "numbers": {"idle_nodes": idle_nodes, "busy_nodes": busy,
                            "per_node": per_node, "idle_cpu": thresholds["idle-cpu"]},
            })

    # overview
    window_s = session["duration_ms"] / 1000
    hosts: dict[str, int] = {}
    for m in ok.values():
        if m.get("cores"):
            hosts[m.get("host") or m["node"]] = int(m["cores"])
    for n, h in health.items():
        if n not in ok and h.get("cores"):
            hosts.setdefault(h.get("host") or n, int(h["cores"]))
    mem_used = sum(int(m.get("memory_bytes") or 0) for m in ok.values())
    mem_limit = sum(int(m.get("memory_limit") or 0) for m in ok.values())
    total_tasks = int(sum(executed.values()))
    cpus = [float(m["cpu"]) for m in ok.values() if m.get("cpu") is not None]
    overview = {
        "nodes": len(nodes),
        "profiled_nodes": len(ok),
        "healthy_nodes": sum(
            1 for n in nodes
            if ((health.get(n) or {}).get("status") or ("healthy" if n in ok else None))
            == "healthy"
        ),
        "failed_nodes": sorted(n for n, r in nodes.items() if r["status"] != SUCCESS),
        "total_cores": sum(hosts.values()),
        "total_threads": int(sum(int(m.get("nthreads") or 0) for m in ok.values())),
        "cpu_percent": statistics.fmean(cpus) if cpus else None,
        "cpu_percent_max": max(cpus) if cpus else None,
        "memory_bytes": mem_used,
        "memory_limit": mem_limit,
        "memory_percent": 100.0 * mem_used / mem_limit if mem_limit else None,
        "messages": (messages or {}).get("messages"),
        "message_throughput_per_sec": (
            messages["messages"] / messages["seconds"]
            if messages and messages.get("messages") is not None and messages.get("seconds")
            else None
        ),
        "message_window_s": (messages or {}).get("seconds"),
        "tasks_executed": total_tasks,
        "tasks_per_sec": total_tasks / window_s if window_s else 0.0,
        "window_s": window_s,
        "started_at": session["started_at"],
        "samples": int(sum(int(m.get("samples") or 0) for m in ok.values())),
        "profiled_time_s": float(sum(
            m["profile"].get("time", (m.get("samples") or 0) * (m.get("profile_interval") or 0))
            for m in ok.values()
        )),
        "profiled_cpu_s": float(sum(float(m["profile"].get("cpu") or 0.0)
                                    for m in ok.values())),
        "hotspot_clock": clock,
        "sampler_cpu_s": float(sum(float(m.get("sampler_cpu_s") or 0.0) for m in ok.values())),
        "idle_wait_s": idle_s,
        "profile_source": session.get("options", {}).get("source", "sampler"),
        "scheduler_metered_s": (scheduler or {}).get("window_s"),
        "scheduler_extensions_s": (float(sum(scheduler["seconds"].values()))
                                   if scheduler and scheduler.get("seconds") is not None
                                   else None),
    }
    return PerformanceReport(
        cluster_overview=overview,
        node_details=details,
        performance_bottlenecks=bottlenecks,
        optimization_suggestions=suggestions,
        code_hotspots=hotspots,
        thresholds=dict(thresholds),
        notes=notes,
        session=dict(session),
        profiles={n: m["profile"] for n, m in ok.items()},
        scheduler_extensions=extensions_frame(scheduler),
    )
