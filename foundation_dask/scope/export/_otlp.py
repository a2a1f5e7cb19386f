"""Any process: the OpenTelemetry export of a trace, ``TracesData`` in the OTLP/JSON
encoding (:func:`to_otlp_json`)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from foundation_dask.scope.export._common import (
    _export,
    _identity,
    _jsonable,
    _node_order,
    _node_role,
    _records,
    _transfers,
)

if TYPE_CHECKING:
    from foundation_dask.scope.collect import TraceData

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
