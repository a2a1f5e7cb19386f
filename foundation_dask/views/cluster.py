"""Client and scheduler: nodes and their health over time, :class:`ClusterHealthView`.

Data: a :class:`~foundation_dask.core.health.ClusterHealth`, the ``foundation_health``
reply it is built from (a ``dict``), or ``ClusterHealth.to_frame()``. Fetch functions:
:func:`fetch_health` (client side) and
:func:`foundation_dask.core.health.scheduler_health` (inside the scheduler process, no
RPC; the dashboard page uses it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataRange1d,
    DatetimeTicker,
    DatetimeTickFormatter,
    HoverTool,
)
from bokeh.models.widgets import Div
from bokeh.plotting import figure
from dask.utils import format_bytes

from foundation_dask.core.health import HealthMonitor
from foundation_dask.views._common import sort_rows
from foundation_dask.views.base import (
    View,
    colour_for,
    empty_columns,
    empty_note,
    fit_height,
    float_column,
    make_table,
    records_to_columns,
    set_data,
    show_note,
    status_colours,
    text_column,
)

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.health import ClusterHealth

#: Columns of the node table source.
NODE_COLUMNS = [
    "node", "name", "status", "status_colour", "reasons", "host", "cpu", "memory",
    "memory_bytes", "memory_limit", "load_avg", "load_per_core", "cores", "nthreads",
    "process_count", "threads", "tasks", "executing", "event_loop_lag", "last_seen",
    "worker_status",
]
_TEXT = {"node", "name", "status", "reasons", "host", "worker_status"}

_TABLE = [
    ("name", "Name", "text", 90),
    ("node", "Address", "text", 170),
    ("status", "Status", "status", 80),
    ("cpu", "CPU %", "percent", 60),
    ("memory", "Mem %", "percent", 60),
    ("memory_bytes", "Memory", "bytes", 80),
    ("load_avg", "Load", "float", 55),
    ("load_per_core", "Load/core", "float", 65),
    ("process_count", "Processes", "int", 70),
    ("tasks", "Tasks", "int", 55),
    ("executing", "Executing", "int", 65),
    ("event_loop_lag", "Lag (s)", "seconds", 60),
    ("last_seen", "Seen (s)", "float", 60),
    ("reasons", "Reasons", "text", 220),
]

#: ``(metric, node field, y-axis label)`` of the time series.
METRICS = [
    ("cpu", "cpu", "CPU %"),
    ("memory", "memory", "Memory % of limit"),
    ("load", "load_avg", "Load average (1 min)"),
]


#: The notes of the time series while they have no line.
_WAITING = "a line per node\nfrom the second sample\n(the next refresh)"
_NO_NODES = "no nodes yet: a line per\nnode once workers join"


def fetch_health(client: distributed.Client | None = None
                 ) -> ClusterHealth | Awaitable[ClusterHealth]:
    """The cluster health through a client (``HealthMonitor.get_cluster_health``; an
    awaitable with an asynchronous client)."""
    return HealthMonitor.get_cluster_health(client=client)


def _nodes_and_meta(data: Any) -> tuple[Any, float, dict[str, Any]]:
    """(node records, timestamp in s, performance dict) of any accepted input."""
    if isinstance(data, Mapping):
        cluster = data.get("cluster") or {}
        return (cluster.get("node_health") or [], float(data.get("timestamp") or time.time()),
                dict(data.get("performance") or {}))
    if hasattr(data, "cluster") and hasattr(data, "performance"):  # ClusterHealth
        perf = vars(data.performance).copy()
        mem = perf.get("memory_usage")
        if mem is not None and not isinstance(mem, Mapping):
            perf["memory_usage"] = vars(mem)
        return [vars(n) for n in data.cluster.node_health], float(data.timestamp), perf
    if hasattr(data, "columns"):  # to_frame()
        return data, time.time(), {}
    if isinstance(data, Sequence):
        return list(data), time.time(), {}
    raise TypeError(
        f"ClusterHealthView.update() takes a ClusterHealth, its dict form or its to_frame(), "
        f"not {type(data).__name__}"
    )


def health_columns(nodes: Any) -> dict[str, Any]:
    """The node table's columns from node records (dicts or a DataFrame)."""
    raw = records_to_columns(nodes, [c for c in NODE_COLUMNS if c != "status_colour"])
    cols: dict[str, Any] = {}
    for name, values in raw.items():
        cols[name] = text_column(values) if name in _TEXT else float_column(values)
    cols = sort_rows(cols, list(zip(cols["name"], cols["node"], strict=True)))
    cols["status_colour"] = status_colours(cols["status"])
    return {c: cols[c] for c in NODE_COLUMNS}


class ClusterHealthView(View):
    """Nodes of the cluster: a table (status coloured) and CPU, memory and load over time.

    Parameters
    ----------
    history
        Points kept per node in the time series (a rolling window).
    table_height, plot_height
        Heights in pixels.
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).

    Attributes
    ----------
    source
        ``{"nodes": one row per node, "history": the time series}``. The history source
        has a ``time`` column (ms since the epoch) and one ``<metric>_<slot>`` column per
        node and metric (``cpu``, ``memory``, ``load``); :attr:`slots` maps node
        addresses to slots.
    """

    title = "Cluster health"

    source: dict[str, ColumnDataSource]

    def __init__(self, *, history: int = 1000, table_height: int = 200, plot_height: int = 180,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = int(history)
        self.table_height = table_height
        self.source = {
            "nodes": ColumnDataSource(empty_columns(NODE_COLUMNS), name="foundation-health-nodes"),
            "history": ColumnDataSource({"time": []}, name="foundation-health-history"),
        }
        #: ``{node address: slot}`` of the nodes with a line in the time series.
        self.slots: dict[str, int] = {}
        self._names: dict[str, str] = {}
        self._next_slot = 0
        self._renderers: dict[str, list[Any]] = {}
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.table = make_table(self.source["nodes"], _TABLE, height=table_height,
                                name="foundation-health-table", sizing_mode="stretch_width")
        self.figures: dict[str, Any] = {}
        self.notes: dict[str, Any] = {}
        for metric, _, label in METRICS:
            fig = figure(
                x_axis_type="datetime", height=plot_height, sizing_mode="stretch_width",
                # the toolbar beside the plot: above, it took the title's line and cut
                # the title ("Load average (1 min")
                tools="xpan,xwheel_zoom,reset", toolbar_location="right",
                title=label, name=f"foundation-health-{metric}", min_width=220,
            )
            fig.toolbar.logo = None  # room for the tools beside a short plot
            fig.add_tools(HoverTool(
                tooltips=[("node", "$name"), ("time", "@time{%H:%M:%S}"),
                          (label, "$y{0.0}")],
                formatters={"@time": "datetime"},
            ))
            self.notes[metric] = empty_note(fig, _WAITING)
            x_range = cast(DataRange1d, fig.x_range)
            x_range.follow = "end"
            # a minute at least: with one sample Bokeh would zoom to microseconds, and
            # the tick labels of a narrow plot ran together ("756000756500us")
            x_range.min_interval = 60_000
            fig.xaxis.formatter = DatetimeTickFormatter(
                microseconds="%H:%M:%S", milliseconds="%H:%M:%S", seconds="%H:%M:%S",
                minsec="%H:%M:%S", minutes="%H:%M", hourmin="%H:%M", hours="%H:%M")
            fig.xaxis.ticker = DatetimeTicker(desired_num_ticks=3)
            fig.xaxis.major_label_text_font_size = "8pt"
            if metric != "load":
                cast(DataRange1d, fig.y_range).start = 0
            self.figures[metric] = fig
        self.root = column(
            self.summary, self.table, row(*self.figures.values(), sizing_mode="stretch_width"),
            sizing_mode=self.sizing_mode, name="foundation-health",
        )

    def default_fetch(self) -> ClusterHealth | Awaitable[ClusterHealth]:
        return fetch_health(self.client)

    # -- update

    def apply(self, data: Any) -> None:
        nodes, timestamp, perf = _nodes_and_meta(data)
        cols = health_columns(nodes)
        set_data(self.source["nodes"], cols)
        fit_height(self.table, len(cols["node"]), self.table_height)  # no blank band
        self.summary.text = _summary(cols, perf)
        self._append_history(cols, timestamp)

    def _append_history(self, cols: dict[str, Any], timestamp: float) -> None:
        addresses = cols["node"]
        names = dict(zip(addresses, cols["name"], strict=True))
        if set(addresses) != set(self.slots) or names != self._names:
            self._reconcile(addresses, names)
        index = {a: i for i, a in enumerate(addresses)}
        new: dict[str, Any] = {"time": np.array([timestamp * 1000.0])}
        for metric, field, _ in METRICS:
            values = cols[field]
            for node, slot in self.slots.items():
                new[f"{metric}_{slot}"] = np.array([values[index[node]]], dtype=float)
        self.source["history"].stream(new, rollover=self.history)
        self._title_plots()

    def _title_plots(self) -> None:
        """A line needs two samples: until then each plot says when its lines come."""
        n = len(self.source["history"].data["time"])
        text = _NO_NODES if not self.slots else _WAITING
        for note in self.notes.values():
            show_note(note, n < 2, text)

    def _reconcile(self, addresses: list[str], names: dict[str, str]) -> None:
        """Give new nodes a slot (columns and lines), drop the lines of departed nodes."""
        src = self.source["history"]
        data = dict(src.data)
        n = len(data.get("time", []))
        for node in [a for a in self.slots if a not in names]:
            slot = self.slots.pop(node)
            for metric, _, _ in METRICS:
                data.pop(f"{metric}_{slot}", None)
            for renderer in self._renderers.pop(node, []):
                for fig in self.figures.values():
                    if renderer in fig.renderers:
                        fig.renderers = [r for r in fig.renderers if r is not renderer]
        for node in addresses:
            if node not in self.slots:
                slot = self.slots[node] = self._next_slot
                self._next_slot += 1
                for metric, _, _ in METRICS:
                    data[f"{metric}_{slot}"] = np.full(n, np.nan)
        data["time"] = np.asarray(data.get("time", []), dtype=float)
        src.data = data
        for node, slot in self.slots.items():
            label = names.get(node) or node
            if node in self._renderers:
                for renderer in self._renderers[node]:
                    renderer.name = label
                continue
            renderers = []
            for metric, _, _ in METRICS:
                r = self.figures[metric].line(
                    x="time", y=f"{metric}_{slot}", source=src, color=colour_for(slot),
                    line_width=1.5, name=label,
                )
                renderers.append(r)
            self._renderers[node] = renderers
        self._names = dict(names)

    def set_history(self, frame: Any) -> None:
        """Replace the time series with ``frame`` (long format: ``time`` in seconds since
        the epoch or datetimes, ``node``, ``cpu``, ``memory``, ``load_avg``), e.g. to
        show a recorded history. Nodes must be in the table already (:meth:`update`);
        the last :attr:`history` times are kept."""
        import pandas as pd

        frame = pd.DataFrame(frame)
        times = frame["time"]
        if pd.api.types.is_datetime64_any_dtype(times):
            ms = ((times - pd.Timestamp(0)) / pd.Timedelta(milliseconds=1)).to_numpy(float)
        else:
            ms = times.to_numpy(float) * 1000.0
        t_codes, t_values = pd.factorize(ms, sort=True)
        first = max(0, len(t_values) - self.history)
        keep = t_codes >= first
        rows = t_codes[keep] - first
        n_rows = len(t_values) - first
        slot_of = {node: i for i, node in enumerate(self.slots)}
        cols = np.fromiter((slot_of.get(n, -1) for n in frame["node"].to_numpy(object)[keep]),
                           dtype=np.int64, count=int(keep.sum()))
        known = cols >= 0
        rows, cols = rows[known], cols[known]
        data: dict[str, Any] = {"time": np.asarray(t_values[first:], dtype=float)}
        for metric, field, _ in METRICS:
            grid = np.full((n_rows, len(slot_of)), np.nan)
            if field in frame:
                values = frame[field].to_numpy(float, na_value=np.nan)[keep][known]
                grid[rows, cols] = values  # the last value wins for duplicate times
            for node, i in slot_of.items():
                data[f"{metric}_{self.slots[node]}"] = grid[:, i].copy()
        self.source["history"].data = data
        self._title_plots()


def _summary(cols: dict[str, Any], perf: dict[str, Any]) -> str:
    statuses = cols["status"]
    counts = {s: statuses.count(s) for s in ("healthy", "degraded", "unreachable")}
    parts = [
        f"<b>{len(statuses)} nodes</b>",
        " ".join(
            f'<span style="color:{c}">{counts[s]} {s}</span>'
            for s, c in zip(counts, status_colours(counts), strict=True)
        ),
    ]
    if perf:
        parts.append(f"{perf.get('tasks_per_sec', 0.0):.1f} tasks/s")
        parts.append(f"{perf.get('message_throughput_per_sec', 0.0):.1f} msg/s")
        mem = perf.get("memory_usage") or {}
        if mem.get("bytes") is not None:
            text = f"memory {format_bytes(mem.get('bytes') or 0)}"
            if mem.get("percent") is not None:
                text += f" ({mem['percent']:.1f}% of {format_bytes(mem.get('limit') or 0)})"
            parts.append(text)
    return " &middot; ".join(parts)


__all__ = ["ClusterHealthView", "fetch_health", "health_columns"]
