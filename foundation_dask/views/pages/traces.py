"""Scheduler: the ``/individual-foundation-traces`` page, the cluster's traces and the
timeline of the selected one.

A :class:`~foundation_dask.views.TracesView` and the
:class:`~foundation_dask.views.TraceTimelineView` of the selected trace (the newest by
default), collected when the selection or the trace's status changes, or on demand
(the *Refresh timeline* button). Collected timelines are shared by the sessions.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any

from bokeh.layouts import column
from bokeh.models.widgets import Button

from foundation_dask._pages import Refresher, register_page
from foundation_dask.scope import scheduler_trace_data, scheduler_traces
from foundation_dask.views.pages._shared import shared_of
from foundation_dask.views.traces import TracesView, TraceTimelineView

if TYPE_CHECKING:
    from collections.abc import Callable

    import distributed
    from bokeh.document import Document

#: Milliseconds between refreshes.
REFRESH_MS = 1000


def traces_document(scheduler: distributed.Scheduler,
                    doc: Document) -> tuple[Any, Callable[[], None]]:
    """The traces table of ``scheduler`` and the timeline of the selected trace."""
    shared = shared_of(scheduler)
    traces = TracesView(include_completed=True, fetch=partial(scheduler_traces, scheduler),
                        sizing_mode="stretch_width")
    timeline = TraceTimelineView(sizing_mode="stretch_width", height=350)
    button = Button(label="Refresh timeline", width=160, name="foundation-timeline-refresh")
    shown: dict[str, Any] = {"trace": None, "status": None}

    def status_of(trace_id: str | None) -> str | None:
        data = traces.source.data
        ids = list(data["trace_id"])
        return data["status"][ids.index(trace_id)] if trace_id in ids else None

    def show(trace_id: str, status: str | None, data: Any) -> None:
        timeline.update(data)
        shown["trace"], shown["status"] = trace_id, status

    def show_known(trace_id: str | None) -> bool:
        """Show what is known without collecting: nothing, or a collected timeline."""
        if trace_id is None:
            if shown["trace"] is not None:
                timeline.clear()
                shown["trace"] = shown["status"] = None
            return True
        status = status_of(trace_id)
        data = shared.cached(("timeline", trace_id, status))
        if data is None:
            return False
        if shown["trace"] != trace_id or shown["status"] != status:
            show(trace_id, status, data)
        return True

    async def collect(force: bool = False) -> None:
        trace_id = traces.selected_trace
        if trace_id is None or (not force and show_known(trace_id)):
            return
        status = status_of(trace_id)
        data = await shared.get(
            ("timeline", trace_id, status), partial(scheduler_trace_data, scheduler, trace_id),
            max_age=0.0 if force else math.inf,
        )
        if traces.selected_trace == trace_id:
            show(trace_id, status, data)

    collector = Refresher("traces-timeline", collect)

    async def collect_later() -> None:
        await collector()

    async def collect_now() -> None:
        await Refresher("traces-timeline", partial(collect, force=True))()

    def on_select(trace_id: str | None) -> None:
        if not show_known(trace_id) and trace_id is not None:
            # collected by a task of its own (kept for the next sessions), shown when done
            shared.start(("timeline", trace_id, status_of(trace_id)),
                         partial(scheduler_trace_data, scheduler, trace_id))
            doc.add_next_tick_callback(collect_later)  # type: ignore[arg-type]  # awaited

    traces.on_select(on_select)
    button.on_click(
        lambda: doc.add_next_tick_callback(collect_now))  # type: ignore[arg-type]  # awaited

    def refresh() -> None:
        traces.update()
        ids = traces.source.data["trace_id"]
        if traces.selected_trace is None and ids:
            traces.select(ids[0])  # the newest
        elif traces.selected_trace is not None and (
            status_of(traces.selected_trace) != shown["status"]
        ):
            on_select(traces.selected_trace)

    root = column(traces.root, button, timeline.root, sizing_mode="stretch_width",
                  name="foundation-traces-page")
    return root, refresh


PAGE = register_page("traces", traces_document, title=TracesView.title, refresh_ms=REFRESH_MS)
