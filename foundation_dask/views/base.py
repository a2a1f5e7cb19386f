"""Client and scheduler: the common part of every view, :class:`View`, and the table and
colour functions.

A view is a small object with three things:

``source``
    A :class:`~bokeh.models.ColumnDataSource` (or a ``dict`` of them) holding what is
    drawn. Refreshing a view only assigns ``source.data`` (or streams into it), so the
    models that show it stay the same and Bokeh sends only the new data.
``root``
    The Bokeh model (a layout, a figure, a table) to embed: in a notebook, in a Dask
    dashboard page, in any Bokeh document.
``update(data=None)``
    Refresh from ``data``, or, without it, from :meth:`View.fetch`: the data goes to
    :meth:`View.apply`, which each view implements.

Where the data comes from is a *fetch* function: by default the library's client-side
API (``fd.HealthMonitor.get_cluster_health()``...), or any callable given as
``View(fetch=...)``, such as the scheduler-side functions the Dask dashboard pages use.
A fetch function may return an awaitable; :meth:`View.update_async` awaits it.

Adding a view::

    class QueueView(View):
        title = "Queues"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.source = ColumnDataSource(empty_columns(["name", "size"]))
            self.root = make_table(self.source, [("name", "Queue"), ("size", "Size")])

        def default_fetch(self):
            return my_library.queue_sizes()         # a DataFrame or a list of dicts

        def apply(self, data):
            set_data(self.source, records_to_columns(data, ["name", "size"]))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from bokeh.core.enums import SizingModeType
from bokeh.models import ColumnDataSource
from bokeh.models.annotations import Title
from bokeh.models.widgets import (
    DataTable,
    DateFormatter,
    NumberFormatter,
    StringFormatter,
    TableColumn,
)
from bokeh.palettes import Category10, Category20

if TYPE_CHECKING:
    from bokeh.plotting import figure

#: Colour of each status value of nodes, processes and traces.
STATUS_COLOURS: dict[str, str] = {
    # nodes (HealthMonitor)
    "healthy": "#2e7d32",
    "degraded": "#ef6c00",
    "unreachable": "#c62828",
    # supervised processes
    "running": "#2e7d32",
    "starting": "#ef6c00",
    "moving": "#ef6c00",
    "restarting": "#ef6c00",
    "pending": "#ef6c00",
    "failed": "#c62828",
    "lost": "#c62828",
    "stopped": "#757575",
    # traces and spans
    "active": "#1565c0",
    "completed": "#2e7d32",
    "ok": "#2e7d32",
    "error": "#c62828",
    "unknown": "#757575",
}

#: Colour of values not in :data:`STATUS_COLOURS`.
DEFAULT_STATUS_COLOUR = "#424242"

#: Values that mark a missing cell in a text column.
MISSING_TEXT = ""


def status_colours(values: Iterable[Any]) -> list[str]:
    """The :data:`STATUS_COLOURS` colour of each status value."""
    get = STATUS_COLOURS.get
    return [get(str(v), DEFAULT_STATUS_COLOUR) for v in values]


def palette(n: int) -> list[str]:
    """``n`` distinct colours (Category10/20, repeated beyond 20)."""
    if n <= 10:
        return list(Category10[10][: max(n, 0)])
    base = list(Category20[20])
    return [base[i % 20] for i in range(n)]


def colour_for(i: int) -> str:
    """The ``i``-th colour of a Category20 cycle (stable for a slot number)."""
    return Category20[20][i % 20]


def empty_columns(names: Iterable[str]) -> dict[str, list]:
    """``{name: []}`` for each name: the data of an empty source."""
    return {name: [] for name in names}


def float_column(values: Iterable[Any]) -> np.ndarray:
    """Floats with ``NaN`` for ``None``, ``pd.NA`` and values that are not numbers."""
    out: list[float] = []
    append = out.append
    for v in values:
        try:
            append(math.nan if v is None or v is pd.NA else float(v))
        except (TypeError, ValueError):
            append(math.nan)
    return np.asarray(out, dtype=float)


def text_column(values: Iterable[Any], missing: str = MISSING_TEXT) -> list[str]:
    """Strings; ``None`` and ``NaN`` become ``missing``, lists are joined with ``", "``."""
    out: list[str] = []
    append = out.append
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            append(missing)
        elif isinstance(v, str):
            append(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            append(", ".join(str(x) for x in v))
        elif v is pd.NA or v is pd.NaT:
            append(missing)
        else:
            append(str(v))
    return out


def records_to_columns(
    records: Any, columns: Sequence[str], defaults: Mapping[str, Any] | None = None
) -> dict[str, list]:
    """Column lists from a DataFrame, a list of ``dict`` s, or a ``dict`` of columns.

    Missing columns are filled with ``defaults[column]`` (``None`` without one).
    """
    defaults = defaults or {}
    if records is None:
        return {c: [] for c in columns}
    if hasattr(records, "to_dict") and hasattr(records, "columns"):  # a DataFrame
        n = len(records)
        present = set(records.columns)
        return {
            c: (records[c].tolist() if c in present else [defaults.get(c)] * n)
            for c in columns
        }
    if isinstance(records, Mapping):  # columns already
        lengths = {len(v) for v in records.values()} or {0}
        n = max(lengths)
        return {
            c: (list(records[c]) if c in records else [defaults.get(c)] * n) for c in columns
        }
    rows = list(records)
    return {c: [r.get(c, defaults.get(c)) for r in rows] for c in columns}


def _same_column(a: Any, b: Any) -> bool:
    if len(a) != len(b):
        return False
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        if a_arr.dtype.kind == "f" and b_arr.dtype.kind == "f":
            return bool(np.array_equal(a_arr, b_arr, equal_nan=True))
        return a_arr.dtype == b_arr.dtype and bool(np.array_equal(a_arr, b_arr))
    return list(a) == list(b)


def set_data(source: ColumnDataSource, data: dict[str, Any], compare_below: int = 2000) -> bool:
    """Assign ``source.data = data`` unless it holds the same thing already.

    Comparing costs about as much as building the columns, so it is only done for
    sources of fewer than ``compare_below`` rows; skipping an unchanged assignment
    saves the browser a redraw (and a table its scroll position).

    Returns
    -------
    bool
        Whether the data was assigned.
    """
    old = source.data
    n = len(next(iter(data.values()))) if data else 0
    if (
        n < compare_below
        and set(old) == set(data)
        and all(_same_column(old[k], v) for k, v in data.items())
    ):
        return False
    source.data = data
    return True


def table_columns(spec: Sequence[tuple], status_field: str | None = None) -> list[TableColumn]:
    """:class:`TableColumn` s from ``(field, title[, kind[, width]])`` tuples.

    ``kind`` is ``"text"`` (default), ``"status"`` (bold, coloured by the
    ``<field>_colour`` column), ``"int"``, ``"float"``, ``"percent"``, ``"bytes"``,
    ``"seconds"`` or ``"datetime"`` (milliseconds since the epoch).
    """
    formatters: dict[str, Callable[[str], Any]] = {
        "text": lambda f: StringFormatter(),
        "status": lambda f: StringFormatter(text_color=f"{f}_colour", font_style="bold"),
        "int": lambda f: NumberFormatter(format="0,0", nan_format="-", null_format="-"),
        "float": lambda f: NumberFormatter(format="0.00", nan_format="-", null_format="-"),
        "percent": lambda f: NumberFormatter(format="0.0", nan_format="-", null_format="-"),
        "bytes": lambda f: NumberFormatter(format="0.0 b", nan_format="-", null_format="-"),
        "seconds": lambda f: NumberFormatter(format="0.000", nan_format="-", null_format="-"),
        "datetime": lambda f: DateFormatter(format="%Y-%m-%d %H:%M:%S", nan_format="-",
                                            null_format="-"),
    }
    out = []
    for item in spec:
        field, title = item[0], item[1]
        kind = item[2] if len(item) > 2 else "text"
        width = item[3] if len(item) > 3 else None
        kwargs: dict[str, Any] = {"field": field, "title": title,
                                  "formatter": formatters[kind](field)}
        if width is not None:
            kwargs["width"] = width
        out.append(TableColumn(**kwargs))
    return out


def make_table(source: ColumnDataSource, spec: Sequence[tuple], *, name: str | None = None,
               height: int = 300, sizing_mode: SizingModeType | None = "stretch_width",
               **kwargs: Any) -> DataTable:
    """A :class:`DataTable` of ``source`` with the columns of :func:`table_columns`,
    redrawn on every change of the source (:func:`redraw_on_change`)."""
    table = DataTable(
        source=source, columns=table_columns(spec), name=name, height=height,
        sizing_mode=sizing_mode, index_position=None,
        # columns as wide as their content (fit_widths), a horizontal scroll bar when
        # they are wider than the table: "force_fit" squeezed them to the table's width
        # ("tcp://127", "healt"), and "fit_columns" trips a SlickGrid bug in BokehJS 3.9
        # (ReferenceError: row is not defined)
        autosize_mode="none",
        **kwargs,
    )
    fit_widths(table)
    redraw_on_change(table)
    return table


#: Pixels of the characters of a table cell (BokehJS tables: 12 px sans-serif), by
#: class: narrow, wide, capitals; :data:`CHAR_PX` for the rest (digits, most letters).
#: Digits, "1" too, are all as wide as one another (tabular figures in the sans-serif
#: fonts browsers pick): an id with many 1s counted as narrow was cut.
_NARROW, _WIDE = set("il.,:;'|!()[]{}/\\ Ijftr-"), set("mwMW@%")
NARROW_PX, WIDE_PX, CAPITAL_PX, CHAR_PX = 3.6, 10.0, 8.2, 6.8
#: Tables whose columns are wider than this get room for a horizontal scroll bar.
SCROLL_ABOVE_PX, SCROLLBAR_PX = 1000, 16
#: Padding of a cell (both sides, and the header's sort mark).
CELL_PAD_PX = 18
#: Columns are never narrower than this, nor wider than :data:`MAX_PX` (the table
#: scrolls; the whole value is in the source and the hover).
MIN_PX, MAX_PX = 36, 900


def text_px(text: str) -> float:
    """About the width of ``text`` in a table cell, in pixels."""
    px = 0.0
    for c in text:
        if c in _NARROW:
            px += NARROW_PX
        elif c in _WIDE:
            px += WIDE_PX
        elif c.isupper():
            px += CAPITAL_PX
        else:
            px += CHAR_PX
    return px


def _shown_text(formatter: Any, value: Any) -> str:
    """About the text a cell formatted by ``formatter`` shows for ``value``."""
    if isinstance(formatter, DateFormatter):
        return "0000-00-00 00:00:00"
    if isinstance(formatter, NumberFormatter):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return "-"
        if number != number or number in (math.inf, -math.inf):
            return "-"
        fmt = formatter.format
        if fmt.endswith(" b"):
            return "1023.9 MiB"
        decimals = len(fmt.split(".", 1)[1]) if "." in fmt else 0
        text = f"{number:,.{decimals}f}" if "," in fmt else f"{number:.{decimals}f}"
        return text
    return text_column([value])[0]


def column_width(title: str, values: Iterable[Any], formatter: Any = None) -> int:
    """Pixels a column needs to show ``title`` and each of ``values`` whole."""
    widest = text_px(title)
    for value in values:
        widest = max(widest, text_px(_shown_text(formatter, value)))
    return int(math.ceil(min(MAX_PX, max(MIN_PX, widest)))) + CELL_PAD_PX


def fit_widths(table: DataTable) -> None:
    """Give each column of ``table`` the width of its longest value or title (no cell
    cut to a few characters); changes nothing when the widths are right."""
    source = table.source
    data = source.data if isinstance(source, ColumnDataSource) else {}
    for col in table.columns:
        values = data.get(col.field, [])
        if isinstance(col.formatter, NumberFormatter) and len(values):
            arr = float_column(values)
            finite = arr[np.isfinite(arr)]
            values = [finite.max(), finite.min()] if len(finite) else [math.nan]
        width = column_width(str(col.title or col.field), values, col.formatter)
        if col.width != width:
            col.width = width


def fit_height(table: DataTable, rows: int, most: int, row_px: int = 25) -> None:
    """Make ``table`` as tall as its header and ``rows`` rows, at most ``most`` pixels
    (no blank band under a short table), with its columns as wide as their content
    (:func:`fit_widths`) and room for a horizontal scroll bar when they are wider than
    most tables are shown; changes nothing when the size is right."""
    fit_widths(table)
    wide = sum(c.width or 0 for c in table.columns) > SCROLL_ABOVE_PX
    height = min(most, 30 + row_px * max(rows, 1) + (SCROLLBAR_PX if wide else 0))
    if table.height != height:
        table.height = height


#: Browser-side: tell a table's CDSView it changed, which makes the table redraw.
_REDRAW_JS = "view.change.emit()"


def redraw_on_change(table: DataTable) -> DataTable:
    """Make ``table`` redraw in the browser whenever its source's data changes.

    BokehJS (3.4 to 3.9 at least) redraws a DataTable when its CDSView's indices change,
    that is when the number of rows (or the filter's result) changes: new values in the
    same number of rows stay in the source, and the table keeps showing the old ones (a
    progress row reading "90 %" after the run ended). A browser-side callback on the
    source's data, streams and patches signals the view, and the table redraws. Nothing
    more is sent from the kernel.
    """
    from bokeh.models import CustomJS

    source = table.source
    if not isinstance(source, ColumnDataSource):
        return table
    redraw = CustomJS(args={"view": table.view}, code=_REDRAW_JS)
    for event in ("data", "streaming", "patching"):
        source.js_on_change(event, redraw)
    return table


def empty_note(fig: figure, text: str) -> Any:
    """A note inside ``fig`` saying what will appear there and how to start it; show it
    with :func:`show_note` while the plot has nothing to draw. ``"\n"`` breaks lines
    (narrow plots)."""
    from bokeh.models.annotations import Label

    note = Label(x=12, y=12, x_units="screen", y_units="screen", text=text,
                 text_font_size="10pt", text_color="#616161", text_font_style="italic",
                 visible=True)
    fig.add_layout(note)
    return note


def show_note(note: Any, empty: bool, text: str | None = None) -> None:
    """Show ``note`` (with ``text``, if given) when ``empty``, else hide it; changes
    nothing when it is as asked."""
    if text is not None and empty and note.text != text:
        note.text = text
    if note.visible != empty:
        note.visible = empty


def title_of(fig: figure) -> Title:
    """The :class:`~bokeh.models.Title` of a figure made by :func:`bokeh.plotting.figure`."""
    title = fig.title
    if not isinstance(title, Title):  # figure() always makes one
        raise TypeError(f"the figure has no Title model: {title!r}")
    return title


class View:
    """Base class of the views.

    Parameters
    ----------
    fetch
        A callable returning what :meth:`update` takes (or an awaitable of it); default
        :meth:`default_fetch`, the library's client-side API.
    client
        The Dask client :meth:`default_fetch` acts through; default the current one.
    sizing_mode
        Bokeh sizing mode of :attr:`root`.

    Attributes
    ----------
    source
        The :class:`~bokeh.models.ColumnDataSource` (or ``dict`` of them) holding the data.
    root
        The Bokeh model to embed.
    """

    #: Title shown above the view and used for documents.
    title: str = ""

    source: ColumnDataSource | dict[str, ColumnDataSource]
    root: Any

    def __init__(self, *, fetch: Callable[[], Any] | None = None, client: Any = None,
                 sizing_mode: SizingModeType | None = "stretch_width") -> None:
        self._fetch = fetch
        self.client = client
        self.sizing_mode = sizing_mode

    def default_fetch(self) -> Any:
        """What :meth:`update` shows when no ``fetch`` was given (library API call)."""
        raise NotImplementedError(f"{type(self).__name__} needs data or a fetch function")

    def fetch(self) -> Any:
        """Read the data to show: the ``fetch`` given, else :meth:`default_fetch`."""
        if self._fetch is not None:
            return self._fetch()
        return self.default_fetch()

    def update(self, data: Any = None) -> None:
        """Refresh from ``data`` (see the view's docs for accepted types), else from
        :meth:`fetch`.

        Raises
        ------
        TypeError
            If the fetch function returned an awaitable: use :meth:`update_async`.
        """
        if data is None:
            data = self.fetch()
            if inspect.isawaitable(data):
                close = getattr(data, "close", None)
                if close is not None:
                    close()
                raise TypeError(
                    f"the fetch function of {type(self).__name__} returned an awaitable: "
                    "call `await view.update_async()` instead of view.update()."
                )
        self.apply(data)

    async def update_async(self, data: Any = None) -> None:
        """:meth:`update`, awaiting the fetch function's result when it is awaitable."""
        if data is None:
            data = self.fetch()
            if inspect.isawaitable(data):
                data = await data
        self.apply(data)

    def apply(self, data: Any) -> None:
        """Put ``data`` into :attr:`source` (assign ``source.data`` or stream)."""
        raise NotImplementedError

    @property
    def sources(self) -> list[ColumnDataSource]:
        """Every source of the view, as a list."""
        if isinstance(self.source, dict):
            return list(self.source.values())
        return [self.source]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.title!r}>"


__all__ = [
    "DEFAULT_STATUS_COLOUR", "STATUS_COLOURS", "View", "colour_for", "column_width",
    "empty_columns", "empty_note", "fit_height", "fit_widths", "float_column", "make_table",
    "palette", "records_to_columns", "redraw_on_change", "set_data", "show_note",
    "status_colours", "table_columns", "text_column", "title_of",
]
