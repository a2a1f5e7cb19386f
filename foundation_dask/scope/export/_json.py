"""Any process: the ElixirScope JSON export of a trace (:func:`to_json`)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from foundation_dask.scope.export._common import _export, _int, _jsonable, _records

if TYPE_CHECKING:
    from foundation_dask.scope.collect import TraceData

#: Value of the ``format`` field of :func:`to_json` documents.
JSON_FORMAT = "foundation_dask.trace/1"


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
