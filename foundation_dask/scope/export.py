"""Export of collected traces: ElixirScope JSON, Chrome trace events and OTLP/JSON.

Three formats, each returned as a plain ``dict`` of JSON values (and written to
``path`` when one is given):

* :func:`to_json`: the trace as recorded (``format: "foundation_dask.trace/1"``):
  the coordinator's record, every event with epoch-nanosecond and ISO timestamps,
  the summary, errors, missing and lost nodes and clock offsets.
* :func:`to_chrome_trace`: the Chrome Trace Event Format (JSON object form) that
  Perfetto (https://ui.perfetto.dev) and ``chrome://tracing`` load. One process per
  node, one thread per thread, flow arrows from a span to its children on other
  nodes or threads, errors as instant events, data transfers of tasks as slices.
* :func:`to_otlp_json`: OpenTelemetry ``TracesData`` in the OTLP/JSON encoding, one
  ``resourceSpans`` per node, ready for an OTLP/HTTP collector
  (``POST /v1/traces`` with ``Content-Type: application/json``) or any tool that
  reads OTLP files.

Files are written atomically: to a temporary file in the target directory, then
renamed over the target. A path that cannot be written raises :class:`ExportError`
(an :class:`OSError`) and leaves nothing at the path.

Clocks: every ``TraceData`` timestamp, the transfer intervals of tasks
(``attrs["transfers"]``) included, is already on the clock of the collecting process
(see :mod:`foundation_dask.scope.collect`); the exports write them as they are.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import decimal
import functools
import gc
import hashlib
import json
import math
import numbers
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from foundation_dask.scope.collect import TraceData

#: Value of the ``format`` field of :func:`to_json` documents.
JSON_FORMAT = "foundation_dask.trace/1"
#: Value of ``metadata["format"]`` of :func:`to_chrome_trace` documents.
CHROME_FORMAT = "foundation_dask.chrome/1"
#: Instrumentation scope name of :func:`to_otlp_json` spans.
OTLP_SCOPE = "foundation_dask.scope"

#: OTLP ``Span.SpanKind`` values.
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
SPAN_KIND_PRODUCER = 4
SPAN_KIND_CONSUMER = 5
#: OTLP ``Status.StatusCode`` values.
STATUS_CODE_OK = 1
STATUS_CODE_ERROR = 2

#: OTLP span kind of each ElixirScope event kind (everything else is INTERNAL):
#: a supervised-process call runs on behalf of a remote caller, a message is consumed.
_OTLP_KINDS = {"actor": SPAN_KIND_SERVER, "message": SPAN_KIND_CONSUMER}

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")

__all__ = [
    "CHROME_FORMAT", "JSON_FORMAT", "OTLP_SCOPE", "ExportError", "to_chrome_trace",
    "to_json", "to_otlp_json",
]


class ExportError(OSError):
    """A trace export could not be written to the requested path.

    Raised instead of the underlying :class:`OSError` (whose ``errno`` it keeps), with
    a message that names the path and suggests a writable location. Nothing is left
    at the path.

    Parameters
    ----------
    message
        What went wrong and what to do instead.
    filename
        The path that could not be written.
    errno
        The ``errno`` of the underlying error, if any.
    """

    def __init__(self, message: str, filename: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.filename = filename
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return type(self), (str(self), self.filename, self.errno)


# --------------------------------------------------------------------------------------
# JSON values


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON values only (dict with str keys, list, str, int, float, bool,
    None). NaN and infinities become ``None``; unknown objects their ``repr``."""
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.datetime64, np.timedelta64)):
        value = pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        f = float(value)
        return f if math.isfinite(f) else None
    if depth > 32:
        return repr(value)
    if isinstance(value, datetime.datetime):
        return None if _isna(value) else _iso(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return None if _isna(value) else value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v, depth + 1) for v in sorted(value, key=repr)]
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        items = value.tolist()
        if items is value or isinstance(items, type(value)):
            return repr(value)
        return _jsonable(items, depth + 1)
    if _isna(value):
        return None
    return repr(value)


def _isna(value: Any) -> bool:
    """Whether a scalar is a missing value (None, NaN, NaT, NA)."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    if value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, numbers.Number):
        try:
            return bool(value != value)
        except (TypeError, ValueError, ArithmeticError):
            return False
    if isinstance(value, (str, bytes, Mapping, list, tuple, set, frozenset)):
        return False
    try:
        result = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return isinstance(result, (bool, np.bool_)) and bool(result)


def _iso(value: datetime.datetime) -> str:
    """ISO 8601 in UTC; naive timestamps (as in ``TraceData``) are UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.isoformat()


def _int(value: Any) -> int | None:
    if value is None or _isna(value):
        return None
    return int(value)


def _str(value: Any) -> str | None:
    if value is None or _isna(value):
        return None
    return str(value)


# --------------------------------------------------------------------------------------
# events as plain records


def _check(data: Any, path: Any) -> None:
    from foundation_dask.scope.collect import EVENT_COLUMNS, TraceData

    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    if not isinstance(data, TraceData):
        raise TypeError(
            f"expected a TraceData (from scope.collect_trace_data() or trace.collect()), "
            f"not {type(data).__name__}"
        )
    missing = [c for c in EVENT_COLUMNS if c not in data.events.columns]
    if missing:
        raise ValueError(f"TraceData.events lacks the columns {missing}; it cannot be exported")


_STR_COLUMNS = ("trace_id", "span_id", "parent_id", "name", "kind", "node", "host", "thread",
                "status", "error_type", "error_message", "traceback", "key")


def _column(frame: pd.DataFrame, name: str, convert) -> list[Any]:
    """A column as Python values, missing values as ``None``."""
    column = frame[name]
    values = column.astype(object).tolist()
    missing = column.isna().tolist()
    return [None if m else convert(v) for v, m in zip(values, missing, strict=True)]


def _iso_column(ns: list[int]) -> list[str]:
    text = np.datetime_as_string(np.array(ns, dtype="int64").astype("datetime64[ns]"),
                                 unit="ns")
    return [t + "+00:00" for t in text.tolist()]


def _records(data: TraceData) -> list[dict[str, Any]]:
    """``data.events`` as dicts of Python values (no NaN, no numpy, no Timestamps)."""
    frame = data.events
    if frame.empty:
        return []
    cols: dict[str, list[Any]] = {c: _column(frame, c, str) for c in _STR_COLUMNS}
    cols["pid"] = _column(frame, "pid", int)
    cols["thread_id"] = _column(frame, "thread_id", int)
    cols["clock_offset_ms"] = [
        v if v is None or math.isfinite(v) else None
        for v in _column(frame, "clock_offset_ms", float)
    ]
    cols["attrs"] = [_jsonable(a) if isinstance(a, Mapping) else None
                     for a in frame["attrs"].tolist()]
    starts = [int(v) for v in frame["start_ns"].tolist()]
    ends = [int(v) for v in frame["end_ns"].tolist()]
    cols["start_ns"], cols["end_ns"] = starts, ends
    cols["start"], cols["end"] = _iso_column(starts), _iso_column(ends)
    cols["duration_ms"] = [(e - s) / 1e6 for s, e in zip(starts, ends, strict=True)]
    order = ["trace_id", "span_id", "parent_id", "name", "kind", "node", "pid", "host",
             "thread", "thread_id", "start_ns", "end_ns", "start", "end", "duration_ms",
             "status", "error_type", "error_message", "traceback", "key", "attrs",
             "clock_offset_ms"]
    out = [dict(zip(order, row, strict=True))
           for row in zip(*(cols[c] for c in order), strict=True)]
    for r in out:
        r["trace_id"] = r["trace_id"] or data.trace_id
        r["name"] = r["name"] or ""
        r["kind"] = r["kind"] or "span"
        r["status"] = r["status"] or "ok"
    return out


def _node_order(nodes: set[str]) -> list[str]:
    """Clients first, then the scheduler, then workers; by name within each group."""

    def rank(node: str) -> tuple[int, str]:
        if node.startswith("client"):
            return 0, node
        if node == "scheduler":
            return 1, node
        return 2, node

    return sorted(nodes, key=rank)


def _node_role(node: str) -> str:
    if node.startswith("client"):
        return "client"
    if node == "scheduler":
        return "scheduler"
    if node == "unknown":
        return "unknown"
    return "worker"


def _identity(data: TraceData, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{node: {"pid", "host"}}`` from ``data.processes``, else from the events."""
    ident: dict[str, dict[str, Any]] = {}
    for node, proc in data.processes.items():
        ident[str(node)] = {"pid": _int(proc.get("pid")), "host": _str(proc.get("host"))}
    for r in records:
        node = r["node"] or "unknown"
        entry = ident.setdefault(node, {"pid": None, "host": None})
        if entry["pid"] is None:
            entry["pid"] = r["pid"]
        if entry["host"] is None:
            entry["host"] = r["host"]
    return ident


def _transfers(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The data transfers of a task."""
    attrs = record["attrs"] or {}
    out = []
    for t in attrs.get("transfers") or ():
        if not isinstance(t, Mapping):
            continue
        start, end = _int(t.get("start_ns")), _int(t.get("end_ns"))
        if start is None or end is None:
            continue
        out.append({
            "source": _str(t.get("source")),
            "start_ns": int(start),
            "end_ns": int(max(end, start)),
        })
    return out


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _suggest(name: str) -> str:
    return os.path.join(tempfile.gettempdir(), name or "trace.json")


def _write(document: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``document`` as UTF-8 JSON to ``path`` atomically.

    Raises
    ------
    ExportError
        If ``path`` cannot be written; nothing is left at ``path``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    directory, name = os.path.split(target)
    suggestion = _suggest(name)

    def fail(reason: str, cause: OSError | None = None, advice: str = "choose") -> ExportError:
        return ExportError(
            f"Cannot write the trace export to {os.fspath(path)!r}: {reason}. "
            f"{advice.capitalize()} a writable location such as {suggestion!r}.",
            os.fspath(path), cause.errno if cause is not None else None,
        )

    if not name:
        raise fail("the path names a directory, not a file")
    if os.path.isdir(target):
        raise fail("it is an existing directory")
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise fail(f"{directory!r} is not a directory")
        raise fail(f"the directory {directory!r} does not exist",
                   advice="create it first, or choose")
    text = json.dumps(document, ensure_ascii=False, allow_nan=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise fail(f"cannot create a file in {directory!r} ({exc.strerror or exc})",
                   exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise fail(exc.strerror or str(exc), exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic garbage collector while a large document of fresh (acyclic)
    dicts is built: its passes over the growing heap would dominate the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _export(data: TraceData, path: str | os.PathLike[str] | None,
            build: Callable[[TraceData], dict[str, Any]]) -> dict[str, Any]:
    """What each exporter does: check its arguments, build the document with ``build``
    and write it to ``path`` when one is given."""
    _check(data, path)
    with _no_gc():
        document = build(data)
    if path is not None:
        _write(document, path)
    return document


# --------------------------------------------------------------------------------------
# ElixirScope JSON


def to_json(data: TraceData, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The trace in the ElixirScope export format.

    Parameters
    ----------
    data
        A collected trace (:func:`~foundation_dask.scope.collect_trace_data`).
    path
        When given, the document is also written there (UTF-8 JSON, atomically).

    Returns
    -------
    dict
        JSON values only (``json.loads(json.dumps(doc)) == doc``), with the fields

        ``format``
            ``"foundation_dask.trace/1"``.
        ``trace_id``, ``scope``, ``status``, ``results``
            From the trace's coordinator.
        ``started_at``, ``completed_at``, ``exported_at``
            Epoch milliseconds (``completed_at`` is ``None`` for an active trace).
        ``nodes``
            Names of the nodes that recorded events.
        ``events``
            One dict per row of ``TraceData.events``: the same fields, with
            ``start_ns``/``end_ns`` as integer epoch nanoseconds and ``start``/``end``
            as ISO 8601 strings in UTC.
        ``summary``, ``errors``, ``missing_nodes``, ``lost_nodes``, ``clock``,
        ``processes``
            As in :class:`~foundation_dask.scope.TraceData` (thread ids as strings).

    Raises
    ------
    ExportError
        If ``path`` cannot be written (nothing is left at ``path``).
    """
    return _export(data, path, _json_document)


def _json_document(data: TraceData) -> dict[str, Any]:
    records = _records(data)
    info = data.info or {}
    error_fields = ("span_id", "name", "kind", "node", "thread", "start_ns", "start",
                    "error_type", "error_message", "traceback", "key")
    return {
        "format": JSON_FORMAT,
        "trace_id": data.trace_id,
        "scope": _jsonable(info.get("scope")),
        "started_at": _int(info.get("started_at")),
        "completed_at": _int(info.get("completed_at")),
        "status": _jsonable(info.get("status")),
        "options": _jsonable(info.get("options") or {}),
        "nodes": [str(n) for n in data.summary.get("nodes", [])],
        "events": records,
        "results": _jsonable(info.get("results")),
        "exported_at": int(time.time() * 1000),
        "summary": _jsonable(data.summary),
        "errors": [{k: r[k] for k in error_fields} for r in records if r["status"] == "error"],
        "missing_nodes": [str(n) for n in data.missing_nodes],
        "lost_nodes": [str(n) for n in data.lost_nodes],
        "clock": _jsonable(data.clock),
        "processes": _jsonable(data.processes),
    }


# --------------------------------------------------------------------------------------
# Chrome trace events


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


# --------------------------------------------------------------------------------------
# OpenTelemetry OTLP/JSON


_INT64 = range(-(2**63), 2**63)


def _any(value: Any, depth: int = 0) -> dict[str, Any]:
    """The OTLP ``AnyValue`` of a JSON value (64-bit integers as decimal strings, as
    OTLP/JSON encodes them; larger ones as strings)."""
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        return {"intValue" if value in _INT64 else "stringValue": str(value)}
    if kind is float:
        return {"doubleValue": value}
    if value is None:
        return {"stringValue": ""}
    if depth > 8:
        return {"stringValue": json.dumps(value)}
    if kind is list:
        return {"arrayValue": {"values": [_any(v, depth + 1) for v in value]}}
    return {"kvlistValue": {"values": [
        {"key": k, "value": _any(v, depth + 1)} for k, v in value.items()
    ]}}


def _attributes(pairs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OTLP ``KeyValue`` list of the pairs whose value is not missing."""
    out = []
    for k, v in pairs.items():
        v = _jsonable(v)
        if v is not None:
            out.append({"key": k, "value": _any(v)})
    return out


@functools.lru_cache(maxsize=256)
def _otlp_trace_id(trace_id: str) -> str:
    """The 32-hex trace id; other ids (``trace(trace_id="name")``) are hashed to one."""
    tid = str(trace_id).lower()
    if _HEX32.match(tid) and tid != "0" * 32:
        return tid
    return hashlib.blake2b(str(trace_id).encode(), digest_size=16).hexdigest()


def _span_id(value: str | None, what: str) -> str:
    sid = (value or "").lower()
    if not _HEX16.match(sid) or sid == "0" * 16:
        raise ValueError(f"{what} {value!r} is not 16 hex digits (a non-zero 64-bit id); "
                         "the trace cannot be exported to OTLP")
    return sid


def to_otlp_json(data: TraceData,
                 path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The trace as OpenTelemetry ``TracesData`` in the OTLP/JSON encoding.

    Parameters
    ----------
    data, path
        As for :func:`to_json`: the trace, and a file to also write the document to
        (an OTLP/JSON file, e.g. the body of an OTLP/HTTP ``POST /v1/traces``).

    Returns
    -------
    dict
        ``{"resourceSpans": [...]}`` with one entry per node (resource attributes
        ``service.name`` = ``"foundation_dask"``, ``service.instance.id`` and
        ``foundation_dask.node`` = the node, ``foundation_dask.node.role``,
        ``host.name``, ``process.pid``) holding one ``scopeSpans`` (scope
        ``foundation_dask.scope``). Each span has ``traceId`` (32 hex), ``spanId``
        (16 hex), ``parentSpanId`` (``""`` for the root), ``name``, ``kind``
        (SERVER for supervised-process calls, CONSUMER for messages, INTERNAL
        otherwise), ``startTimeUnixNano``/``endTimeUnixNano`` as decimal strings,
        ``attributes`` (``foundation_dask.kind``, ``thread.id``, ``thread.name``,
        ``dask.key`` of tasks, the span's own attributes), ``status`` (code 1 ok,
        2 error with a message) and ``events``: an ``exception`` event
        (``exception.type``, ``exception.message``, ``exception.stacktrace``) for
        errors and a ``transfer`` event per data transfer of a task.

        A trace id that is not 32 hex digits (a name given to ``scope.trace``) is
        hashed to one; the original is kept in the ``foundation_dask.trace_id``
        attribute of every span.

    Raises
    ------
    ValueError
        If a span id or parent id is not 16 hex digits.
    ExportError
        If ``path`` cannot be written (nothing is left at ``path``).
    """
    return _export(data, path, _otlp_document)


def _otlp_span(r: dict[str, Any], node: str) -> dict[str, Any]:
    """The OTLP ``Span`` of one record."""
    attributes = {
        "foundation_dask.trace_id": r["trace_id"],
        "foundation_dask.kind": r["kind"],
        "foundation_dask.node": node,
        "thread.id": r["thread_id"],
        "thread.name": r["thread"],
        "dask.key": r["key"],
        "foundation_dask.clock_offset_ms": r["clock_offset_ms"],
    }
    for k, v in (r["attrs"] or {}).items():
        if r["kind"] == "task" and k == "transfers":
            continue
        attributes[k if k not in attributes else f"attr.{k}"] = v
    start, end = r["start_ns"], max(r["end_ns"], r["start_ns"])
    events = []
    if r["kind"] == "task":
        for t in _transfers(r):
            events.append({
                "timeUnixNano": str(t["start_ns"]), "name": "transfer",
                "attributes": _attributes({
                    "transfer.source": t["source"],
                    "transfer.end_time_unix_nano": t["end_ns"],
                    "transfer.duration_ms": (t["end_ns"] - t["start_ns"]) / 1e6,
                }),
            })
    if r["status"] == "error":
        status = {"code": STATUS_CODE_ERROR,
                  "message": r["error_message"] or r["error_type"] or "error"}
        events.append({
            "timeUnixNano": str(end), "name": "exception",
            "attributes": _attributes({
                "exception.type": r["error_type"] or "Exception",
                "exception.message": r["error_message"] or "",
                "exception.stacktrace": r["traceback"] or "",
            }),
        })
    else:
        status = {"code": STATUS_CODE_OK}
    return {
        "traceId": _otlp_trace_id(r["trace_id"]),
        "spanId": _span_id(r["span_id"], "span id"),
        "parentSpanId": _span_id(r["parent_id"], "parent span id") if r["parent_id"] else "",
        "name": r["name"],
        "kind": _OTLP_KINDS.get(r["kind"], SPAN_KIND_INTERNAL),
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": _attributes(attributes),
        "events": events,
        "status": status,
    }


def _otlp_document(data: TraceData) -> dict[str, Any]:
    from foundation_dask import __version__

    records = _records(data)
    ident = _identity(data, records)
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_node[r["node"] or "unknown"].append(r)
    resource_spans = []
    for node in _node_order(set(by_node)):
        proc = ident.get(node, {})
        resource_spans.append({
            "resource": {"attributes": _attributes({
                "service.name": "foundation_dask",
                "service.instance.id": node,
                "host.name": proc.get("host"),
                "process.pid": proc.get("pid"),
                "foundation_dask.node": node,
                "foundation_dask.node.role": _node_role(node),
            })},
            "scopeSpans": [{
                "scope": {"name": OTLP_SCOPE, "version": __version__},
                "spans": [_otlp_span(r, node) for r in by_node[node]],
            }],
        })
    return {"resourceSpans": resource_spans}
