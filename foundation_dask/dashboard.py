"""Scheduler: the Foundation pages of the Dask dashboard, as a scheduler preload.

====================================  ==================================================
``/individual-foundation-overview``   cluster health, traces and DSPEx optimizations
                                      side by side
``/individual-foundation-health``     nodes (status, CPU, memory, load, processes,
                                      tasks) and CPU/memory/load over time
``/individual-foundation-processes``  supervised processes
``/individual-foundation-traces``     traces, and the timeline of the selected one
``/individual-foundation-hotspots``   top functions and flame graph of the workers'
                                      profile over the last minute
====================================  ==================================================

The pages are built by the modules of :mod:`foundation_dask.views.pages`, which
register them (:func:`foundation_dask._pages.register_page`) when this module imports
them; this module serves what is registered. The pages run inside the scheduler
process, on its event loop, and read the Foundation scheduler extensions directly (no
client, no RPC to the scheduler). Their names start with ``/individual-`` so that
dask-labextension lists them (``/individual-plots.json``).

Serving them
------------
The Dask dashboard builds its Bokeh server from
``distributed.dashboard.scheduler.applications`` when the scheduler is created.
Importing this module adds the pages there, so it must be imported before the scheduler
is created:

* ``dask scheduler --preload foundation_dask.dashboard`` (preloads are imported in
  ``Scheduler.__init__``, before the dashboard is built), or the Dask config
  ``distributed.scheduler.preload: [foundation_dask.dashboard]``;
* ``LocalCluster(scheduler_kwargs={"preload": ["foundation_dask.dashboard"]})``, or
  ``import foundation_dask.dashboard`` before creating the cluster.

For a scheduler that is already running, :func:`add_pages` adds the pages to its live
dashboard: ``client.run_on_scheduler(foundation_dask.dashboard.add_pages)``. The
preload hook :func:`dask_setup` calls it too (a no-op when the pages are there).

Before a client installs the Foundation plugins (``foundation_dask.connect(address)``)
the pages show what Dask itself knows (the health page) or nothing (processes, traces).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from foundation_dask._compat import add_bokeh_applications, dashboard_applications
from foundation_dask._pages import PREFIX, Page, registered_pages
from foundation_dask.views.pages import (  # noqa: F401  (each registers its page)
    health,
    hotspots,
    overview,
    processes,
    traces,
)

if TYPE_CHECKING:
    import distributed
    from bokeh.application import Application
    from bokeh.server.tornado import BokehTornado

logger = logging.getLogger(__name__)

#: The pages: ``{path: page}``, each called as ``page(scheduler, extra, doc)``.
PAGES: dict[str, Page] = registered_pages()


def register() -> list[str]:
    """Add the pages to the applications of Dask dashboards created from now on.

    Returns
    -------
    list of str
        Paths added (empty when they were there already, or without a usable Bokeh).
    """
    applications = dashboard_applications()
    if applications is None:
        return []
    added = [path for path in PAGES if path not in applications]
    for path in added:
        applications[path] = PAGES[path]
    return added


def unregister() -> list[str]:
    """Remove the pages from the applications of Dask dashboards created from now on.

    Returns
    -------
    list of str
        Paths removed.
    """
    applications = dashboard_applications()
    if applications is None:
        return []
    removed = [p for p, f in PAGES.items() if applications.get(p) is f]
    for path in removed:
        del applications[path]
    return removed


def _bokeh_server(scheduler: distributed.Scheduler) -> BokehTornado | None:
    """The Bokeh server of the scheduler's dashboard, if it has one."""
    try:
        from bokeh.server.tornado import BokehTornado
    except ImportError:
        return None
    http = getattr(scheduler, "http_application", None)
    for app in getattr(http, "applications", []):
        if isinstance(app, BokehTornado):
            return app
    return None


def served_pages(scheduler: distributed.Scheduler) -> list[str]:
    """The Foundation pages that the scheduler's dashboard serves, sorted."""
    server = _bokeh_server(scheduler)
    if server is None:
        return []
    return sorted(p for p in server.app_paths if p in PAGES)


def add_pages(dask_scheduler: distributed.Scheduler) -> list[str]:
    """Add the pages to the running dashboard of ``dask_scheduler`` (where missing).

    For a scheduler created before this module was imported. Run it in the scheduler
    process, on its event loop: ``client.run_on_scheduler(add_pages)``.

    Returns
    -------
    list of str
        Paths added; empty when the scheduler has no dashboard or serves them already.
    """
    server = _bokeh_server(dask_scheduler)
    if server is None:
        return []
    missing = {p: page for p, page in PAGES.items() if p not in server.app_paths}
    if not missing:
        return []
    try:
        from bokeh.application import Application
        from bokeh.application.handlers.document_lifecycle import DocumentLifecycleHandler
        from bokeh.application.handlers.function import FunctionHandler
        from distributed.dashboard.scheduler import template_variables

        extra = {"prefix": (server.prefix or "") + "/", **template_variables(dask_scheduler)}
        apps: dict[str, Application] = {}
        for path, page in missing.items():
            app = Application(FunctionHandler(partial(page, dask_scheduler, extra)))
            app.add(DocumentLifecycleHandler())
            apps[path] = app
        add_bokeh_applications(server, apps)
    except Exception:
        logger.exception("Could not add the Foundation pages to the running Dask dashboard")
        return []
    logger.info("Foundation dashboard pages added: %s", ", ".join(missing))
    return list(missing)


def dask_setup(scheduler: distributed.Scheduler) -> None:
    """Preload hook: ``dask scheduler --preload foundation_dask.dashboard``.

    Importing the module registered the pages before the dashboard was built; this
    adds them to the running dashboard if it was built without them.
    """
    register()
    add_pages(scheduler)
    served = served_pages(scheduler)
    if served:
        logger.info("Foundation dashboard pages: %s", ", ".join(served))


register()

__all__ = ["PAGES", "PREFIX", "add_pages", "dask_setup", "register", "served_pages",
           "unregister"]
