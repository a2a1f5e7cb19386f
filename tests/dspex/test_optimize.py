"""Distributed evaluation and optimizers on real clusters, with a deterministic test LM.

The test LM answers a sentiment question correctly only when the prompt carries at
least two demos (like a small model that needs examples); zero-shot it always says
"positive". So zero-shot scores 50% on a balanced set and good demos 100%.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import cloudpickle
import pytest

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.evaluate import EvaluationError, auto_chunk_size
from foundation_dask.dspex.optimizers import Runtime
from tests._helpers import (
    NEGATIVE,
    RESUME_KWARGS,
    Classify,
    lm_calls_on_workers,
    make_examples,
    metric,
    program,
    raising_metric,
    slow_needs_demos,
)
from tests.support import wait_for, worker_names


@pytest.mark.timeout(120)
def test_evaluate_scatters_chunks_and_reports(cluster_client):
    devset = make_examples(40)
    with fd.Channels.subscribe("telemetry") as sub:
        result = dspex.Evaluate(devset=devset, metric=metric, chunk_size=5)(program())
        progress = []
        while True:
            try:
                msg = sub.get(timeout=5)
            except TimeoutError:
                break
            if isinstance(msg.payload, dict) and msg.payload.get("type") == "evaluation_progress":
                progress.append(msg.payload)
                if msg.payload["done"] == msg.payload["total"]:
                    break
    assert result.score == 50.0  # zero-shot: always "positive"
    frame = result.frame
    assert list(frame.columns) == ["example", "prediction", "score", "error", "worker",
                                   "duration"]
    assert len(frame) == 40 and frame["error"].isna().all()
    assert set(frame["worker"]) == set(cluster_client.scheduler_info()["workers"])
    assert [r[0] for r in result.results] == devset  # devset order
    assert progress and progress[-1]["done"] == 40 and progress[-1]["total"] == 40
    assert {"running_score", "rate", "eta_s"} <= set(progress[-1])

    demo_prog = program()
    demo_prog.demos = make_examples(2, offset=100)
    assert dspex.Evaluate(devset=devset, metric=metric)(demo_prog).score == 100.0


@pytest.mark.timeout(120)
def test_failures_are_recorded_and_max_errors_stops(cluster_client):
    devset = make_examples(10)
    res = dspex.Evaluate(devset=devset, metric=raising_metric, failure_score=0.0)(program())
    errors = res.frame.dropna(subset=["error"])
    assert sorted(errors.index) == [3, 5]
    assert all("cannot score" in e for e in errors["error"])
    assert (errors["score"] == 0.0).all()
    with pytest.raises(EvaluationError, match="max_errors=1") as info:
        dspex.Evaluate(devset=devset, metric=raising_metric, max_errors=1, chunk_size=1)(
            program())
    assert "cannot score" in str(info.value)
    # DSPy's count: the run stops when the max_errors-th example fails
    with pytest.raises(EvaluationError, match="2 examples failed"):
        dspex.Evaluate(devset=devset, metric=raising_metric, max_errors=2)(program())
    assert dspex.Evaluate(devset=devset, metric=raising_metric, max_errors=3)(
        program()).score == res.score
    with pytest.raises(ValueError, match="empty devset"):
        dspex.Evaluate(devset=[], metric=metric)(program())
    with pytest.raises(ValueError, match="chunk_size"):
        dspex.Evaluate(devset=devset, metric=metric, chunk_size=0)


def test_auto_chunk_size():
    assert auto_chunk_size(100, 2) == 13
    assert auto_chunk_size(3, 8) == 1
    assert auto_chunk_size(0, 2) == 1


@pytest.mark.timeout(120)
def test_labeled_and_bootstrap_few_shot(cluster_client):
    trainset = make_examples(20)
    labeled = dspex.LabeledFewShot(k=4).compile(program(), trainset=trainset)
    again = dspex.LabeledFewShot(k=4).compile(program(), trainset=trainset)
    assert labeled.demos == again.demos and len(labeled.demos) == 4

    boot = dspex.BootstrapFewShot(metric, max_bootstrapped_demos=3, max_labeled_demos=5)
    compiled = boot.compile(program(), trainset=trainset)
    augmented = [d for d in compiled.demos if d.get("augmented")]
    assert len(augmented) == 3 and len(compiled.demos) == 5
    # bootstrapped in trainset order: the first three examples (the teacher got them right)
    assert [d.review for d in augmented] == [e.review for e in trainset[:3]]
    assert dspex.Evaluate(devset=make_examples(20, 50), metric=metric)(compiled).score == 100.0


@pytest.mark.timeout(180)
def test_random_search_is_seeded_and_evaluates_all_at_once(cluster_client):
    trainset, valset = make_examples(16), make_examples(16, 40)

    def run(seed):
        opt = dspex.BootstrapFewShotWithRandomSearch(
            metric, num_candidate_programs=4, max_bootstrapped_demos=3, max_labeled_demos=3,
            seed=seed, racing=False,  # exhaustive: every candidate on every example
        )
        best = opt.compile(program(), trainset=trainset, valset=valset)
        return opt, best

    opt, best = run(7)
    _, best2 = run(7)
    assert best.dump_state() == best2.dump_state()
    assert best.score == 100.0
    scores = {c["kind"]: c["score"] for c in best.candidate_programs}
    assert scores["zero-shot"] == 50.0
    assert len(best.candidate_programs) == 3 + 4
    history = opt.history_frame()
    assert len(history) == 7 * len(valset)
    assert set(history["candidate"]) == set(range(7))
    assert set(history["worker"]) == set(cluster_client.scheduler_info()["workers"])


@pytest.mark.timeout(180)
def test_distributed_optimizer_plan_services_progress(cluster_client):
    trainset = make_examples(12)
    seen_services = []
    progress = []

    def watch(msg):
        if isinstance(msg.payload, tuple) and msg.payload[0] == "optimization_progress":
            progress.append(msg.payload[2])
            if not seen_services:
                seen_services.extend(
                    fd.ServiceMesh.discover_services(capabilities=["dspy_evaluation"]))

    with fd.Channels.subscribe("telemetry", handler=watch):
        search = dspex.BootstrapFewShotWithRandomSearch(
            metric, num_candidate_programs=2, max_bootstrapped_demos=2, max_labeled_demos=2,
            seed=1, racing=True)
        result = dspex.DistributedOptimizer.optimize_program_distributed(
            program(), trainset, metric, num_candidate_programs=2, max_bootstrapped_demos=2,
            max_labeled_demos=2, display_progress=False, seed=1, optimizer=search,
        )
        wait_for(lambda: progress and progress[-1]["completion_percent"] >= 99, timeout=30)
    assert result.status == "completed" and result.best_score == 100.0
    # the optimizer can run again, resumably: it pickles without the run it made (its
    # client, callbacks and finished evaluations stay here)
    again = pickle.loads(cloudpickle.dumps(search))
    assert again.runtime.client is None and not again.runtime.done_evals
    assert result.plan.total_workers >= 2  # min_workers_per_node=1 on each healthy node
    assert set(result.plan.workers) == set(cluster_client.scheduler_info()["workers"])
    # the race: a candidate that ran to the end saw all 12 examples, one it stopped fewer
    cands = result.candidates
    assert len(cands) == 5 and cands["examples"].sum() == len(result.history)
    finished = cands[cands["stopped_after"].isna()]
    assert (finished["examples"] == 12).all()
    # (when it stopped: a chunk of it still in flight then is kept)
    assert (cands.loc[cands["stopped_after"].notna(), "stopped_after"] < 12).all()
    # the stops reached the progress the panels show (and its plan shrank with them)
    stopped = int(cands["stopped_after"].notna().sum())
    assert stopped and progress[-1]["candidates_stopped"] == stopped
    assert progress[-1]["total_evaluations"] < len(trainset) + 5 * 12
    assert seen_services and all(
        s.metadata["optimization_id"] == result.optimization_id for s in seen_services)
    assert not fd.ServiceMesh.discover_services(
        capabilities=["dspy_evaluation"], metadata={"optimization_id": result.optimization_id})
    info = fd.ProcessManager.lookup(("optimization_coordinator", result.optimization_id))
    state = info.get_optimization_info().result()
    assert state["status"] == "completed" and state["result"]["best_score"] == 100.0
    assert {"completion_percent", "current_best_score", "evaluations_completed",
            "estimated_completion_time"} <= set(progress[-1])


@pytest.mark.timeout(180)
def test_stop_request_on_control_channel(cluster_client):
    trainset = make_examples(30)
    result_box = {}

    def run():
        result_box["r"] = dspex.DistributedOptimizer.optimize_program_distributed(
            program(slow_needs_demos), trainset, metric, num_candidate_programs=6,
            display_progress=False, optimization_id="stop-me",
        )

    thread = threading.Thread(target=run)
    thread.start()
    coordinator = wait_for(
        lambda: fd.ProcessManager.lookup(("optimization_coordinator", "stop-me")), timeout=60)
    wait_for(lambda: coordinator.get_progress().result()["evaluations_completed"] > 0,
             timeout=60)
    fd.Channels.broadcast("control", ("stop_optimization", "stop-me"))
    thread.join(timeout=120)
    result = result_box["r"]
    assert result.status == "stopped"
    assert len(result.history) < (3 + 6) * 30  # it did not run to the end
    assert coordinator.get_optimization_info().result()["status"] == "stopped"


_SCRIPT_WITH_ITS_OWN_CLIENT = """
from distributed import Client, LocalCluster

from foundation_dask import dspex
from tests._helpers import make_examples, metric, program

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \\
            Client(cluster, set_as_default=False) as client:
        devset = make_examples(8)
        print(dspex.Evaluate(devset=devset, metric=metric, client=client)(program()).score)
        search = dspex.BootstrapFewShotWithRandomSearch(
            metric, num_candidate_programs=1, max_bootstrapped_demos=2, max_labeled_demos=2)
        print(search.compile(program(), trainset=devset, client=client).score)
"""


@pytest.mark.timeout(240)
def test_a_script_passing_a_client_that_is_not_the_default(tmp_path):
    # a script that keeps its client out of the process's default (several clusters,
    # or a library that must not change the caller's default): evaluations, bootstraps
    # and races wait for their tasks on that client's event loop
    script = tmp_path / "own_client.py"
    script.write_text(_SCRIPT_WITH_ITS_OWN_CLIENT)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True,
                          text=True, timeout=200, env={**os.environ,
                                                       "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["50.0", "100.0"]


@pytest.mark.timeout(240)
def test_entry_points_run_on_the_client_given(cluster_client):
    import distributed

    other = distributed.Client(cluster_client.scheduler.address, set_as_default=False)
    calls = []
    for method in ("submit", "sync"):
        def spy(*args, _real=getattr(other, method), _method=method, **kwargs):
            calls.append(_method)
            return _real(*args, **kwargs)

        setattr(other, method, spy)
    try:
        trainset = make_examples(8)
        evaluate = dspex.Evaluate(devset=trainset, metric=metric)
        assert evaluate(program(), client=other).score == 50.0
        assert dspex.Evaluate(devset=trainset, metric=metric, client=other)(
            program()).score == 50.0
        assert calls.count("submit") >= 2
        assert "<b>Evaluation</b>" in evaluate(program(), client=other)._repr_html_()

        del calls[:]
        labeled = dspex.LabeledFewShot(k=2).compile(program(), trainset=trainset, client=other)
        assert len(labeled.demos) == 2
        boot = dspex.BootstrapFewShot(metric, max_bootstrapped_demos=2, max_labeled_demos=2)
        assert boot.compile(program(), trainset=trainset, client=other).demos
        search = dspex.BootstrapFewShotWithRandomSearch(
            metric, num_candidate_programs=1, max_bootstrapped_demos=2, max_labeled_demos=2)
        assert search.compile(program(), trainset=trainset, client=other).score == 100.0
        assert calls.count("submit") >= 2

        del calls[:]
        result = dspex.DistributedOptimizer.optimize_program_distributed(
            program(), trainset, metric, num_candidate_programs=1, max_bootstrapped_demos=2,
            max_labeled_demos=2, display_progress=False, optimization_id="given-client",
            client=other,
        )
        assert result.status == "completed" and result.best_score == 100.0
        assert calls.count("submit") > 0 and calls.count("sync") > 0
        assert "<table>" in result._repr_html_()
        adaptive = dspex.AdaptiveOptimizer.adaptive_optimization(
            program(), trainset, metric, scaling_check_interval=60.0, num_candidate_programs=1,
            max_bootstrapped_demos=2, max_labeled_demos=2, display_progress=False,
            optimization_id="given-client-adaptive", client=other,
        )
        assert adaptive.status == "completed" and adaptive.best_score == 100.0

        del calls[:]
        listed = dspex.list_optimizations(client=other)
        assert {"given-client", "given-client-adaptive"} <= set(listed["optimization_id"])
        assert len(dspex.optimization_history("given-client", client=other)) > 0
        assert calls.count("sync") > 0
        with pytest.raises(KeyError, match="No optimization"):
            dspex.optimization_history("never-started", client=other)
    finally:
        other.close()


def test_capacity_plan_rules():
    from foundation_dask.core.health import ClusterHealth  # noqa: F401  (type exists)
    from foundation_dask.dspex.orchestration import calculate_optimal_distribution

    class Node:
        def __init__(self, node, host, cores, load, nthreads, status="healthy",
                     worker_status="running"):
            self.node, self.host, self.cores, self.load_avg = node, host, cores, load
            self.nthreads, self.status, self.worker_status = nthreads, status, worker_status

    class Health:
        class cluster:  # noqa: N801
            node_health = [Node("a", "h1", 8, 2.0, 4), Node("b", "h1", 8, 2.0, 4),
                           Node("c", "h2", 4, 4.0, 4), Node("d", "h3", 4, 3.0, 4, "degraded"),
                           Node("e", "h4", 4, 0, 4, "degraded", "paused"),
                           Node("f", "h5", 4, 0, 4, "unreachable")]

    plan = calculate_optimal_distribution(Health, "auto", 1)
    dist = {d["node"]: d for d in plan.worker_distribution}
    # a degraded node (e.g. busy a moment ago) still works, at its host's capacity; a
    # paused or unreachable one gets nothing
    assert set(dist) == {"a", "b", "c", "d"}
    assert dist["a"]["capacity"] == 3.0 and dist["c"]["capacity"] == 0.0
    assert dist["d"]["capacity"] == 1.0
    assert plan.total_capacity == 7.0 and plan.total_workers == round(7 * 0.8)
    assert dist["c"]["workers"] == 1  # min_workers_per_node, even without capacity
    class Busy:
        class cluster:  # noqa: N801
            node_health = [Node("a", "h1", 2, 2.0, 1, "degraded"),
                           Node("b", "h1", 2, 2.0, 1, "unreachable")]

    busy = calculate_optimal_distribution(Busy, "auto", 1)
    assert busy.workers == ["a"]  # no healthy node: degraded ones still work
    capped = calculate_optimal_distribution(Health, 5, 1)
    assert capped.total_workers == 5
    with pytest.raises(ValueError, match="max_workers"):
        calculate_optimal_distribution(Health, 0)


# ----------------------------------------------------------------------------------------
def _timed_teacher(log: str, prompt: str) -> str:
    """A teacher LM that writes when it answered each review: wrong on review 0 at once,
    right on review 1 after 2 s, right at once on the others."""
    import time

    review = prompt.rsplit("Review:", 1)[-1].strip().split("\n")[0]
    number = int(review.split()[1].rstrip(":"))
    start = time.time()
    if number == 1:
        time.sleep(2.0)
    with open(log, "a") as out:
        out.write(f"{number} {start} {time.time()}\n")
    right = "positive" if number % 2 == 0 else "negative"
    return ("negative" if number == 0 else right) + "\n"


@pytest.mark.timeout(120)
def test_a_failed_teacher_run_is_replaced_while_the_others_run(cluster_client, tmp_path):
    # the demos need 2 passing runs in trainset order: 0 and 1 are sent; 0 fails at once,
    # so 2 is sent then, while 1 still runs (no wave waits for the slow run)
    import functools

    from foundation_dask.dspex.bootstrap import bootstrap_runs

    log = tmp_path / "teacher.log"
    trainset = make_examples(6)
    with dspex.context(lm=dspex.DummyLM(functools.partial(_timed_teacher, str(log))),
                       cache=False):
        runs = bootstrap_runs(dspex.Predict(Classify), trainset, metric, [(range(6), 2)],
                              runtime=Runtime(client=cluster_client, chunk_size=1))
    assert [(r["index"], r["success"]) for r in runs] == [(0, False), (1, True), (2, True)]
    times = {int(n): (float(a), float(b)) for n, a, b in
             (line.split() for line in log.read_text().splitlines())}
    assert set(times) == {0, 1, 2}
    assert times[2][0] < times[1][1]  # run 2 started before the slow run 1 ended


# fault tolerance on a real subprocess cluster


def assert_every_evaluation_once(result, n_valset: int) -> None:
    """No evaluation lost nor made twice: the history has each (candidate, example) once,
    as many as the candidates saw, and every candidate that ran to the end saw the whole
    valset (how far a stopped one got depends on timing, as in any race)."""
    pairs = list(zip(result.history["candidate"], result.history["index"], strict=True))
    assert len(pairs) == len(set(pairs)) == result.candidates["examples"].sum()
    finished = result.candidates[result.candidates["stopped_after"].isna()]
    assert len(finished) >= 1 and (finished["examples"] == n_valset).all()


@pytest.mark.timeout(300)
def test_sigkill_a_third_of_workers_same_result(subprocess_cluster, tmp_path):
    import functools

    from tests._helpers import counted_gated_with_demos, last_in_race

    subprocess_cluster.start(3)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(3, timeout=60)
    trainset, valset = make_examples(18), make_examples(18, 60)
    kwargs = dict(num_candidate_programs=4, max_bootstrapped_demos=3, max_labeled_demos=3,
                  seed=3, valset=valset, display_progress=False)

    # the race's last example waits for the gate (for candidates with demos): the run is
    # still going when the worker is killed
    gate = tmp_path / "gate"
    gate.touch()
    lm = functools.partial(counted_gated_with_demos, gate=str(gate),
                           held=last_in_race(valset, kwargs["seed"]))
    quiet = dspex.DistributedOptimizer.optimize_program_distributed(
        program(lm), trainset, metric, **kwargs)
    gate.unlink()

    box = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "r", dspex.DistributedOptimizer.optimize_program_distributed(
            program(lm), trainset, metric, optimization_id="faulty", **kwargs)))
    thread.start()
    coordinator = wait_for(
        lambda: fd.ProcessManager.lookup(("optimization_coordinator", "faulty")), timeout=60)
    wait_for(lambda: coordinator.get_progress().result()["evaluations_completed"] >= 15,
             timeout=120)
    victim = worker_names(client)["w0"]
    subprocess_cluster.kill("w0")
    assert thread.is_alive()  # killed mid-run
    gate.touch()
    thread.join(timeout=240)
    faulty = box["r"]
    assert faulty.status == "completed"
    assert faulty.best_score == quiet.best_score
    assert faulty.best_program.dump_state() == quiet.best_program.dump_state()
    for run in (quiet, faulty):
        assert_every_evaluation_once(run, len(valset))
    assert victim not in set(client.scheduler_info()["workers"])


@pytest.mark.timeout(480)
def test_adaptive_optimizer_scales_and_logs(tmp_path):
    import functools

    from tests._helpers import counted_gated_with_demos, last_in_race

    fd.close()  # a fresh embedded cluster of one worker, whatever ran before
    client = fd.connect(n_workers=1, threads_per_worker=1)
    try:
        trainset = make_examples(30)
        result = dspex.AdaptiveOptimizer.adaptive_optimization(
            program(slow_needs_demos), trainset, metric, target_eval_rate=1000.0,
            scaling_check_interval=0.5, max_cluster_workers=2, num_candidate_programs=4,
            display_progress=False,
            # the room to grow is a policy input: fixed here, not this machine's load
            available_capacity=lambda health: 2.0,
        )
        ups = [e for e in result.scaling_log if e["action"] == "scale_up"]
        assert ups, result.scaling_log
        assert {"rate", "target", "available_capacity", "workers"} <= set(ups[0])
        assert ups[0]["outcome"] == "requested 2 workers", result.scaling_log
        # a worker process starting on a loaded machine can take a while
        client.wait_for_workers(2, timeout=180)

        # the race's last example waits for the gate: the run lasts until the scale-down
        gate = tmp_path / "gate"
        lm = functools.partial(counted_gated_with_demos, gate=str(gate),
                               held=last_in_race(trainset, 0))
        box: dict = {}
        thread = threading.Thread(target=lambda: box.setdefault(
            "down", dspex.AdaptiveOptimizer.adaptive_optimization(
                program(lm), trainset, metric, target_eval_rate=0.01,
                scaling_check_interval=0.5, min_workers=1, num_candidate_programs=4,
                display_progress=False)))
        thread.start()
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=180)
        gate.touch()
        thread.join(timeout=240)
        down = box["down"]
        downs = [e for e in down.scaling_log if e["action"] == "scale_down"]
        assert downs and downs[0]["retired"], down.scaling_log
        assert down.status == "completed" and down.best_score == 100.0
        with pytest.raises(ValueError, match="target_eval_rate"):
            dspex.AdaptiveOptimizer.adaptive_optimization(program(), trainset, metric,
                                                          target_eval_rate=0)
    finally:
        fd.close()


def test_runtime_defaults():
    assert Runtime().workers is None and Runtime().chunk_size == "auto"


# ----------------------------------------------------------------------------------------
# a traced optimization: one timeline answering "which examples were slow, where, why"


@pytest.mark.timeout(300)
def test_traced_optimization_with_a_killed_worker(subprocess_cluster, tmp_path):
    import functools

    from foundation_dask import scope
    from tests._helpers import counted_gated_with_demos, last_in_race

    subprocess_cluster.start(3)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(3, timeout=60)
    valset = make_examples(18, 60)
    gate = tmp_path / "gate"  # holds the race's last example: the kill comes mid-run
    lm = functools.partial(counted_gated_with_demos, gate=str(gate),
                           held=last_in_race(valset, 0))
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "r", dspex.DistributedOptimizer.optimize_program_distributed(
            program(lm), make_examples(18), metric, num_candidate_programs=3,
            max_bootstrapped_demos=3, max_labeled_demos=3, valset=valset,
            display_progress=False, optimization_id="traced", trace=True,
            optimizer=dspex.BootstrapFewShotWithRandomSearch(
                metric, num_candidate_programs=3, max_bootstrapped_demos=3,
                max_labeled_demos=3, racing=True, seed=0))))
    thread.start()
    coordinator = wait_for(
        lambda: fd.ProcessManager.lookup(("optimization_coordinator", "traced")), timeout=60)
    wait_for(lambda: coordinator.get_progress().result()["evaluations_completed"] >= 12,
             timeout=120)
    subprocess_cluster.kill("w1")
    assert thread.is_alive()  # killed mid-run
    gate.touch()
    thread.join(timeout=240)
    result = box["r"]
    assert result.status == "completed" and result.trace_id
    data = scope.collect_trace_data(result.trace_id, timeout=10)
    ev = data.events
    kinds = set(ev["kind"])
    assert {"trace", "task", "actor", "lm", "span"} <= kinds
    # every example evaluation and every LM call is in the timeline
    examples = ev[ev["name"] == "evaluate_example"]
    # every evaluation made on a worker that lived is there (the killed worker's spans
    # not yet collected went with it: the trace says it is partial, below)
    survivors = result.history[~result.history["worker"].isin(data.lost_nodes)]
    assert len(examples) >= len(survivors) > 0
    # the race too, and each of its stops naming the candidate, why, and who beat it
    assert (ev["name"] == "race").sum() == 1
    stops = ev[ev["name"] == "race_stop"]
    assert len(stops) >= 1 and all({"candidate", "reason", "leader"} <= set(a)
                                   for a in stops["attrs"])
    lm_calls = ev[ev["kind"] == "lm"]
    assert {"latency_ms", "prompt_tokens", "completion_tokens", "cache_hit"} <= set(
        lm_calls["attrs"].iloc[0])
    # the coordinator's calls are in it too
    assert any(ev["name"].str.startswith("OptimizationCoordinator."))
    slow = data.slow_examples(5)
    assert len(slow) == 5 and slow["duration_ms"].is_monotonic_decreasing
    assert {"index", "node", "why", "lm_ms"} <= set(slow.columns)
    assert all(isinstance(w, str) and w for w in slow["why"])
    # the killed worker is reported; if it held unfinished chunks they appear as lost
    # tasks, each run again elsewhere once at most (not at all when its result had been
    # read already, or when the race stopped its candidate since: then it was cancelled)
    assert data.lost_nodes and data.partial
    lost = ev[ev["error_type"] == "TaskLost"]
    for key in set(ev.loc[lost.index, "key"].dropna()):
        ok = ev[(ev["key"] == key) & (ev["status"] == "ok")]
        assert len(ok[~ok["node"].isin(data.lost_nodes)]) <= 1
    # and the result has every evaluation once: none lost, none counted twice
    pairs = list(zip(result.history["candidate"], result.history["index"], strict=True))
    assert len(pairs) == len(set(pairs)) == result.candidates["examples"].sum()


# ----------------------------------------------------------------------------------------
# resumable optimizations: the client process is killed for real

CLIENT_SCRIPT = """
import functools, sys
import foundation_dask as fd
from foundation_dask import dspex
import tests._helpers as t
fd.connect(sys.argv[1])
lm = functools.partial(t.counted_gated_with_demos, gate=sys.argv[2], held=sys.argv[3])
dspex.DistributedOptimizer.optimize_program_distributed(
    t.program(lm), t.make_examples(20), t.metric,
    valset=t.make_examples(20, 70), optimization_id="resumable", **t.RESUME_KWARGS)
print("finished")
"""


@pytest.mark.timeout(300)
def test_resume_after_the_client_process_is_killed(subprocess_cluster, tmp_path):
    import functools
    import os
    import subprocess
    import sys

    from tests._helpers import counted_gated_with_demos, last_in_race

    subprocess_cluster.start(2)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(2, timeout=60)
    trainset, valset = make_examples(20), make_examples(20, 70)
    # the race's last example (its order is seeded by the search's seed) waits for the
    # gate when a candidate with demos meets it: the run is still going when the client
    # is killed, however fast the machine
    held = last_in_race(valset, RESUME_KWARGS["seed"])
    gate = tmp_path / "gate"
    gate.touch()
    lm = functools.partial(counted_gated_with_demos, gate=str(gate), held=held)

    before = lm_calls_on_workers(client)
    quiet = dspex.DistributedOptimizer.optimize_program_distributed(
        program(lm), trainset, metric, valset=valset, **RESUME_KWARGS)
    calls_uninterrupted = lm_calls_on_workers(client) - before
    gate.unlink()

    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), subprocess_cluster.address,
                             str(gate), held],
                            cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        coordinator = wait_for(
            lambda: fd.ProcessManager.lookup(("optimization_coordinator", "resumable")),
            timeout=120)
        wait_for(lambda: coordinator.get_optimization_info().result()["evaluations_done"] >= 15,
                 timeout=120)
    finally:
        proc.kill()  # SIGKILL: the kernel dies mid-optimization
        proc.wait(timeout=30)
    assert b"finished" not in proc.stdout.read()
    done = coordinator.get_optimization_info().result()
    assert done["status"] == "running" and done["evaluations_done"] >= 15

    gate.touch()
    before = lm_calls_on_workers(client)
    resumed = dspex.DistributedOptimizer.resume("resumable")
    calls_resumed = lm_calls_on_workers(client) - before
    assert resumed.status == "completed"
    assert resumed.resumed_from >= 15
    assert resumed.best_score == quiet.best_score
    assert resumed.best_program.dump_state() == quiet.best_program.dump_state()
    assert_every_evaluation_once(resumed, len(valset))
    # finished evaluations were not run again (calls in flight at the kill may repeat)
    assert calls_resumed < calls_uninterrupted
    assert calls_resumed <= calls_uninterrupted - done["evaluations_done"] + 20
    with pytest.raises(KeyError, match="No optimization 'never-started'"):
        dspex.DistributedOptimizer.resume("never-started")


@pytest.mark.timeout(120)
def test_teacher_settings_and_unsupported_options(cluster_client):
    trainset = make_examples(12)
    # the student alone answers "positive" zero-shot; a teacher LM that is always right
    # (through teacher_settings) bootstraps every example it is given
    oracle = dspex.DummyLM(lambda prompt: "negative" if any(
        w in prompt.rsplit("Review:", 1)[-1] for w in NEGATIVE) else "positive")
    boot = dspex.BootstrapFewShot(metric, max_bootstrapped_demos=12, max_labeled_demos=0,
                                  teacher_settings={"lm": oracle})
    student = dspex.Predict(Classify)
    compiled = boot.compile(student, trainset=trainset)
    assert len(compiled.demos) == 12 and all(d.get("augmented") for d in compiled.demos)
    with pytest.raises(ValueError, match="stop_at_score"):
        dspex.BootstrapFewShotWithRandomSearch(metric, stop_at_score=90)
    with pytest.raises(ValueError, match="max_rounds"):
        dspex.BootstrapFewShotWithRandomSearch(metric, max_rounds=2)


# ----------------------------------------------------------------------------------------
# scores that are not plain fractions: NaN is an error of its example, negatives work


@pytest.mark.timeout(120)
def test_a_nan_score_is_an_error_of_its_example(cluster_client):
    def nan_metric(example, prediction, trace=None):
        return float("nan") if "review 3:" in example.review else metric(example, prediction)

    devset = make_examples(10)
    result = dspex.Evaluate(devset=devset, metric=nan_metric)(program())
    assert [r.index for r in result.errors] == [3]
    assert "nan_metric" in result.errors[0].error and "example 3" in result.errors[0].error
    assert "nan" in result.errors[0].error
    assert result.score == 50.0  # zero-shot: the 5 positives (example 3 is negative)
    with pytest.raises(EvaluationError, match="nan_metric returned nan for example 3"):
        dspex.Evaluate(devset=devset, metric=nan_metric, max_errors=0)(program())

    search = dspex.BootstrapFewShotWithRandomSearch(
        nan_metric, num_candidate_programs=2, max_bootstrapped_demos=3, max_labeled_demos=3,
        racing=False)  # every candidate meets example 3
    best = search.compile(program(), trainset=make_examples(8), valset=devset)
    assert best.score == 90.0  # every example right with demos but example 3
    failed = search.history_frame().dropna(subset=["error"])
    assert set(failed["index"]) == {3} and len(failed) == 5  # once per candidate
    assert [r["index"] for r in search.teacher_runs if r["error"]] == [3]


@pytest.mark.timeout(120)
def test_random_search_with_negative_scores_keeps_the_best(cluster_client):
    def penalty(example, prediction, trace=None):  # -0.5 when right, -1 when wrong
        return -0.5 if metric(example, prediction) else -1.0

    search = dspex.BootstrapFewShotWithRandomSearch(
        penalty, num_candidate_programs=2, max_bootstrapped_demos=3, max_labeled_demos=3,
        racing=False)  # every candidate's score on the whole valset
    best = search.compile(program(), trainset=make_examples(8), valset=make_examples(10, 40))
    scores = {c["kind"]: c["score"] for c in best.candidate_programs}
    assert scores["zero-shot"] == -75.0
    assert best.score == -50.0 == max(scores.values()) and best.demos

