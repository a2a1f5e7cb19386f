"""Foundation pages of the Dask dashboard.

====================================  ==================================================
``/individual-foundation-health``     nodes (status, CPU, memory, load, processes,
                                      tasks) and CPU/memory/load over time
``/individual-foundation-processes``  supervised processes
``/individual-foundation-traces``     traces, and the timeline of the selected one
``/individual-foundation-hotspots``   top functions and flame graph of the workers'
                                      profile over the last minute
====================================  ==================================================

The pages run inside the scheduler process, on its event loop, and read the Foundation
scheduler extensions directly (no client, no RPC to the scheduler). Their names start
with ``/individual-`` so that dask-labextension lists them (``/individual-plots.json``).

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

import asyncio
import inspect
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import distributed
    from bokeh.document import Document

logger = logging.getLogger(__name__)

PREFIX = "/individual-foundation-"

#: Milliseconds between refreshes of each page.
REFRESH_MS = {"health": 1000, "processes": 1000, "traces": 1000, "hotspots": 5000,
              "overview": 2000}

#: Seconds of the workers' profile shown on the hotspots page.
PROFILE_SECONDS = 60.0


# --------------------------------------------------------------------------- helpers


def _theme(doc: Document) -> None:
    try:
        from distributed.dashboard.components.scheduler import BOKEH_THEME
    except ImportError:  # pragma: no cover - Dask's dashboard without its components
        return
    doc.theme = BOKEH_THEME


class _Refresher:
    """Runs one refresh of a page at a time; logs each distinct failure once."""

    def __init__(self, name: str, refresh: Callable[[], Any]):
        self.name = name
        self.refresh = refresh
        self.running = False
        self.last_error: str | None = None

    def _failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self.last_error:
            logger.exception("Foundation dashboard page %s: refresh failed", self.name)
        self.last_error = text

    def run_now(self) -> None:
        """Refresh synchronously (``refresh`` must not be a coroutine function)."""
        try:
            self.refresh()
            self.last_error = None
        except Exception as exc:
            self._failed(exc)

    async def __call__(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            result = self.refresh()
            if inspect.isawaitable(result):
                await result
            self.last_error = None
        except Exception as exc:
            self._failed(exc)
        finally:
            self.running = False


def _serve(doc: Document, name: str, title: str, root: Any,
           refresh: Callable[[], Any], interval: int) -> _Refresher:
    """Add ``root`` to ``doc``, refresh now and every ``interval`` ms."""
    refresher = _Refresher(name, refresh)
    doc.title = f"Foundation: {title}"
    _theme(doc)
    doc.add_root(root)

    async def tick() -> None:
        await refresher()

    if inspect.iscoroutinefunction(refresh):
        doc.add_next_tick_callback(tick)
    else:  # the first data goes out with the document
        refresher.run_now()
    doc.add_periodic_callback(tick, interval)
    return refresher


# --------------------------------------------------------------------------- shared state


class _Shared:
    """What the sessions of one scheduler's pages share.

    The last reports, so that several open pages cost one read and a new page opens
    with data; the health history, so that a new page opens with the recent past.
    Asynchronous reads (profiles, trace timelines) run as tasks of their own, which
    finish even when the session that asked is closed first.
    """

    #: Samples of the health history kept.
    HISTORY = 600
    #: Collected trace timelines kept.
    TIMELINES = 4

    def __init__(self) -> None:
        self.health: tuple[float, dict[str, Any]] | None = None
        self.health_history: deque[tuple[float, list[tuple]]] = deque(maxlen=self.HISTORY)
        self.values: dict[tuple, tuple[float, Any]] = {}
        self.tasks: dict[tuple, asyncio.Task] = {}

    def cached(self, key: tuple, max_age: float = math.inf) -> Any:
        """The value of ``key`` if it is younger than ``max_age`` seconds, else ``None``."""
        entry = self.values.get(key)
        if entry is None or time.monotonic() - entry[0] >= max_age:
            return None
        return entry[1]

    def start(self, key: tuple, factory: Callable[[], Awaitable[Any]],
              max_age: float = math.inf) -> asyncio.Task | None:
        """Start reading ``key`` unless its value is fresh or a read is under way."""
        if self.cached(key, max_age) is not None:
            return None
        task = self.tasks.get(key)
        if task is not None and not task.done():
            return task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the scheduler's event loop: the pages read later
            return None
        task = loop.create_task(factory())
        self.tasks[key] = task

        def done(t: asyncio.Task) -> None:
            if self.tasks.get(key) is t:
                del self.tasks[key]
            if t.cancelled():
                return
            if t.exception() is not None:  # the sessions waiting for it report it
                return
            self.values[key] = (time.monotonic(), t.result())
            if key[0] == "timeline":
                timelines = [k for k in self.values if k[0] == "timeline"]
                for old in timelines[: max(0, len(timelines) - self.TIMELINES)]:
                    del self.values[old]

        task.add_done_callback(done)
        return task

    async def get(self, key: tuple, factory: Callable[[], Awaitable[Any]],
                  max_age: float = math.inf) -> Any:
        """The value of ``key``, read if it is missing or older than ``max_age``."""
        task = self.start(key, factory, max_age)
        if task is not None:
            return await asyncio.shield(task)
        return self.values[key][1]  # start() found it fresh


_shared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _shared_of(scheduler: distributed.Scheduler) -> _Shared:
    shared = _shared.get(scheduler)
    if shared is None:
        shared = _shared[scheduler] = _Shared()
    return shared


def _fresh(entry: tuple[float, Any] | None, seconds: float) -> bool:
    return entry is not None and time.monotonic() - entry[0] < seconds


# --------------------------------------------------------------------------- pages


def health_doc(scheduler: distributed.Scheduler, extra: dict[str, Any], doc: Document) -> None:
    """``/individual-foundation-health``: :class:`~.views.ClusterHealthView`."""
    import pandas as pd

    from foundation_dask.views.cluster import ClusterHealthView, scheduler_health

    shared = _shared_of(scheduler)
    half = REFRESH_MS["health"] / 2000

    def report() -> dict[str, Any]:
        if not _fresh(shared.health, half):
            data = scheduler_health(scheduler)
            shared.health = (time.monotonic(), data)
            shared.health_history.append((data["timestamp"], [
                (n["node"], n["cpu"], n["memory"], n["load_avg"])
                for n in data["cluster"]["node_health"]
            ]))
        assert shared.health is not None
        return shared.health[1]

    view = ClusterHealthView(history=_Shared.HISTORY, fetch=report, sizing_mode="stretch_width")
    _serve(doc, "health", view.title, view.root, view.update, REFRESH_MS["health"])
    if len(shared.health_history) > 1:
        rows = [(t, *sample) for t, samples in shared.health_history for sample in samples]
        view.set_history(pd.DataFrame(rows, columns=["time", "node", "cpu", "memory",
                                                     "load_avg"]))


def processes_doc(scheduler: distributed.Scheduler, extra: dict[str, Any],
                  doc: Document) -> None:
    """``/individual-foundation-processes``: :class:`~.views.ProcessesView`."""
    from foundation_dask.views.processes import ProcessesView, scheduler_processes

    view = ProcessesView(fetch=partial(scheduler_processes, scheduler),
                         sizing_mode="stretch_width", height=500)
    _serve(doc, "processes", view.title, view.root, view.update, REFRESH_MS["processes"])


def traces_doc(scheduler: distributed.Scheduler, extra: dict[str, Any], doc: Document) -> None:
    """``/individual-foundation-traces``: :class:`~.views.TracesView` and the
    :class:`~.views.TraceTimelineView` of the selected trace (the newest by default),
    collected when the selection or the trace's status changes, or on demand."""
    from bokeh.layouts import column
    from bokeh.models import Button

    from foundation_dask.views.traces import (
        TracesView,
        TraceTimelineView,
        scheduler_trace_data,
        scheduler_traces,
    )

    shared = _shared_of(scheduler)
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

    collector = _Refresher("traces-timeline", collect)

    async def collect_later() -> None:
        await collector()

    async def collect_now() -> None:
        await _Refresher("traces-timeline", partial(collect, force=True))()

    def on_select(trace_id: str | None) -> None:
        if not show_known(trace_id):
            # collected by a task of its own (kept for the next sessions), shown when done
            shared.start(("timeline", trace_id, status_of(trace_id)),
                         partial(scheduler_trace_data, scheduler, trace_id))
            doc.add_next_tick_callback(collect_later)

    traces.on_select(on_select)
    button.on_click(lambda: doc.add_next_tick_callback(collect_now))

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
    _serve(doc, "traces", traces.title, root, refresh, REFRESH_MS["traces"])


def hotspots_doc(scheduler: distributed.Scheduler, extra: dict[str, Any],
                 doc: Document) -> None:
    """``/individual-foundation-hotspots``: :class:`~.views.HotspotsView` and
    :class:`~.views.FlameGraphView` of Dask's profile of the workers over the last
    :data:`PROFILE_SECONDS` seconds."""
    from bokeh.layouts import column

    from foundation_dask.views.profiling import FlameGraphView, HotspotsView, scheduler_profile

    shared = _shared_of(scheduler)
    hot = HotspotsView(sizing_mode="stretch_width", height=450)
    flame = FlameGraphView(sizing_mode="stretch_width", height=350)
    half = REFRESH_MS["hotspots"] / 2000

    def show(trees: dict[str, Any]) -> None:
        hot.update(trees)
        flame.update(trees)
        flame.figure.title.text += f" over the last {PROFILE_SECONDS:g}s at {time.strftime('%X')}"

    def read() -> Awaitable[dict[str, Any]]:
        return scheduler_profile(scheduler, PROFILE_SECONDS, merge_workers=False)

    async def refresh() -> None:
        show(await shared.get(("profile",), read, max_age=half))

    root = column(hot.root, flame.root, sizing_mode="stretch_width",
                  name="foundation-hotspots-page")
    known = shared.cached(("profile",))
    if known is not None:
        _Refresher("hotspots", partial(show, known)).run_now()
    shared.start(("profile",), read, max_age=half)  # finishes even if this session does not
    _serve(doc, "hotspots", hot.title, root, refresh, REFRESH_MS["hotspots"])


def overview_doc(scheduler: distributed.Scheduler, extra: dict[str, Any],
                 doc: Document) -> None:
    """``/individual-foundation-overview``: cluster health, traces and DSPEx
    optimizations side by side (the unified dashboard), with the progress of the
    newest optimization."""
    from bokeh.layouts import column, row

    from foundation_dask.dspex.distributed import scheduler_optimizations
    from foundation_dask.views.cluster import ClusterHealthView, scheduler_health
    from foundation_dask.views.optimization import OptimizationProgressView, OptimizationsView
    from foundation_dask.views.traces import TracesView, scheduler_traces

    health = ClusterHealthView(fetch=partial(scheduler_health, scheduler))
    traces = TracesView(include_completed=True,
                        fetch=partial(scheduler_traces, scheduler, True))
    optimizations = OptimizationsView()
    progress = OptimizationProgressView()

    def refresh() -> None:
        health.update()
        traces.update()
        states = sorted(scheduler_optimizations(scheduler),
                        key=lambda s: s.get("started_at") or 0, reverse=True)
        optimizations.update(states)
        if states:
            progress.select(states[0]["optimization_id"])
            progress.update(list(states[0]["history"]))

    root = column(row(health.root, traces.root, sizing_mode="stretch_width"),
                  row(optimizations.root, progress.root, sizing_mode="stretch_width"),
                  sizing_mode="stretch_width")
    _serve(doc, "overview", "overview", root, refresh, REFRESH_MS["overview"])


#: The pages: ``{path: function(scheduler, extra, doc)}``.
PAGES: dict[str, Callable[..., None]] = {
    f"{PREFIX}overview": overview_doc,
    f"{PREFIX}health": health_doc,
    f"{PREFIX}processes": processes_doc,
    f"{PREFIX}traces": traces_doc,
    f"{PREFIX}hotspots": hotspots_doc,
}


# --------------------------------------------------------------------------- registration


def _applications() -> dict[str, Any] | None:
    try:
        from distributed.dashboard import scheduler as dashboard
    except ImportError:  # no Bokeh, or a Bokeh that Dask's dashboard does not support
        return None
    return dashboard.applications


def register() -> list[str]:
    """Add the pages to the applications of Dask dashboards created from now on.

    Returns
    -------
    list of str
        Paths added (empty when they were there already, or without a usable Bokeh).
    """
    applications = _applications()
    if applications is None:
        return []
    added = [path for path in PAGES if path not in applications]
    for path in added:
        applications[path] = PAGES[path]
    return added


def unregister() -> list[str]:
    """Remove the pages from the applications of Dask dashboards created from now on."""
    applications = _applications()
    if applications is None:
        return []
    removed = [p for p, f in PAGES.items() if applications.get(p) is f]
    for path in removed:
        del applications[path]
    return removed


def _bokeh_server(scheduler: distributed.Scheduler) -> Any:
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
    """The Foundation pages that the scheduler's dashboard serves."""
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
    missing = {p: f for p, f in PAGES.items() if p not in server.app_paths}
    if not missing:
        return []
    try:
        from bokeh.application import Application
        from bokeh.application.handlers.document_lifecycle import DocumentLifecycleHandler
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.contexts import ApplicationContext
        from bokeh.server.tornado import create_static_handler
        from bokeh.server.urls import per_app_patterns
        from bokeh.server.views.ws import WSHandler
        from distributed.dashboard.scheduler import template_variables

        prefix = server.prefix or ""
        extra = {"prefix": prefix + "/", **template_variables(dask_scheduler)}
        routes: list[tuple] = []
        contexts = {}
        for path, func in missing.items():
            app = Application(FunctionHandler(partial(func, dask_scheduler, extra)))
            app.add(DocumentLifecycleHandler())
            ctx = ApplicationContext(app, io_loop=server.io_loop, url=path)
            patterns = []
            for pattern, handler, *_ in per_app_patterns:
                context: dict[str, Any] = {"application_context": ctx}
                if issubclass(handler, WSHandler):
                    context.update(compression_level=None, mem_level=None)
                patterns.append((prefix + path + pattern, handler, context))
            websocket = next(r[0] for r in patterns if r[0].endswith("/ws"))
            for r in patterns:
                r[2]["bokeh_websocket_path"] = websocket
            routes.extend(patterns)
            routes.append(create_static_handler(prefix, path, app))
            contexts[path] = ctx
        server.add_handlers(r".*", routes)
        server._applications.update(contexts)
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

__all__ = [
    "PAGES", "add_pages", "dask_setup", "health_doc", "hotspots_doc", "processes_doc",
    "register", "served_pages", "traces_doc", "unregister",
]
