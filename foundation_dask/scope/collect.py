"""Client and scheduler: collection and correlation of a trace into one timeline.

:func:`collect_trace_data` runs in a client (a notebook, or a task through its
worker's client); :func:`correlate`, which merges what the nodes sent into a
:class:`TraceData`, has no cluster access and also runs in the scheduler, for the
dashboard (:func:`foundation_dask.scope.scheduler_trace_data`).

Every node is asked at once, each with its own deadline: workers for the spans their
process recorded, the scheduler for the traced tasks it saw finish (worker, thread,
compute and transfer intervals, errors), and this process for its own spans. A node
that does not answer in time is listed in ``missing_nodes``; a worker that left the
cluster during the trace is listed in ``lost_nodes`` (what it recorded is gone with it,
except its tasks, which the scheduler saw).

Clocks: before asking for spans, each node's clock is read three times with a tiny
RPC; the sample with the shortest round trip gives ``offset = remote - (t0 + t1) / 2``
with an error bound of half that round trip (on loopback, tens of microseconds).
Spans are shifted onto this process's clock by their node's offset; task times, which
Dask reports on the scheduler's clock (worker time corrected by the worker's own
estimate of its scheduler delay), by the scheduler's offset.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foundation_dask._html import html_repr
from foundation_dask.core._client import current_client, worker_infos
from foundation_dask.scope._coordinators import coordinator
from foundation_dask.scope._names import EVENT_COLUMNS
from foundation_dask.tracecontext import SPAN_FIELDS, recorder

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable

    import distributed
    import pandas as pd

__all__ = [
    "EVENT_COLUMNS", "TraceData", "collect_trace_data", "correlate", "critical_path_text",
]


def _hex(span_id: int | None) -> str | None:
    return f"{span_id:016x}" if span_id else None


async def clock_offset(rpc_call: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """(offset_ns, error_ns) of a remote clock (``rpc_call()`` returns its epoch ns)
    from the best of three round trips."""
    best: tuple[float, int] | None = None
    for _ in range(3):
        t0 = time.time_ns()
        remote = await rpc_call()
        t1 = time.time_ns()
        rtt = t1 - t0
        if best is None or rtt < best[1]:
            best = (remote - (t0 + t1) / 2, rtt)
    assert best is not None
    return best[0], best[1] / 2


@dataclass
class TraceData:
    """A collected, correlated trace.

    Attributes
    ----------
    events
        One row per span, task, actor call, message and error event, on one clock.
    timeline
        ``events`` sorted by start, with ``depth`` in the span tree and ``lane``
        (node / thread).
    errors
        Rows of ``events`` whose status is ``error``, with type, message and traceback.
    summary
        Duration, nodes, counts by kind and node, errors, the critical path (the spans
        that made the trace as long as it was, in time order, each with its ``depth``),
        cross-node parent/child links, missing and lost nodes.
    """

    trace_id: str
    info: dict[str, Any]
    events: pd.DataFrame
    timeline: pd.DataFrame
    errors: pd.DataFrame
    summary: dict[str, Any]
    missing_nodes: list[str] = field(default_factory=list)
    lost_nodes: list[str] = field(default_factory=list)
    clock: dict[str, dict[str, float]] = field(default_factory=dict)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """True when some node did not answer or was lost during the trace."""
        return bool(self.missing_nodes or self.lost_nodes)

    def slow_examples(self, n: int = 10, name: str = "evaluate_example") -> pd.DataFrame:
        """Which evaluated examples were slow, on which node, and why.

        One row per ``name`` span (the spans DSPEx records around each example), the
        slowest first: example index, score, error, node, duration, the time spent in
        LM calls under it (calls, tokens, cache hits), the node's median, and ``why``:
        the example failed, the LM call dominated (with its tokens, cache misses and the
        prompt tokens the model had cached from earlier calls, see
        :class:`~foundation_dask.dspex.lm.LMResponse`: a call with few has the whole prompt
        to process, typically the first example of a chunk), the node was slower than the
        others, or the program's own code took the time.
        """
        import pandas as pd

        ev = self.events
        ex = ev[ev["name"] == name]
        cols = ["index", "score", "error", "node", "thread", "duration_ms", "lm_ms", "lm_calls",
                "tokens", "cached_prompt_tokens", "cache_hits", "node_median_ms", "why", "span_id"]
        if ex.empty:
            return pd.DataFrame(columns=cols)
        lm = ev[ev["kind"] == "lm"]
        no_lm = {"lm_ms": 0.0, "lm_calls": 0, "tokens": 0, "prompt_tokens": 0,
                 "cached_prompt_tokens": 0, "cache_hits": 0}
        lm_stats: dict[str, dict[str, float]] = {}
        for parent, dur, attrs in zip(lm["parent_id"], lm["duration_ms"], lm["attrs"],
                                      strict=True):
            a = attrs or {}
            s = lm_stats.setdefault(parent, dict(no_lm))
            s["lm_ms"] += dur
            s["lm_calls"] += 1
            s["tokens"] += int(a.get("prompt_tokens") or 0) + int(a.get("completion_tokens") or 0)
            s["prompt_tokens"] += int(a.get("prompt_tokens") or 0)
            s["cached_prompt_tokens"] += int(a.get("cached_prompt_tokens") or 0)
            s["cache_hits"] += int(bool(a.get("cache_hit")))
        node_median = ex.groupby("node")["duration_ms"].median().to_dict()
        overall = float(ex["duration_ms"].median())
        rows = []
        for r in ex.itertuples(index=False):
            a = r.attrs or {}
            st = lm_stats.get(r.span_id, no_lm)
            others = [m for nd, m in node_median.items() if nd != r.node]
            if a.get("error"):
                why = f"failed: {a['error']}"
            elif st["lm_calls"] and st["lm_ms"] >= 0.8 * r.duration_ms:
                misses = st["lm_calls"] - st["cache_hits"]
                why = (f"LM calls took {st['lm_ms']:.0f} of {r.duration_ms:.0f} ms "
                       f"({st['tokens']} tokens, {misses} cache misses; "
                       f"{st['cached_prompt_tokens']} of {st['prompt_tokens']} prompt tokens "
                       "cached by the model from earlier calls)")
            elif others and node_median[r.node] > 1.5 * (sum(others) / len(others)):
                why = (f"slow node: median {node_median[r.node]:.0f} ms on {r.node} vs "
                       f"{sum(others) / len(others):.0f} ms elsewhere")
            elif r.duration_ms > 3 * overall:
                why = f"{r.duration_ms / overall:.1f}x the median example, outside LM calls"
            else:
                why = f"program code outside LM calls: {r.duration_ms - st['lm_ms']:.0f} ms"
            rows.append({"index": a.get("index"), "score": a.get("score"),
                         "error": a.get("error"), "node": r.node, "thread": r.thread,
                         "duration_ms": r.duration_ms, **st,
                         "node_median_ms": node_median[r.node], "why": why,
                         "span_id": r.span_id})
        frame = pd.DataFrame(rows, columns=cols)
        return frame.sort_values("duration_ms", ascending=False).head(n).reset_index(drop=True)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The trace in the export format of ElixirScope (see
        :func:`foundation_dask.scope.export.to_json`)."""
        from foundation_dask.scope.export import to_json

        return to_json(self, path)

    def to_chrome_trace(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Chrome trace-event JSON that Perfetto and ``chrome://tracing`` load (see
        :func:`foundation_dask.scope.export.to_chrome_trace`)."""
        from foundation_dask.scope.export import to_chrome_trace

        return to_chrome_trace(self, path)

    def to_otlp_json(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """OpenTelemetry OTLP/JSON ``TracesData`` (see
        :func:`foundation_dask.scope.export.to_otlp_json`)."""
        from foundation_dask.scope.export import to_otlp_json

        return to_otlp_json(self, path)

    def __repr__(self) -> str:
        s = self.summary
        text = (
            f"<TraceData {self.trace_id} scope={self.info.get('scope')!r} "
            f"status={self.info.get('status')} spans={s['spans']} nodes={len(s['nodes'])} "
            f"errors={s['errors']} duration={s['duration_ms']:.1f} ms"
        )
        if self.partial:
            text += f" missing={self.missing_nodes} lost={self.lost_nodes}"
        return text + ">"

    def _repr_html_(self) -> str:
        s = self.summary
        return html_repr(repr(self), "TraceData", fields=[
            ("trace", self.trace_id), ("scope", self.info.get("scope")),
            ("status", self.info.get("status")), ("duration", f"{s['duration_ms']:.1f} ms"),
            ("spans", s["spans"]), ("nodes", ", ".join(s["nodes"])),
            ("errors", s["errors"]),
            ("critical path", critical_path_text(s["critical_path"])),
            ("missing nodes", ", ".join(self.missing_nodes) or "none"),
            ("lost nodes", ", ".join(self.lost_nodes) or "none"),
        ])


_ROW_COLUMNS = [c for c in EVENT_COLUMNS if c not in ("start", "end", "duration_ms")]


def _error_columns(errors: list) -> dict[str, list]:
    return {
        "error_type": [e and e["type"] for e in errors],
        "error_message": [e and e["message"] for e in errors],
        "traceback": [e and e["traceback"] for e in errors],
    }


def _thread_name(threads: dict[Any, str], thread_id: Any) -> str | None:
    """The name of thread ``thread_id`` in ``threads``, else its id as text; ``None``
    for a missing id (a task whose worker did not report its thread: lost with it). A
    column with missing ids holds floats: the id is written as an integer."""
    if thread_id is None or (isinstance(thread_id, float) and thread_id != thread_id):
        return None
    if isinstance(thread_id, float) and thread_id.is_integer():
        thread_id = int(thread_id)
    return threads.get(thread_id, str(thread_id))


def _frame_from_process(payload: dict[str, Any], offset_ns: float) -> pd.DataFrame:
    """The spans one process recorded, as a frame on the collector's clock."""
    import pandas as pd

    df = pd.DataFrame.from_records(payload["spans"], columns=list(SPAN_FIELDS))
    threads = payload.get("threads", {})
    errors = df.pop("error").tolist()
    for col, values in _error_columns(errors).items():
        df[col] = pd.Series(values, index=df.index, dtype=object)
    shift = round(offset_ns)  # integer ns: epoch ns in a float lose 256 ns steps
    df["start_ns"] = df["start_ns"].astype("int64") - shift
    df["end_ns"] = df["end_ns"].astype("int64") - shift
    df["thread"] = [_thread_name(threads, t) for t in df["thread_id"]]
    df["node"] = payload["node"]
    df["pid"] = payload["pid"]
    df["host"] = payload.get("host")
    df["key"] = None
    df["clock_offset_ms"] = offset_ns / 1e6
    return df.reindex(columns=_ROW_COLUMNS)


def _frame_from_tasks(tasks: list[dict], offsets: dict[str, float],
                      processes: dict[str, dict]) -> pd.DataFrame:
    """The traced tasks the scheduler saw, timed by their workers' clocks."""
    import pandas as pd

    df = pd.DataFrame.from_records(tasks, columns=[
        "trace_id", "span_id", "parent_id", "name", "key", "node", "thread_id", "start_ns",
        "end_ns", "status", "error", "transfers",
    ])
    if df.empty:
        return pd.DataFrame(columns=_ROW_COLUMNS)
    # Dask reports task start/stop (and transfers) as worker time corrected by the
    # worker's own estimate of its clock difference to the scheduler: scheduler clock.
    shift = round(offsets.get("scheduler", 0.0))
    df["start_ns"] = df["start_ns"].astype("int64") - shift
    df["end_ns"] = df["end_ns"].astype("int64") - shift
    df["clock_offset_ms"] = shift / 1e6
    errors = df.pop("error").tolist()
    for col, values in _error_columns(errors).items():
        df[col] = pd.Series(values, index=df.index, dtype=object)
    df["kind"] = "task"
    df["pid"] = [processes.get(n, {}).get("pid") for n in df["node"]]
    df["host"] = [processes.get(n, {}).get("host") for n in df["node"]]
    df["thread"] = [
        _thread_name(processes.get(n, {}).get("threads", {}), t)
        for n, t in zip(df["node"], df["thread_id"], strict=True)
    ]
    df["attrs"] = [
        {"transfers": [{**x, "start_ns": x["start_ns"] - shift, "end_ns": x["end_ns"] - shift}
                       for x in t]} if t else None
        for t in df.pop("transfers")
    ]
    return df.reindex(columns=_ROW_COLUMNS)


def _lane_names(events: pd.DataFrame) -> list[str]:
    """One lane name per event: ``"<node> / <thread>"``, the node alone for events
    without a thread (scheduler tasks), ``"<thread>"`` without a node."""
    import pandas as pd

    def text(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            return ""
        if isinstance(value, float) and value.is_integer():  # a thread id in a float column
            return str(int(value))
        text = str(value)
        return "" if text in ("nan", "None") else text

    nodes = events["node"].tolist() if "node" in events else [None] * len(events)
    threads = events["thread"].tolist() if "thread" in events else [None] * len(events)
    names = []
    for node, thread in zip(nodes, threads, strict=True):
        n, t = text(node), text(thread)
        names.append(f"{n} / {t}" if n and t else (n or t))
    return names


def critical_path_text(path: list[dict[str, Any]]) -> str:
    """A critical path as one line: the root, then its direct children on the path,
    consecutive ones of the same name counted together, each with its time.

    >>> critical_path_text(data.summary["critical_path"])  # doctest: +SKIP
    'optimize 22.7s = teacher_chunk x4 3.6s -> evaluate x9 17.9s -> finish 0.0s'
    """
    if not path:
        return "none"
    steps: list[list[Any]] = []  # [name, count, milliseconds]
    for x in path:
        if x.get("depth") != 1:
            continue
        if steps and steps[-1][0] == x["name"]:
            steps[-1][1] += 1
            steps[-1][2] += x["duration_ms"]
        else:
            steps.append([x["name"], 1, x["duration_ms"]])
    root = f"{path[0]['name']} {path[0]['duration_ms'] / 1000:.1f}s"
    if not steps:
        return root
    return root + " = " + " -> ".join(
        f"{name}{f' x{n}' if n > 1 else ''} {ms / 1000:.1f}s" for name, n, ms in steps)


def _critical_path(frame: pd.DataFrame, limit: int = 2000) -> list[dict[str, Any]]:
    """The spans that made the trace as long as it was, in time order.

    From the end of a span, walking back in time: the child that finished last, then
    the child that finished last before that one started, and so on (children running
    in parallel with those are off the path); each child on the path is expanded the
    same way. What no child covers is the span's own time. The first entry is the
    root; at most ``limit`` entries.
    """
    if frame.empty:
        return []
    span_ids = frame["span_id"].tolist()
    parents = frame["parent_id"].tolist()
    starts = frame["start_ns"].tolist()
    ends = frame["end_ns"].tolist()
    names = frame["name"].tolist()
    nodes = frame["node"].tolist()
    durations = frame["duration_ms"].tolist()
    ids = set(span_ids)
    children: dict[Any, list[int]] = defaultdict(list)
    for i, parent in enumerate(parents):
        children[parent if parent in ids else None].append(i)
    roots = children[None]
    if not roots:
        return []
    path: list[dict[str, Any]] = []
    seen: set[Any] = set()
    stack = [(max(roots, key=ends.__getitem__), 0)]
    while stack and len(path) < limit:
        i, depth = stack.pop()
        sid = span_ids[i]
        if sid in seen:
            continue
        seen.add(sid)
        path.append({"span_id": sid, "name": names[i], "node": nodes[i], "depth": depth,
                     "duration_ms": float(durations[i])})
        picked = []
        cursor = None  # the first pick is the last to finish, even if clocks disagree
        for k in sorted(children.get(sid, ()), key=ends.__getitem__, reverse=True):
            if cursor is None or ends[k] <= cursor:
                picked.append(k)
                cursor = starts[k]
        # picked runs backwards in time: push so that the earliest pops first
        stack.extend((k, depth + 1) for k in picked)
    return path


def correlate(trace_id: str, info: dict[str, Any], payloads: list[dict[str, Any]],
              scheduler: dict[str, Any] | None, offsets: dict[str, float],
              errors_ns: dict[str, float], missing: list[str]) -> TraceData:
    """Merge per-node payloads into a :class:`TraceData` (pure; no cluster access)."""
    import pandas as pd

    processes = {p["node"]: p for p in payloads}
    frames = [_frame_from_process(p, offsets.get(p["node"], 0.0)) for p in payloads]
    lost: list[str] = []
    if scheduler is not None:
        tasks = _frame_from_tasks(scheduler["tasks"], offsets, processes)
        frames.append(tasks)
        started_s = (info.get("started_at") or 0) / 1000
        alive = set(scheduler["workers"])
        lost = sorted(
            w for w, t in scheduler["removed_workers"].items() if t >= started_s
        )
        lost += sorted(set(tasks["node"].dropna()) - alive - set(lost))
    frames = [f for f in frames if len(f)]
    frame = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame(columns=_ROW_COLUMNS))
    frame = frame.drop_duplicates(subset="span_id", keep="first")
    frame = frame.sort_values(["start_ns", "end_ns"], kind="stable").reset_index(drop=True)
    frame["duration_ms"] = (frame["end_ns"] - frame["start_ns"]) / 1e6
    frame["start"] = pd.to_datetime(frame["start_ns"], unit="ns")
    frame["end"] = pd.to_datetime(frame["end_ns"], unit="ns")
    # object columns keep None (not NaN) for "no parent"
    frame["parent_id"] = pd.Series(
        [_hex(x) if x else None for x in frame["parent_id"]], index=frame.index, dtype=object
    )
    frame["span_id"] = pd.Series(
        [_hex(x) for x in frame["span_id"]], index=frame.index, dtype=object
    )
    events = frame[EVENT_COLUMNS]

    # span tree: depth and cross-node links
    node_of = dict(zip(events["span_id"], events["node"], strict=False))
    parent_of = dict(zip(events["span_id"], events["parent_id"], strict=False))
    depth_cache: dict[str, int] = {}

    def depth(sid: str) -> int:
        chain: list[str] = []
        while sid not in depth_cache:
            parent = parent_of.get(sid)
            if parent is None or parent not in parent_of or len(chain) > 10_000:
                depth_cache[sid] = 0
                break
            chain.append(sid)
            sid = parent
        for s_ in reversed(chain):
            depth_cache[s_] = depth_cache[parent_of[s_]] + 1
        return depth_cache[chain[0]] if chain else depth_cache[sid]

    timeline = events.copy()
    timeline["depth"] = [depth(s) for s in timeline["span_id"]]
    timeline["lane"] = _lane_names(timeline)
    cross = sum(
        1 for sid, p in parent_of.items() if p in node_of and node_of[p] != node_of[sid]
    )
    errs = events[events["status"] == "error"][
        ["span_id", "name", "kind", "node", "thread", "start", "error_type", "error_message",
         "traceback"]
    ].reset_index(drop=True)
    if len(events):
        duration = (events["end_ns"].max() - events["start_ns"].min()) / 1e6
    else:
        duration = 0.0
    summary = {
        "trace_id": trace_id,
        "scope": info.get("scope"),
        "status": info.get("status"),
        "duration_ms": float(duration),
        "spans": int(len(events)),
        "nodes": sorted(set(events["node"].dropna().astype(str))),
        "by_kind": events["kind"].value_counts().to_dict(),
        "by_node": events["node"].value_counts().to_dict(),
        "errors": int(len(errs)),
        "cross_node_links": int(cross),
        "critical_path": _critical_path(frame),
        "missing_nodes": missing,
        "lost_nodes": lost,
        "dropped_spans": int(sum(p.get("dropped", 0) for p in payloads)),
        "clock_error_ms": {k: v / 1e6 for k, v in errors_ns.items()},
    }
    return TraceData(
        trace_id=trace_id, info=info, events=events, timeline=timeline, errors=errs,
        summary=summary, missing_nodes=missing, lost_nodes=lost,
        clock={n: {"offset_ms": offsets.get(n, 0.0) / 1e6, "error_ms": errors_ns.get(n, 0) / 1e6}
               for n in set(offsets) | set(errors_ns)},
        processes={n: {k: v for k, v in p.items() if k != "spans"} for n, p in processes.items()},
    )


def collect_trace_data(trace_id: str, timeout: float = 10.0, *,
                       client: distributed.Client | None = None) -> TraceData:
    """Gather a trace from every worker, the scheduler and this process.

    Parameters
    ----------
    trace_id
        The id of a trace started with :func:`~foundation_dask.scope.start_cluster_trace`
        or :class:`~foundation_dask.scope.trace`.
    timeout
        Seconds each node has to answer; slower nodes are listed in
        ``TraceData.missing_nodes`` and the result is partial, never a hang.
    client
        The client to act through (a synchronous one); default: the current client,
        else the one :func:`foundation_dask.connect` starts.

    Returns
    -------
    TraceData

    Raises
    ------
    TraceNotFoundError
        If no trace has that id.
    """
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    client = client or current_client()
    handle = coordinator(trace_id, client)
    try:
        info = handle.get_trace_info().result(timeout)
    except TimeoutError:
        # the coordinator's worker does not answer: go on with what its name tells
        info = {"trace_id": trace_id, "scope": None, "status": "unknown",
                "started_at": None, "completed_at": None, "results": None, "options": {}}
    workers = list(worker_infos(client))

    async def gather() -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, float],
                                dict[str, float], list[str]]:
        offsets: dict[str, float] = {}
        errors: dict[str, float] = {}
        missing: list[str] = []

        async def from_worker(addr: str) -> dict[str, Any]:
            rpc = client.rpc(addr)
            off, err = await clock_offset(rpc.foundation_scope_clock)
            offsets[addr], errors[addr] = off, err
            return await rpc.foundation_scope_spans(trace_id=trace_id)

        async def from_scheduler() -> dict[str, Any]:
            off, err = await clock_offset(client.scheduler.foundation_scope_clock)
            offsets["scheduler"], errors["scheduler"] = off, err
            return await client.scheduler.foundation_scope_scheduler_spans(trace_id=trace_id)

        names = [*workers, "scheduler"]
        coros = [from_worker(w) for w in workers] + [from_scheduler()]
        results = await asyncio.gather(
            *(asyncio.wait_for(c, timeout) for c in coros), return_exceptions=True
        )
        payloads: list[dict[str, Any]] = []
        sched: dict[str, Any] | None = None
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):
                missing.append(name)
            elif name == "scheduler":
                sched = res
            else:
                payloads.append(res)
        return payloads, sched, offsets, errors, missing

    payloads, sched, offsets, errors, missing = client.sync(gather)
    local = recorder.take(trace_id)
    if local["node"] not in workers:
        # this process is the client (not a worker hosted in-process): its own node
        local["node"] = f"client-{client.id}"
        offsets.setdefault(local["node"], 0.0)
        errors.setdefault(local["node"], 0.0)
    payloads.append(local)
    # tasks are timed by worker clocks: map the scheduler's worker offsets
    return correlate(trace_id, info, payloads, sched, offsets, errors, missing)
