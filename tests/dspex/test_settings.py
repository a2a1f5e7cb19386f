"""DSPEx settings travel with the work: what ``dspex.configure`` and ``dspex.context`` set
where Evaluate, an optimizer or a distributed optimization is called is in effect in
every task on every worker (subprocess workers, none of which is configured itself).

Written as a DSPy user writes: ``dspex.configure(lm=...)``, never ``program.lm = ...``.
The test LM (``needs_demos``) answers right only with at least two demos in the prompt:
zero-shot scores 50% on the balanced sets, a program with demos 100%.
"""

from __future__ import annotations

import threading
import uuid

import cloudpickle
import pytest

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.snapshot import snapshot_settings
from tests._helpers import (
    NEGATIVE,
    Classify,
    counted_needs_demos,
    lm_calls_on_workers,
    make_examples,
    metric,
    needs_demos,
    slow_needs_demos,
)
from tests.support import wait_for, worker_names


@pytest.fixture(autouse=True)
def clean_settings():
    dspex.settings.reset()
    yield
    dspex.settings.reset()


def oracle_lm() -> dspex.DummyLM:
    """An LM always right, with or without demos (its function pickles by value)."""
    negative = list(NEGATIVE)

    def oracle(prompt: str) -> str:
        return "negative" if any(w in prompt.rsplit("Review:", 1)[-1] for w in negative) \
            else "positive"

    return dspex.DummyLM(oracle)


def with_demos() -> dspex.Predict:
    prog = dspex.Predict(Classify)
    prog.demos = make_examples(2, offset=100)
    return prog


def unpicklable(obj):
    obj.handle = threading.Lock()
    return obj


# ----------------------------------------------------------------------------------------
# what is carried


def test_the_snapshot_holds_what_was_set_and_names_what_cannot_travel():
    assert snapshot_settings().values == {}  # defaults never set are not carried
    lm = dspex.DummyLM(needs_demos)
    dspex.configure(lm=lm)
    with dspex.context(cache=False, trace=[]):
        snap = snapshot_settings()
    assert set(snap.values) == {"lm", "cache"}  # trace stays in its process
    assert snap.values["cache"] is False and snap.rebuilt == []

    dspex.configure(lm=unpicklable(dspex.DummyLM(needs_demos)))
    with pytest.raises(TypeError, match=r"dspex setting 'lm'.*does not pickle"):
        dspex.Evaluate(devset=make_examples(2), metric=metric)(dspex.Predict(Classify))
    dspex.configure(lm=lm, adapter=unpicklable(dspex.CompletionAdapter()))
    with pytest.raises(TypeError, match=r"dspex setting 'adapter'.*does not pickle"):
        dspex.BootstrapFewShot(metric).compile(dspex.Predict(Classify),
                                               trainset=make_examples(2))

    local = unpicklable(dspex.LocalLM(max_tokens=7))
    dspex.configure(lm=local, adapter=None)
    snap = snapshot_settings()
    assert snap.rebuilt == ["lm"]
    rebuilt = cloudpickle.loads(cloudpickle.dumps(snap)).values["lm"]  # as a worker sees it
    assert isinstance(rebuilt, dspex.LocalLM) and rebuilt is not local
    assert rebuilt.dump_state() == local.dump_state()


# ----------------------------------------------------------------------------------------
# Evaluate


@pytest.mark.timeout(180)
def test_evaluate_runs_under_the_configured_settings_on_every_worker(fd_client):
    assert set(fd_client.run(lambda: dspex.settings.lm).values()) == {None}
    dspex.configure(lm=dspex.DummyLM(needs_demos))
    devset = make_examples(24)
    evaluate = dspex.Evaluate(devset=devset, metric=metric, chunk_size=2)

    zero_shot = evaluate(dspex.Predict(Classify))
    assert zero_shot.score == 50.0 and not zero_shot.errors
    assert set(zero_shot.frame["worker"]) == set(fd_client.run(lambda: None))  # every worker
    assert evaluate(with_demos()).score == 100.0

    # the predictor's own LM wins over the configured one (DSPy's order)
    own = dspex.Predict(Classify)
    own.lm = oracle_lm()
    assert evaluate(own).score == 100.0

    # a context applies to the work started inside it only
    with dspex.context(lm=oracle_lm()):
        assert evaluate(dspex.Predict(Classify)).score == 100.0
    assert evaluate(dspex.Predict(Classify)).score == 50.0

    # an LM that does not pickle is rebuilt on the workers from its configuration
    local = unpicklable(dspex.LocalLM(max_tokens=7))
    state = local.dump_state()

    def configured_lm_is_rebuilt(example, prediction, trace=None):
        lm = dspex.settings.lm
        return isinstance(lm, dspex.LocalLM) and lm.dump_state() == state \
            and not hasattr(lm, "handle")

    dspex.configure(lm=local)
    seen = dspex.Evaluate(devset=devset[:4], metric=configured_lm_is_rebuilt)(own)
    assert seen.score == 100.0 and not seen.errors


@pytest.mark.timeout(180)
def test_configure_cache_false_reaches_the_workers(fd_client):
    # an LM that caches its calls on disk; its calls are counted on the workers
    lm = dspex.DummyLM(counted_needs_demos, cache=True, model=f"counted-{uuid.uuid4().hex}")
    devset = make_examples(8)
    evaluate = dspex.Evaluate(devset=devset, metric=metric)

    dspex.configure(lm=lm, cache=False)
    for _ in range(2):
        before = lm_calls_on_workers(fd_client)
        assert evaluate(dspex.Predict(Classify)).score == 50.0
        assert lm_calls_on_workers(fd_client) - before == len(devset)  # no cache: called

    dspex.configure(cache=True)
    evaluate(dspex.Predict(Classify))
    before = lm_calls_on_workers(fd_client)
    assert evaluate(dspex.Predict(Classify)).score == 50.0
    assert lm_calls_on_workers(fd_client) - before == 0  # the rerun came from the cache


@pytest.mark.timeout(240)
def test_a_worker_that_joins_later_and_replaces_a_killed_one(subprocess_cluster):
    subprocess_cluster.start(1)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(1, timeout=60)
    dspex.configure(lm=dspex.DummyLM(needs_demos))
    evaluate = dspex.Evaluate(devset=make_examples(12), metric=metric)
    assert evaluate(with_demos()).score == 100.0

    subprocess_cluster.add_worker()  # joins after configure
    wait_for(lambda: "w1" in worker_names(client), timeout=60)
    subprocess_cluster.kill("w0")  # ... and replaces the worker that is killed
    wait_for(lambda: set(worker_names(client)) == {"w1"}, timeout=60)
    replacement = worker_names(client)["w1"]
    assert client.run(lambda: dspex.settings.lm) == {replacement: None}

    result = evaluate(with_demos())
    assert result.score == 100.0 and not result.errors
    assert set(result.frame["worker"]) == {replacement}


# ----------------------------------------------------------------------------------------
# optimizers


@pytest.mark.timeout(240)
def test_each_optimizer_compiles_with_the_configured_lm(fd_client):
    dspex.configure(lm=dspex.DummyLM(needs_demos))
    trainset, valset = make_examples(12), make_examples(12, 50)
    evaluate = dspex.Evaluate(devset=valset, metric=metric)
    zero_shot = evaluate(dspex.Predict(Classify)).score
    assert zero_shot == 50.0

    labeled = dspex.LabeledFewShot(k=4).compile(dspex.Predict(Classify), trainset=trainset)
    assert len(labeled.demos) == 4
    assert evaluate(labeled).score == 100.0

    boot = dspex.BootstrapFewShot(metric, max_bootstrapped_demos=3, max_labeled_demos=4)
    compiled = boot.compile(dspex.Predict(Classify), trainset=trainset)
    assert len([d for d in compiled.demos if d.get("augmented")]) == 3
    assert evaluate(compiled).score == 100.0

    search = dspex.BootstrapFewShotWithRandomSearch(
        metric, num_candidate_programs=2, max_bootstrapped_demos=3, max_labeled_demos=3)
    best = search.compile(dspex.Predict(Classify), trainset=trainset, valset=valset)
    assert best.demos and best.score == 100.0 > zero_shot
    assert not search.history_frame()["error"].notna().any()
    assert not [r for r in search.teacher_runs if r["error"]]


@pytest.mark.timeout(300)
def test_distributed_adaptive_and_resumed_optimizations_use_the_configured_lm(fd_client):
    dspex.configure(lm=dspex.DummyLM(needs_demos))
    trainset = make_examples(10)
    small = dict(num_candidate_programs=2, max_bootstrapped_demos=2, max_labeled_demos=2,
                 display_progress=False)

    result = dspex.DistributedOptimizer.optimize_program_distributed(
        dspex.Predict(Classify), trainset, metric, **small)
    assert result.status == "completed" and result.best_score == 100.0
    assert result.best_program.demos and not result.history["error"].notna().any()

    adaptive = dspex.AdaptiveOptimizer.adaptive_optimization(
        dspex.Predict(Classify), trainset, metric, scaling_check_interval=60.0, **small)
    assert adaptive.status == "completed" and adaptive.best_score == 100.0

    # stopped part-way, then resumed by a process where nothing is configured any more
    dspex.configure(lm=dspex.DummyLM(slow_needs_demos))
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "r", dspex.DistributedOptimizer.optimize_program_distributed(
            dspex.Predict(Classify), make_examples(24), metric, num_candidate_programs=4,
            display_progress=False, optimization_id="settings-resume")))
    thread.start()
    coordinator = wait_for(
        lambda: fd.ProcessManager.lookup(("optimization_coordinator", "settings-resume")),
        timeout=60)
    wait_for(lambda: coordinator.get_optimization_info().result()["evaluations_done"] >= 8,
             timeout=120)
    fd.Channels.broadcast("control", ("stop_optimization", "settings-resume"))
    thread.join(timeout=120)
    assert box["r"].status == "stopped"

    dspex.settings.reset()
    resumed = dspex.DistributedOptimizer.resume("settings-resume")
    assert resumed.status == "completed" and resumed.resumed_from >= 8
    assert resumed.best_score == 100.0 and resumed.best_program.demos
    assert not resumed.history["error"].notna().any()
