"""Foundation pages of the Dask dashboard, on real schedulers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bokeh.client import pull_session
from distributed import Client, LocalCluster

import foundation_dask as fd
import foundation_dask.dashboard as dashboard
from foundation_dask import scope
from foundation_dask._compat import dashboard_applications
from tests._helpers import Counter, busy
from tests.support import SubprocessCluster, wait_for

PAGES = sorted(dashboard.PAGES)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def dashboard_url(client: Client) -> str:
    port = client.scheduler_info()["services"]["dashboard"]
    return f"http://127.0.0.1:{port}"


def source_data(url: str, name: str) -> dict[str, list]:
    """The data of the ColumnDataSource ``name`` in a new session of the page ``url``."""
    with pull_session(url=url) as session:
        source = session.document.get_model_by_name(name)
        assert source is not None, f"no model {name!r} in {url}"
        return {k: list(v) for k, v in source.data.items()}


def page_until(url: str, name: str, predicate: Callable[[dict[str, list]], Any],
               timeout: float = 30.0) -> dict[str, list]:
    """Open sessions of the page until the source ``name`` satisfies ``predicate``."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found["data"] = source_data(url, name)
        return bool(predicate(found["data"]))

    wait_for(check, timeout=timeout, period=0.2)
    return found["data"]


def double(i: int) -> int:
    with scope.span("dashboard.inner", i=i):
        return 2 * i


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, str]]:
    """``dask scheduler --preload foundation_dask.dashboard`` and two workers, each its own
    process; ``fd.connect(address)``."""
    cluster = SubprocessCluster(
        Path(tmp_path_factory.mktemp("dashboard")),
        scheduler_args=["--preload", "foundation_dask.dashboard"],
    )
    try:
        cluster.start(2)
        client = fd.connect(cluster.address)
        client.wait_for_workers(2, timeout=60)
        yield client, dashboard_url(client)
    finally:
        fd.close()
        cluster.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pages_are_served_and_listed(preloaded: tuple[Client, str]) -> None:
    client, base = preloaded
    for path in PAGES:
        status, body = get(base + path)
        assert status == 200, path
        assert b"Bokeh" in body or b"bokeh" in body
        assert b"Foundation: " in body  # the document's title
    status, body = get(base + "/individual-plots.json")
    assert status == 200
    listed = json.loads(body)
    for path in PAGES:
        assert path in listed.values()
    assert listed["Individual Foundation Health"] == "/individual-foundation-health"
    # the dashboard's own menu of plots lists them too
    status, body = get(base + "/status")
    assert status == 200 and b"individual-foundation-health" in body


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_health_page_shows_the_workers(preloaded: tuple[Client, str]) -> None:
    client, base = preloaded
    workers = set(client.scheduler_info()["workers"])
    url = base + "/individual-foundation-health"
    nodes = page_until(url, "foundation-health-nodes", lambda d: set(d["node"]) == workers)
    assert set(nodes["status"]) <= {"healthy", "degraded", "unreachable"}
    assert all(p >= 0 for p in nodes["process_count"])
    # a new session opens with the history the previous ones recorded
    history = page_until(url, "foundation-health-history", lambda d: len(d["time"]) >= 2)
    assert sum(1 for k in history if k.startswith("cpu_")) == len(workers)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processes_page_shows_a_new_singleton(preloaded: tuple[Client, str]) -> None:
    client, base = preloaded
    url = base + "/individual-foundation-processes"
    name = f"dashboard-counter-{time.monotonic_ns()}"
    assert f"'{name}'" not in source_data(url, "foundation-processes")["name"]
    handle = fd.ProcessManager.start_singleton(Counter, name=name)
    assert handle.incr().result() == 1
    data = page_until(url, "foundation-processes", lambda d: f"'{name}'" in d["name"])
    row = data["name"].index(f"'{name}'")
    assert data["state"][row] == "running"
    assert data["worker"][row] in client.scheduler_info()["workers"]
    fd.ProcessManager.stop(name)
    page_until(url, "foundation-processes", lambda d: f"'{name}'" not in d["name"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_traces_page_shows_traces_and_the_timeline(preloaded: tuple[Client, str]) -> None:
    client, base = preloaded
    url = base + "/individual-foundation-traces"
    with scope.trace("dashboard-trace") as t:
        client.gather(client.map(double, range(6), pure=False))
        active = page_until(url, "foundation-traces", lambda d: t.trace_id in d["trace_id"])
        row = active["trace_id"].index(t.trace_id)
        assert active["status"][row] == "active"
        assert active["scope"][row] == "dashboard-trace"
    try:
        page_until(url, "foundation-traces", lambda d: d["status"][
            d["trace_id"].index(t.trace_id)] == "completed")
        # the newest trace is selected and its timeline collected by the scheduler
        spans = page_until(url, "foundation-timeline-spans",
                           lambda d: d["kind"].count("task") == 6)
        assert spans["name"].count("dashboard.inner") == 6
        assert set(spans["node"]) <= set(client.scheduler_info()["workers"])
    finally:
        scope.forget_trace(t.trace_id)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hotspots_page_shows_the_busy_function(preloaded: tuple[Client, str]) -> None:
    client, base = preloaded
    client.gather(client.map(busy, [1.5, 1.5], pure=False))
    data = page_until(base + "/individual-foundation-hotspots", "foundation-hotspots",
                      lambda d: any(f.endswith("busy") for f in d["function"]), timeout=60)
    row = next(i for i, f in enumerate(data["function"]) if f.endswith("busy"))
    assert data["total_time_s"][row] > 0
    flame = source_data(base + "/individual-foundation-hotspots", "foundation-flame")
    assert "busy" in flame["name"]


@pytest.mark.timeout(180)
def test_overview_page_shows_health_traces_and_optimizations(
        preloaded: tuple[Client, str]) -> None:
    from foundation_dask import dspex
    from tests._helpers import make_examples, metric, program

    client, base = preloaded
    url = base + "/individual-foundation-overview"
    assert get(url)[0] == 200
    result = dspex.DistributedOptimizer.optimize_program_distributed(
        program(), make_examples(8), metric, num_candidate_programs=1,
        display_progress=False, optimization_id="overview-opt")
    data = page_until(url, "foundation-optimizations",
                      lambda d: "overview-opt" in d["optimization_id"])
    row = data["optimization_id"].index("overview-opt")
    assert data["status"][row] == "completed"
    assert data["current_best_score"][row] == result.best_score
    progress = page_until(url, "foundation-optimization-progress",
                          lambda d: len(d["evaluations"]) > 0)
    assert max(progress["evaluations"]) >= 8
    nodes = source_data(url, "foundation-health-nodes")["node"]
    assert set(nodes) == set(client.scheduler_info()["workers"])


@pytest.mark.timeout(60)
def test_local_cluster_with_the_preload() -> None:
    """An in-process LocalCluster given the module as a scheduler preload (what
    ``fd.connect()`` can do for its embedded cluster)."""
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                      scheduler_kwargs={"preload": ["foundation_dask.dashboard"]}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        assert dashboard.served_pages(cluster.scheduler) == PAGES
        base = dashboard_url(client)
        for path in PAGES:
            assert get(base + path)[0] == 200
        # no Foundation plugin yet: the health page reads Dask's own state
        nodes = source_data(base + "/individual-foundation-health", "foundation-health-nodes")
        assert nodes["node"] == []
        assert source_data(base + "/individual-foundation-processes",
                           "foundation-processes")["name"] == []


@pytest.mark.timeout(60)
def test_add_pages_to_a_running_dashboard() -> None:
    """A scheduler whose dashboard was built without the pages gets them at run time."""
    assert dashboard.unregister() == list(dashboard.PAGES)
    try:
        with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, \
                Client(cluster, set_as_default=False) as client:
            base = dashboard_url(client)
            assert dashboard.served_pages(cluster.scheduler) == []
            assert get(base + "/individual-foundation-health")[0] == 404
            assert client.run_on_scheduler(dashboard.add_pages) == list(dashboard.PAGES)
            assert client.run_on_scheduler(dashboard.add_pages) == []
            assert dashboard.served_pages(cluster.scheduler) == PAGES
            for path in PAGES:
                assert get(base + path)[0] == 200
            listed = json.loads(get(base + "/individual-plots.json")[1])
            assert set(PAGES) <= set(listed.values())
            data = source_data(base + "/individual-foundation-traces", "foundation-traces")
            assert data["trace_id"] == []
    finally:
        dashboard.register()
    assert set(dashboard.PAGES) <= set(dashboard_applications())
