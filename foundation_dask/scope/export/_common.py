"""Any process: what the three trace exports share.

Plain JSON values of anything a trace holds (:func:`_jsonable`), the events of a
:class:`~foundation_dask.scope.TraceData` as plain records (:func:`_records`), the
nodes' order, roles and identities, and the atomic write of a document to a path
(:func:`_write`, raising :class:`~foundation_dask.errors.ExportError`).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import gc
import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from foundation_dask.errors import ExportError
from foundation_dask.scope._names import EVENT_COLUMNS

if TYPE_CHECKING:
    from foundation_dask.scope.collect import TraceData

#: What the exporters read of a ``TraceData``.
_TRACE_DATA_ATTRIBUTES = ("trace_id", "info", "events", "summary", "missing_nodes",
                          "lost_nodes", "clock", "processes")


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
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    if not all(hasattr(data, a) for a in _TRACE_DATA_ATTRIBUTES) or not hasattr(
            data.events, "columns"):
        raise TypeError(
            f"expected a TraceData (from scope.collect_trace_data() or trace.collect()), "
            f"not {type(data).__name__}"
        )
    missing = [c for c in EVENT_COLUMNS if c not in data.events.columns]
    if missing:
        raise ValueError(f"TraceData.events lacks the columns {missing}; it cannot be exported")


_STR_COLUMNS = ("trace_id", "span_id", "parent_id", "name", "kind", "node", "host", "thread",
                "status", "error_type", "error_message", "traceback", "key")


def _column(frame: pd.DataFrame, name: str, convert: Callable[[Any], Any]) -> list[Any]:
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
def _no_gc() -> Iterator[None]:
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
