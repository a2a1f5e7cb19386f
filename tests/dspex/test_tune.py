"""``dspex.tune``: Foundation's settings raced on a measured workload, on real clusters."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dask.config
import distributed
import pytest
import yaml

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.tuning import (
    BusyProgram,
    check_space,
    evaluate_workload,
    parity_metric,
    tune,
)
from foundation_dask.errors import TuneError
from foundation_dask.scope.profiling._scheduler_meter import subsystem

SUBSYSTEMS = {"channels", "processes", "health", "registry", "secrets", "plugin", "scope",
              "dspex.lm", "dashboard"}


def _read_back(path) -> dict:
    """The dask config of ``path`` alone, as Dask reads a YAML file of ~/.config/dask."""
    return dask.config.collect(paths=[str(path)], env={})


def _checkpoint_mode() -> str:
    return dask.config.get("foundation.processes.checkpoint")


def _slow_unless_never() -> str:
    mode = _checkpoint_mode()
    time.sleep(0.005 if mode == "never" else 0.15)
    return mode


def checkpoint_workload(client: distributed.Client) -> float:
    """Slow unless the workers see ``processes.checkpoint: never``; checks that the
    workers see what this process has."""
    here = _checkpoint_mode()
    seen = set(client.run(_checkpoint_mode).values())
    assert seen == {here}, f"the workers see {seen}, this process {here!r}"
    assert client.submit(_slow_unless_never, pure=False).result() == here
    return 1.0


def quick_workload(client: distributed.Client) -> float:
    client.submit(_checkpoint_mode, pure=False).result()
    return 1.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("space", "words"), [
    ({"nope": [1]}, "foundation.nope is not a setting"),
    ({"processes": ["call"]}, "a section"),
    ({"scheduler-address": ["tcp://x:1"]}, "chooses the cluster"),
    ({"extensions.scheduler": [[]]}, "chooses the cluster"),
    ({"cluster.n-workers": []}, "non-empty list"),
    ({"cluster.n-workers": "12"}, "non-empty list"),
    ({"cluster.n-workers": [1, 1]}, "repeat"),
    ({"cluster.n-workers": ["two"]}, "not a value of foundation.cluster.n-workers"),
    ({"cluster.threads-per-worker": [0]}, "must be >= 1"),
    ({"processes.checkpoint": ["sometimes"]}, "not a value of foundation.processes.checkpoint"),
    ({"dspex.evaluate-chunk-size": [0]}, "'auto' or a positive integer"),
    ({"dspex.evaluate-chunk-size": ["big"]}, "'auto' or a positive integer"),
    ({}, "non-empty dict"),
    ([("cluster.n-workers", [1])], "non-empty dict"),
])
def test_a_bad_space_is_refused_before_any_cluster(space, words):
    with pytest.raises(TuneError, match=words) as exc:
        tune(quick_workload, space=space, write=None)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, fd.FoundationError)


@pytest.mark.timeout(30)
def test_bad_workload_and_options_are_refused():
    with pytest.raises(TuneError, match="callable"):
        tune("evaluate", space={"processes.checkpoint": ["call"]})
    with pytest.raises(TuneError, match="repeats"):
        tune(quick_workload, space={"processes.checkpoint": ["call"]}, repeats=0)
    with pytest.raises(TuneError, match="confidence"):
        tune(quick_workload, space={"processes.checkpoint": ["call"]}, confidence=0.2)
    with pytest.raises(TuneError, match="budget_s"):
        tune(quick_workload, space={"processes.checkpoint": ["call"]}, budget_s=0)
    with pytest.raises(TuneError, match="clusters of its own"):
        check_space({"cluster.n-workers": [1, 2]}, own_cluster=False)
    with pytest.raises(TuneError, match="n_examples"):
        evaluate_workload(n_examples=0)


def test_keys_are_canonical_and_subsystems_named_by_path():
    assert check_space({"foundation.cluster.threads_per_worker": [1, 2],
                        "processes.checkpoint": ["call", "never"]}) == {
        "cluster.threads-per-worker": [1, 2], "processes.checkpoint": ["call", "never"]}
    assert subsystem("/x/foundation_dask/core/channels/_scheduler_plugin.py") == "channels"
    assert subsystem("/x/foundation_dask/core/plugin.py") == "plugin"
    assert subsystem("/x/foundation_dask/dspex/lm/_scheduler_plugin.py") == "dspex.lm"
    assert subsystem("/x/foundation_dask/scope/_scheduler_plugin.py") == "scope"
    assert subsystem("/x/distributed/scheduler.py") is None


@pytest.mark.timeout(240)
def test_tune_two_axes_on_embedded_clusters(tmp_path):
    """An IO-bound Evaluate (80 ms of waiting per example): 1 thread per worker is
    clearly behind 4 and stops before its rounds end; the YAML reads back as ``best``."""
    out = tmp_path / "conf" / "foundation-tuned.yaml"
    space = {"cluster.threads-per-worker": [1, 4], "dspex.evaluate-chunk-size": ["auto", 2]}
    result = dspex.tune(evaluate_workload(n_examples=16, ms=0, latency_ms=80), space=space,
                        budget_s=180, repeats=4, write=out, display_progress=False)
    assert isinstance(result, dspex.TuneResult)
    assert set(result.best) == set(space)
    assert result.defaults == {"cluster.threads-per-worker": 1, "dspex.evaluate-chunk-size": "auto"}

    # the YAML is a dask config that Dask reads back as the best settings
    assert result.path == str(out)
    conf = _read_back(out)
    assert conf == {"foundation": {
        "cluster": {"threads-per-worker": result.best["cluster.threads-per-worker"]},
        "dspex": {"evaluate-chunk-size": result.best["dspex.evaluate-chunk-size"]}}}
    for key, value in result.config.items():
        assert dask.config.get(key, config=conf) == value

    # every candidate of the space is in the frame, in its stage, then the final rounds
    frame = result.frame
    raced = frame[frame.stage != "final"]
    assert sorted(zip(raced.stage, raced["cluster.threads-per-worker"],
                      raced["dspex.evaluate-chunk-size"], strict=True), key=str) == sorted([
        ("cluster.threads-per-worker", 1, "auto"), ("cluster.threads-per-worker", 4, "auto"),
        ("dspex.evaluate-chunk-size", 4, "auto"), ("dspex.evaluate-chunk-size", 4, 2)], key=str)
    threads = raced[raced.stage == "cluster.threads-per-worker"].set_index(
        "cluster.threads-per-worker")
    shown = frame.to_string()
    assert threads.loc[1, "why"] == "behind with confidence", shown
    assert threads.loc[1, "repeats"] == threads.loc[1, "stopped_after"] < 4, shown
    assert bool(threads.loc[4, "winner"]) and result.best["cluster.threads-per-worker"] == 4
    final = frame[frame.stage == "final"]
    assert 1 <= len(final) <= 2 and (final.repeats >= 1).all()
    assert result.baseline > 0 and result.gain == pytest.approx(
        result.best_rate / result.baseline)

    # the scheduler's Foundation extensions were metered: Evaluate's progress messages
    # went through the channel hub
    overhead = result.overhead.set_index("subsystem")
    assert set(overhead.index) - {"all Foundation"} <= SUBSYSTEMS
    assert overhead.loc["channels", "calls"] > 0
    assert (overhead.seconds >= 0).all() and 0 < overhead.loc["all Foundation", "share"] < 1

    html = result._repr_html_()
    assert "Tuning" in html and "dspex.evaluate-chunk-size" in html and "channels" in html
    assert "gain=" in repr(result)
    # the clusters of tune are closed and this process was left as it was
    from foundation_dask.core.cluster import lost_connection

    assert lost_connection() is None


@pytest.mark.timeout(120)
def test_settings_reach_the_workers_and_are_put_back(cluster_client):
    """Tuning a given cluster: each candidate's setting is in effect on the workers
    during its measurement (the workload checks), and put back afterwards."""
    before = cluster_client.run(_checkpoint_mode)
    handlers = cluster_client.run_on_scheduler(
        lambda dask_scheduler: {k: id(v) for k, v in dask_scheduler.handlers.items()})
    result = tune(checkpoint_workload, space={"processes.checkpoint": ["call", "never"]},
                  client=cluster_client, repeats=4, write=None, display_progress=False)
    assert result.best == {"processes.checkpoint": "never"}
    stopped = result.frame[(result.frame.stage != "final")
                           & (result.frame["processes.checkpoint"] == "call")]
    assert list(stopped.why) == ["behind with confidence"]
    assert cluster_client.run(_checkpoint_mode) == before
    assert _checkpoint_mode() == "call"
    # the scheduler meter is gone: the scheduler's handlers are its own again
    assert cluster_client.run_on_scheduler(
        lambda dask_scheduler: {k: id(v) for k, v in dask_scheduler.handlers.items()}
    ) == handlers
    assert cluster_client.submit(_checkpoint_mode, pure=False).result() == "call"


@pytest.mark.timeout(120)
def test_the_budget_cuts_the_search(cluster_client):
    space = {"processes.checkpoint": ["call", "never"],
             "channels.publisher-buffer": [1000, 100000]}
    result = tune(quick_workload, space=space, client=cluster_client, budget_s=0.001,
                  repeats=3, write=None, display_progress=False)
    assert set(result.frame.stage) == {"processes.checkpoint", "final"}
    assert (result.frame.repeats == 1).all()
    assert any("channels.publisher-buffer" in n for n in result.notes)
    assert result.best["channels.publisher-buffer"] == 100000  # kept its default


@pytest.mark.timeout(60)
def test_evaluate_reads_its_chunk_size_from_the_config(cluster_client):
    devset = [dspex.Example(x=i, y=i % 2).with_inputs("x") for i in range(7)]
    program = BusyProgram(0)
    with dask.config.set({"foundation.dspex.evaluate-chunk-size": 3}), \
            distributed.get_task_stream(cluster_client) as stream:
        result = dspex.Evaluate(devset=devset, metric=parity_metric,
                                client=cluster_client)(program)
    assert result.score == 100.0
    keys = {r["key"] for r in stream.data if str(r["key"]).startswith("evaluate-")}
    assert len(keys) == 3  # chunks of 3, 3 and 1 examples


@pytest.mark.timeout(240)
def test_cli_tune_writes_the_yaml_and_prints_the_gain(tmp_path):
    out = tmp_path / "tuned.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "foundation_dask", "tune", "--examples", "8", "--ms", "0",
         "--latency-ms", "10", "--budget", "30", "--repeats", "2", "--quiet",
         "--space", json.dumps({"dspex.evaluate-chunk-size": ["auto", 2]}),
         "--out", str(out)],
        capture_output=True, text=True, timeout=220, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gain:" in proc.stdout and "all Foundation" in proc.stdout
    conf = yaml.safe_load(out.read_text())
    assert set(conf["foundation"]) == {"dspex"}
    assert conf["foundation"]["dspex"]["evaluate-chunk-size"] in ("auto", 2)

    bad = subprocess.run(
        [sys.executable, "-m", "foundation_dask", "tune", "--space", '{"nope": [1]}'],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert bad.returncode == 2 and "foundation.nope is not a setting" in bad.stderr
    assert not (tmp_path / "foundation-tuned.yaml").exists()
