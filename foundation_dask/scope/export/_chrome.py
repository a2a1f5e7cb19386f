"""Any process: the Chrome trace-event export of a trace (:func:`to_chrome_trace`), for
Perfetto and ``chrome://tracing``."""

from __future__ import annotations

import bisect
import math
import os
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from foundation_dask.scope.export._common import (
    _export,
    _identity,
    _int,
    _jsonable,
    _node_order,
    _node_role,
    _records,
    _transfers,
)

if TYPE_CHECKING:
    from foundation_dask.scope.collect import TraceData

#: Value of ``metadata["format"]`` of :func:`to_chrome_trace` documents.
CHROME_FORMAT = "foundation_dask.chrome/1"


def _pack_lanes(items: list[tuple[int, int, int]]) -> tuple[dict[int, int], dict[int, int | None]]:
    """Assign intervals ``(start, end, index)`` of one thread to lanes of strict nesting.

    A thread's slices must nest (no partial overlap) to be drawn; spans of interleaved
    coroutines on one thread do not, and go to extra lanes. Returns ``{index: lane}``
    and ``{index: enclosing index in its lane or None}``.
    """
    lanes: list[list[tuple[int, int]]] = []  # per lane, a stack of (end, index)
    lane_of: dict[int, int] = {}
    parent_of: dict[int, int | None] = {}
    for start, end, idx in sorted(items, key=lambda t: (t[0], -t[1], t[2])):
        lane = None
        for n, stack in enumerate(lanes):
            while stack and stack[-1][0] <= start and not (stack[-1][0] == start == end):
                stack.pop()
            if not stack or end <= stack[-1][0]:
                lane = n
                break
        if lane is None:
            lane = len(lanes)
            lanes.append([])
        stack = lanes[lane]
        parent_of[idx] = stack[-1][1] if stack else None
        stack.append((end, idx))
        lane_of[idx] = lane
    return lane_of, parent_of


def _free_times(start: int, end: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Closed ranges of whole nanoseconds strictly inside ``(start, end)`` where none of
    the ``covered`` (nested) intervals is open, in time order."""
    free = []
    prev = start
    for a, b in sorted(covered):
        if a - prev >= 2:
            free.append((prev + 1, a - 1))
        prev = max(prev, b)
    if end - prev >= 2:
        free.append((prev + 1, end - 1))
    return free


def _flow_start(start: int, end: int, free: list[tuple[int, int]], target: int) -> int:
    """A time in ``[start, end]`` within one of the ``free`` ranges (see
    :func:`_free_times`), as close to ``target`` as possible and preferably not after it,
    so that a flow event there binds to the slice ``[start, end]`` itself rather than
    to a slice nested in it."""
    target = min(max(target, start), end)
    if not free:
        return target
    i = bisect.bisect_right(free, (target, math.inf)) - 1  # last range starting <= target
    if i >= 0:
        return min(target, free[i][1])
    return free[0][0]


def to_chrome_trace(data: TraceData,
                    path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The trace as Chrome trace events, for Perfetto and ``chrome://tracing``.

    Parameters
    ----------
    data, path
        The trace, and a file to also write the document to, as for :func:`to_json`;
        Perfetto and ``chrome://tracing`` open that file.

    Returns
    -------
    dict
        ``{"traceEvents": [...], "displayTimeUnit": "ms", "metadata": {...}}`` where

        * each node is a process: ``pid`` 1..N (clients, the scheduler, then workers
          by address), named ``"<node> (<host>, pid <pid>)"`` by a ``process_name``
          metadata event (``"ph": "M"``), ordered by ``process_sort_index``;
        * each thread of a node is a ``tid`` 1..M within it, named by ``thread_name``;
          spans on one thread that overlap without nesting (interleaved coroutines)
          go to extra tracks named ``"<thread> (2)"``...;
        * each span, task, supervised-process call and event is a complete event
          (``"ph": "X"``) with ``ts``/``dur`` in microseconds relative to the start
          of the trace (``metadata["trace_start_ns"]``), ``cat`` its kind and ``args``
          (span_id, parent_id, status, error, key, attrs, node, thread);
        * each error is also an instant event (``"ph": "i"``, ``"s": "t"``) at the end
          of its span;
        * a span whose parent is on another node or thread gets a flow arrow: a
          ``"ph": "s"`` event inside the parent's slice (where no nested slice of the
          parent is open, so it binds to the parent) and a ``"ph": "f"``,
          ``"bp": "e"`` event at the child's start, with the same ``id``, ``cat``
          (``"flow"``) and ``name``;
        * the data transfers of a task (``attrs["transfers"]``) are slices of
          category ``transfer`` on a ``transfers`` track of the receiving node.

    Raises
    ------
    ExportError
        If ``path`` cannot be written (nothing is left at ``path``).
    """
    return _export(data, path, _chrome_document)


def _thread_meta(pid: int, tid: int, name: str) -> list[dict[str, Any]]:
    return [
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
         "args": {"sort_index": tid}},
    ]


def _process_meta(node: str, pid: int, proc: dict[str, Any]) -> list[dict[str, Any]]:
    label = ", ".join(x for x in (
        proc.get("host"), f"pid {proc['pid']}" if proc.get("pid") is not None else None
    ) if x)
    return [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
         "args": {"name": f"{node} ({label})" if label else node}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
         "args": {"sort_index": pid}},
        {"ph": "M", "name": "process_labels", "pid": pid, "tid": 0,
         "args": {"labels": _node_role(node)}},
    ]


class _Chrome:
    """Builds a Chrome trace-event document from the records of one trace."""

    def __init__(self, data: TraceData):
        self.data = data
        self.records = records = _records(data)
        self.transfers = {i: _transfers(r) for i, r in enumerate(records)
                          if r["kind"] == "task" and r["attrs"]}
        starts = [r["start_ns"] for r in records]
        starts += [t["start_ns"] for ts in self.transfers.values() for t in ts]
        self.t0 = min(starts) if starts else 0
        self.nodes = _node_order({r["node"] or "unknown" for r in records})
        self.pid_of = {node: i + 1 for i, node in enumerate(self.nodes)}
        self.place: dict[int, tuple[int, int]] = {}  # record index -> (pid, tid)
        self.lane_parent: dict[int, int | None] = {}  # record index -> enclosing index
        self.meta: list[dict[str, Any]] = []
        self.transfer_slices: list[dict[str, Any]] = []

    def us(self, ns: int) -> float:
        """Microseconds since the start of the trace, to the nanosecond."""
        return round((ns - self.t0) / 1000, 3)

    def document(self) -> dict[str, Any]:
        ident = _identity(self.data, self.records)
        # threads per node in order of first appearance (records are sorted by start)
        threads: dict[str, dict[Any, list[int]]] = {n: {} for n in self.nodes}
        for i, r in enumerate(self.records):
            tkey = r["thread_id"] if r["thread_id"] is not None else (r["thread"] or "unknown")
            threads[r["node"] or "unknown"].setdefault(tkey, []).append(i)
        for node in self.nodes:
            pid = self.pid_of[node]
            self.meta += _process_meta(node, pid, ident.get(node, {}))
            tid = 0
            for idxs in threads[node].values():
                tid = self.place_thread(pid, tid, idxs)
            self.place_transfers(node, pid, tid)
        slices, instants = self.slices()
        info = self.data.info or {}
        return {
            # slices first: a flow event binds to the slice open at its time, and viewers
            # take events of equal time in file order
            "traceEvents": self.meta + slices + self.transfer_slices + instants
            + self.flows(),
            "displayTimeUnit": "ms",
            "metadata": {
                "format": CHROME_FORMAT,
                "trace_id": self.data.trace_id,
                "scope": _jsonable(info.get("scope")),
                "status": _jsonable(info.get("status")),
                "started_at": _int(info.get("started_at")),
                "completed_at": _int(info.get("completed_at")),
                "trace_start_ns": int(self.t0),
                "nodes": dict(self.pid_of),
                "missing_nodes": [str(n) for n in self.data.missing_nodes],
                "lost_nodes": [str(n) for n in self.data.lost_nodes],
                "clock": _jsonable(self.data.clock),
                "exported_at": int(time.time() * 1000),
            },
        }

    def place_thread(self, pid: int, tid: int, idxs: list[int]) -> int:
        """Give the spans of one thread their tracks (tids after ``tid``); returns the
        last tid used."""
        records = self.records
        lane_of, parents = _pack_lanes(
            [(records[i]["start_ns"], max(records[i]["end_ns"], records[i]["start_ns"]), i)
             for i in idxs]
        )
        self.lane_parent.update(parents)
        name = records[idxs[0]]["thread"] or str(records[idxs[0]]["thread_id"] or "unknown")
        first = tid + 1
        for lane in range(max(lane_of.values()) + 1):
            self.meta += _thread_meta(pid, first + lane,
                                      name + (f" ({lane + 1})" if lane else ""))
        for i, lane in lane_of.items():
            self.place[i] = (pid, first + lane)
        return first + max(lane_of.values())

    def place_transfers(self, node: str, pid: int, tid: int) -> None:
        """Slices for the transfers received by the tasks of ``node``, on tracks of
        their own after ``tid``."""
        received = [
            (t["start_ns"], t["end_ns"], i, t)
            for i, ts in self.transfers.items() if (self.records[i]["node"] or "unknown") == node
            for t in ts
        ]
        if not received:
            return
        lane_of, _ = _pack_lanes([(s, e, k) for k, (s, e, _, _) in enumerate(received)])
        for lane in range(max(lane_of.values()) + 1):
            self.meta += _thread_meta(pid, tid + 1 + lane,
                                      "transfers" + (f" ({lane + 1})" if lane else ""))
        for k, (start, end, i, t) in enumerate(received):
            task = self.records[i]
            self.transfer_slices.append({
                "ph": "X", "name": f"transfer from {t['source']}", "cat": "transfer",
                "ts": self.us(start), "dur": round((end - start) / 1000, 3),
                "pid": pid, "tid": tid + 1 + lane_of[k],
                "args": {"source": t["source"], "node": node, "task": task["name"],
                         "key": task["key"], "task_span_id": task["span_id"]},
            })

    def slices(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A complete event per record, and an instant event per error."""
        slices, instants = [], []
        for i, r in enumerate(self.records):
            pid, tid = self.place[i]
            error = None
            if r["status"] == "error":
                error = {"type": r["error_type"], "message": r["error_message"],
                         "traceback": r["traceback"]}
                instants.append({
                    "ph": "i", "s": "t", "name": f"error: {r['error_type'] or 'Exception'}",
                    "cat": "error", "ts": self.us(max(r["end_ns"], r["start_ns"])),
                    "pid": pid, "tid": tid, "args": {"span_id": r["span_id"], **error},
                })
            slices.append({
                "ph": "X", "name": r["name"], "cat": r["kind"], "ts": self.us(r["start_ns"]),
                "dur": round(max(r["end_ns"] - r["start_ns"], 0) / 1000, 3),
                "pid": pid, "tid": tid,
                "args": {
                    "span_id": r["span_id"], "parent_id": r["parent_id"],
                    "status": r["status"], "error": error, "key": r["key"],
                    "attrs": r["attrs"], "node": r["node"], "thread": r["thread"],
                },
            })
        return slices, instants

    def flows(self) -> list[dict[str, Any]]:
        """Flow arrows from each span to its children on other tracks."""
        records, place = self.records, self.place
        index_of = {r["span_id"]: i for i, r in enumerate(records) if r["span_id"]}
        covered: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for i, p in self.lane_parent.items():
            if p is not None:
                covered[p].append((records[i]["start_ns"], records[i]["end_ns"]))
        free: dict[int, list[tuple[int, int]]] = {}
        flows: list[dict[str, Any]] = []
        for i, r in enumerate(records):
            p = index_of.get(r["parent_id"]) if r["parent_id"] else None
            if p is None or place[p] == place[i]:
                continue
            parent = records[p]
            start, end = parent["start_ns"], max(parent["end_ns"], parent["start_ns"])
            if p not in free:
                free[p] = _free_times(start, end, covered.get(p, []))
            at = _flow_start(start, end, free[p], r["start_ns"])
            common = {
                "cat": "flow", "name": r["kind"], "id": len(flows) // 2 + 1,
                "args": {"parent_span_id": parent["span_id"], "child_span_id": r["span_id"]},
            }
            flows.append({"ph": "s", "ts": self.us(at), "pid": place[p][0],
                          "tid": place[p][1], **common})
            flows.append({"ph": "f", "bp": "e", "ts": self.us(r["start_ns"]),
                          "pid": place[i][0], "tid": place[i][1], **common})
        return flows


def _chrome_document(data: TraceData) -> dict[str, Any]:
    return _Chrome(data).document()
