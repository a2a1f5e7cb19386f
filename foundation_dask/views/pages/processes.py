"""Scheduler: the ``/individual-foundation-processes`` page, the supervised processes.

A :class:`~foundation_dask.views.ProcessesView` of the supervisor's table, read in the
scheduler.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from foundation_dask._pages import register_page
from foundation_dask.core.processes import scheduler_processes
from foundation_dask.views.processes import ProcessesView

if TYPE_CHECKING:
    from collections.abc import Callable

    import distributed
    from bokeh.document import Document

#: Milliseconds between refreshes.
REFRESH_MS = 1000


def processes_document(scheduler: distributed.Scheduler,
                       doc: Document) -> tuple[Any, Callable[[], None]]:
    """The supervised processes of ``scheduler``."""
    view = ProcessesView(fetch=partial(scheduler_processes, scheduler),
                         sizing_mode="stretch_width", height=500)
    return view.root, view.update


PAGE = register_page("processes", processes_document, title=ProcessesView.title,
                     refresh_ms=REFRESH_MS)
