"""Scheduler: the ``/individual-foundation-health`` page, the nodes of the cluster.

A :class:`~foundation_dask.views.ClusterHealthView` of the report
:func:`~foundation_dask.core.health.scheduler_health` builds in the scheduler. Its
sessions share one report per half refresh interval and the recent history, so a new
page opens with the last minutes of CPU, memory and load.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pandas as pd

from foundation_dask._pages import register_page
from foundation_dask.core.health import scheduler_health
from foundation_dask.views.cluster import ClusterHealthView
from foundation_dask.views.pages._shared import Shared, fresh, shared_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import distributed
    from bokeh.document import Document

#: Milliseconds between refreshes.
REFRESH_MS = 1000


def health_document(scheduler: distributed.Scheduler,
                    doc: Document) -> tuple[Any, Callable[[], None]]:
    """The health view of ``scheduler``'s nodes, opening with the shared history."""
    shared = shared_of(scheduler)
    half = REFRESH_MS / 2000

    def report() -> dict[str, Any]:
        if not fresh(shared.health, half):
            data = scheduler_health(scheduler)
            shared.health = (time.monotonic(), data)
            shared.health_history.append((data["timestamp"], [
                (n["node"], n["cpu"], n["memory"], n["load_avg"])
                for n in data["cluster"]["node_health"]
            ]))
        assert shared.health is not None
        return shared.health[1]

    view = ClusterHealthView(history=Shared.HISTORY, fetch=report, sizing_mode="stretch_width")
    restored = False

    def refresh() -> None:
        nonlocal restored
        view.update()
        if not restored:  # after the first update, which gave the nodes their lines
            restored = True
            if len(shared.health_history) > 1:
                rows = [(t, *sample) for t, samples in shared.health_history
                        for sample in samples]
                view.set_history(pd.DataFrame(rows, columns=["time", "node", "cpu", "memory",
                                                             "load_avg"]))

    return view.root, refresh


PAGE = register_page("health", health_document, title=ClusterHealthView.title,
                     refresh_ms=REFRESH_MS)
