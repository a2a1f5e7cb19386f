"""Client and scheduler: traces, :class:`TracesView` (the cluster's traces) and
:class:`TraceTimelineView`.

Data of :class:`TracesView`: ``scope.active_traces()`` (a DataFrame) or a list of
``dict`` s with ``trace_id``, ``scope``, ``status``, ``started_at``, ``completed_at`` and
``options``. Fetch functions: :func:`fetch_traces` (client side) and
:func:`foundation_dask.scope.scheduler_traces` (inside the scheduler process, from the
supervisor's records of the trace coordinators: no call to the coordinators).

Data of :class:`TraceTimelineView`: a :class:`~foundation_dask.scope.collect.TraceData`
or its ``timeline`` DataFrame. Fetch functions: :func:`fetch_trace` (client side,
``scope.collect_trace_data``) and :func:`foundation_dask.scope.scheduler_trace_data`
(inside the scheduler process: spans of the workers and traced tasks of the scheduler;
spans recorded in client processes are not reachable from there).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool, Range1d
from bokeh.models.widgets import Div
from bokeh.plotting import figure

from foundation_dask.scope import active_traces, collect_trace_data
from foundation_dask.views._common import sort_rows
from foundation_dask.views.base import (
    View,
    empty_columns,
    empty_note,
    fit_height,
    float_column,
    make_table,
    palette,
    records_to_columns,
    set_data,
    show_note,
    status_colours,
    text_column,
    title_of,
)

if TYPE_CHECKING:
    import distributed

    from foundation_dask.scope.collect import TraceData

# --------------------------------------------------------------------------- traces table

#: Columns of the traces source.
TRACE_COLUMNS = [
    "trace_id", "scope", "status", "status_colour", "started_at", "completed_at",
    "duration_s", "options",
]

_TRACES_TABLE = [
    ("trace_id", "Trace", "text", 200),
    ("scope", "Scope", "text", 160),
    ("status", "Status", "status", 90),
    ("started_at", "Started", "datetime", 150),
    ("completed_at", "Completed", "datetime", 150),
    ("duration_s", "Duration (s)", "float", 90),
    ("options", "Options", "text", 200),
]

def fetch_traces(include_completed: bool = False,
                 client: distributed.Client | None = None) -> pd.DataFrame:
    """The cluster's traces through a client (``scope.active_traces``)."""
    return active_traces(include_completed=include_completed, client=client)


def _ms(values: Any) -> np.ndarray:
    """Milliseconds since the epoch from datetimes or numbers (ms); NaN when missing."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert(None)
        return ((series - pd.Timestamp(0)) / pd.Timedelta(milliseconds=1)).to_numpy(float)
    return float_column(series.tolist())


def _options_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def trace_columns(data: Any) -> dict[str, Any]:
    """The traces source's columns, newest first."""
    raw = records_to_columns(
        data, ["trace_id", "scope", "status", "started_at", "completed_at", "options"]
    )
    started = _ms(raw["started_at"])
    completed = _ms(raw["completed_at"])
    now = time.time() * 1000.0
    end = np.where(np.isnan(completed), now, completed)
    cols: dict[str, Any] = {
        "trace_id": text_column(raw["trace_id"]),
        "scope": text_column(raw["scope"]),
        "status": text_column(raw["status"], missing="unknown"),
        "started_at": started,
        "completed_at": completed,
        "duration_s": (end - started) / 1000.0,
        "options": [_options_text(v) for v in raw["options"]],
    }
    newest_first = [-t for t in np.nan_to_num(started, nan=-np.inf).tolist()]
    cols = sort_rows(cols, list(zip(newest_first, cols["trace_id"], strict=True)))
    cols["status_colour"] = status_colours(cols["status"])
    return {c: cols[c] for c in TRACE_COLUMNS}


class TracesView(View):
    """The cluster's traces as a table (status coloured, newest first).

    Selecting a row sets :attr:`selected_trace`; :meth:`on_select` registers a callback.

    Parameters
    ----------
    include_completed
        Also list traces that were stopped but not forgotten.
    height
        Height of the table in pixels.
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).
    """

    title = "Traces"

    source: ColumnDataSource

    def __init__(self, *, include_completed: bool = False, height: int = 250,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.include_completed = include_completed
        self.height = height
        self.source = ColumnDataSource(empty_columns(TRACE_COLUMNS), name="foundation-traces")
        self.table = make_table(self.source, _TRACES_TABLE, height=height,
                                name="foundation-traces-table", selectable=True)
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.root = column(self.summary, self.table, sizing_mode=self.sizing_mode,
                           name="foundation-traces-view")
        #: Trace id of the selected row, if any.
        self.selected_trace: str | None = None
        self._callbacks: list[Callable[[str | None], None]] = []
        self._restoring = False
        self.source.selected.on_change("indices", self._on_indices)

    def default_fetch(self) -> pd.DataFrame:
        return fetch_traces(self.include_completed, self.client)

    def on_select(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback(trace_id)`` when the selected trace changes."""
        self._callbacks.append(callback)

    def select(self, trace_id: str | None) -> None:
        """Select the row of ``trace_id`` (``None``: clear the selection)."""
        ids = list(self.source.data["trace_id"])
        indices = [ids.index(trace_id)] if trace_id in ids else []
        self._set_selected(trace_id if indices else None, indices)

    def _set_selected(self, trace_id: str | None, indices: list[int]) -> None:
        changed = trace_id != self.selected_trace
        self.selected_trace = trace_id
        if list(self.source.selected.indices) != indices:
            self._restoring = True
            try:
                self.source.selected.indices = indices
            finally:
                self._restoring = False
        if changed:
            for callback in self._callbacks:
                callback(trace_id)

    def _on_indices(self, attr: str, old: Any, new: list[int]) -> None:
        if self._restoring:
            return
        ids = self.source.data["trace_id"]
        trace_id = ids[new[0]] if new and new[0] < len(ids) else None
        self._set_selected(trace_id, list(new[:1]))

    def apply(self, data: Any) -> None:
        cols = trace_columns(data)
        if not self.include_completed and len(cols["status"]):
            keep = [i for i, s in enumerate(cols["status"]) if s == "active"]
            if len(keep) != len(cols["status"]):
                cols = {k: ([v[i] for i in keep] if isinstance(v, list) else v[keep])
                        for k, v in cols.items()}
        set_data(self.source, cols)
        fit_height(self.table, len(cols["trace_id"]), self.height)  # and widths
        if self.selected_trace is not None:
            self.select(self.selected_trace)  # the row may have moved
        active = cols["status"].count("active")
        self.summary.text = f"<b>{len(cols['trace_id'])} traces</b>, {active} active"


# --------------------------------------------------------------------------- timeline

#: Colour of each span kind.
KIND_COLOURS = {
    "trace": "#6a1b9a",
    "span": "#1f77b4",
    "task": "#2ca02c",
    "actor": "#ff7f0e",
    "message": "#17becf",
    "event": "#bcbd22",
}
ERROR_FILL, ERROR_LINE = "#d62728", "#7f0000"

#: Columns of the spans source.
SPAN_COLUMNS = [
    "left", "right", "bottom", "top", "color", "line_color", "name", "kind", "node",
    "thread", "lane", "duration_ms", "span_id", "parent_id", "status", "error",
]
#: Columns of the cross-node links source.
LINK_COLUMNS = ["x0", "y0", "x1", "y1", "parent", "child", "parent_node", "child_node"]

_NEEDED = ["start_ns", "end_ns"]


def _kind_colours(kinds: list[str]) -> np.ndarray:
    """The colour of each kind (:data:`KIND_COLOURS`, further kinds from a palette)."""
    unknown = sorted(k for k in kinds if k not in KIND_COLOURS)
    extra = dict(zip(unknown, palette(len(unknown) + 10)[10:], strict=False))
    mapping = {**KIND_COLOURS, **extra}
    return np.asarray([mapping.get(k, "#7f7f7f") for k in kinds] or [""], dtype=str)


#: A missing node or thread in a lane label ("tcp://... / nan", " / ").
_MISSING_PART = re.compile(r"^(nan|None|NaN)?\s*/\s*|\s*/\s*(nan|None|NaN)?$")


def _factorized(frame: pd.DataFrame, col: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, labels)`` of a column: ``labels[codes]`` are its values as strings,
    ``""`` where missing (the last label)."""
    if col not in frame:
        return np.full(n, 0, dtype=np.intp), np.asarray([""])
    codes, uniques = pd.factorize(frame[col], use_na_sentinel=True)
    labels = np.asarray([str(u) for u in uniques] + [""], dtype=str)
    return np.where(codes < 0, len(labels) - 1, codes), labels


def _unicode(frame: pd.DataFrame, col: str, n: int) -> np.ndarray:
    """Column ``col`` as a NumPy unicode array (``""`` where missing).

    Text columns go out as unicode arrays, which Bokeh serialises about ten times
    faster than lists of ``str`` (the browser gets the same array of strings). Going
    through the column's distinct values keeps the conversion cheap.
    """
    codes, labels = _factorized(frame, col, n)
    return labels[codes]


def _object(frame: pd.DataFrame, col: str, n: int) -> np.ndarray:
    """Column ``col`` as an object array of ``str`` (``""`` where missing)."""
    if col not in frame:
        return np.full(n, "", dtype=object)
    series = frame[col]
    if series.dtype.kind in "iufb":
        return series.astype(str).to_numpy(object)
    return series.to_numpy(dtype=object, na_value="")


def timeline_columns(frame: pd.DataFrame, max_spans: int | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any], list[str], dict[str, Any]]:
    """Bars, cross-node links, lane names and facts of a timeline frame.

    Bars: ``left``/``right`` in ms since the first start, one lane per node/thread
    (``lane`` column, else ``node / thread``), nested spans stacked by ``depth`` inside
    their lane. Links: one segment per span whose parent is on another node, from the
    parent's bar (at the child's start, clipped to the parent) to the child's bar.
    With ``max_spans``, only the longest spans are kept.
    """
    missing = [c for c in _NEEDED if c not in frame]
    if missing:
        raise ValueError(f"a timeline frame needs the columns {_NEEDED}; missing {missing}")
    n_total = len(frame)
    if max_spans is not None and n_total > max_spans:
        dur = (frame["end_ns"].to_numpy(np.int64) - frame["start_ns"].to_numpy(np.int64))
        keep = np.sort(np.argpartition(-dur, max_spans - 1)[:max_spans])
        frame = frame.iloc[keep]
    n = len(frame)
    if n == 0:
        return (empty_columns(SPAN_COLUMNS), empty_columns(LINK_COLUMNS), [],
                {"spans": 0, "total": n_total, "duration_ms": 0.0, "links": 0})
    start = frame["start_ns"].to_numpy(np.int64)
    end = np.maximum(frame["end_ns"].to_numpy(np.int64), start)
    t0 = start.min()
    left = (start - t0) / 1e6
    right = (end - t0) / 1e6
    nodes = _unicode(frame, "node", n)
    threads = _unicode(frame, "thread", n)
    if "lane" in frame:
        codes, lane_labels = _factorized(frame, "lane", n)
    else:
        codes, lane_labels = pd.factorize(
            pd.Series(nodes, dtype=object) + " / " + pd.Series(threads, dtype=object))
        lane_labels = np.asarray(list(lane_labels), dtype=str)
    # a span without a thread (or node) gets the lane of its node alone, not "... / nan"
    lane_labels = np.asarray([_MISSING_PART.sub("", str(x)) or "client" for x in lane_labels],
                             dtype=str)
    # lanes sorted by name, top to bottom
    order = np.argsort(lane_labels, kind="stable")
    used = np.zeros(len(lane_labels), dtype=bool)
    used[codes] = True
    order = order[used[order]]
    rank = np.full(len(lane_labels), -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[codes]
    lanes = [str(x) for x in lane_labels[order]]
    lane = lane_labels[order][codes]
    n_lanes = len(lanes)
    if "depth" in frame:
        depth = frame["depth"].fillna(0).to_numpy(np.int64)
    else:
        depth = np.zeros(n, dtype=np.int64)
    dmin = np.full(n_lanes, np.iinfo(np.int64).max)
    np.minimum.at(dmin, codes, depth)
    rel = depth - dmin[codes]
    levels = np.zeros(n_lanes, dtype=np.int64)
    np.maximum.at(levels, codes, rel)
    height = 0.8 / (levels[codes] + 1)
    bottom = codes - 0.4 + rel * height
    top = bottom + height

    kind_codes, kind_labels = _factorized(frame, "kind", n)
    kinds = kind_labels[kind_codes]
    status = _unicode(frame, "status", n)
    is_error = status == "error"
    color = _kind_colours(kind_labels.tolist())[kind_codes]
    color[is_error] = ERROR_FILL
    line_color = color.copy()
    line_color[is_error] = ERROR_LINE
    error = np.full(n, "", dtype=object)
    if "error_type" in frame:
        error_type = _object(frame, "error_type", n)
        error_msg = _object(frame, "error_message", n)
        for i in np.nonzero(error_type != "")[0]:
            msg = str(error_msg[i])[:200]
            error[i] = f"{error_type[i]}: {msg}" if msg else str(error_type[i])
    span_ids = _object(frame, "span_id", n)
    parent_ids = _object(frame, "parent_id", n)
    spans = {
        "left": left, "right": right, "bottom": bottom, "top": top,
        "color": color, "line_color": line_color, "name": _unicode(frame, "name", n),
        "kind": kinds, "node": nodes, "thread": threads, "lane": lane,
        "duration_ms": (end - start) / 1e6, "span_id": span_ids.astype(str),
        "parent_id": parent_ids.astype(str), "status": status, "error": error.tolist(),
    }

    # cross-node parent -> child links
    index = pd.Index(span_ids)
    if index.is_unique:
        parent_index = index.get_indexer(parent_ids)
        parent_index[parent_ids == ""] = -1
    else:
        position = {sid: i for i, sid in enumerate(span_ids) if sid}
        parent_index = np.fromiter((position.get(p, -1) for p in parent_ids),
                                   dtype=np.int64, count=n)
    has = parent_index >= 0
    child = np.nonzero(has)[0]
    parent = parent_index[has]
    cross = nodes[child] != nodes[parent]
    child, parent = child[cross], parent[cross]
    mid = (bottom + top) / 2
    links = {
        "x0": np.clip(left[child], left[parent], right[parent]),
        "y0": mid[parent],
        "x1": left[child],
        "y1": mid[child],
        "parent": span_ids[parent].tolist(),
        "child": span_ids[child].tolist(),
        "parent_node": nodes[parent].tolist(),
        "child_node": nodes[child].tolist(),
    }
    facts = {"spans": n, "total": n_total, "duration_ms": float(right.max()),
             "links": int(len(child)), "errors": int(is_error.sum())}
    return spans, links, lanes, facts


#: The timeline's note while it shows no trace.
_NO_TRACE = ("no trace selected: start one (scope.start_cluster_trace() or Start trace) and "
             "pick it to see its spans here")


def fetch_trace(trace_id: str, client: distributed.Client | None = None,
                timeout: float = 10.0) -> TraceData:
    """Collect a trace through a client (``scope.collect_trace_data``)."""
    return collect_trace_data(trace_id, timeout=timeout, client=client)


class TraceTimelineView(View):
    """The spans of one trace as horizontal bars, one lane per node and thread.

    Bars are coloured by kind (``trace``, ``span``, ``task``, ``actor``, ``message``...;
    errors in red), nested spans are stacked inside their lane, and dashed segments link
    a parent to its children on other nodes. Hover shows name, kind, duration, node,
    thread, span id, parent and error; the x axis (ms since the first span) pans and
    zooms.

    Parameters
    ----------
    trace_id
        The trace :meth:`default_fetch` collects (``scope.collect_trace_data``).
    max_spans
        At most this many spans are drawn (the longest ones).
    height
        Height in pixels (grows with the number of lanes).
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).

    Attributes
    ----------
    source
        ``{"spans": one bar per span, "links": one segment per cross-node link}``.
    lanes
        Lane names, top to bottom.
    """

    title = "Trace timeline"

    source: dict[str, ColumnDataSource]

    def __init__(self, *, trace_id: str | None = None, max_spans: int = 50_000,
                 height: int = 300, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trace_id = trace_id
        self.max_spans = max_spans
        self.base_height = height
        self.lanes: list[str] = []
        self.facts: dict[str, Any] = {}
        self.source = {
            "spans": ColumnDataSource(empty_columns(SPAN_COLUMNS),
                                      name="foundation-timeline-spans"),
            "links": ColumnDataSource(empty_columns(LINK_COLUMNS),
                                      name="foundation-timeline-links"),
        }
        fig = figure(
            height=height, sizing_mode=self.sizing_mode, title="No trace",
            tools="xpan,xwheel_zoom,box_zoom,reset,save,tap", active_scroll="xwheel_zoom",
            active_drag="xpan", toolbar_location="right", y_range=Range1d(start=0.5, end=-0.5),
            x_axis_label="ms since the first span", name="foundation-timeline",
        )
        bars = fig.quad(
            left="left", right="right", bottom="bottom", top="top", source=self.source["spans"],
            fill_color="color", line_color="line_color", fill_alpha=0.8, line_width=1,
            hover_fill_alpha=1.0, hover_line_color="black",
        )
        fig.segment(
            x0="x0", y0="y0", x1="x1", y1="y1", source=self.source["links"],
            line_color="#424242", line_dash="dashed", line_width=1.2, line_alpha=0.8,
        )
        fig.add_tools(HoverTool(renderers=[bars], tooltips=[
            ("name", "@name"), ("kind", "@kind"), ("duration", "@duration_ms{0,0.000} ms"),
            ("node", "@node"), ("thread", "@thread"), ("span", "@span_id"),
            ("parent", "@parent_id"), ("status", "@status"), ("error", "@error"),
        ]))
        fig.yaxis.ticker = FixedTicker(ticks=[])
        fig.ygrid.grid_line_color = None
        self.figure = fig
        self.note = empty_note(fig, _NO_TRACE)
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.root = column(self.summary, fig, sizing_mode=self.sizing_mode,
                           name="foundation-timeline-view")

    def default_fetch(self) -> TraceData:
        if self.trace_id is None:
            raise ValueError("TraceTimelineView has no trace_id: set view.trace_id or pass "
                             "a TraceData to update()")
        return fetch_trace(self.trace_id, self.client)

    def clear(self) -> None:
        """Show no trace."""
        self.apply(pd.DataFrame(columns=_NEEDED))
        title_of(self.figure).text = "No trace"

    def apply(self, data: Any) -> None:
        title = "Trace"
        if hasattr(data, "timeline"):
            self.trace_id = data.trace_id
            scope_name = (getattr(data, "info", None) or {}).get("scope")
            title = f"Trace {data.trace_id}" + (f" ({scope_name})" if scope_name else "")
            partial = getattr(data, "missing_nodes", None) or getattr(data, "lost_nodes", None)
            frame = data.timeline
        elif isinstance(data, pd.DataFrame):
            frame, partial = data, None
            if self.trace_id:
                title = f"Trace {self.trace_id}"
        else:
            raise TypeError(
                "TraceTimelineView.update() takes a TraceData or its timeline DataFrame, "
                f"not {type(data).__name__}"
            )
        spans, links, lanes, facts = timeline_columns(frame, self.max_spans)
        self.source["spans"].data = spans
        self.source["links"].data = links
        self.facts = facts
        if lanes != self.lanes:
            self.lanes = lanes
            ticks = list(range(len(lanes)))
            self.figure.yaxis.ticker = FixedTicker(ticks=ticks)
            self.figure.yaxis.major_label_overrides = {i: lane for i, lane in enumerate(lanes)}
            self.figure.y_range.update(start=len(lanes) - 0.5, end=-0.5)
            if self.sizing_mode not in ("stretch_both", "stretch_height", "scale_both",
                                        "scale_height"):
                self.figure.height = max(self.base_height, 60 + 30 * len(lanes))
        title_of(self.figure).text = title
        show_note(self.note, facts["spans"] == 0,
                  "no spans in this trace yet: traced work adds them" if self.trace_id
                  else _NO_TRACE)
        shown = (f"{facts['spans']:,} spans" if facts["spans"] == facts["total"]
                 else f"{facts['spans']:,} longest of {facts['total']:,} spans")
        text = (f"<b>{title}</b>: {shown} on {len(lanes)} lanes, "
                f"{facts['duration_ms']:,.1f} ms, {facts['links']} cross-node links")
        if facts.get("errors"):
            text += f', <span style="color:{ERROR_FILL}">{facts["errors"]} errors</span>'
        if partial:
            text += f" (partial: {', '.join(map(str, partial))} missing)"
        self.summary.text = text


__all__ = [
    "KIND_COLOURS", "TraceTimelineView", "TracesView", "fetch_trace", "fetch_traces",
    "timeline_columns", "trace_columns",
]
