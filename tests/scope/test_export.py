"""Export of collected traces: ElixirScope JSON, Chrome trace events, OTLP/JSON.

One real traced run (tasks on both workers, nested spans, a data transfer, a
supervised-process call, a failing task) is exported in every format and each
document is checked against the rules of its format; a hand-made trace built with
``correlate`` checks the cases a real run does not produce on demand (overlapping
spans on one thread, a missing node, clock offsets, odd values, a named trace id).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest

import foundation_dask as fd
from foundation_dask import scope
from foundation_dask.scope.collect import TraceData, correlate
from foundation_dask.scope.export import (
    CHROME_FORMAT,
    JSON_FORMAT,
    OTLP_SCOPE,
    ExportError,
    to_chrome_trace,
    to_json,
    to_otlp_json,
)

HEX16 = re.compile(r"^[0-9a-f]{16}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
INT_STRING = re.compile(r"^-?[0-9]+$")
EPS = 1e-6  # microseconds: ts/dur are ns/1000 rounded to 3 decimals

# --------------------------------------------------------------------------------------
# a real traced run


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def with_inner_span(x: int) -> int:
    with scope.span("inner", x=x):
        return x * 2


def explode(x: int) -> None:
    raise ZeroDivisionError(f"cannot export {x}")


class Tally:
    def __init__(self) -> None:
        self.total = 0

    def add(self, x: int) -> int:
        with scope.span("tally.add"):
            self.total += x
        return self.total



@pytest.fixture(scope="module")
def real_trace(cluster_client):
    """A traced run over both workers, collected."""
    c = cluster_client
    w0, w1 = sorted(c.scheduler_info()["workers"])
    tally = fd.ProcessManager.start_singleton(Tally, name="export-tally")
    with scope.trace("export-run", phase="test") as t:
        with scope.span("outer", step=1):
            x = c.submit(inc, 1, workers=[w0], pure=False)
            y = c.submit(add, x, 10, workers=[w1], pure=False)  # x moves w0 -> w1
            assert y.result() == 12
            with scope.span("middle"):
                assert c.submit(with_inner_span, 4, workers=[w0], pure=False).result() == 8
            assert tally.add(3).result() == 3
        with pytest.raises(ZeroDivisionError):
            c.submit(explode, 7, workers=[w1], pure=False).result()
    data = t.collect()
    yield {"data": data, "workers": (w0, w1), "trace_id": t.trace_id}
    fd.ProcessManager.stop("export-tally")
    scope.forget_trace(t.trace_id)


def event(data: TraceData, name: str) -> pd.Series:
    rows = data.events[data.events["name"] == name]
    assert len(rows) == 1, (name, rows)
    return rows.iloc[0]


# --------------------------------------------------------------------------------------
# a hand-made trace

# Epoch nanoseconds below 2**53: correlate() shifts clocks in floating point, exact here.
B = 1_000_000_000_000_000
CLIENT, W1, W2 = "client-test", "tcp://127.0.0.1:4001", "tcp://127.0.0.1:4002"
SCHEDULER_OFFSET_NS = 100.0


def span(sid, parent, name, kind, start, end, tid, error=None, attrs=None):
    return ("job-42", sid, parent, name, kind, B + start, B + end, tid, None,
            "error" if error else "ok", error, attrs)


def task(sid, parent, name, node, tid, start, end, transfers=(), error=None):
    return {
        "trace_id": "job-42", "span_id": sid, "parent_id": parent, "name": name,
        "key": f"{name}-{sid}", "node": node, "thread_id": tid, "start_ns": B + start,
        "end_ns": B + end, "status": "error" if error else "ok", "error": error,
        "transfers": list(transfers),
    }


def handmade() -> TraceData:
    """Spans a1/a2 overlap on one thread; W2 did not answer (its task is known from the
    scheduler only); the scheduler's clock is 100 ns ahead."""
    client = {
        "node": CLIENT, "pid": 10, "host": "h0", "threads": {1: "MainThread"},
        "dropped": 0, "now_ns": B + 20_000,
        "spans": [
            span(0x1, 0, "job", "trace", 0, 10_000, 1, attrs={"user": "me"}),
            span(0x2, 0x1, "outer", "span", 1_000, 9_000, 1),
            span(0x3, 0x2, "a1", "span", 2_000, 5_000, 1),
            span(0x4, 0x2, "a2", "span", 3_000, 6_000, 1),
        ],
    }
    worker = {
        "node": W1, "pid": 11, "host": "h1", "threads": {21: "Dask-Default-Threads-1"},
        "dropped": 0, "now_ns": B + 20_000,
        "spans": [
            span(0x6, 0x5, "inner", "span", 4_100, 4_500, 21,
                 attrs={"rows": np.int64(3), "ratio": float("nan"), "tags": ("a", "b")}),
            span(0x7, 0x2, "validate", "span", 6_000, 6_500, 21,
                 error={"type": "KeyError", "message": "'x'",
                        "traceback": "Traceback (most recent call last):\nKeyError: 'x'\n"}),
            span(0xA, 0x7, "checked", "event", 6_200, 6_200, 21),
        ],
    }
    # Dask reports task times on the scheduler's clock, 100 ns ahead of this one here
    sched = int(SCHEDULER_OFFSET_NS)
    scheduler = {
        "tasks": [
            task(0x5, 0x4, "inc", W1, 21, 4_000 + sched, 4_800 + sched,
                 transfers=[{"source": W2, "start_ns": B + 3_000 + sched,
                             "end_ns": B + 3_900 + sched}]),
            task(0x9, 0x2, "early", W1, 21, 2_500 + sched, 2_600 + sched),
            task(0x8, 0x2, "boom", W2, 31, 7_000 + sched, 7_400 + sched,
                 error={"type": "ZeroDivisionError", "message": "ZeroDivisionError('x')",
                        "traceback": '  File "x.py", line 1, in boom\n'}),
        ],
        "removed_workers": {}, "workers": [W1, W2], "now_ns": B + 20_000,
    }
    info = {
        "trace_id": "job-42", "scope": "handmade", "options": {"sample": 0.5},
        "status": "error", "started_at": B // 1_000_000, "completed_at": B // 1_000_000 + 1,
        "results": {"score": np.float64(0.5), "bad": float("nan"), "n": np.int64(7),
                    "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "items": {3, 1},
                    "pair": (1, "b"), "obj": object(),
                    "stamp": np.datetime64("2026-01-02T03:04:05.000000001")},
    }
    offsets = {CLIENT: 0.0, W1: 0.0, "scheduler": SCHEDULER_OFFSET_NS}
    errors = {CLIENT: 0.0, W1: 20_000.0, "scheduler": 30_000.0}
    return correlate("job-42", info, [client, worker], scheduler, offsets, errors, [W2])


# --------------------------------------------------------------------------------------
# format checks


def roundtrip(doc: dict) -> None:
    text = json.dumps(doc, allow_nan=False)  # strict JSON: no NaN/Infinity
    assert json.loads(text) == doc


def check_json(doc: dict, data: TraceData) -> None:
    roundtrip(doc)
    assert doc["format"] == JSON_FORMAT
    assert doc["trace_id"] == data.trace_id
    assert doc["scope"] == data.info["scope"] and doc["status"] == data.info["status"]
    assert doc["started_at"] == data.info["started_at"]
    assert doc["completed_at"] == data.info["completed_at"]
    assert isinstance(doc["exported_at"], int) and doc["exported_at"] >= doc["started_at"]
    assert doc["nodes"] == data.summary["nodes"]
    assert doc["missing_nodes"] == data.missing_nodes
    assert doc["lost_nodes"] == data.lost_nodes
    assert set(doc["clock"]) == set(data.clock)
    assert doc["summary"]["spans"] == len(data.events)
    assert len(doc["events"]) == len(data.events)
    types = {
        "trace_id": str, "span_id": str, "name": str, "kind": str, "status": str,
        "start_ns": int, "end_ns": int, "start": str, "end": str, "duration_ms": float,
    }
    optional = {
        "parent_id": str, "node": str, "pid": int, "host": str, "thread": str,
        "thread_id": int, "error_type": str, "error_message": str, "traceback": str,
        "key": str, "attrs": dict, "clock_offset_ms": float,
    }
    for e, (_, row) in zip(doc["events"], data.events.iterrows(), strict=True):
        assert set(e) == set(types) | set(optional)
        for k, t in types.items():
            assert type(e[k]) is t, (k, e[k])
        for k, t in optional.items():
            assert e[k] is None or type(e[k]) is t, (k, e[k])
        assert HEX16.match(e["span_id"])
        assert e["parent_id"] is None or HEX16.match(e["parent_id"])
        assert e["span_id"] == row["span_id"] and e["start_ns"] == row["start_ns"]
        assert pd.Timestamp(e["start"]).value == e["start_ns"]
        assert pd.Timestamp(e["end"]).value == e["end_ns"]
        assert e["start"].endswith("+00:00")
        assert e["duration_ms"] == pytest.approx((e["end_ns"] - e["start_ns"]) / 1e6)
        if e["status"] == "error":
            assert e["error_type"] and e["traceback"] is not None
    errs = [e for e in doc["events"] if e["status"] == "error"]
    assert [e["span_id"] for e in doc["errors"]] == [e["span_id"] for e in errs]
    assert len(doc["errors"]) == data.summary["errors"]


def innermost(slices: list[dict], ts: float) -> dict | None:
    """The slice a flow event at ``ts`` binds to: the deepest one enclosing it."""
    enclosing = [s for s in slices if s["ts"] - EPS <= ts <= s["ts"] + s["dur"] + EPS]
    if not enclosing:
        return None
    return max(enclosing, key=lambda s: (s["ts"], -s["dur"]))


def check_chrome(doc: dict, data: TraceData) -> dict:
    """Check the document and return its pieces for further assertions."""
    roundtrip(doc)
    assert set(doc) == {"traceEvents", "displayTimeUnit", "metadata"}
    assert doc["displayTimeUnit"] == "ms"
    meta = doc["metadata"]
    assert meta["format"] == CHROME_FORMAT and meta["trace_id"] == data.trace_id
    assert meta["trace_start_ns"] == int(data.events["start_ns"].min())
    events = doc["traceEvents"]
    for e in events:
        assert e["ph"] in {"M", "X", "i", "s", "f"}, e
        assert type(e["pid"]) is int and type(e["tid"]) is int, e
        assert isinstance(e["name"], str) and e["name"]

    process_names = {e["pid"]: e["args"]["name"] for e in events
                     if e["ph"] == "M" and e["name"] == "process_name"}
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
                    if e["ph"] == "M" and e["name"] == "thread_name"}
    sort_index = {e["pid"]: e["args"]["sort_index"] for e in events
                  if e["ph"] == "M" and e["name"] == "process_sort_index"}
    nodes = sorted({str(n) for n in data.events["node"].dropna()})
    assert sorted(process_names) == list(range(1, len(nodes) + 1))  # 1..N
    assert sort_index == {p: p for p in process_names}
    assert sorted(meta["nodes"]) == nodes and set(meta["nodes"].values()) == set(process_names)
    for node, pid in meta["nodes"].items():
        assert process_names[pid].startswith(node)
    for pid in process_names:  # tids of a process are 1..M
        tids = sorted(t for p, t in thread_names if p == pid)
        assert tids == list(range(1, len(tids) + 1))

    slices = [e for e in events if e["ph"] == "X"]
    spans = [e for e in slices if e["cat"] != "transfer"]
    assert len(spans) == len(data.events)
    tracks: dict[tuple[int, int], list[dict]] = {}
    for e in slices:
        assert (e["pid"], e["tid"]) in thread_names and e["pid"] in process_names
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
        assert isinstance(e["cat"], str) and isinstance(e["args"], dict)
        tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    by_span = {}
    for e in spans:
        a = e["args"]
        assert HEX16.match(a["span_id"]) and a["status"] in {"ok", "error"}
        assert a["parent_id"] is None or HEX16.match(a["parent_id"])
        assert (a["error"] is not None) == (a["status"] == "error")
        assert set(a) >= {"span_id", "parent_id", "status", "error", "key", "attrs"}
        by_span[a["span_id"]] = e
        row = data.events[data.events["span_id"] == a["span_id"]].iloc[0]
        assert e["cat"] == row["kind"] and e["name"] == row["name"]
        assert meta["nodes"][row["node"]] == e["pid"]
        assert e["dur"] == pytest.approx((row["end_ns"] - row["start_ns"]) / 1000, abs=EPS)
    # slices on one track nest: no partial overlap
    for track in tracks.values():
        stack: list[float] = []
        for e in sorted(track, key=lambda s: (s["ts"], -s["dur"])):
            while stack and stack[-1] <= e["ts"] + EPS:
                stack.pop()
            assert not stack or e["ts"] + e["dur"] <= stack[-1] + EPS, e
            stack.append(e["ts"] + e["dur"])

    # errors: an instant event on the span's track, at its end
    instants = [e for e in events if e["ph"] == "i"]
    assert len(instants) == data.summary["errors"]
    for e in instants:
        assert e["s"] == "t" and e["cat"] == "error"
        sl = by_span[e["args"]["span_id"]]
        assert (e["pid"], e["tid"]) == (sl["pid"], sl["tid"])
        assert e["ts"] == pytest.approx(sl["ts"] + sl["dur"], abs=2 * EPS)
        assert sl["args"]["error"]["type"] in e["name"]

    # flows: s/f pairs, bound to the parent (inside its slice) and the child (at its start)
    flows: dict[int, dict[str, dict]] = {}
    for e in events:
        if e["ph"] in {"s", "f"}:
            assert type(e["id"]) is int
            assert e["ph"] not in flows.setdefault(e["id"], {}), e
            flows[e["id"]][e["ph"]] = e
    pairs = set()
    for fid, pair in flows.items():
        assert set(pair) == {"s", "f"}, fid
        s, f = pair["s"], pair["f"]
        assert s["cat"] == f["cat"] and s["name"] == f["name"]
        assert f["bp"] == "e" and "bp" not in s
        parent = by_span[s["args"]["parent_span_id"]]
        child = by_span[f["args"]["child_span_id"]]
        assert s["args"] == f["args"]
        assert (s["pid"], s["tid"]) == (parent["pid"], parent["tid"])
        assert parent["ts"] - EPS <= s["ts"] <= parent["ts"] + parent["dur"] + EPS
        assert innermost(tracks[(s["pid"], s["tid"])], s["ts"]) is parent
        assert (f["pid"], f["tid"]) == (child["pid"], child["tid"])
        assert f["ts"] == pytest.approx(child["ts"], abs=EPS)
        assert child["ts"] <= f["ts"] <= child["ts"] + child["dur"] + EPS
        pairs.add((parent["args"]["span_id"], child["args"]["span_id"]))
    expected = {
        (e["args"]["parent_id"], e["args"]["span_id"]) for e in spans
        if e["args"]["parent_id"] in by_span
        and (by_span[e["args"]["parent_id"]]["pid"], by_span[e["args"]["parent_id"]]["tid"])
        != (e["pid"], e["tid"])
    }
    assert pairs == expected
    return {"by_span": by_span, "pairs": pairs, "threads": thread_names,
            "processes": process_names, "tracks": tracks, "flows": flows,
            "transfers": [e for e in slices if e["cat"] == "transfer"]}


ANY_VALUE_KEYS = {"stringValue", "intValue", "doubleValue", "boolValue", "arrayValue",
                  "kvlistValue"}


def check_value(v: dict) -> None:
    assert len(v) == 1 and set(v) <= ANY_VALUE_KEYS, v
    (k, x), = v.items()
    if k == "stringValue":
        assert isinstance(x, str)
    elif k == "intValue":
        assert isinstance(x, str) and INT_STRING.match(x)
    elif k == "doubleValue":
        assert isinstance(x, float)
    elif k == "boolValue":
        assert isinstance(x, bool)
    elif k == "arrayValue":
        for item in x["values"]:
            check_value(item)
    else:
        for kv in x["values"]:
            assert isinstance(kv["key"], str)
            check_value(kv["value"])


def attrs_of(obj: dict) -> dict:
    keys = [a["key"] for a in obj["attributes"]]
    assert len(keys) == len(set(keys)), keys
    for a in obj["attributes"]:
        assert set(a) == {"key", "value"} and isinstance(a["key"], str)
        check_value(a["value"])
    return {a["key"]: a["value"] for a in obj["attributes"]}


def check_otlp(doc: dict, data: TraceData) -> dict[str, dict]:
    """Check the document; return ``{spanId: span}`` with ``_node`` added."""
    roundtrip(doc)
    assert set(doc) == {"resourceSpans"}
    spans: dict[str, dict] = {}
    nodes = set()
    for rs in doc["resourceSpans"]:
        res = attrs_of(rs["resource"])
        assert res["service.name"] == {"stringValue": "foundation_dask"}
        node = res["foundation_dask.node"]["stringValue"]
        assert node not in nodes
        nodes.add(node)
        proc = data.processes.get(node)
        if proc is not None:
            assert res["process.pid"] == {"intValue": str(proc["pid"])}
            assert res["host.name"] == {"stringValue": proc["host"]}
        assert len(rs["scopeSpans"]) == 1
        ss = rs["scopeSpans"][0]
        assert ss["scope"]["name"] == OTLP_SCOPE and isinstance(ss["scope"]["version"], str)
        for sp in ss["spans"]:
            assert set(sp) >= {"traceId", "spanId", "parentSpanId", "name", "kind",
                               "startTimeUnixNano", "endTimeUnixNano", "attributes",
                               "status", "events"}
            assert HEX32.match(sp["traceId"]) and sp["traceId"] != "0" * 32
            assert HEX16.match(sp["spanId"]) and sp["spanId"] != "0" * 16
            assert sp["spanId"] not in spans
            assert sp["parentSpanId"] == "" or HEX16.match(sp["parentSpanId"])
            assert type(sp["kind"]) is int and 1 <= sp["kind"] <= 5
            assert isinstance(sp["name"], str) and sp["name"]
            for k in ("startTimeUnixNano", "endTimeUnixNano"):
                assert isinstance(sp[k], str) and sp[k].isdigit()
            assert int(sp["endTimeUnixNano"]) >= int(sp["startTimeUnixNano"])
            a = attrs_of(sp)
            assert a["foundation_dask.trace_id"] == {"stringValue": data.trace_id}
            code = sp["status"]["code"]
            assert code in {1, 2}
            for ev in sp["events"]:
                assert ev["timeUnixNano"].isdigit() and isinstance(ev["name"], str)
                attrs_of(ev)
            row = data.events[data.events["span_id"] == sp["spanId"]].iloc[0]
            assert row["node"] == node and row["name"] == sp["name"]
            assert int(sp["startTimeUnixNano"]) == row["start_ns"]
            assert a["foundation_dask.kind"] == {"stringValue": row["kind"]}
            if row["status"] == "error":
                assert code == 2 and isinstance(sp["status"]["message"], str)
                exc = [e for e in sp["events"] if e["name"] == "exception"]
                assert len(exc) == 1
                ea = attrs_of(exc[0])
                assert ea["exception.type"] == {"stringValue": row["error_type"]}
                assert ea["exception.message"]["stringValue"] == (row["error_message"] or "")
                assert ea["exception.stacktrace"]["stringValue"] == (row["traceback"] or "")
            else:
                assert sp["status"] == {"code": 1}
                assert not [e for e in sp["events"] if e["name"] == "exception"]
            spans[sp["spanId"]] = {**sp, "_node": node}
    assert len(spans) == len(data.events)
    assert nodes == {str(n) for n in data.events["node"].dropna()}
    assert len({s["traceId"] for s in spans.values()}) == 1
    for sp in spans.values():
        assert sp["parentSpanId"] == "" or sp["parentSpanId"] in spans
    return spans


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------
# real run


@pytest.mark.timeout(120)
def test_json_export_of_a_real_trace(real_trace, tmp_path):
    data = real_trace["data"]
    assert not data.partial and data.summary["errors"] == 1
    path = tmp_path / "trace.json"
    doc = data.to_json(path)
    check_json(doc, data)
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == doc
    assert to_json(data)["events"] == doc["events"]
    assert leftovers(tmp_path) == []

    w0, w1 = real_trace["workers"]
    assert {w0, w1} <= set(doc["nodes"])
    assert any(n.startswith("client-") for n in doc["nodes"])
    by_name = {e["name"]: e for e in doc["events"]}
    assert by_name["export-run"]["kind"] == "trace" and by_name["export-run"]["parent_id"] is None
    assert by_name["export-run"]["attrs"] == {"phase": "test"}
    assert by_name["outer"]["parent_id"] == by_name["export-run"]["span_id"]
    assert by_name["middle"]["parent_id"] == by_name["outer"]["span_id"]
    assert by_name["inc"]["node"] == w0 and by_name["add"]["node"] == w1
    assert by_name["Tally.add"]["kind"] == "actor"
    assert by_name["tally.add"]["parent_id"] == by_name["Tally.add"]["span_id"]
    boom = by_name["explode"]
    assert boom["status"] == "error" and boom["error_type"] == "ZeroDivisionError"
    assert "cannot export 7" in boom["error_message"] and boom["key"].startswith("explode-")
    assert doc["errors"][0]["span_id"] == boom["span_id"]
    assert doc["started_at"] <= doc["completed_at"] <= doc["exported_at"]


@pytest.mark.timeout(120)
def test_chrome_export_of_a_real_trace(real_trace, tmp_path):
    data = real_trace["data"]
    w0, w1 = real_trace["workers"]
    path = tmp_path / "trace.chrome.json"
    doc = data.to_chrome_trace(str(path))
    assert json.loads(path.read_text(encoding="utf-8")) == doc
    got = check_chrome(doc, data)
    nodes = doc["metadata"]["nodes"]
    client = [n for n in nodes if n.startswith("client-")]
    assert len(client) == 1 and nodes[client[0]] == 1  # clients first
    assert {w0, w1} <= set(nodes)
    pid = data.processes[w0]["pid"]
    assert got["processes"][nodes[w0]] == f"{w0} ({data.processes[w0]['host']}, pid {pid})"

    ids = {n: event(data, n)["span_id"] for n in
           ("export-run", "outer", "middle", "inc", "add", "with_inner_span", "inner",
            "Tally.add", "tally.add", "explode")}
    # cross-node arrows: client span -> task on each worker, -> the supervised process
    assert (ids["outer"], ids["inc"]) in got["pairs"]
    assert (ids["outer"], ids["add"]) in got["pairs"]
    assert (ids["middle"], ids["with_inner_span"]) in got["pairs"]
    assert (ids["outer"], ids["Tally.add"]) in got["pairs"]
    assert (ids["export-run"], ids["explode"]) in got["pairs"]
    by_span = got["by_span"]
    assert by_span[ids["inc"]]["pid"] == nodes[w0] and by_span[ids["add"]]["pid"] == nodes[w1]
    assert by_span[ids["outer"]]["pid"] == nodes[client[0]]
    # spans on the same thread as their parent need no arrow
    assert (ids["Tally.add"], ids["tally.add"]) not in got["pairs"]
    assert got["threads"][(by_span[ids["Tally.add"]]["pid"], by_span[ids["Tally.add"]]["tid"])]\
        == event(data, "Tally.add")["thread"]
    # the error
    boom = by_span[ids["explode"]]
    assert boom["args"]["error"]["type"] == "ZeroDivisionError"
    assert boom["args"]["key"] == event(data, "explode")["key"]
    # the transfer of x from w0 to the worker that ran add
    assert got["transfers"], "a dependency on another worker is a transfer"
    tr = [t for t in got["transfers"] if t["args"]["task_span_id"] == ids["add"]]
    assert tr and tr[0]["args"]["source"] == w0 and tr[0]["pid"] == nodes[w1]
    assert got["threads"][(tr[0]["pid"], tr[0]["tid"])] == "transfers"


@pytest.mark.timeout(120)
def test_otlp_export_of_a_real_trace(real_trace, tmp_path):
    data = real_trace["data"]
    path = tmp_path / "trace.otlp.json"
    doc = data.to_otlp_json(path)
    assert json.loads(path.read_text(encoding="utf-8")) == doc
    spans = check_otlp(doc, data)
    assert {s["traceId"] for s in spans.values()} == {data.trace_id}
    roots = [s for s in spans.values() if s["parentSpanId"] == ""]
    assert [r["name"] for r in roots] == ["export-run"]
    boom = spans[event(data, "explode")["span_id"]]
    assert boom["status"]["code"] == 2 and "cannot export 7" in boom["status"]["message"]
    assert attrs_of(boom)["dask.key"] == {"stringValue": event(data, "explode")["key"]}
    actor = spans[event(data, "Tally.add")["span_id"]]
    assert actor["kind"] == 2 and actor["parentSpanId"] == event(data, "outer")["span_id"]
    assert spans[event(data, "outer")["span_id"]]["kind"] == 1
    assert attrs_of(spans[event(data, "outer")["span_id"]])["step"] == {"intValue": "1"}
    add = spans[event(data, "add")["span_id"]]
    transfers = [e for e in add["events"] if e["name"] == "transfer"]
    assert transfers and attrs_of(transfers[0])["transfer.source"] == {
        "stringValue": real_trace["workers"][0]}
    thread = attrs_of(actor)
    assert thread["thread.name"] == {"stringValue": event(data, "Tally.add")["thread"]}
    assert thread["thread.id"] == {"intValue": str(event(data, "Tally.add")["thread_id"])}


# --------------------------------------------------------------------------------------
# hand-made trace


@pytest.mark.timeout(120)
def test_handmade_trace_json_values():
    data = handmade()
    assert data.missing_nodes == [W2] and data.partial
    doc = to_json(data)
    check_json(doc, data)
    assert doc["trace_id"] == "job-42" and doc["options"] == {"sample": 0.5}
    assert doc["results"] == {
        "score": 0.5, "bad": None, "n": 7, "when": "2026-01-02T03:04:05+00:00",
        "items": [1, 3], "pair": [1, "b"], "obj": doc["results"]["obj"],
        "stamp": "2026-01-02T03:04:05.000000001+00:00",
    }
    assert doc["results"]["obj"].startswith("<object object")
    by_name = {e["name"]: e for e in doc["events"]}
    assert by_name["inner"]["attrs"] == {"rows": 3, "ratio": None, "tags": ["a", "b"]}
    # the task of the node that did not answer has no pid; the others stay integers
    assert by_name["boom"]["pid"] is None and by_name["boom"]["node"] == W2
    assert by_name["inc"]["pid"] == 11 and by_name["job"]["pid"] == 10
    assert by_name["boom"]["thread_id"] == 31
    # transfers are on the trace clock like everything else
    assert by_name["inc"]["attrs"]["transfers"][0]["start_ns"] == B + 3_000
    assert doc["clock"]["scheduler"]["offset_ms"] == SCHEDULER_OFFSET_NS / 1e6
    assert doc["processes"][W1]["threads"] == {"21": "Dask-Default-Threads-1"}
    assert [e["name"] for e in doc["errors"]] == ["validate", "boom"]


@pytest.mark.timeout(120)
def test_handmade_trace_chrome_lanes_flows_transfers():
    data = handmade()
    doc = to_chrome_trace(data)
    got = check_chrome(doc, data)
    assert doc["metadata"]["nodes"] == {CLIENT: 1, W1: 2, W2: 3}
    assert got["processes"] == {1: f"{CLIENT} (h0, pid 10)", 2: f"{W1} (h1, pid 11)", 3: W2}
    sl = {e["name"]: e for e in got["by_span"].values()}
    # a1 and a2 overlap without nesting: a2 goes to a second track of the thread
    assert (sl["a1"]["pid"], sl["a1"]["tid"]) == (1, 1)
    assert (sl["a2"]["pid"], sl["a2"]["tid"]) == (1, 2)
    assert got["threads"][(1, 1)] == "MainThread"
    assert got["threads"][(1, 2)] == "MainThread (2)"
    assert got["threads"][(3, 1)] == "31"
    # times in microseconds from the first event
    assert sl["job"]["ts"] == 0 and sl["job"]["dur"] == 10.0
    assert sl["inc"]["ts"] == 4.0 and sl["inc"]["dur"] == 0.8
    assert sl["checked"]["dur"] == 0 and sl["checked"]["cat"] == "event"
    ids = {name: e["args"]["span_id"] for name, e in sl.items()}
    assert got["pairs"] == {
        (ids["a2"], ids["inc"]), (ids["outer"], ids["validate"]),
        (ids["outer"], ids["boom"]), (ids["outer"], ids["early"]),
        (ids["outer"], ids["a2"]),  # same thread, but a track of its own
    }
    starts = {(f["s"]["args"]["parent_span_id"], f["s"]["args"]["child_span_id"]): f["s"]["ts"]
              for f in got["flows"].values()}
    assert starts[(ids["a2"], ids["inc"])] == 4.0  # at the child's start, inside a2
    assert starts[(ids["outer"], ids["boom"])] == 7.0
    # "early" starts while a1 (nested in outer) is open: the arrow leaves outer just
    # before a1 so that it binds to outer, not a1
    assert starts[(ids["outer"], ids["early"])] == 1.999
    # errors as instants; the transfer shifted onto the trace clock
    assert {e["name"] for e in doc["traceEvents"] if e["ph"] == "i"} == {
        "error: KeyError", "error: ZeroDivisionError"}
    (tr,) = got["transfers"]
    assert tr["pid"] == 2 and got["threads"][(2, tr["tid"])] == "transfers"
    assert tr["ts"] == 3.0 and tr["dur"] == 0.9
    assert tr["args"]["source"] == W2 and tr["args"]["key"] == "inc-5"


@pytest.mark.timeout(120)
def test_handmade_trace_otlp():
    data = handmade()
    doc = to_otlp_json(data)
    spans = check_otlp(doc, data)
    trace_ids = {s["traceId"] for s in spans.values()}
    assert len(trace_ids) == 1 and trace_ids != {"job-42"}  # a name is hashed to 32 hex
    assert to_otlp_json(handmade())["resourceSpans"][0]["scopeSpans"][0]["spans"][0][
        "traceId"] in trace_ids  # deterministically
    res = {attrs_of(rs["resource"])["foundation_dask.node"]["stringValue"]: rs["resource"]
           for rs in doc["resourceSpans"]}
    assert list(res) == [CLIENT, W1, W2]
    assert "process.pid" not in attrs_of(res[W2])  # never answered
    assert attrs_of(res[W1])["foundation_dask.node.role"] == {"stringValue": "worker"}
    assert attrs_of(res[CLIENT])["foundation_dask.node.role"] == {"stringValue": "client"}

    by_name = {s["name"]: s for s in spans.values()}
    assert by_name["job"]["parentSpanId"] == ""
    assert by_name["inc"]["parentSpanId"] == "0000000000000004"
    assert by_name["inc"]["spanId"] == "0000000000000005"
    inner = attrs_of(by_name["inner"])
    assert inner["rows"] == {"intValue": "3"}
    assert inner["tags"] == {"arrayValue": {"values": [{"stringValue": "a"},
                                                       {"stringValue": "b"}]}}
    assert "ratio" not in inner  # NaN has no OTLP value
    (transfer,) = by_name["inc"]["events"]
    assert transfer["name"] == "transfer"
    assert transfer["timeUnixNano"] == str(B + 3_000)
    assert "transfers" not in attrs_of(by_name["inc"])
    v = by_name["validate"]
    assert v["status"] == {"code": 2, "message": "'x'"}
    assert v["events"][0]["timeUnixNano"] == v["endTimeUnixNano"]
    assert by_name["boom"]["status"]["code"] == 2


@pytest.mark.timeout(120)
def test_empty_trace_exports():
    data = correlate("e" * 32, {"trace_id": "e" * 32, "scope": "empty", "status": "active",
                                "started_at": 1, "completed_at": None, "results": None},
                     [], None, {}, {}, [])
    doc = to_json(data)
    check_json(doc, data)
    assert doc["events"] == [] and doc["completed_at"] is None
    chrome = to_chrome_trace(data)
    roundtrip(chrome)
    assert chrome["traceEvents"] == [] and chrome["metadata"]["trace_start_ns"] == 0
    assert to_otlp_json(data) == {"resourceSpans": []}


@pytest.mark.timeout(120)
def test_invalid_input_is_refused():
    data = handmade()
    with pytest.raises(TypeError, match="expected a TraceData"):
        to_json({"events": []})
    with pytest.raises(TypeError, match="path must be"):
        to_json(data, 42)
    events = data.events.copy()
    events.loc[0, "span_id"] = "not-hex"
    with pytest.raises(ValueError, match="'not-hex' is not 16 hex digits"):
        to_otlp_json(dataclasses.replace(data, events=events))
    with pytest.raises(ValueError, match="lacks the columns"):
        to_chrome_trace(dataclasses.replace(data, events=data.events.drop(columns="attrs")))


# --------------------------------------------------------------------------------------
# unwritable paths


EXPORTS = [to_json, to_chrome_trace, to_otlp_json]


def assert_refused(fn, data, path, match: str) -> ExportError:
    with pytest.raises(ExportError, match=match) as info:
        fn(data, path)
    err = info.value
    assert isinstance(err, OSError)
    assert repr(str(path)) in str(err) and "writable location" in str(err)
    assert err.filename == str(path)
    return err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fn", EXPORTS, ids=lambda f: f.__name__)
def test_path_under_a_file(fn, tmp_path):
    data = handmade()
    blocker = tmp_path / "regular-file"
    blocker.write_text("keep me")
    path = blocker / "trace.json"
    assert_refused(fn, data, path, "is not a directory")
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regular-file"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fn", EXPORTS, ids=lambda f: f.__name__)
def test_path_in_a_missing_directory(fn, tmp_path):
    data = handmade()
    path = tmp_path / "no" / "such" / "trace.json"
    err = assert_refused(fn, data, path, "does not exist")
    assert "create it first" in str(err).lower()
    assert not (tmp_path / "no").exists()


@pytest.mark.timeout(120)
def test_path_that_is_a_directory(tmp_path):
    data = handmade()
    target = tmp_path / "adir"
    target.mkdir()
    (target / "inside").write_text("x")
    assert_refused(to_json, data, target, "existing directory")
    assert [p.name for p in target.iterdir()] == ["inside"]
    assert leftovers(tmp_path) == []


@pytest.mark.timeout(120)
def test_read_only_directory(tmp_path):
    data = handmade()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    path = ro / "trace.json"
    try:
        if os.geteuid() == 0:  # root writes anyway: the export must then succeed cleanly
            assert to_json(data, path)["trace_id"] == "job-42"
            assert json.loads(path.read_text())["trace_id"] == "job-42"
            assert sorted(p.name for p in ro.iterdir()) == ["trace.json"]
        else:
            err = assert_refused(to_json, data, path, "cannot create a file")
            assert isinstance(err.errno, int)
            assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


@pytest.mark.timeout(120)
def test_writing_replaces_an_existing_file_whole(tmp_path):
    data = handmade()
    path = tmp_path / "trace.json"
    path.write_text("x" * 1_000_000)  # longer than the export: no tail may survive
    path.chmod(0o640)
    doc = to_otlp_json(data, path)
    assert json.loads(path.read_text(encoding="utf-8")) == doc
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json"]
    fresh = tmp_path / "fresh.json"
    to_json(data, fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.timeout(60)
def test_critical_path_walks_back_from_the_end():
    from foundation_dask.scope.collect import _critical_path, critical_path_text

    ms = 1_000_000
    spans = [  # span_id, parent_id, name, start ms, end ms
        (1, 0, "root", 0, 100),
        (2, 1, "a", 0, 50),        # overlaps b, finishes before b: off the path
        (3, 1, "b", 10, 60),
        (4, 1, "c", 60, 100),
        (5, 4, "c1", 60, 70),
        (6, 4, "c2", 75, 99),
        (7, 3, "b1", 10, 20),
    ]
    frame = pd.DataFrame({
        "span_id": [s[0] for s in spans], "parent_id": [s[1] for s in spans],
        "name": [s[2] for s in spans], "node": "n",
        "start_ns": [s[3] * ms for s in spans], "end_ns": [s[4] * ms for s in spans],
        "duration_ms": [float(s[4] - s[3]) for s in spans],
    })
    path = _critical_path(frame)
    assert [(p["name"], p["depth"]) for p in path] == [
        ("root", 0), ("b", 1), ("b1", 2), ("c", 1), ("c1", 2), ("c2", 2)]
    assert [p["name"] for p in _critical_path(frame, limit=3)] == ["root", "b", "b1"]
    assert _critical_path(frame.iloc[:0]) == []
    # one line: the root, then its children on the path (not the grandchildren)
    assert re.fullmatch(r"root 0\.1s = b 0\.\ds -> c 0\.0s", critical_path_text(path))
    assert critical_path_text([]) == "none"
