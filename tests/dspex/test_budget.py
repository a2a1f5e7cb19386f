"""LM budgets and rate limits: exact caps across a cluster of 4 worker processes x 2
threads calling a real OpenAI-compatible HTTP server (with a fake latency); the
optimizers stop with the best program so far; the same budgets in a process without a
cluster; bad budgets and rate limits are refused with clear errors."""

from __future__ import annotations

import logging
import pickle
import uuid
from collections.abc import Iterator

import dask.config
import distributed
import pytest

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.lm.budget import RateLimit, parse_rate_limit
from tests._helpers import Classify, make_examples, metric, needs_demos
from tests.support import ScriptedLMServer, wait_for

N_WORKERS, THREADS = 4, 2
#: Tokens the test server reports for every call (11 prompt + 3 completion).
TOKENS_PER_CALL = 14


@pytest.fixture(autouse=True)
def fresh_settings(tmp_path) -> Iterator[None]:
    dspex.settings.reset()
    with dask.config.set({"foundation.dspex.cache-dir": str(tmp_path / "lm-cache")}):
        yield
    dspex.settings.reset()


@pytest.fixture
def server() -> Iterator[ScriptedLMServer]:
    with ScriptedLMServer.running() as srv:
        srv.reply = lambda body, n: needs_demos(body.get("prompt", ""))
        yield srv


def make_lm(srv: ScriptedLMServer, **kwargs) -> dspex.OpenAICompatibleLM:
    # a model name of its own: no result of another test in the cluster's cache
    options = {"cache": False, "timeout": 30, "max_retries": 0, **kwargs}
    return dspex.OpenAICompatibleLM(f"m-{uuid.uuid4().hex[:8]}", api_base=srv.api_base,
                                    **options)


# -- in a process without a cluster (these run first: no Dask client yet) ------------------


@pytest.fixture
def no_cluster() -> None:
    assert distributed.client._get_global_client() is None, (
        "a Dask client is open: these tests need a process without a cluster")


@pytest.mark.timeout(60)
def test_budget_in_a_process_without_a_cluster(server, no_cluster):
    lm = make_lm(server)
    budget = dspex.Budget(max_calls=3)
    dspex.configure(lm=lm, budget=budget)
    for i in range(3):
        lm(prompt=f"q{i}")
    with pytest.raises(dspex.BudgetExhaustedError) as info:
        lm(prompt="one too many")
    exc = info.value
    assert (exc.limit, exc.cap, exc.spent, exc.budget_id) == ("calls", 3, 3, budget.id)
    assert isinstance(exc, fd.LMError) and "max_calls=3" in str(exc)
    assert len(server.requests) == 3
    spent = budget.spent()
    assert (spent["calls"], spent["tokens"], spent["refused"], spent["in_flight"]) == (
        3, 3 * TOKENS_PER_CALL, 1, 0)
    assert budget.remaining() == {"calls": 0, "tokens": None, "cost": None}
    # the error keeps its attributes across processes
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), back.limit, back.cap, back.spent) == (type(exc), "calls", 3, 3)


@pytest.mark.timeout(60)
def test_cache_hits_are_free_and_tokens_and_cost_caps(server, no_cluster):
    cached = make_lm(server, cache=True)
    budget = dspex.Budget(max_calls=2)
    with dspex.context(budget=budget):
        for _ in range(5):
            assert cached(prompt="same question")  # one call, then cache hits
        cached(prompt="another")
        assert len(server.requests) == 2 and budget.spent()["calls"] == 2
        assert cached(prompt="same question")  # a hit needs no budget left
        with pytest.raises(dspex.BudgetExhaustedError):
            cached(prompt="a third question")
    # tokens: known after a call; none starts once the tokens spent reach the cap
    lm = make_lm(server)
    tokens = dspex.Budget(max_tokens=5 * TOKENS_PER_CALL)
    with dspex.context(budget=tokens):
        for i in range(5):
            lm(prompt=f"t{i}")
        with pytest.raises(dspex.BudgetExhaustedError) as info:
            lm(prompt="t5")
    assert (info.value.limit, info.value.cap, info.value.spent) == ("tokens", 70, 70)
    # cost: 11 prompt tokens at 1.0 and 3 completion tokens at 2.0 per 1,000 = 0.017
    cost = dspex.Budget(max_cost=0.05, price_per_1k_prompt=1.0, price_per_1k_completion=2.0)
    with dspex.context(budget=cost):
        for i in range(3):
            lm(prompt=f"c{i}")
        with pytest.raises(dspex.BudgetExhaustedError) as info:
            lm(prompt="c3")
    assert info.value.limit == "cost" and info.value.spent == pytest.approx(0.051)
    assert cost.spent()["cost"] == pytest.approx(0.051)
    assert len(server.requests) == 2 + 5 + 3


@pytest.mark.timeout(30)
def test_bad_rate_limits_and_budgets_are_refused():
    assert parse_rate_limit("60/min") == RateLimit(60, 60.0)
    assert parse_rate_limit("10/s").period == 1.0
    assert parse_rate_limit("1000/h") == RateLimit(1000, 3600.0)
    assert parse_rate_limit(" 100 / 10s ") == RateLimit(100, 10.0)
    for bad in ("60", "60/fortnight", "abc", "1.5/s", "-1/s", "10/", "/s"):
        with pytest.raises(ValueError, match="does not read as calls per period"):
            parse_rate_limit(bad)
    for bad in ("0/s", "10/0s"):
        with pytest.raises(ValueError, match="allows no call"):
            parse_rate_limit(bad)
    with pytest.raises(TypeError, match="'60/min'"):
        parse_rate_limit(60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'60/min'"):
        dspex.configure(rate_limit="sixty a minute")
    with pytest.raises(ValueError), dspex.context(rate_limit="10/fortnight"):
        pass
    assert dspex.settings.rate_limit is None  # nothing was set
    with pytest.raises(TypeError, match=r"dspex.Budget\(max_calls"):
        dspex.configure(budget=1000)
    with pytest.raises(ValueError, match="must be >= 0"):
        dspex.Budget(max_calls=-1)
    with pytest.raises(TypeError, match="whole number"):
        dspex.Budget(max_calls=1.5)
    with pytest.raises(TypeError, match="whole number"):
        dspex.Budget(max_tokens=True)
    with pytest.raises(ValueError, match="price_per_1k_prompt"):
        dspex.Budget(max_cost=2.5)
    with pytest.raises(ValueError, match="finite"):
        dspex.Budget(max_cost=float("nan"), price_per_1k_prompt=1, price_per_1k_completion=1)
    budget = dspex.Budget(max_calls=5)
    dspex.configure(budget=budget, rate_limit="60/min")
    assert dspex.settings.budget is budget and dspex.settings.rate_limit == RateLimit(60, 60)
    # a copy (what reaches the workers) is the same ledger
    assert pickle.loads(pickle.dumps(budget)).id == budget.id
    assert dspex.Budget(max_calls=5).id != budget.id


# -- on a cluster of 4 worker processes x 2 threads -------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.Client]:
    c = fd.connect(n_workers=N_WORKERS, threads_per_worker=THREADS)
    c.wait_for_workers(N_WORKERS, timeout=120)
    try:
        yield c
    finally:
        fd.close()


def _settled(budget: dspex.Budget) -> dict:
    """The budget's readout once no call is in flight (the last records arrived)."""
    wait_for(lambda: budget.spent()["in_flight"] == 0, timeout=30, what="calls in flight")
    return budget.spent()


@pytest.mark.timeout(180)
def test_call_cap_is_exact_across_workers(cluster, server):
    server.script = [("slow", 0.05)] * 1000
    cap = 25
    budget = dspex.Budget(max_calls=cap)
    dspex.configure(lm=make_lm(server), budget=budget)
    devset = make_examples(120)
    evaluate = dspex.Evaluate(devset=devset, metric=metric, chunk_size=5)
    with pytest.raises(dspex.BudgetExhaustedError) as info:
        evaluate(dspex.Predict(Classify))  # not 95 failed examples: the run stops
    assert (info.value.limit, info.value.cap) == ("calls", cap)
    spent = _settled(budget)
    assert len(server.requests) == cap == spent["calls"]
    assert spent["tokens"] == cap * TOKENS_PER_CALL and spent["refused"] >= 1
    assert dspex.budget_info(budget.id) == spent


@pytest.mark.timeout(180)
def test_cache_hits_spend_nothing_on_the_cluster(cluster, server, tmp_path):
    def use_cache_dir(directory: str) -> None:
        dask.config.set({"foundation.dspex.cache-dir": directory})

    cluster.run(use_cache_dir, str(tmp_path / "worker-cache"))
    budget = dspex.Budget(max_calls=16)
    dspex.configure(lm=make_lm(server, cache=True), budget=budget)
    evaluate = dspex.Evaluate(devset=make_examples(16), metric=metric)
    first = evaluate(dspex.Predict(Classify))
    assert _settled(budget)["calls"] == 16 == len(server.requests)
    again = evaluate(dspex.Predict(Classify))  # every call a cache hit: nothing left needed
    assert again.score == first.score and not again.errors
    assert len(server.requests) == 16 and budget.spent()["calls"] == 16


@pytest.mark.timeout(180)
def test_tokens_cap_on_the_cluster(cluster, server):
    server.script = [("slow", 0.05)] * 1000
    budget = dspex.Budget(max_tokens=10 * TOKENS_PER_CALL)
    dspex.configure(lm=make_lm(server), budget=budget)
    with pytest.raises(dspex.BudgetExhaustedError) as info:
        dspex.Evaluate(devset=make_examples(80), metric=metric)(dspex.Predict(Classify))
    assert info.value.limit == "tokens" and info.value.spent >= 10 * TOKENS_PER_CALL
    spent = _settled(budget)
    # tokens are known after a call: the calls in flight (one per thread) may go past
    assert 10 <= len(server.requests) == spent["calls"] < 10 + N_WORKERS * THREADS


@pytest.mark.timeout(180)
def test_rate_limit_spreads_calls_across_the_cluster(cluster, server):
    per_second = 5
    dspex.configure(lm=make_lm(server), rate_limit=f"{per_second}/s")
    result = dspex.Evaluate(devset=make_examples(20), metric=metric, chunk_size=2)(
        dspex.Predict(Classify))
    assert len(result.records) == 20 and not result.errors
    times = sorted(r["time"] for r in server.requests)
    assert len(times) == 20
    # no window of 1 s holds more than 5 calls: the (5+1)-th call after any call comes a
    # period later (give or take how late the grants reach their callers: 0.2 s here)
    gaps = [times[i + per_second] - times[i] for i in range(len(times) - per_second)]
    assert min(gaps) > 0.8, gaps


@pytest.mark.timeout(300)
def test_random_search_stops_with_the_best_program_so_far(cluster, server, caplog):
    server.script = [("slow", 0.02)] * 2000
    trainset, valset = make_examples(8), make_examples(30, offset=100)
    cap = 50
    budget = dspex.Budget(max_calls=cap)
    dspex.configure(lm=make_lm(server), budget=budget)
    optimizer = dspex.BootstrapFewShotWithRandomSearch(
        metric, num_candidate_programs=2, max_bootstrapped_demos=3, max_labeled_demos=3,
        racing=False)
    with caplog.at_level(logging.INFO, logger="foundation_dask.dspex"):
        best = optimizer.compile(dspex.Predict(Classify), trainset=trainset, valset=valset)
    spent = _settled(budget)
    assert len(server.requests) == cap == spent["calls"]
    assert "exhausted" in optimizer.stopped_reason and best.stopped_reason == (
        optimizer.stopped_reason)
    # the best of the candidates evaluated on at least half as many examples as the most
    most = max(c["examples"] for c in best.candidate_programs)
    evaluated = [c for c in best.candidate_programs if c["examples"] and 2 * c["examples"] >= most]
    assert evaluated and best.score == max(c["score"] for c in evaluated)
    # every evaluation paid for is in the history, also those of the chunk the budget
    # stopped (at most one teacher run per trainset example made the other calls)
    assert len(optimizer.history) >= cap - len(trainset)
    # predicted before the run (5 candidates x 30 + 8 teacher runs), spent after it
    assert optimizer.predicted_cost.calls == 5 * 30 + 8
    assert optimizer.actual_cost["calls"] == cap
    text = caplog.text
    assert "predicted LM cost at most 158 LM calls" in text and "actual LM cost" in text
    assert "the budget has 50 calls left" in text


@pytest.mark.timeout(300)
def test_distributed_optimizer_stops_on_the_budget(cluster, server):
    server.script = [("slow", 0.02)] * 2000
    cap = 40
    budget = dspex.Budget(max_calls=cap)
    dspex.configure(lm=make_lm(server), budget=budget)
    result = dspex.DistributedOptimizer.optimize_program_distributed(
        dspex.Predict(Classify), make_examples(8), metric, valset=make_examples(30, offset=50),
        num_candidate_programs=2, max_bootstrapped_demos=3, max_labeled_demos=3,
        display_progress=False, client=cluster)
    assert result.status == "stopped" and "exhausted" in result.stopped_reason
    assert result.best_program is not None
    assert _settled(budget)["calls"] == cap == len(server.requests)


@pytest.mark.timeout(300)
def test_random_search_out_of_budget_while_bootstrapping(cluster, server):
    budget = dspex.Budget(max_calls=3)  # fewer than the 8 teacher runs
    dspex.configure(lm=make_lm(server), budget=budget)
    optimizer = dspex.BootstrapFewShotWithRandomSearch(
        metric, num_candidate_programs=1, max_bootstrapped_demos=3, max_labeled_demos=3,
        racing=False)
    student = dspex.Predict(Classify)
    best = optimizer.compile(student, trainset=make_examples(8),
                             valset=make_examples(10, offset=100))
    assert "exhausted" in best.stopped_reason and best.score is None
    assert all(not p.demos for _, p in best.named_predictors())  # nothing was scored
    assert _settled(budget)["calls"] == 3 == len(server.requests)
