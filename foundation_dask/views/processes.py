"""Client and scheduler: supervised processes, :class:`ProcessesView`.

Data: ``ProcessManager.list_processes()`` (a DataFrame) or the supervisor's list of
``dict`` s. Fetch functions: :func:`fetch_processes` (client side) and
:func:`foundation_dask.core.processes.scheduler_processes` (inside the scheduler process;
the dashboard page uses it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bokeh.layouts import column
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import Div

from foundation_dask.core.processes import ProcessManager
from foundation_dask.views._common import sort_rows
from foundation_dask.views.base import (
    View,
    empty_columns,
    fit_height,
    float_column,
    make_table,
    records_to_columns,
    set_data,
    status_colours,
    text_column,
)

if TYPE_CHECKING:
    import distributed
    import pandas as pd

#: Columns of the source.
PROCESS_COLUMNS = [
    "name", "kind", "class_name", "worker", "state", "state_colour", "incarnation",
    "restarts", "checkpoints", "checkpoint_age", "error",
]
_NUMBERS = {"incarnation", "restarts", "checkpoints", "checkpoint_age"}

_TABLE = [
    ("name", "Name", "text", 200),
    ("kind", "Kind", "text", 70),
    ("class_name", "Class", "text", 220),
    ("worker", "Worker", "text", 170),
    ("state", "State", "status", 80),
    ("incarnation", "Incarnation", "int", 75),
    ("restarts", "Restarts", "int", 60),
    ("checkpoints", "Checkpoints", "int", 75),
    ("checkpoint_age", "Checkpoint age (s)", "float", 110),
    ("error", "Error", "text", 250),
]


def fetch_processes(client: distributed.Client | None = None) -> pd.DataFrame:
    """The supervised processes through a client (``ProcessManager.list_processes``)."""
    return ProcessManager.list_processes(client=client)


def process_columns(data: Any) -> dict[str, Any]:
    """The source's columns from a DataFrame or a list of ``dict`` s, sorted by name."""
    raw = records_to_columns(data, [c for c in PROCESS_COLUMNS if c != "state_colour"])
    cols: dict[str, Any] = {
        k: (float_column(v) if k in _NUMBERS else text_column(v)) for k, v in raw.items()
    }
    cols = sort_rows(cols, cols["name"])
    cols["state_colour"] = status_colours(cols["state"])
    return {c: cols[c] for c in PROCESS_COLUMNS}


class ProcessesView(View):
    """The supervised processes (singletons and replicas) as a table, state coloured.

    Parameters
    ----------
    height
        Height of the table in pixels.
    **kwargs
        ``fetch``, ``client``, ``sizing_mode`` (see :class:`~.base.View`).
    """

    title = "Supervised processes"

    source: ColumnDataSource

    def __init__(self, *, height: int = 300, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.height = height
        self.source = ColumnDataSource(empty_columns(PROCESS_COLUMNS),
                                       name="foundation-processes")
        self.summary = Div(text="", sizing_mode="stretch_width")
        self.table = make_table(self.source, _TABLE, height=height,
                                name="foundation-processes-table")
        self.root = column(self.summary, self.table, sizing_mode=self.sizing_mode,
                           name="foundation-processes-view")

    def default_fetch(self) -> pd.DataFrame:
        return fetch_processes(self.client)

    def apply(self, data: Any) -> None:
        cols = process_columns(data)
        set_data(self.source, cols)
        fit_height(self.table, len(cols["state"]), self.height)  # and widths
        states = cols["state"]
        counts = {s: states.count(s) for s in dict.fromkeys(states)}
        parts = ", ".join(
            f'<span style="color:{c}">{n} {s}</span>'
            for (s, n), c in zip(counts.items(), status_colours(counts), strict=True)
        )
        self.summary.text = f"<b>{len(states)} processes</b>" + (f": {parts}" if parts else "")


__all__ = ["ProcessesView", "fetch_processes", "process_columns"]
