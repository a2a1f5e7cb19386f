"""Each private Dask/Bokeh internal of ``foundation_dask._compat`` still does what the
package relies on; a failure names the installed version that changed it."""

from __future__ import annotations

import asyncio
import threading

import bokeh
import dask
import distributed
import pytest
from distributed import get_worker
from distributed.utils_test import async_poll_for, gen_cluster

from foundation_dask import _compat

pytestmark = pytest.mark.timeout(60)

KNOWN_GOOD = "dask/distributed 2026.8.0, bokeh 3.9.2"


def _changed(what: str) -> str:
    return (f"{what} changed in dask {dask.__version__} / distributed "
            f"{distributed.__version__} / bokeh {bokeh.__version__} (known good: "
            f"{KNOWN_GOOD}): update foundation_dask/_compat.py")


def test_annotations_var_is_dask_annotate():
    with dask.annotate(fd_probe=1):
        got = _compat.annotations_var.get()
    assert got.get("fd_probe") == 1, _changed("dask.base._annotations (dask.annotate)")
    assert "fd_probe" not in (_compat.annotations_var.get() or {}), _changed(
        "dask.base._annotations")


def _seen_in_task() -> dict:
    key = _compat.worker_thread_state.key
    return {"key": key, "annotations": _compat.task_annotations(key)}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_task_annotations_inside_a_task(c, s, a):
    with dask.annotate(fd_probe="x"):
        fut = c.submit(_seen_in_task, key="probe-task")
    seen = await fut
    assert seen["key"] == "probe-task", _changed("distributed.worker.thread_state.key")
    assert (seen["annotations"] or {}).get("fd_probe") == "x", _changed(
        "Worker.state.tasks[key].annotations")
    assert _compat.task_annotations("no-such-key") is None


def _in_actor_thread() -> tuple:
    w = get_worker()
    return (threading.get_ident() in w.active_threads, _compat.worker_thread_state.key,
            getattr(_compat.worker_thread_state, "actor", False))


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_run_in_actor_thread(c, s, a):
    registered, key, actor = await _compat.run_in_actor_thread(a, "probe-actor", _in_actor_thread)
    assert (registered, key, actor) == (True, "probe-actor", True), _changed(
        "distributed.worker._run_actor")
    assert not a.active_threads, _changed("distributed.worker._run_actor (thread bookkeeping)")


@gen_cluster(client=True, nthreads=[])
async def test_client_batched_stream_both_ways(c, s):
    got: list[dict] = []

    def echo(client: str, **msg):
        s.client_comms[client].send({"op": "fd-probe-pong", **msg})

    s.stream_handlers["fd_probe_ping"] = echo
    _compat.add_client_stream_handler(c, "fd-probe-pong", lambda **msg: got.append(msg))
    _compat.send_to_scheduler(c, {"op": "fd_probe_ping", "n": 7})
    await async_poll_for(lambda: got, timeout=10, fail_func=lambda: pytest.fail(
        _changed("Client._send_to_scheduler / Client._stream_handlers")))
    assert got == [{"n": 7}]


def test_dashboard_applications():
    apps = _compat.dashboard_applications()
    assert apps is not None and "/status" in apps, _changed(
        "distributed.dashboard.scheduler.applications")


@gen_cluster(client=True, nthreads=[],
             scheduler_kwargs={"dashboard": True, "dashboard_address": "127.0.0.1:0"})
async def test_add_bokeh_applications_to_a_running_server(c, s):
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.models import Div
    from bokeh.server.tornado import BokehTornado
    from tornado.httpclient import AsyncHTTPClient

    server = next(a for a in s.http_application.applications if isinstance(a, BokehTornado))
    _compat.add_bokeh_applications(
        server, {"/fd-probe": Application(FunctionHandler(lambda doc: doc.add_root(Div())))})
    assert "/fd-probe" in server.app_paths, _changed("BokehTornado._applications")
    port = s.http_server.port
    response = await asyncio.wait_for(
        AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/fd-probe", raise_error=False), 30)
    assert response.code == 200, _changed(f"Bokeh's per-app routes (HTTP {response.code})")


def test_jupyter_bokeh_model_internals():
    """``widgets._base.BokehPane`` overrides and calls these of ``jupyter_bokeh.BokehModel``."""
    jupyter_bokeh = pytest.importorskip("jupyter_bokeh")
    from bokeh.models import Div

    changed = (f"jupyter_bokeh.BokehModel internals changed in jupyter_bokeh "
               f"{jupyter_bokeh.__version__} (known good: 4.0.5): update "
               "foundation_dask/widgets/_base.py BokehPane")
    model = jupyter_bokeh.BokehModel(Div(text="x"))
    assert model._document is not None and model._model is not None, changed
    bundle = model._model_to_traits(model._model)
    assert isinstance(bundle, dict) and set(bundle) == set(model.render_bundle) >= {
        "docs_json", "render_items"}, changed
    assert callable(getattr(jupyter_bokeh.BokehModel, "_document_patched", None)), changed
