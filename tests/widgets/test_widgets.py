"""Notebook panels built against a real cluster: refresh, data, buttons that act."""

from __future__ import annotations

import json
import threading

import pytest

import foundation_dask as fd
from foundation_dask import dspex, scope
from foundation_dask.widgets import (
    DownloadWidget,
    FlashMessages,
    LiveDashboard,
    OptimizationDashboard,
    UnifiedDashboard,
)
from tests._helpers import make_examples, metric, program, slow_needs_demos
from tests.support import wait_for


class Probe:
    def ping(self) -> str:
        return "pong"


@pytest.mark.timeout(120)
def test_live_dashboard_refresh_and_trace_buttons(cluster_client):
    dash = LiveDashboard(refresh=None)
    fd.ProcessManager.start_singleton(Probe, name="probe-panel")
    dash.refresh()
    nodes = dash.health.source["nodes"].data["node"]
    assert sorted(nodes) == sorted(cluster_client.scheduler_info()["workers"])
    assert "'probe-panel'" in list(dash.processes.source.data["name"])
    assert not dash.errors

    dash.scope_text.value = "panel-test"
    dash.options_text.value = "level=2"
    dash.start_button.click()
    assert dash.flash.last["level"] == "success" and "started" in dash.flash.last["text"]
    trace_id = dash.trace_select.value
    assert trace_id in set(scope.active_traces()["trace_id"])

    dash.export_button.click()
    assert dash.download.request == 1 and dash.download.filename == f"trace_{trace_id}.json"
    exported = json.loads(dash.download.content)
    assert exported["trace_id"] == trace_id and exported["scope"] == "panel-test"

    dash.stop_button.click()
    assert "stop requested" in dash.flash.last["text"]
    assert trace_id not in set(scope.active_traces()["trace_id"])

    dash.show_button.click()
    assert dash.flash.last["level"] == "success"

    dash.trace_select.options = []
    dash.stop_button.click()  # nothing selected: a clear error, nothing else happens
    assert dash.flash.last["level"] == "error" and "no trace selected" in dash.flash.last["text"]

    text = repr(dash)
    assert "Foundation live dashboard" in text and "nodes: 2" in text
    assert "<table>" in dash._repr_html_()
    fd.ProcessManager.stop("probe-panel")


@pytest.mark.timeout(120)
def test_background_refresh_does_not_block(cluster_client):
    dash = LiveDashboard(refresh=0.2)
    dash.start()
    try:
        wait_for(lambda: dash.refreshes >= 3, timeout=60)  # while this thread polls freely
    finally:
        dash.stop()
    count = dash.refreshes
    assert dash._thread is None and dash.refreshes == count


@pytest.mark.timeout(240)
def test_optimization_dashboard_stop_button_stops_it(cluster_client):
    dash = OptimizationDashboard(refresh=None)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "r", dspex.DistributedOptimizer.optimize_program_distributed(
            program(slow_needs_demos), make_examples(30), metric, num_candidate_programs=6,
            display_progress=False, optimization_id="panel-opt")))
    thread.start()
    try:
        wait_for(lambda: (dash.refresh() or "panel-opt" in dash.optimizations.ids), timeout=60)
        dash.select.value = "panel-opt"
        wait_for(lambda: (dash.refresh() or len(dash.progress.source.data["evaluations"]) > 0),
                 timeout=60)
        assert "panel-opt" in dash.progress.status.text
        coordinator = fd.ProcessManager.lookup(("optimization_coordinator", "panel-opt"))
        wait_for(lambda: coordinator.get_optimization_info().result()["evaluations_done"] > 0,
                 timeout=120)
        dash.up_button.click()
        assert "Scaling up" in dash.flash.last["text"]
        dash.stop_button.click()
        assert "Stopping optimization panel-opt" in dash.flash.last["text"]
    finally:
        thread.join(timeout=180)
    result = box["r"]
    assert result.status == "stopped"  # the click reached the optimization
    assert [e["action"] for e in result.scaling_log] == ["scale_up"]
    dash.refresh()
    row = list(dash.optimizations.ids).index("panel-opt")
    assert dash.optimizations.source.data["status"][row] == "stopped"
    assert sum(dash.workers.source.data["evaluations"]) > 0
    assert "panel-opt" in repr(dash)


@pytest.mark.timeout(240)
def test_unified_dashboard_shows_the_trace_of_an_optimization(cluster_client):
    result = dspex.DistributedOptimizer.optimize_program_distributed(
        program(), make_examples(8), metric, num_candidate_programs=1,
        display_progress=False, optimization_id="unified-opt", trace=True)
    dash = UnifiedDashboard(refresh=None)
    dash.refresh()
    dash.opt.select.value = "unified-opt"
    assert dash.live.timeline.trace_id == result.trace_id
    assert len(dash.live.timeline.source["spans"].data["name"]) > 10
    assert "unified-opt" in repr(dash)


def test_frontend_widgets_and_bad_input():
    flash = FlashMessages()
    flash.flash("hello", "warning")
    assert flash.last["level"] == "warning"
    with pytest.raises(ValueError, match="level must be"):
        flash.flash("x", "loud")
    down = DownloadWidget()
    assert down.send({"a": 1}, "a.json") == 1
    assert json.loads(down.content) == {"a": 1}
    assert down._esm and "download" in str(down._esm)


@pytest.mark.timeout(120)
def test_optimization_dashboard_follows_running_evaluations(cluster_client):
    dash = OptimizationDashboard(refresh=None)
    try:
        with dspex.context(lm=dspex.DummyLM(slow_needs_demos)):
            dspex.Evaluate(devset=make_examples(12), metric=metric, label="panel-eval",
                           display_progress=False)(program())

        def finished() -> bool:
            dash.refresh()
            data = dash.evaluations.source.data
            return "panel-eval" in data["label"] and 100.0 in data["percent"]

        wait_for(finished, timeout=30)
        row = list(dash.evaluations.source.data["label"]).index("panel-eval")
        assert dash.evaluations.source.data["total"][row] == 12
        assert not dash.evaluations.note({"type": "something else"})
    finally:
        dash.close()
