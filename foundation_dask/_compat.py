"""Any process: every private Dask and Bokeh internal the package relies on, in one place.

Dask and Bokeh offer no public hook for these few things. Each is wrapped here, and
``tests/test_compat.py`` checks each against the installed versions, failing with a
message that names the version where it changed, so an upgrade that breaks one is
told by name instead of by a distant symptom.

=============================  ===================================================
``annotations_var``            ``dask.base._annotations``: the ContextVar behind
                               ``dask.annotate`` (read on every traced call: a
                               module attribute, no wrapper)
``worker_thread_state``        ``distributed.worker.thread_state``: the task key of
                               the running thread (``.key``, ``.actor``)
``task_annotations``           the worker's ``TaskState.annotations`` of a key
``run_in_actor_thread``        ``distributed.worker._run_actor`` on the worker's
                               ``"actor"`` executor, as Dask runs Actor methods
``send_to_scheduler``          ``Client._send_to_scheduler``: a message on the
                               client's batched stream
``add_client_stream_handler``  ``Client._stream_handlers``: a handler of messages
                               the scheduler sends on that stream
``dashboard_applications``     ``distributed.dashboard.scheduler.applications``
``add_bokeh_applications``     routes of new applications on a running
                               ``BokehTornado`` (``_applications``, Bokeh's URL
                               patterns)
=============================  ===================================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from dask.base import _annotations as annotations_var
from distributed.worker import _run_actor
from distributed.worker import thread_state as worker_thread_state

if TYPE_CHECKING:
    import distributed
    from bokeh.application import Application
    from bokeh.server.tornado import BokehTornado

__all__ = [
    "add_bokeh_applications",
    "add_client_stream_handler",
    "annotations_var",
    "dashboard_applications",
    "run_in_actor_thread",
    "send_to_scheduler",
    "task_annotations",
    "worker_thread_state",
]


def task_annotations(key: Any) -> dict[str, Any] | None:
    """Annotations of the task ``key`` running in this thread, as its worker received them.

    ``dask.get_annotations()`` inside a task does not show them; the worker's task
    state does. ``None`` outside a worker's task.
    """
    try:
        return worker_thread_state.execution_state["worker"].state.tasks[key].annotations
    except (AttributeError, KeyError, TypeError):
        return None


def run_in_actor_thread(worker: distributed.Worker, actor_key: str,
                        func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run ``func(*args)`` in ``worker``'s actor thread, as Dask runs an Actor's method.

    The thread then carries the actor's key (``get_worker()``, the profiler and
    trace context see it as Dask's own actor threads).
    """
    return worker.loop.run_in_executor(
        worker.executors["actor"], _run_actor, func, args, {}, worker.execution_state,
        actor_key, worker.active_threads, worker.active_threads_lock,
    )


def send_to_scheduler(client: distributed.Client, msg: dict[str, Any]) -> None:
    """Send ``msg`` to the scheduler on ``client``'s batched stream (no reply)."""
    client._send_to_scheduler(msg)


def add_client_stream_handler(client: distributed.Client, op: str,
                              handler: Callable[..., Any]) -> None:
    """Call ``handler(**msg)`` for messages ``{"op": op, ...}`` the scheduler sends
    to ``client`` on its batched stream (``scheduler.client_comms[client].send``)."""
    client._stream_handlers[op] = handler


def dashboard_applications() -> dict[str, Any] | None:
    """The Bokeh applications Dask's dashboard serves (path -> function), for dashboards
    created from now on; ``None`` without a Bokeh that Dask's dashboard supports."""
    try:
        from distributed.dashboard import scheduler as dashboard
    except ImportError:  # no Bokeh, or a Bokeh that Dask's dashboard does not support
        return None
    return dashboard.applications


def add_bokeh_applications(server: BokehTornado, apps: Mapping[str, Application]) -> None:
    """Serve ``apps`` (path -> Bokeh application) on the running Bokeh ``server``.

    Bokeh builds its routes once, when ``BokehTornado`` is created; this adds the same
    routes (documents, websocket, static files) for applications added later.
    """
    from bokeh.server.contexts import ApplicationContext
    from bokeh.server.tornado import create_static_handler
    from bokeh.server.urls import per_app_patterns
    from bokeh.server.views.ws import WSHandler

    prefix = server.prefix or ""
    routes: list[tuple[Any, ...]] = []
    contexts = {}
    for path, app in apps.items():
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
    # typed as a Mapping, it is the dict Bokeh routes documents through
    applications = cast("dict[str, ApplicationContext]", server._applications)
    applications.update(contexts)
