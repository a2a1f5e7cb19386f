"""Real DSPy programs (``dspy.Module``) evaluated and optimized on real Dask clusters.

The LM is real: SmolLM2-135M behind ``llama_cpp.server`` (the ``llm_server`` fixture),
reached through ``dspy.LM("openai/...", api_base=...)`` with DSPEx's completion prompt
as a DSPy adapter (``dspex.interop.CompletionAdapter``): greedy, so runs repeat.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading

import pytest

import foundation_dask as fd
from foundation_dask import dspex, scope
from foundation_dask.dspex.datasets import (
    SENTIMENT_INSTRUCTIONS,
    load_sentiment_split,
    sentiment_metric,
)
from tests.support import wait_for, worker_names

dspy = pytest.importorskip("dspy")

SIGNATURE = "review -> sentiment"


def examples(split: str, n: int, seed: int = 0) -> list:
    return [dspy.Example(review=r["review"], sentiment=r["sentiment"]).with_inputs("review")
            for r in load_sentiment_split(split, n, seed=seed, as_examples=False)]


def server_lm(server, *, cache: bool = True):
    """The server's completions in DSPy: prompts reach the model as they are written."""
    return dspex.interop.DSPyLM(dspex.OpenAICompatibleLM(
        f"openai/{server.model}", server.api_base, api_key="none", model_type="text",
        temperature=0.0, max_tokens=4, cache=cache))


def as_dict(demo) -> dict:
    return demo.toDict() if hasattr(demo, "toDict") else dict(demo)


def classify():
    return dspy.Predict(dspy.Signature(SIGNATURE, SENTIMENT_INSTRUCTIONS))


@pytest.fixture
def dspy_settings(llm_server):
    """``dspy.context(lm=<server LM>, adapter=CompletionAdapter())`` around the test."""
    with dspy.context(lm=server_lm(llm_server), adapter=dspex.interop.CompletionAdapter()):
        yield


# ------------------------------------------------------------------------ bad input


@pytest.mark.timeout(30)
def test_without_dspy_the_error_has_the_pip_command(monkeypatch):
    from foundation_dask.dspex.interop import require_dspy

    monkeypatch.setitem(sys.modules, "dspy", None)  # `import dspy` now raises ImportError
    with pytest.raises(fd.DSPyNotInstalledError) as err:
        require_dspy()
    assert isinstance(err.value, ImportError)
    assert 'pip install "foundation-dask[dspy]"' in str(err.value)
    with pytest.raises(fd.DSPyNotInstalledError, match="foundation-dask\\[dspy\\]"), \
            dspex.on_cluster():
        pass


@pytest.mark.timeout(60)
def test_unpicklable_program_is_named_before_any_work(cluster_client):
    program = classify()
    program.log = open(os.devnull, "w")  # noqa: SIM115  (a file does not pickle)
    try:
        with pytest.raises(fd.ProgramNotPicklableError) as err:
            dspex.Evaluate(devset=examples("dev", 2), metric=sentiment_metric)(program)
    finally:
        program.log.close()
    assert isinstance(err.value, TypeError)
    assert err.value.attribute == "program.log"
    assert "program.log" in str(err.value)

    # the closure DSPy hands its executor: the path goes through the program
    inner = classify()
    inner.handle = (i for i in range(3))  # generators do not pickle
    with dspex.on_cluster(cluster_client), pytest.raises(fd.ProgramNotPicklableError) as err:
        dspy.Evaluate(devset=examples("dev", 2), metric=sentiment_metric)(inner)
    assert err.value.attribute.startswith("process_item.<program>.handle"), \
        err.value.attribute


@pytest.mark.timeout(60)
def test_lm_that_does_not_pickle_is_rebuilt_on_the_worker_never_replaced(cluster_client):
    from foundation_dask.dspex.snapshot import snapshot_settings

    lm = dspy.LM("openai/some-model", api_base="http://127.0.0.1:9/v1", api_key="secret-key",
                 temperature=0.0)
    lm.session = (i for i in range(3))  # makes the LM unpicklable
    with dspy.context(lm=lm):
        carried = snapshot_settings()
    assert carried.dspy.rebuilt == ["lm"]
    assert b"secret-key" not in pickle.dumps(carried)  # dump_state() has no API key

    def rebuilt_there(snapshot):
        got = snapshot.dspy.values["lm"]
        return type(got).__name__, got.model, got.kwargs.get("api_base"), os.getpid()

    name, model, base, pid = cluster_client.submit(rebuilt_there, carried, pure=False).result()
    assert (name, model, base) == ("LM", "openai/some-model", "http://127.0.0.1:9/v1")
    assert pid != os.getpid()

    class Unrebuildable(dspy.LM):  # its class cannot be imported where it is rebuilt
        pass

    odd = Unrebuildable("openai/m", api_base="http://127.0.0.1:9/v1")
    odd.session = (i for i in range(3))
    with dspy.context(lm=odd), pytest.raises(fd.SettingsTransferError) as err:
        snapshot_settings()
    assert err.value.setting == "dspy.lm"
    assert "Unrebuildable" in str(err.value)


# ------------------------------------------------------------------------ the server


@pytest.mark.timeout(120)
def test_dspy_lm_and_dspex_lm_talk_to_the_server(llm_server):
    text = dspy.LM(f"openai/{llm_server.model}", api_base=llm_server.api_base,
                   api_key="none", model_type="text", temperature=0.0, max_tokens=4,
                   cache=False)
    out = text("Review: An absolute delight.\nSentiment:", stop=["\n"])
    assert isinstance(out, list) and isinstance(out[0], str)
    assert text.history[-1]["usage"]["prompt_tokens"] > 0

    chat = dspy.LM(f"openai/{llm_server.model}", api_base=llm_server.api_base,
                   api_key="none", temperature=0.0, max_tokens=8, cache=False)
    assert chat(messages=[{"role": "user", "content": "Say hello."}])[0].strip()

    ours = dspex.OpenAICompatibleLM(f"openai/{llm_server.model}", llm_server.api_base,
                                    api_key="none", model_type="text", cache=False,
                                    max_tokens=4)
    response = ours.generate(prompt="Review: Such a bad movie.\nSentiment:", stop=["\n"])
    assert response.prompt_tokens > 0 and response.completion_tokens >= 1
    ours_chat = dspex.LM(f"openai/{llm_server.model}", llm_server.api_base, api_key="none",
                         cache=False, max_tokens=8)
    assert ours_chat(messages=[{"role": "user", "content": "Say hello."}])[0].strip()


@pytest.mark.timeout(120)
def test_dspy_lm_calls_on_workers_are_lm_spans_with_tokens(cluster_client, llm_server):
    lm = dspy.LM(f"openai/{llm_server.model}", api_base=llm_server.api_base,
                 api_key="none", model_type="text", temperature=0.0, max_tokens=4,
                 cache=False)
    devset = examples("dev", 4, seed=5)
    with dspy.context(lm=lm, adapter=dspex.interop.CompletionAdapter()), \
            scope.trace("dspy.LM calls") as t:
        result = dspex.Evaluate(devset=devset, metric=sentiment_metric)(classify())
        with dspex.on_cluster():
            dspy.Evaluate(devset=devset, metric=sentiment_metric)(classify())
    assert not result.errors
    events = scope.collect_trace_data(t.trace_id).events
    lm_spans = events[events["kind"] == "lm"]
    assert len(lm_spans) == 2 * len(devset)
    assert os.getpid() not in set(lm_spans["pid"])
    for attrs in lm_spans["attrs"]:
        assert attrs["client"] == "dspy" and attrs["model"] == f"openai/{llm_server.model}"
        assert attrs["prompt_tokens"] > 0 and attrs["completion_tokens"] >= 1


@pytest.mark.timeout(120)
def test_dspy_parallel_runs_on_the_cluster(cluster_client, llm_server, dspy_settings):
    devset = examples("test", 4, seed=6)
    program = classify()
    expected = [program(**ex.inputs()).sentiment for ex in devset]
    with dspex.on_cluster() as run:
        got = dspy.Parallel(num_threads=2)([(program, ex) for ex in devset])
    assert [p.sentiment for p in got] == expected
    assert run.labels == ["dspy Parallel"] and run.items == len(devset)


@pytest.mark.timeout(300)
def test_dspex_optimizer_improves_a_dspy_program_on_the_cluster(cluster_client, llm_server,
                                                                dspy_settings, tmp_path):
    train, dev, test = examples("train", 8), examples("dev", 6), examples("test", 12)
    evaluate = dspex.Evaluate(devset=test, metric=sentiment_metric)
    program = classify()
    with scope.trace("zero-shot") as t:
        zero = evaluate(program)
    optimizer = dspex.BootstrapFewShotWithRandomSearch(
        sentiment_metric, num_candidate_programs=1, max_bootstrapped_demos=4,
        max_labeled_demos=4, seed=0)
    best = optimizer.compile(program, trainset=train, valset=dev)
    optimized = evaluate(best)
    print(f"held-out accuracy on {len(test)}: zero-shot {zero.score:.1f}% -> "
          f"optimized {optimized.score:.1f}% (validation {best.score:.1f}%)")
    assert optimized.score > zero.score
    assert isinstance(best, dspy.Predict) and best.demos
    assert all(isinstance(d, dspy.Example) for d in best.demos)
    # the evaluations ran on the workers, with the client's DSPy settings
    assert set(zero.frame["worker"]) <= set(cluster_client.scheduler_info()["workers"])
    assert not zero.errors

    # dspy's own save/load round-trips the optimized program
    path = tmp_path / "best.json"
    best.save(str(path))
    loaded = classify()
    loaded.load(str(path))
    assert [as_dict(d) for d in loaded.demos] == [as_dict(d) for d in best.demos]
    assert evaluate(loaded).score == optimized.score
    assert json.loads(path.read_text())

    # every LM call of the traced evaluation is an lm span with its tokens, on a worker
    events = scope.collect_trace_data(t.trace_id).events
    lm_spans = events[events["kind"] == "lm"]
    assert len(lm_spans) >= len(test)
    attrs = lm_spans["attrs"].tolist()
    assert all((a.get("prompt_tokens") or 0) > 0 for a in attrs if not a.get("cache_hit"))
    assert os.getpid() not in set(lm_spans["pid"])  # made in the worker processes


@pytest.mark.timeout(300)
def test_distributed_optimizer_and_labeled_few_shot_take_a_dspy_program(
        cluster_client, llm_server, dspy_settings):
    train, dev = examples("train", 6, seed=4), examples("dev", 4, seed=4)
    labeled = dspex.LabeledFewShot(k=3).compile(classify(), trainset=train)
    assert isinstance(labeled, dspy.Predict) and len(labeled.demos) == 3
    assert all(isinstance(d, dspy.Example) for d in labeled.demos)

    result = dspex.DistributedOptimizer.optimize_program_distributed(
        classify(), train, sentiment_metric, valset=dev, num_candidate_programs=0,
        max_bootstrapped_demos=2, max_labeled_demos=2, display_progress=False)
    assert result.status == "completed"
    assert isinstance(result.best_program, dspy.Predict)
    assert result.best_score is not None and len(result.candidates) == 3
    assert set(result.history["worker"]) <= set(cluster_client.scheduler_info()["workers"])
    assert result.history["error"].isna().all()


@pytest.mark.timeout(300)
def test_dspy_random_search_on_cluster_matches_threads(cluster_client, llm_server,
                                                       dspy_settings):
    train, dev = examples("train", 6, seed=1), examples("dev", 6, seed=1)

    def search():
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            sentiment_metric, num_candidate_programs=1, max_bootstrapped_demos=2,
            max_labeled_demos=2, num_threads=2)
        return optimizer.compile(classify(), trainset=train, valset=dev)

    on_threads = search()
    with fd.Channels.subscribe("telemetry") as sub, dspex.on_cluster() as run:
        on_dask = search()
        progress = []
        while True:
            try:
                msg = sub.get(timeout=2)
            except TimeoutError:
                break
            if isinstance(msg.payload, dict) and msg.payload.get("type") == \
                    "evaluation_progress":
                progress.append(msg.payload)
    assert run.batches == 4 and run.items == 4 * len(dev) and run.tasks >= 4
    assert set(run.labels) == {"dspy Evaluate"}
    assert [c["score"] for c in on_dask.candidate_programs] == \
        [c["score"] for c in on_threads.candidate_programs]
    assert [as_dict(d) for d in on_dask.demos] == [as_dict(d) for d in on_threads.demos]
    assert progress and progress[-1]["label"] == "dspy Evaluate"
    assert progress[-1]["done"] == progress[-1]["total"] == len(dev)


@pytest.mark.timeout(300)
def test_mipro_runs_its_evaluations_on_the_cluster(cluster_client, llm_server, dspy_settings):
    pytest.importorskip("optuna", reason="MIPROv2 needs optuna (the dspy extra brings it)")
    train, dev = examples("train", 10, seed=2), examples("dev", 10, seed=2)
    optimizer = dspy.MIPROv2(sentiment_metric, auto=None, num_candidates=2,
                             num_threads=2, max_bootstrapped_demos=2, max_labeled_demos=2,
                             verbose=False)
    with dspex.on_cluster() as run:
        best = optimizer.compile(classify(), trainset=train, valset=dev, num_trials=3,
                                 minibatch=False)
    assert isinstance(best, dspy.Predict)
    assert run.batches >= 2 and run.items >= 2 * len(dev)
    assert getattr(best, "score", None) is not None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dspy_optimizer_on_cluster_survives_a_killed_worker(subprocess_cluster, llm_server):
    subprocess_cluster.start(2)
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(2, timeout=60)
    train, dev = examples("train", 8, seed=3), examples("dev", 10, seed=3)

    def search():
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            sentiment_metric, num_candidate_programs=1, max_bootstrapped_demos=2,
            max_labeled_demos=2)
        # no LM cache: every evaluation calls the model, so the kill lands mid-batch
        with dspy.context(lm=server_lm(llm_server, cache=False),
                          adapter=dspex.interop.CompletionAdapter()), \
                dspex.on_cluster(client, chunk_size=2) as run:
            return optimizer.compile(classify(), trainset=train, valset=dev), run

    undisturbed, _ = search()
    killed: list[str] = []

    def kill_when_running() -> None:
        def busy():
            processing = client.processing()
            return any(str(k).startswith("dspy-batch-") for ks in processing.values()
                       for k in ks)

        wait_for(busy, timeout=120, period=0.05, what="a DSPy batch running")
        name = sorted(worker_names(client))[0]
        subprocess_cluster.kill(name)
        killed.append(name)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    disturbed, run = search()
    killer.join(timeout=60)
    assert killed, "no worker was killed"
    assert len(client.scheduler_info()["workers"]) == 1
    assert [c["score"] for c in disturbed.candidate_programs] == \
        [c["score"] for c in undisturbed.candidate_programs]
    assert [as_dict(d) for d in disturbed.demos] == [as_dict(d) for d in undisturbed.demos]
    assert run.batches == 4
