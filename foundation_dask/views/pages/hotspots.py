"""Scheduler: the ``/individual-foundation-hotspots`` page, where the workers spend their
time.

A :class:`~foundation_dask.views.HotspotsView` and a
:class:`~foundation_dask.views.FlameGraphView` of Dask's profile of the workers over the
last :data:`PROFILE_SECONDS` seconds, asked by the scheduler once per half refresh
interval for all open sessions; below them a
:class:`~foundation_dask.views.SchedulerExtensionsView` of Foundation's own extensions on
this scheduler, as the meter of the running profiling session (or the last one) counts
them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from bokeh.layouts import column

from foundation_dask._pages import Refresher, register_page
from foundation_dask.scope import scheduler_profile
from foundation_dask.scope.profiling._scheduler_meter import read_meter
from foundation_dask.views.base import title_of
from foundation_dask.views.pages._shared import shared_of
from foundation_dask.views.profiling import (
    FlameGraphView,
    HotspotsView,
    SchedulerExtensionsView,
)

if TYPE_CHECKING:
    import distributed
    from bokeh.document import Document

#: Milliseconds between refreshes.
REFRESH_MS = 5000

#: Seconds of the workers' profile shown.
PROFILE_SECONDS = 60.0


def hotspots_document(scheduler: distributed.Scheduler, doc: Document
                      ) -> tuple[Any, Callable[[], Coroutine[Any, Any, None]]]:
    """The hotspots and flame graph of the workers' recent profile."""
    shared = shared_of(scheduler)
    hot = HotspotsView(sizing_mode="stretch_width", height=450)
    flame = FlameGraphView(sizing_mode="stretch_width", height=350)
    extensions = SchedulerExtensionsView(sizing_mode="stretch_width")
    half = REFRESH_MS / 2000

    def show(trees: dict[str, Any]) -> None:
        hot.update(trees)
        flame.update(trees)
        extensions.update(read_meter(scheduler))  # a dict kept on this scheduler
        title = title_of(flame.figure)
        title.text = f"{title.text} over the last {PROFILE_SECONDS:g}s at {time.strftime('%X')}"

    def read() -> Coroutine[Any, Any, dict[str, Any]]:
        return scheduler_profile(scheduler, PROFILE_SECONDS, merge_workers=False)

    async def refresh() -> None:
        show(await shared.get(("profile",), read, max_age=half))

    root = column(hot.root, flame.root, extensions.root, sizing_mode="stretch_width",
                  name="foundation-hotspots-page")
    known = shared.cached(("profile",))
    if known is not None:
        Refresher("hotspots", partial(show, known)).run_now()
    shared.start(("profile",), read, max_age=half)  # finishes even if this session does not
    return root, refresh


PAGE = register_page("hotspots", hotspots_document, title=HotspotsView.title,
                     refresh_ms=REFRESH_MS)
