"""Client: racing evaluation of candidate programs (best first, stops as results stream in).

Exhaustive search evaluates every candidate on every validation example. A race
evaluates the candidates on the validation examples in one seeded random order (so the
first examples a candidate saw are a random sample of the set), or, when it makes only
certain stops (``confidence`` 1), each candidate on the examples the others lost most
on first (:func:`hardest_first`: a candidate that will lose loses there first), and
stops a candidate as soon as it cannot win; there are no rounds to wait for: each
chunk's result is weighed when it arrives, and the free evaluation slots go to the
candidates still running.

A candidate stops when

* **it cannot win**: even the highest score on every example it has not seen leaves
  its final score (rounded as exhaustive search rounds it) below another candidate's
  lowest possible one, or equal to it when that candidate comes first (exhaustive
  search takes the first on ties). Scores are taken to lie in [0, 1], the range DSPy
  metrics give, widened to every score seen. This rule is certain: the race returns the
  program exhaustive search returns, with the same score.
* **it is behind with confidence** ``confidence`` (below 1): on the first ``n``
  examples of the order (``n`` each size of :func:`race_rounds`: 4, 8, 16... examples),
  the mean of the paired differences to a candidate that has seen them minus ``z``
  standard errors is above 0 (:func:`_behind`: finite-population correction, one
  pseudo-observation spanning the score range, ``z`` Bonferroni's over the other
  candidates).

Which candidate gets a worker's free room: first any but one whose instructions and
demos another worker is evaluating now (see below), then the one that can still reach
the highest score (the fewest examples lost so far), then, on ties, the earliest (ties go to the
earlier candidate: a later one that can at best tie it stops as soon as it has run to
the end, while an earlier one must be seen through), then the one this worker already
runs (its model still holds the prompt prefix, instruction and demos, in its KV cache),
then one no other worker runs, then the one sent the most examples. So a strong
candidate runs ahead and finishes early, and its final score is the bar the others must
be able to beat: a candidate no better than it stops at its first examples lost beyond
the leader's. Chunks are of one example by default, each sent to the worker chosen
for it (any other may take it when that one is gone). Each worker thread holds one
chunk at a time while chunks take long next to the round trip of a result (a model
call of 0.1 s against a few milliseconds): every choice then sees every result before
it, and fewer evaluations go to candidates about to stop. While chunks are short (LM
cache hits), it holds :data:`DEPTH` (one running, one waiting), so it does not idle
while the client weighs a result and sends the next (:class:`Pace`); a second chunk also
waits behind a long one when its candidate comes next whatever the results in flight say
(:func:`next_whatever_returns`: a leader far ahead, or the last candidate running).

A candidate's first chunk puts the state of the worker's local models aside
(:func:`~foundation_dask.dspex.lm.local.offer_states`; with a ``LocalLM``, the KV cache
of the candidate's instructions and demos), a task on that worker returns it
(:func:`~foundation_dask.dspex.lm.local.take_offer`), and the candidate's chunks sent to
other workers depend on that task: Dask moves the state to them and they start from it
instead of evaluating the prefix again (``foundation.dspex.share-model-states``). A
worker takes another candidate rather than wait for a state still being made.

A stopped candidate's chunks not read yet are cancelled (the one waiting on a worker
never runs; one that is running finishes there, unread). The race is an ElixirScope
span (``race``) and every stop a ``race_stop`` span (candidate, examples seen, reason,
the candidate that beat it); progress counts the evaluations of the race, its total
shrinking as candidates stop; :class:`Standing` says
for each candidate how many examples it saw and why it stopped.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from distributed import as_completed

from foundation_dask import config
from foundation_dask.dspex.evaluate import (
    ChunkSubmitter,
    EvaluationRecord,
    EvaluationResult,
    Tally,
    _Progress,
    chunk_size_for,
    worker_threads,
)
from foundation_dask.dspex.interop._pickling import ship
from foundation_dask.dspex.lm.local import take_offer
from foundation_dask.dspex.snapshot import SettingsSnapshot, snapshot_settings
from foundation_dask.errors import BudgetExhaustedError
from foundation_dask.tracecontext import SpanScope

if TYPE_CHECKING:
    import distributed

__all__ = ["Pace", "RaceRound", "Standing", "behind_with_confidence", "hardest_first",
           "next_whatever_returns", "race", "race_rounds"]


@dataclass
class Standing:
    """Where one candidate of a race ended.

    Attributes
    ----------
    candidate
        Its position in the race.
    examples
        Validation examples it was evaluated on.
    score
        Its mean score on them (0-100): for one stopped by the certain rule, on the
        examples the others lost most on, so lower than on a random sample.
    stopped_after
        The examples it had seen when it stopped (None: it ran to the end).
    reason
        Why it stopped: ``"cannot win"``, ``"behind with confidence"`` or
        ``"same program"`` (as an earlier candidate: not evaluated again).
    leader
        The candidate that beat it.
    """

    candidate: int
    examples: int
    score: float
    stopped_after: int | None = None
    reason: str | None = None
    leader: int | None = None


@dataclass
class RaceRound:
    """One decision of a race that stopped candidates: its number, the examples the
    stopped candidate had seen, who was running, who stopped, who beat them."""

    round: int
    examples: int
    running: list[int]
    stopped: list[int] = field(default_factory=list)
    leader: int | None = None


#: Chunks sent to each worker thread at once while chunks are short: one running, one
#: waiting behind it, so the thread does not idle while the client weighs the result
#: and sends the next.
DEPTH = 2
#: Chunks this many times longer than the round trip of a result are long: a worker
#: thread then holds one at a time. It idles for the round trip after each (at most a
#: fifth of the time), while holding two sends about a fifth more evaluations to
#: candidates that were about to stop.
LONG = 4


class Pace:
    """How many chunks each worker thread of a race holds at once: 1 while the median of
    the last ``window`` chunks took at least :data:`LONG` times the shortest round trip
    seen (the time a chunk sent to a free thread took beyond its evaluations: what the
    thread idles between two chunks when it holds one), else :data:`DEPTH`; 1 until
    ``samples`` round trips were seen (a worker's first task, which imports and
    unpickles, takes longer).

    At 1 every choice of what to evaluate next sees every result before it: on the
    demo task's 30/30 split 60 evaluations against 76 holding two (both measured in
    one run)."""

    def __init__(self, window: int = 8, samples: int = 3):
        self.window, self.samples = window, samples
        self.chunks: list[float] = []
        self.trip: float | None = None
        self.trips = 0

    def record(self, elapsed: float, compute: float, free: bool) -> None:
        """A chunk came back ``elapsed`` seconds after it was sent, its evaluations
        having taken ``compute``; ``free``: a worker thread was free to start it."""
        self.chunks = [*self.chunks[1 - self.window:], compute]
        if free:
            extra = max(0.0, elapsed - compute)
            self.trip = extra if self.trip is None else min(self.trip, extra)
            self.trips += 1

    @property
    def depth(self) -> int:
        if not self.chunks or self.trip is None or self.trips < self.samples:
            return 1
        return 1 if statistics.median(self.chunks) >= LONG * self.trip else DEPTH


@dataclass
class _Sent:
    """A chunk of a race sent and not read yet: its candidate, the worker it was sent to,
    its examples, when it was sent and whether a worker thread was free to start it."""

    candidate: int
    worker: str | None
    examples: list[int]
    when: float
    free: bool


def race_rounds(n_examples: int, first: int | None = None, growth: float = 2.0) -> list[int]:
    """The examples seen after each round: ``first`` (default ``max(4, n / 8)``), then
    ``growth`` times more, up to ``n_examples``."""
    if growth <= 1:
        raise ValueError(f"racing growth must be > 1 (each round sees more examples), "
                         f"not {growth}")
    if n_examples <= 0:
        return []
    n = min(n_examples, max(1, first if first is not None else max(4, math.ceil(n_examples / 8))))
    sizes = [n]
    while sizes[-1] < n_examples:
        sizes.append(min(n_examples, max(sizes[-1] + 1, math.ceil(sizes[-1] * growth))))
    return sizes


def behind_with_confidence(diffs: Sequence[float], z: float, spread: float,
                           population: int | None = None) -> bool:
    """Whether paired differences ``diffs`` (the leader's value minus the other's, on the
    same examples or rounds) say the leader is ahead: their mean minus ``z`` standard
    errors is above 0. The variance gets one pseudo-observation of ``spread`` (so a few
    equal differences alone prove nothing); ``population``: the differences are a
    sample drawn without replacement from that many (finite-population correction, no
    error left once all are seen). Also the rule of :func:`foundation_dask.dspex.tune`."""
    n = len(diffs)
    if n < 2 or (population is not None and n >= population):
        return False
    mean = sum(diffs) / n
    variance = (sum((d - mean) ** 2 for d in diffs) + spread ** 2) / n
    correction = 1.0 if population is None else (population - n) / (population - 1)
    return mean - z * math.sqrt(variance / n * correction) > 0


def _behind(leader: list[float], other: list[float], n_total: int, z: float,
            low: float = 0.0, high: float = 1.0) -> str | None:
    """Why ``other`` cannot win against ``leader`` (paired scores on the same first
    examples of ``n_total``, each in ``[low, high]``), or None."""
    left = n_total - len(leader)
    if sum(other) + left * high < sum(leader) + left * low:
        return "cannot catch up"
    diffs = [a - b for a, b in zip(leader, other, strict=True)]
    if behind_with_confidence(diffs, z, high - low, n_total):
        return "behind with confidence"
    return None


def _final_bounds(scores: dict[int, float], n_total: int, low: float,
                  high: float) -> tuple[float, float]:
    """The lowest and highest final score (percent, rounded as exhaustive search rounds
    it) of a candidate with ``scores`` by example index, ``n_total`` examples in all."""
    seen = sum(scores[i] for i in sorted(scores))
    left = n_total - len(scores)
    return (round(100.0 * (seen + left * low) / n_total, 2),
            round(100.0 * (seen + left * high) / n_total, 2))


def hardest_first(left: Sequence[int], others: Sequence[dict[int, float]], high: float,
                  n: int, low: float = 0.0) -> list[int]:
    """The ``n`` examples of ``left`` (example indices, in the race's order) the other
    candidates lost most on (``high`` minus their score, summed over ``others``, each
    ``{example: score}``, scores in ``[low, high]``), ties in the order of ``left``: a
    candidate that will lose loses there first, so it stops sooner.

    A candidate's losses weigh as much as the square of its accuracy so far (smoothed:
    one win and one loss added): a strong candidate losing an example says it is hard,
    a weak one (which loses half of them) little."""
    span = (high - low) or 1.0

    def weight(sc: dict[int, float]) -> float:
        accuracy = (sum(s - low for s in sc.values()) / span + 1) / (len(sc) + 2)
        return accuracy * accuracy

    weights = [(sc, weight(sc)) for sc in others if sc]

    def lost(i: int) -> float:
        return sum(w * (high - sc[i]) for sc, w in weights if i in sc)
    return [i for _, i in sorted(enumerate(left), key=lambda t: (-lost(t[1]), t[0]))[:n]]


def next_whatever_returns(p: int, scores: Sequence[dict[int, float]],
                          flying: dict[int, list[int]], running: set[int],
                          left: Sequence[Sequence[int]], n_total: int, low: float = 0.0,
                          high: float = 1.0) -> bool:
    """Whether candidate ``p`` is the next to run whatever the examples in flight
    (``flying``: candidate -> examples sent, not read) score: even losing all of its
    own it stays ahead of every other running candidate that has examples ``left``
    (on the highest reachable score, the earlier on ties), and none of their results
    can stop it under the certain rule. ``scores``: each candidate's
    ``{example: score}``."""
    def bounds(q: int, flown: float) -> tuple[float, float]:
        assumed = dict(scores[q])
        assumed.update((i, flown) for i in flying.get(q, ()))
        return _final_bounds(assumed, n_total, low, high)

    hi = bounds(p, low)[1]
    for q in running - {p}:
        lo = bounds(q, high)[0]
        if hi < lo or (hi == lo and q < p):
            return False  # a result in flight could stop p
        if left[q] and (_final_bounds(scores[q], n_total, low, high)[1], -q) > (hi, -p):
            return False  # q could come first
    return True


def race(client: distributed.Client, programs: Sequence[Any], devset: Sequence[Any],
         metric: Callable, *, confidence: float = 1.0, first: int | None = None,
         growth: float = 2.0, seed: int = 0,
         done: dict[tuple[int, int], EvaluationRecord] | None = None,
         max_errors: int | None = None, display_progress: bool = False,
         label: str = "race", eval_id: str | None = None,
         on_round: Callable[[RaceRound], None] | None = None,
         chunk_size: int | str = "auto", workers: Sequence[str] | None = None,
         lm: Any = None, failure_score: float = 0.0,
         carried: SettingsSnapshot | None = None,
         progress_channel: str | None = "telemetry", on_record: Callable | None = None,
         on_records: Callable | None = None, on_chunk: Callable | None = None,
         same_as: dict[int, int] | None = None,
         ) -> tuple[list[EvaluationResult], list[Standing], list[RaceRound]]:
    """Race ``programs`` on ``devset``: results, standings and stops.

    Parameters
    ----------
    client, programs, devset, metric
        As :func:`~foundation_dask.dspex.evaluate.evaluate_many`. Scores are taken to lie
        in [0, 1] (a bool or a fraction), a range widened to every score seen.
    confidence
        How sure a stop must be (0.5-1; 1 stops only candidates that cannot win).
    first, growth
        The prefixes the confidence rule looks at (:func:`race_rounds`).
    seed
        Seeds the order of the examples.
    done
        Records made already, by (candidate, example index): used, not redone.
    max_errors
        Stop the race (``EvaluationError``) once this many examples failed in all.
    chunk_size
        Examples per task (``"auto"``: 1, so that every result can stop a candidate,
        unless the dask config ``foundation.dspex.evaluate-chunk-size`` is a number).
    on_round
        Called with a :class:`RaceRound` each time candidates stop.
    workers, lm, failure_score, carried, progress_channel, on_record, on_records, on_chunk
        As :func:`~foundation_dask.dspex.evaluate.evaluate_many`.
    same_as
        Candidate -> an earlier candidate that is the same program (the same demos,
        instructions and LMs): it would give the same answers, so it can at best tie
        and is stopped before its first example (``"same program"``).

    Returns
    -------
    results
        One :class:`~foundation_dask.dspex.evaluate.EvaluationResult` per program, over
        the examples it saw.
    standings
        One :class:`Standing` per program.
    rounds
        One :class:`RaceRound` per decision that stopped candidates.
    """
    if not 0.5 <= confidence <= 1:
        raise ValueError(f"racing confidence must be between 0.5 and 1, not {confidence}")
    n_total, k = len(devset), len(programs)
    order = list(range(n_total))
    random.Random(seed).shuffle(order)
    eval_id = eval_id or uuid.uuid4().hex[:12]
    carried = carried if carried is not None else snapshot_settings()
    z = (math.inf if confidence >= 1
         else NormalDist().inv_cdf(1 - (1 - confidence) / max(1, k - 1)))
    looks = race_rounds(n_total, first, growth)
    # "auto": 1 example per task (every result can stop a candidate), unless the dask
    # config foundation.dspex.evaluate-chunk-size says a number
    size = chunk_size_for(client, 1, chunk_size, workers)
    done = dict(done or {})
    t0 = time.perf_counter()
    submit = ChunkSubmitter(client, metric, failure_score, lm, carried, eval_id, workers)
    shipped = [ship(program) for program in programs]
    progress = _Progress(n_total * k, display_progress, label)
    tally = Tally(list(range(k)), progress, client=client, eval_id=eval_id, label=label,
                  channel=progress_channel, max_errors=max_errors, on_record=on_record,
                  on_records=on_records, on_chunk=on_chunk)
    tally.resume(done)
    scores: list[dict[int, float]] = [{} for _ in range(k)]
    for (p, i), record in done.items():
        if 0 <= p < k:
            scores[p][i] = record.score
    running = set(range(k))
    standings = [Standing(p, 0, 0.0) for p in range(k)]
    stops: list[RaceRound] = []
    # each candidate's examples not sent yet, in ``order``
    left = [[i for i in order if i not in scores[p]] for p in range(k)]
    futures: dict[Any, _Sent] = {}              # chunk future -> what was sent, where
    threads = worker_threads(client, workers)   # address -> threads evaluating
    seen_workers = [time.monotonic()]
    pace = Pace()
    ran: dict[str | None, set[int]] = {}        # worker -> the candidates sent there
    # candidate -> the future of the local model states its first chunk left on the
    # worker that ran it (take_offer): the other workers start from them
    source: dict[int, Any] = {}
    share = bool(config.get("dspex.share-model-states"))
    on_worker: dict[str | None, int] = {}       # worker -> chunks sent there, not yet read
    owner: dict[str | None, int] = {}           # worker -> the candidate sent there last
    low, high = 0.0, 1.0

    def prefix(p: int) -> int:
        """How many examples of ``order`` candidate ``p`` has, from the first on."""
        n = 0
        while n < n_total and order[n] in scores[p]:
            n += 1
        return n

    def stop(p: int, why: str, by: int, attrs: dict[str, Any]) -> None:
        running.discard(p)
        standings[p].stopped_after, standings[p].reason = len(scores[p]), why
        standings[p].leader = by
        with SpanScope("race_stop", "span", {"candidate": p, "examples": len(scores[p]),
                                              "reason": why, "leader": by}):
            pass
        attrs["stopped"].append(p)
        event = RaceRound(len(stops), len(scores[p]), sorted(running | {p}), [p], by)
        stops.append(event)
        # its chunks not read yet are cancelled: those still waiting on a worker never
        # run, and no result of it is read from now on
        mine = [f for f, c in futures.items() if c.candidate == p]
        for f in mine:
            release(f)
        if p in source:
            mine.append(source.pop(p))
        if mine:
            client.cancel(mine)
        # the plan shrinks: this candidate's examples not evaluated will never run
        progress.total -= n_total - len(scores[p])
        if on_round is not None:
            on_round(event)

    def release(fut: Any) -> int:
        """Forget a chunk sent (its result read, or cancelled): its candidate."""
        chunk = futures.pop(fut)
        on_worker[chunk.worker] -= 1
        return chunk.candidate

    def decide(attrs: dict[str, Any]) -> None:
        """Stop every running candidate that cannot win, or is behind with confidence."""
        bounds = {p: _final_bounds(scores[p], n_total, low, high) for p in range(k)}
        for p in sorted(running):
            if len(running) == 1:
                return
            if len(scores[p]) == n_total:
                continue  # it ran to the end: the scores decide, as in exhaustive search
            hi = bounds[p][1]
            # any candidate's lowest final score is a bar the winner reaches, so one
            # stopped by the confidence rule still counts
            for q in range(k):
                lo = bounds[q][0]
                if q != p and (hi < lo or (hi == lo and q < p)):
                    stop(p, "cannot win", q, attrs)
                    break
        if confidence >= 1:
            return
        lengths = {p: prefix(p) for p in range(k)}
        for p in sorted(running):
            if len(running) == 1 or lengths[p] < 2:
                continue
            n = max(m for m in [0, *looks] if m <= lengths[p])
            if n < 2 or n >= n_total:
                continue
            mine = [scores[p][order[j]] for j in range(n)]
            for q in sorted(running, key=lambda q: -sum(
                    scores[q].get(order[j], 0.0) for j in range(n))):
                if q == p or lengths[q] < n:
                    continue
                theirs = [scores[q][order[j]] for j in range(n)]
                if _behind(theirs, mine, n_total, z, low, high) == "behind with confidence":
                    stop(p, "behind with confidence", q, attrs)
                    break

    def next_examples(p: int) -> list[int]:
        """The next chunk of candidate ``p`` (the confidence rule reads prefixes of
        ``order``; the certain rule any examples: the hardest first)."""
        if confidence < 1:
            chunk, left[p] = left[p][:size], left[p][size:]
        else:
            chunk = hardest_first(left[p], [sc for q, sc in enumerate(scores) if q != p],
                                  high, size, low)
            left[p] = [i for i in left[p] if i not in chunk]
        return chunk

    def sure(p: int, w: str | None) -> bool:
        """Whether a chunk of ``p`` may wait behind the one running on ``w``."""
        if confidence < 1 or p not in ran.get(w, ()):
            return False
        flying: dict[int, list[int]] = {}
        for c in futures.values():
            flying.setdefault(c.candidate, []).extend(c.examples)
        return next_whatever_returns(p, scores, flying, running, left, n_total, low, high)

    def fill() -> None:
        """Give the free room of the workers to the running candidates, best first, in
        the order of the module's docstring (reachable score, earliest, the worker's
        own candidate, one no other worker runs, most seen). While a worker thread holds
        one chunk at a time (:class:`Pace`), a second, of a candidate that worker ran
        before, waits behind it when that candidate is the next whatever the chunks in
        flight return (:func:`next_whatever_returns`): the thread does not idle between
        the two."""
        if time.monotonic() - seen_workers[0] > 2.0:  # workers joined or left
            threads.clear()
            threads.update(worker_threads(client, workers))
            seen_workers[0] = time.monotonic()
        room = dict(threads) or {None: 1}  # type: ignore[dict-item]
        depth = pace.depth
        while True:
            free = [w for w in room if on_worker.get(w, 0) < depth * room[w]]
            ahead = not free  # only a chunk sure to be next may wait behind a running one
            if ahead:
                free = [w for w in room if on_worker.get(w, 0) < DEPTH * room[w]]
            ready = [p for p in running if left[p]]
            if not free or not ready:
                return
            w = min(free, key=lambda w: (on_worker.get(w, 0) / room[w], str(w)))
            others = {q for v, q in owner.items() if v != w and on_worker.get(v, 0)}
            mine = ran.setdefault(w, set())
            p = max(ready, key=lambda p: (p in mine or p not in source or source[p].done(),
                                          _final_bounds(scores[p], n_total, low, high)[1],
                                          -p, owner.get(w) == p, p not in others,
                                          -len(left[p])))
            if ahead and not sure(p, w):
                return
            chunk = [(i, devset[i]) for i in next_examples(p)]
            offer = states = None
            if share and w is not None and len(room) > 1 and p not in mine:
                if p in source:
                    states = source[p]
                else:
                    offer = f"{eval_id}-{p}"
            fut = submit(shipped[p], p, chunk, worker=w, offer=offer, states=states)
            if offer is not None:
                source[p] = client.submit(take_offer, offer, fut, key=f"model-states-{offer}",
                                          workers=[w], allow_other_workers=True, pure=False)
            mine.add(p)
            futures[fut] = _Sent(p, w, [i for i, _ in chunk], time.perf_counter(),
                                 on_worker.get(w, 0) < room[w])
            owner[w] = p
            on_worker[w] = on_worker.get(w, 0) + 1

    attrs: dict[str, Any] = {"candidates": k, "examples": n_total, "stopped": []}
    with SpanScope("race", "span", attrs, propagate=True):
        for p, q in sorted((same_as or {}).items()):
            if p in running and q < p and len(running) > 1:
                stop(p, "same program", q, attrs)
        seen_scores = [s for sc in scores for s in sc.values()]
        low, high = min([0.0, *seen_scores]), max([1.0, *seen_scores])
        decide(attrs)
        fill()
        # results gathered as they finish, on the client's event loop
        finished = as_completed(list(futures), loop=client.loop, with_results=True)
        try:
            for fut, result in finished:
                if fut not in futures:
                    continue  # a chunk of a candidate stopped since: cancelled, not read
                when, free = futures[fut].when, futures[fut].free
                p = release(fut)  # its result is read once: the cluster may forget it
                try:
                    records = tally.read(p, fut, result)
                except BudgetExhaustedError:
                    tally.drain({f: c.candidate for f, c in futures.items()})
                    raise
                pace.record(time.perf_counter() - when, sum(r.duration for r in records),
                            free)
                for r in records:
                    scores[p][r.index] = r.score
                    done[(p, r.index)] = r
                    low, high = min(low, r.score), max(high, r.score)
                if p in running:
                    decide(attrs)
                before = set(futures)
                fill()
                for new in set(futures) - before:
                    finished.add(new)
                # forgotten only now: the message that releases its key goes out after
                # the new chunks' (the client batches messages sent within 10 ms)
                del fut, result
        finally:
            remaining = [f for f in futures if not f.done()] + list(source.values())
            source.clear()
            if remaining:
                client.cancel(remaining)
        # the last stops shrank the plan after the last result was read: the progress
        # reaches its end
        tally.report()
        leader = max(running, key=lambda p: (_final_bounds(scores[p], n_total, low, high)[0],
                                              -p)) if running else None
        attrs.update(leader=leader, evaluations=tally.n_done)
    wall = time.perf_counter() - t0
    results = [tally.result(p, devset, wall) for p in range(k)]
    for p, res in enumerate(results):
        standings[p].examples, standings[p].score = len(scores[p]), res.score
    return results, standings, stops
