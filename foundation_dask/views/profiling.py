"""Client and scheduler: where the cluster spends its time, :class:`HotspotsView` and
:class:`FlameGraphView`; where Foundation itself spends the scheduler's event loop,
:class:`SchedulerExtensionsView`.

Data of both: a :class:`~foundation_dask.scope.profiling.PerformanceReport`, a call tree
in Dask's profile format (``{"description", "count", "children", "identifier"}``, as
``client.profile()`` returns), or ``{node: call tree}`` (``client.profile(
merge_workers=False)``). :class:`HotspotsView` also takes a ``code_hotspots``
DataFrame. Fetch functions: :func:`fetch_profile` (client side, Dask's profile of the
last seconds) and :func:`foundation_dask.scope.scheduler_profile` (inside the scheduler
process).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import dask.config
import numpy as np
import pandas as pd
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool, Range1d
from bokeh.models.widgets import Div
from dask.utils import parse_timedelta

from foundation_dask.core._client import current_client
from foundation_dask.views.base import (
    View,
    empty_columns,
    empty_note,
    float_column,
    records_to_columns,
    show_note,
    text_column,
    title_of,
)

if TYPE_CHECKING:
    import distributed

#: Columns of the hotspots source.
HOTSPOT_COLUMNS = [
    "label", "function", "location", "self_time_s", "total_time_s", "self_wall_s",
    "total_wall_s", "samples", "total_samples", "calls", "nodes", "n_nodes",
]
#: Columns of the flame graph source.
FLAME_COLUMNS = [
    "left", "right", "bottom", "top", "color", "name", "label", "filename", "line_number",
    "line", "count", "time_s", "percentage",
]

#: Columns of the scheduler extensions source.
EXTENSION_SOURCE_COLUMNS = ["subsystem", "ms", "calls", "percent"]

#: Longest function label on the bar chart's axis (the full name is in the hover).
LABEL_CHARS = 60


def _interval() -> float:
    """Dask's worker profiling interval, seconds."""
    return float(parse_timedelta(dask.config.get("distributed.worker.profile.interval"), "s"))


def fetch_profile(client: distributed.Client | None = None, seconds: float | None = 60.0,
                  merge_workers: bool = False) -> dict[str, Any]:
    """Dask's profile of the workers over the last ``seconds`` (``client.profile``).

    Returns ``{worker: call tree}`` (or one merged tree with ``merge_workers=True``).
    """
    client = client or current_client()
    start = None if seconds is None else time.time() - seconds
    return client.profile(start=start, merge_workers=merge_workers)


def _is_tree(data: Any) -> bool:
    return isinstance(data, Mapping) and "children" in data and "count" in data


def _trees(data: Any) -> tuple[dict[str, dict[str, Any]], str, float | None]:
    """``({node: tree}, profile source, interval)`` of a report, a tree or trees."""
    if hasattr(data, "profiles") and hasattr(data, "code_hotspots"):  # PerformanceReport
        overview = getattr(data, "cluster_overview", {}) or {}
        session = getattr(data, "session", {}) or {}
        source = overview.get("profile_source") or (session.get("options") or {}).get(
            "source", "sampler")
        return dict(data.profiles), str(source), None
    if _is_tree(data):
        return {"cluster": dict(data)}, "dask", None
    if isinstance(data, Mapping) and all(_is_tree(v) for v in data.values()):
        return {str(k): dict(v) for k, v in data.items()}, "dask", None
    raise TypeError(
        "takes a PerformanceReport, a call tree in Dask's profile format or "
        f"{{node: call tree}}, not {type(data).__name__}"
    )


def hotspots_frame(data: Any, top: int = 20, interval: float | None = None) -> pd.DataFrame:
    """The hotspots table (``code_hotspots`` columns) of any accepted input."""
    if isinstance(data, pd.DataFrame):
        return data.head(top)
    if hasattr(data, "code_hotspots") and isinstance(data.code_hotspots, pd.DataFrame):
        return data.code_hotspots.head(top)
    from foundation_dask.scope.profiling import code_hotspots

    trees, source, _ = _trees(data)
    interval = _interval() if interval is None else interval
    profiles = {
        node: {"profile": tree, "profile_source": source, "profile_interval": interval}
        for node, tree in trees.items()
    }
    frame, _, _ = code_hotspots(profiles, top=top)
    return frame


def _unique_labels(functions: list[str], locations: list[str]) -> list[str]:
    labels = []
    seen: set[str] = set()
    for fn, loc in zip(functions, locations, strict=True):
        label = fn if len(fn) <= LABEL_CHARS else "…" + fn[-(LABEL_CHARS - 1):]
        if label in seen:
            label = f"{label} ({loc.rsplit('/', 1)[-1]})"
        k = 2
        base = label
        while label in seen:
            label = f"{base} #{k}"
            k += 1
        seen.add(label)
        labels.append(label)
    return labels


def hotspot_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """The hotspots source's columns from a ``code_hotspots`` DataFrame."""
    raw = records_to_columns(frame, [c for c in HOTSPOT_COLUMNS if c not in ("label",
                                                                            "n_nodes")])
    functions = text_column(raw["function"])
    locations = text_column(raw["location"])
    nodes = raw["nodes"]
    return {
        "label": _unique_labels(functions, locations),
        "function": functions,
        "location": locations,
        "self_time_s": float_column(raw["self_time_s"]),
        "total_time_s": float_column(raw["total_time_s"]),
        "self_wall_s": float_column(raw["self_wall_s"]),
        "total_wall_s": float_column(raw["total_wall_s"]),
        "samples": float_column(raw["samples"]),
        "total_samples": float_column(raw["total_samples"]),
        "calls": float_column(raw["calls"]),
        "nodes": text_column(nodes),
        "n_nodes": float_column(
            [len(v) if isinstance(v, (list, tuple, set)) else (None if v is None else 1)
             for v in nodes]
        ),
    }


#: The profile plots' note while they have no samples.
_NO_SAMPLES = ("no profile samples yet: start profiling (scope.start_cluster_profiling() or "
               "Start profiling) and run some work")


class HotspotsView(View):
    """Top functions by self time: a horizontal bar chart (total time behind, lighter).

    Parameters
    ----------
    top
        Number of functions shown.
    seconds
        Window of Dask's profile that :meth:`default_fetch` reads.
    height
        Height in pixels.
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).
    """

    title = "Code hotspots"

    source: ColumnDataSource

    def __init__(self, *, top: int = 20, seconds: float = 60.0, height: int = 450,
                 **kwargs: Any) -> None:
        from bokeh.plotting import figure

        super().__init__(**kwargs)
        self.top = top
        self.seconds = seconds
        self.source = ColumnDataSource(empty_columns(HOTSPOT_COLUMNS),
                                       name="foundation-hotspots")
        fig = figure(
            y_range=FactorRange(factors=[]), height=height, sizing_mode=self.sizing_mode,
            title="Code hotspots (self time)", x_axis_label="seconds",
            tools="xpan,xwheel_zoom,box_zoom,reset,save", toolbar_location="right",
            name="foundation-hotspots-figure",
        )
        fig.hbar(y="label", right="total_time_s", height=0.75, source=self.source,
                 fill_color="#90caf9", line_color=None, fill_alpha=0.5,
                 legend_label="total time")
        bars = fig.hbar(y="label", right="self_time_s", height=0.75, source=self.source,
                        fill_color="#1565c0", line_color=None, legend_label="self time")
        fig.add_tools(HoverTool(renderers=[bars], tooltips=[
            ("function", "@function"), ("location", "@location"),
            ("self time", "@self_time_s{0.000} s"), ("total time", "@total_time_s{0.000} s"),
            ("wall time", "@self_wall_s{0.000} s"),
            ("samples", "@samples (total @total_samples)"), ("calls", "@calls{0,0}"),
            ("nodes", "@nodes"),
        ]))
        cast(DataRange1d, fig.x_range).start = 0
        fig.legend.location = "bottom_right"
        fig.ygrid.grid_line_color = None
        self.figure = fig
        self.note = empty_note(fig, _NO_SAMPLES)
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.root = column(self.summary, fig, sizing_mode=self.sizing_mode,
                           name="foundation-hotspots-view")

    def default_fetch(self) -> dict[str, Any]:
        return fetch_profile(self.client, self.seconds)

    def apply(self, data: Any) -> None:
        frame = hotspots_frame(data, self.top)
        cols = hotspot_columns(frame)
        self.source.data = cols
        cast(FactorRange, self.figure.y_range).factors = list(reversed(cols["label"]))
        total = float(np.nansum(cols["self_time_s"])) if len(cols["label"]) else 0.0
        show_note(self.note, not len(cols["label"]))
        self.summary.text = (f"<b>Top {len(cols['label'])} functions</b> by self time "
                             f"({total:.2f} s in these)")


def flame_columns(tree: Mapping[str, Any], interval: float,
                  label_fraction: float = 0.02, min_fraction: float = 1e-4,
                  innermost_uncounted: bool = False) -> dict[str, Any]:
    """Boxes of a flame graph of a call tree: x in [0, 1] by share of samples, y depth.

    A child's width is its share of its parent's samples. Functions without samples and
    boxes narrower than ``min_fraction`` of the whole (with what they call) are left
    out; boxes wider than ``label_fraction`` carry a label.

    With ``innermost_uncounted`` (trees of Dask's worker profiler, where the innermost
    frame of a sample is not counted), the samples a node has beyond its children's are
    given to its children by the rule of ``scope.profiling.count_innermost_frames``: to
    the only child, else evenly to the children without callees of their own, else
    evenly to all.
    """
    from distributed.utils import color_of

    root_count = tree.get("count") or 0
    if not root_count:
        return empty_columns(FLAME_COLUMNS)
    left: list[float] = []
    right: list[float] = []
    depth_: list[int] = []
    counts: list[float] = []
    names: list[str] = []
    filenames: list[str] = []
    line_numbers: list[Any] = []
    lines: list[str] = []
    colours: list[str] = []
    colour_cache: dict[str, str] = {}
    # (node, left, right, depth, samples of the node: its count plus what it was given)
    stack: list[tuple[Mapping[str, Any], float, float, int, float]] = [
        (tree, 0.0, 1.0, 0, root_count)]
    pop, push = stack.pop, stack.append
    while stack:
        node, start, stop, depth, count = pop()
        desc = node.get("description") or {}
        if type(desc) is not dict:
            desc = dict(desc) if isinstance(desc, Mapping) else {"name": str(desc)}
        filename = desc.get("filename") or ""
        colour: str | None
        if depth == 0:
            name, colour = "all", "#bdbdbd"
        else:
            name = desc.get("qualname") or desc.get("name") or ""
            colour = colour_cache.get(filename)
            if colour is None:
                colour = colour_cache[filename] = color_of(filename)
        left.append(start)
        right.append(stop)
        depth_.append(depth)
        counts.append(count)
        names.append(name)
        filenames.append(filename)
        line_numbers.append(desc.get("line_number"))
        lines.append(desc.get("line") or "")
        colours.append(colour)
        children = node.get("children")
        if children:
            kids = list(children.values())
            weights = [child["count"] for child in kids]
            if innermost_uncounted:
                excess = node["count"] - sum(weights)
                if excess > 0:
                    takers = [i for i, w in enumerate(weights) if w == 0] or range(len(kids))
                    share = excess / len(takers)
                    for i in takers:
                        weights[i] += share
            delta = (stop - start) / count
            x = start
            below = depth + 1
            for child, c in zip(kids, weights, strict=True):
                if c:
                    w = c * delta
                    if w >= min_fraction:
                        push((child, x, x + w, below, c))
                    x += w
    lo = np.asarray(left)
    hi = np.asarray(right)
    width = hi - lo
    bottom = np.asarray(depth_, dtype=float)
    count_arr = np.asarray(counts, dtype=float)
    chars = (width * 140).astype(int)
    labels = [
        n[:k] if w >= label_fraction and k >= 3 else ""
        for n, w, k in zip(names, width.tolist(), chars.tolist(), strict=True)
    ]
    return {
        "left": lo, "right": hi, "bottom": bottom, "top": bottom + 1, "color": colours,
        "name": names, "label": labels, "filename": filenames,
        "line_number": float_column(line_numbers), "line": lines, "count": count_arr,
        "time_s": count_arr * interval,
        "percentage": np.char.add(np.char.mod("%.1f", 100 * count_arr / root_count),
                                  "%").tolist(),
    }


class FlameGraphView(View):
    """A flame graph of a call tree in Dask's profile format (callers below callees).

    Trees of Dask's worker profiler (``client.profile()``) do not count the innermost
    frame of a sample; like the hotspots analysis, the view gives those samples to the
    callees (see :func:`flame_columns`) so that leaf functions show.

    Parameters
    ----------
    seconds
        Window of Dask's profile that :meth:`default_fetch` reads.
    height
        Height in pixels.
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).
    """

    title = "Flame graph"

    source: ColumnDataSource

    def __init__(self, *, seconds: float = 60.0, height: int = 400, **kwargs: Any) -> None:
        from bokeh.plotting import figure

        super().__init__(**kwargs)
        self.seconds = seconds
        self.source = ColumnDataSource(empty_columns(FLAME_COLUMNS), name="foundation-flame")
        fig = figure(
            height=height, sizing_mode=self.sizing_mode, title="Flame graph",
            x_range=Range1d(start=0, end=1, bounds=(0, 1)), y_range=Range1d(start=0, end=1),
            tools="xpan,xwheel_zoom,box_zoom,reset,save,tap", active_scroll="xwheel_zoom",
            toolbar_location="right", name="foundation-flame-figure",
        )
        boxes = fig.quad(left="left", right="right", bottom="bottom", top="top",
                         fill_color="color", line_color="white", line_width=0.5,
                         source=self.source, hover_line_color="black")
        fig.text(x="left", y="bottom", text="label", source=self.source, x_offset=3,
                 y_offset=-4, text_font_size="8pt", text_baseline="bottom")
        fig.add_tools(HoverTool(renderers=[boxes], tooltips=[
            ("function", "@name"), ("file", "@filename:@line_number"), ("line", "@line"),
            ("time", "@time_s{0.000} s"), ("share", "@percentage"),
        ]))
        fig.xaxis.visible = False
        fig.yaxis.axis_label = "stack depth"
        fig.grid.grid_line_color = None
        self.figure = fig
        self.note = empty_note(fig, _NO_SAMPLES)
        self.root = fig

    def default_fetch(self) -> dict[str, Any]:
        return fetch_profile(self.client, self.seconds, merge_workers=True)

    def apply(self, data: Any) -> None:
        from distributed import profile

        trees, source, _ = _trees(data)
        tree = profile.merge(*trees.values()) if len(trees) != 1 else next(iter(trees.values()))
        # Dask's worker profiler leaves the innermost frame of each sample uncounted: those
        # samples go back to the callees so that leaf functions get a box
        cols = flame_columns(tree, _interval(), innermost_uncounted=source == "dask")
        self.source.data = cols
        depth = float(np.max(cols["top"])) if len(cols["top"]) else 1.0
        self.figure.y_range.update(start=0, end=depth)
        samples = tree.get("count") or 0
        title_of(self.figure).text = f"Flame graph: {samples:,} samples"
        show_note(self.note, not len(cols["top"]))


def extensions_table(data: Any) -> pd.DataFrame:
    """The scheduler extensions table of a
    :class:`~foundation_dask.scope.profiling.PerformanceReport`, a
    :class:`~foundation_dask.dspex.tuning.TuneResult` (its ``overhead``), the scheduler
    meter's figures, or the table itself."""
    from foundation_dask.scope.profiling import extensions_frame

    if isinstance(data, pd.DataFrame):
        return data
    for attr in ("scheduler_extensions", "overhead"):
        frame = getattr(data, attr, None)
        if isinstance(frame, pd.DataFrame):
            return frame
    return extensions_frame(data if isinstance(data, Mapping) else None)


class SchedulerExtensionsView(View):
    """Foundation on the scheduler: the seconds each of its extensions held the
    scheduler's event loop (bars, most first), with calls and share in the hover.

    Data: a :class:`~foundation_dask.scope.profiling.PerformanceReport` (its
    ``scheduler_extensions``), a ``dspex.tune`` result, the scheduler meter's figures or
    the table (see :func:`extensions_table`). :meth:`default_fetch` reads the meter of
    the running profiling session on the scheduler.

    Parameters
    ----------
    height
        Height in pixels.
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).
    """

    title = "Foundation on the scheduler"

    def __init__(self, *, height: int = 260, **kwargs: Any) -> None:
        from bokeh.plotting import figure

        super().__init__(**kwargs)
        self.source = ColumnDataSource(empty_columns(EXTENSION_SOURCE_COLUMNS),
                                       name="foundation-scheduler-extensions")
        fig = figure(
            y_range=FactorRange(factors=[]), height=height, sizing_mode=self.sizing_mode,
            title="Foundation's scheduler extensions (event-loop time)",
            x_axis_label="milliseconds", tools="save", toolbar_location="right",
            name="foundation-scheduler-extensions-figure",
        )
        bars = fig.hbar(y="subsystem", right="ms", height=0.7, source=self.source,
                        fill_color="#6a1b9a", line_color=None)
        fig.add_tools(HoverTool(renderers=[bars], tooltips=[
            ("subsystem", "@subsystem"), ("time", "@ms{0.00} ms"),
            ("calls", "@calls{0,0}"), ("share of the loop", "@percent{0.00} %"),
        ]))
        cast(DataRange1d, fig.x_range).start = 0
        fig.ygrid.grid_line_color = None
        self.figure = fig
        self.note = empty_note(fig, "nothing metered yet: start a profiling session "
                                    "(scope.start_cluster_profiling())")
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.root = column(self.summary, fig, sizing_mode=self.sizing_mode,
                           name="foundation-scheduler-extensions-view")

    def default_fetch(self) -> pd.DataFrame:
        from foundation_dask.scope.profiling._scheduler_meter import read_meter

        client = self.client or current_client()
        return extensions_table(client.run_on_scheduler(read_meter))

    def apply(self, data: Any) -> None:
        from foundation_dask.scope.profiling import ALL_EXTENSIONS

        frame = extensions_table(data)
        parts = frame[frame["subsystem"] != ALL_EXTENSIONS]
        cols = {"subsystem": [str(v) for v in parts["subsystem"]],
                "ms": float_column([1000 * float(v) for v in parts["seconds"]]),
                "calls": float_column(list(parts["calls"])),
                "percent": float_column([100 * float(v) for v in parts["share"]])}
        self.source.data = cols
        cast(FactorRange, self.figure.y_range).factors = list(reversed(cols["subsystem"]))
        show_note(self.note, not len(cols["subsystem"]))
        total = frame[frame["subsystem"] == ALL_EXTENSIONS]
        self.summary.text = (
            "<b>Foundation on the scheduler</b>: nothing metered" if not len(total) else
            f"<b>Foundation on the scheduler</b>: its extensions held the scheduler's event "
            f"loop {1000 * float(total['seconds'].iloc[0]):.1f} ms, "
            f"{100 * float(total['share'].iloc[0]):.2f} % of the time metered, in "
            f"{int(total['calls'].iloc[0]):,} calls")


__all__ = [
    "EXTENSION_SOURCE_COLUMNS", "FlameGraphView", "HotspotsView", "SchedulerExtensionsView",
    "extensions_table", "fetch_profile", "flame_columns", "hotspot_columns",
    "hotspots_frame",
]
