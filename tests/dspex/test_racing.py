"""Racing random search: the exhaustive search's best program for fewer LM calls.

The deterministic test LM of ``tests._helpers`` answers right only with two or more demos
in the prompt: zero-shot and one-demo candidates score 50 %, the others 100 %. Settings
come from ``dspex.context`` as a DSPy user's ``configure`` would give them.
"""

from __future__ import annotations

import functools
import threading

import pytest

from foundation_dask import dspex
from foundation_dask.dspex.evaluate import EvaluationRecord
from foundation_dask.dspex.optimizers import same_programs
from foundation_dask.dspex.racing import (
    DEPTH,
    Pace,
    _behind,
    hardest_first,
    next_whatever_returns,
    race,
    race_rounds,
)
from tests._helpers import (
    Classify,
    counted_needs_demos,
    lm_calls_on_workers,
    make_examples,
    metric,
    needs_demos,
    require_local_model,
)
from tests.support import wait_for


@pytest.mark.timeout(30)
def test_rounds_grow_to_the_whole_set():
    assert race_rounds(30) == [4, 8, 16, 30]
    assert race_rounds(5) == [4, 5]
    assert race_rounds(120, first=10, growth=3) == [10, 30, 90, 120]
    assert race_rounds(0) == []
    with pytest.raises(ValueError, match="growth must be > 1"):
        race_rounds(30, growth=1)


@pytest.mark.timeout(30)
def test_the_stop_rule():
    z = 2.4
    # four straight losses against a leader that got all four right: stopped
    assert _behind([1] * 4, [0] * 4, 30, z) == "behind with confidence"
    # one loss in four is not enough, nor is a tie
    assert _behind([1] * 4, [1, 1, 1, 0], 30, z) is None
    assert _behind([1] * 8, [1] * 8, 30, z) is None
    # half right against all right: not after 4 examples, after 8
    assert _behind([1] * 4, [1, 0, 1, 0], 30, z) is None
    assert _behind([1] * 8, [1, 0] * 4, 30, z) == "behind with confidence"
    # certain: even all 2 examples left right cannot close a gap of 3
    assert _behind([1] * 28, [1] * 25 + [0] * 3, 30, float("inf")) == "cannot catch up"
    assert _behind([1] * 28, [1] * 26 + [0] * 2, 30, float("inf")) is None
    # the whole set seen: the scores decide, the winner is chosen outside the rule
    assert _behind([1] * 30, [1] * 29 + [0], 30, z) == "cannot catch up"
    # a wider score range asks for more evidence
    assert _behind([1] * 4, [0] * 4, 30, z, low=-1.0, high=1.0) is None


@pytest.mark.timeout(30)
def test_a_candidate_gets_the_examples_the_others_lost_on_first():
    left = [5, 3, 8, 1, 9]   # the race's order
    others = [{3: 1.0, 8: 0.0, 1: 0.0, 7: 0.0},   # lost on 8 and 1 (7: already seen)
              {8: 0.0, 9: 0.5}]                   # lost on 8, half of 9
    assert hardest_first(left, others, 1.0, 3) == [8, 1, 9]
    # nothing lost anywhere, or nobody else ran: the race's order
    assert hardest_first(left, [{5: 1.0, 3: 1.0}], 1.0, 2) == [5, 3]
    assert hardest_first(left, [], 1.0, 9) == left
    # scores above 1 widen the range: a 1 is then a loss against the best seen
    assert hardest_first([5, 3], [{5: 2.0, 3: 1.0}], 2.0, 1) == [3]
    # a loss of a strong candidate first: the weak one lost 0, 1 and 2 (and wins one in
    # four), the strong one only 3
    weak, strong = {0: 0.0, 1: 0.0, 2: 0.0, 5: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0}
    assert hardest_first([0, 1, 2, 3, 9], [weak, strong], 1.0, 2) == [3, 0]


@pytest.mark.timeout(120)
def test_a_losing_candidate_in_a_race_starts_where_others_lost(cluster_client):
    # candidate 0 was evaluated already (a resumed race) and lost every negative
    # review (odd index); candidate 1 has no demos (always "positive": wrong on every
    # odd index), candidate 2 has demos (all right). Candidate 1 must start on the odd
    # ones and lose there until it stops; in the race's random order it would start
    # with some it gets right.
    valset = make_examples(24)
    with_demos = dspex.Predict(Classify)
    with_demos.demos = make_examples(2, 200)
    done = {(0, i): EvaluationRecord(i, None, float(i % 2 == 0), None, "", 0, 0.0, 0.0)
            for i in range(len(valset))}
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos), cache=False):
        results, standings, _ = race(cluster_client, [dspex.Predict(Classify),
                                                      dspex.Predict(Classify), with_demos],
                                     valset, metric, done=done)
    assert standings[2].reason is None and results[2].score == 100.0
    assert standings[1].reason == "cannot win" and standings[1].examples >= 1
    assert {r.index % 2 for r in results[1].records} == {1} and results[1].score == 0.0


@pytest.mark.timeout(30)
def test_the_pace_of_a_race():
    pace = Pace(window=4)
    assert pace.depth == 1  # nothing came back yet
    # chunks of 0.2 s, 10 ms beyond it when sent to a free thread: one at a time
    for _ in range(4):
        pace.record(0.21, 0.2, free=True)
    assert pace.depth == 1
    # LM cache hits: 2 ms chunks against the same round trip: a second one waits
    for _ in range(4):
        pace.record(0.012, 0.002, free=False)
    assert pace.trip == pytest.approx(0.01) and pace.depth == DEPTH
    # a worker's first chunk (imports, unpickling) says little: 1 until three came back
    first = Pace()
    first.record(0.3, 0.002, free=True)
    first.record(0.012, 0.002, free=True)
    assert first.depth == 1
    first.record(0.012, 0.002, free=True)
    assert first.depth == DEPTH
    # a chunk that waited behind another says nothing of the round trip
    pace.record(0.5, 0.002, free=False)
    assert pace.trip == pytest.approx(0.01)


@pytest.mark.timeout(30)
def test_a_chunk_waits_behind_another_only_when_it_is_next_anyway():
    n, left = 10, [[9], [9], [9]]
    # 0 lost one of 4 and has one example in flight; 1 lost three of 5: even losing
    # the one in flight, 0 (80 % at best) stays ahead of 1 (70 %) and 1 cannot stop it
    scores = [{0: 1, 1: 1, 2: 0, 3: 1}, {0: 0, 1: 0, 2: 0, 3: 1, 4: 1}, {}]
    assert next_whatever_returns(0, scores, {0: [4]}, {0, 1}, left, n)
    # a third candidate not started yet could reach 100 %: it may come first
    assert not next_whatever_returns(0, scores, {0: [4]}, {0, 1, 2}, left, n)
    # two in flight: losing both, 0 (70 %) ties 1, which comes later: still next
    assert next_whatever_returns(0, scores, {0: [4, 5]}, {0, 1}, left, n)
    # from 1's side: 0 comes first whatever 1's chunk returns
    assert not next_whatever_returns(1, scores, {1: [5]}, {0, 1}, left, n)
    # 1 has seen every example but one, all right: winning the last in flight it would
    # end at 100 %, above 0's best (losing its own): 0 could be stopped
    scores[1] = dict.fromkeys(range(9), 1.0)
    assert not next_whatever_returns(0, scores, {0: [4], 1: [9]}, {0, 1}, [[9], []], n)


def _race_watching_held_chunks(client, programs, valset):
    """Race ``programs`` on a DummyLM of 0.2 s a call; the results and, sampled every
    20 ms, the most chunks of this race any worker held (not a chunk an earlier test's
    race left finishing)."""
    held: list[int] = []
    done = threading.Event()
    eval_id = f"held-{len(programs)}-{threading.get_ident()}"

    def watch() -> None:
        while not done.is_set():
            held.append(max((sum(f"evaluate-{eval_id}-" in str(k) for k in keys)
                             for keys in client.processing().values()), default=0))
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with dspex.context(lm=dspex.DummyLM(functools.partial(needs_demos, delay=0.2)),
                           cache=False):
            results, standings, _ = race(client, programs, valset, metric,
                                         eval_id=eval_id)
    finally:
        done.set()
        watcher.join()
    assert len(held) > 10
    return results, standings, held


@pytest.mark.timeout(120)
def test_a_worker_holds_one_long_chunk_at_a_time(cluster_client):
    # model calls of 0.2 s against a round trip of milliseconds: each worker gets its
    # next chunk once its last came back, so every choice sees every result before it.
    # Two candidates right on every example: neither is ever sure to come next (the
    # other may reach 100 % too) until the first has run to the end and the second stops.
    valset = make_examples(12)
    with_demos = dspex.Predict(Classify)
    with_demos.demos = make_examples(2, 200)
    other = dspex.Predict(Classify)
    other.demos = make_examples(3, 300)
    results, standings, held = _race_watching_held_chunks(
        cluster_client, [with_demos, other], valset)
    assert results[0].score == 100.0 and standings[0].reason is None
    assert standings[1].reason == "cannot win" and results[1].score == 100.0
    assert max(held) == 1
    # a candidate alone (the others stopped) is next whatever comes back: its next chunk
    # waits behind the one running, and the worker does not idle between them
    results, standings, held = _race_watching_held_chunks(cluster_client, [with_demos],
                                                          valset)
    assert results[0].score == 100.0 and standings[0].reason is None
    assert max(held) == 2


def _search(racing: bool, **kwargs):
    return dspex.BootstrapFewShotWithRandomSearch(
        metric, num_candidate_programs=6, max_bootstrapped_demos=3, max_labeled_demos=3,
        seed=7, racing=racing, **kwargs)


@pytest.mark.timeout(240)
def test_racing_finds_the_exhaustive_best_with_fewer_lm_calls(cluster_client):
    trainset, valset = make_examples(16), make_examples(40, 100)
    student = dspex.Predict(Classify)
    runs = {}
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos), cache=False):
        for racing in (False, True):
            before = lm_calls_on_workers(cluster_client)
            search = _search(racing)
            best = search.compile(student, trainset=trainset, valset=valset)
            runs[racing] = (search, best, lm_calls_on_workers(cluster_client) - before)
    (ex_search, ex_best, ex_calls), (search, best, calls) = runs[False], runs[True]
    assert best.dump_state() == ex_best.dump_state() and best.score == ex_best.score == 100.0
    assert calls < ex_calls
    # the same teacher runs in both; the race saved evaluations
    assert len(search.history) < len(ex_search.history) == 9 * len(valset)
    frame = {c["seed"]: c for c in best.candidate_programs}
    assert frame[-3]["stopped_after"] is not None  # zero-shot (50 %) stopped early
    assert frame[-3]["reason"] in ("behind with confidence", "cannot win")
    assert frame[-3]["examples"] < len(valset)
    for c in best.candidate_programs:  # whoever ran to the end saw every example
        if c["stopped_after"] is None:
            assert c["examples"] == len(valset)
    # the first candidate at 100 % ran to the end (a later one can only tie: it stops
    # once it has seen enough to be sure of that); none below 100 % did
    exhaustive = {c["seed"]: c["score"] for c in ex_best.candidate_programs}
    finished = {s for s, c in frame.items() if c["stopped_after"] is None}
    assert finished <= {s for s, v in exhaustive.items() if v == 100.0}
    assert next(c["seed"] for c in ex_best.candidate_programs if c["score"] == 100.0) in finished
    # no (candidate, example) evaluated twice
    pairs = list(zip(search.history_frame()["candidate"], search.history_frame()["index"],
                     strict=True))
    assert len(pairs) == len(set(pairs)) == sum(c["examples"] for c in frame.values())
    # below confidence 1 candidates behind on the same examples stop too: here (50 %
    # against 100 %) that is right, and the result is the same
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos), cache=False):
        confident = _search(True, racing_confidence=0.9)
        assert confident.compile(student, trainset=trainset, valset=valset).dump_state() == (
            ex_best.dump_state())


@pytest.mark.timeout(240)
def test_certain_racing_and_a_metric_outside_zero_one(cluster_client):
    trainset, valset = make_examples(16), make_examples(24, 100)
    student = dspex.Predict(Classify)
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos), cache=False):
        exhaustive = _search(False).compile(student, trainset=trainset, valset=valset)
        # confidence 1: only what cannot catch up stops, so the result is exhaustive's
        certain = _search(True, racing_confidence=1.0)
        best = certain.compile(student, trainset=trainset, valset=valset)
        assert best.dump_state() == exhaustive.dump_state()
        assert all(s.reason in (None, "cannot win") for s in certain.standings)
        # a candidate stopped before it had seen the whole set
        assert all(s.stopped_after < len(valset) for s in certain.standings if s.reason)

        def penalty(example, prediction, trace=None):  # -1 wrong, 2 right
            return 2.0 if metric(example, prediction) else -1.0

        def penalty_search(racing: bool):
            return dspex.BootstrapFewShotWithRandomSearch(
                penalty, num_candidate_programs=6, max_bootstrapped_demos=3,
                max_labeled_demos=3, seed=7, metric_threshold=2.0, racing=racing)

        ex_pen = penalty_search(False).compile(student, trainset=trainset, valset=valset)
        pen = penalty_search(True).compile(student, trainset=trainset, valset=valset)
    assert pen.dump_state() == ex_pen.dump_state() and pen.score == ex_pen.score == 200.0
    with pytest.raises(ValueError, match="racing_confidence must be between 0.5 and 1"):
        _search(True, racing_confidence=0.2)


@pytest.mark.timeout(240)
def test_the_same_program_twice_is_evaluated_once(cluster_client):
    # one training example: every bootstrapped candidate gets the same single demo
    trainset, valset = make_examples(1), make_examples(12, 100)
    student = dspex.Predict(Classify)
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos), cache=False):
        exhaustive = _search(False).compile(student, trainset=trainset, valset=valset)
        search = _search(True)
        best = search.compile(student, trainset=trainset, valset=valset)
    assert best.dump_state() == exhaustive.dump_state() and best.score == exhaustive.score
    same = [c for c in best.candidate_programs if c["reason"] == "same program"]
    assert len(same) >= 5 and all(c["examples"] == 0 and c["score"] is None for c in same)
    seen = {c["seed"] for c in best.candidate_programs if c["examples"]}
    assert {h["seed"] for h in search.history} == seen


@pytest.mark.timeout(30)
def test_same_programs_compares_demos_and_lms():
    one, two = dspex.Predict(Classify), dspex.Predict(Classify)
    assert same_programs([one, two]) == {1: 0}
    two.demos = make_examples(1)
    assert same_programs([one, two, two.deepcopy()]) == {2: 1}
    three = one.deepcopy()
    three.lm = dspex.DummyLM(["positive"], temperature=0.7)
    assert same_programs([one, three]) == {}


@pytest.mark.timeout(600)
def test_a_race_on_the_local_model_prepares_each_candidate_on_one_worker(cluster_client):
    """The other workers running a candidate start from the model state of its
    instructions and demos made on the first; the race's result is the one without."""
    require_local_model()
    import dask

    from foundation_dask.dspex.datasets import (
        SENTIMENT_INSTRUCTIONS,
        load_sentiment,
        sentiment_metric,
    )

    train, dev, _ = load_sentiment(n_train=8, n_dev=12, n_test=1)
    signature = dspex.Signature("review -> sentiment", SENTIMENT_INSTRUCTIONS)
    programs = []
    for demos in ([], train[:4], train[4:8]):
        predict = dspex.Predict(signature)
        predict.demos = list(demos)
        programs.append(predict)

    def received() -> tuple[int, int]:
        stats = cluster_client.run(dspex.LocalLM.process_stats).values()
        return (sum(s["states_received"] for s in stats),
                sum(s["states_refused"] for s in stats))

    winners = {}
    for share in (True, False):
        before = received()
        with (dask.config.set({"foundation.dspex.share-model-states": share}),
              dspex.context(lm=dspex.LocalLM(cache=False))):
            results, standings, _ = race(cluster_client, programs, dev, sentiment_metric)
        after = received()
        # the winner: the highest score of those not stopped, the first on ties
        winners[share] = max(((r.score, -p) for p, (r, st) in enumerate(
            zip(results, standings, strict=True)) if st.reason is None))
        if share:
            assert after[0] > before[0] and after[1] == before[1]
        else:
            assert after == before
        # the states put aside were results of tasks the race held: released
        wait_for(lambda: not [k for k in cluster_client.who_has() if "model-states" in str(k)],
                 timeout=30, what="the race's model states released")
    assert winners[True] == winners[False]
