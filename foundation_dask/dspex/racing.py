"""Client: racing evaluation of candidate programs (successive rounds, confidence bounds).

Exhaustive search evaluates every candidate on every validation example. A race
evaluates every candidate on a first slice of the validation set (examples in a seeded
random order, so a slice is a random sample of the set), then drops the candidates that
cannot catch the leader, gives the survivors the next, larger slice, and so on until the
survivors have seen the whole set. The winner is the survivor with the best score on the
whole set (the first on ties, as exhaustive search), so every candidate still running at
the end is compared exactly as exhaustive search compares them; a candidate stops early
only when

* **it cannot catch up** whatever the rest of the set gives (its score sum plus the
  highest score for each example left is below the leader's sum plus the lowest for
  each: certain for scores in [0, 1], the range DSPy metrics give, widened to any score
  seen outside it), or
* **the leader is better with confidence** ``confidence``: the mean of the paired
  differences (leader's score minus the candidate's on the same examples) minus ``z``
  standard errors is above 0. The standard error is that of a sample drawn without
  replacement from the validation set (finite-population correction, so it is 0 once
  the whole set is seen), its variance given one pseudo-observation spanning the score
  range (a run of a few losses alone does not stop a candidate), and ``z`` is
  Bonferroni's for the comparisons of a round.

Each round is one :func:`~foundation_dask.dspex.evaluate.evaluate_many` call: the slices
of all running candidates are in flight together on the cluster. Each round is an
ElixirScope span (``race_round``, with the candidates running and stopped), progress
counts the evaluations of the whole race, and :class:`Standing` says for each candidate
how many examples it saw and why it stopped.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from foundation_dask.dspex.evaluate import (
    EvaluationRecord,
    EvaluationResult,
    _Progress,
    evaluate_many,
)
from foundation_dask.tracecontext import SpanScope

if TYPE_CHECKING:
    import distributed

__all__ = ["RaceRound", "Standing", "race", "race_rounds"]


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
        Its mean score on them (0-100).
    stopped_after
        The round after which it stopped (None: it ran to the end).
    reason
        Why it stopped: ``"cannot catch up"`` or ``"behind with confidence"``.
    leader
        The candidate that led when it stopped.
    """

    candidate: int
    examples: int
    score: float
    stopped_after: int | None = None
    reason: str | None = None
    leader: int | None = None


@dataclass
class RaceRound:
    """One round: the examples seen after it, who ran, who stopped, who led."""

    round: int
    examples: int
    running: list[int]
    stopped: list[int] = field(default_factory=list)
    leader: int | None = None


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


def _behind(leader: list[float], other: list[float], n_total: int, z: float,
            low: float = 0.0, high: float = 1.0) -> str | None:
    """Why ``other`` cannot win against ``leader`` (paired scores on the same examples,
    each in ``[low, high]``), or None."""
    n = len(leader)
    left = n_total - n
    if sum(other) + left * high < sum(leader) + left * low:
        return "cannot catch up"
    if n >= n_total or n < 2:
        return None
    diffs = [a - b for a, b in zip(leader, other, strict=True)]
    mean = sum(diffs) / n
    variance = (sum((d - mean) ** 2 for d in diffs) + (high - low) ** 2) / n
    se = math.sqrt(variance / n * (n_total - n) / (n_total - 1))
    return "behind with confidence" if mean - z * se > 0 else None


def race(client: distributed.Client, programs: Sequence[Any], devset: Sequence[Any],
         metric: Callable, *, confidence: float = 0.95, first: int | None = None,
         growth: float = 2.0, seed: int = 0,
         done: dict[tuple[int, int], EvaluationRecord] | None = None,
         max_errors: int | None = None, display_progress: bool = False,
         label: str = "race", eval_id: str | None = None,
         on_round: Callable[[RaceRound], None] | None = None,
         **kwargs: Any) -> tuple[list[EvaluationResult], list[Standing], list[RaceRound]]:
    """Race ``programs`` on ``devset``: results, standings and rounds.

    Parameters
    ----------
    client, programs, devset, metric
        As :func:`~foundation_dask.dspex.evaluate.evaluate_many`. Scores are taken to lie
        in [0, 1] (a bool or a fraction), a range widened to every score seen.
    confidence
        How sure a stop must be (0.5-1; 1 stops only candidates that cannot catch up).
    first, growth
        Examples in the first round, and how many times more each round sees
        (:func:`race_rounds`).
    seed
        Seeds the order of the examples.
    done
        Records made already, by (candidate, example index): used, not redone (a
        resumed race takes the same decisions again).
    max_errors
        Stop the race (``EvaluationError``) once this many examples failed in all.
    on_round
        Called with each :class:`RaceRound` once its stops are decided.
    **kwargs
        Passed to ``evaluate_many`` (``chunk_size``, ``workers``, ``lm``, ``carried``,
        ``on_record``, ``on_records``, ``on_chunk``, ``progress_channel``...).

    Returns
    -------
    results
        One :class:`~foundation_dask.dspex.evaluate.EvaluationResult` per program, over
        the examples it saw.
    standings
        One :class:`Standing` per program.
    rounds
        The :class:`RaceRound` of each round.
    """
    if not 0.5 <= confidence <= 1:
        raise ValueError(f"racing confidence must be between 0.5 and 1, not {confidence}")
    n_total, k = len(devset), len(programs)
    order = list(range(n_total))
    random.Random(seed).shuffle(order)
    done = dict(done or {})
    eval_id = eval_id or uuid.uuid4().hex[:12]
    z = (math.inf if confidence >= 1
         else NormalDist().inv_cdf(1 - (1 - confidence) / max(1, k - 1)))
    progress = _Progress(n_total * k, display_progress, label)
    running = list(range(k))
    standings = [Standing(p, 0, 0.0) for p in range(k)]
    rounds: list[RaceRound] = []
    results: list[EvaluationResult | None] = [None] * k
    sizes = race_rounds(n_total, first, growth)
    r = 0
    while r < len(sizes):
        n = sizes[r] if len(running) > 1 else n_total  # one left: straight to the whole set
        seen = order[:n]
        stopped_errors = sum(1 for (p, _), rec in done.items()
                             if p not in running and rec.error)
        attrs: dict[str, Any] = {"round": r, "examples": n, "running": list(running)}
        with SpanScope("race_round", "span", attrs, propagate=True):
            round_results = evaluate_many(
                client, [programs[p] for p in running], devset, metric, examples=seen,
                program_ids=running, done=done, progress=progress, eval_id=eval_id,
                label=label,
                max_errors=None if max_errors is None else max(1, max_errors - stopped_errors),
                **kwargs,
            )
            scores: dict[int, list[float]] = {}
            for p, res in zip(running, round_results, strict=True):
                results[p] = res
                for rec in res.records:
                    done[(p, rec.index)] = rec
                by_index = {rec.index: rec.score for rec in res.records}
                scores[p] = [by_index[i] for i in seen]
                standings[p].examples, standings[p].score = n, res.score
            leader = max(running, key=lambda p: (sum(scores[p]), -p))
            seen_scores = [rec.score for rec in done.values()]
            low, high = min([0.0, *seen_scores]), max([1.0, *seen_scores])
            stopped = []
            for p in running:
                why = (None if p == leader else
                       _behind(scores[leader], scores[p], n_total, z, low, high))
                if why is not None:
                    standings[p].stopped_after, standings[p].reason = r, why
                    standings[p].leader = leader
                    stopped.append(p)
            running = [p for p in running if p not in stopped]
            attrs.update(stopped=stopped, leader=leader)
        progress.total -= len(stopped) * (n_total - n)
        progress.base_done += sum(len(scores[p]) for p in stopped)
        progress.base_sum += sum(sum(scores[p]) for p in stopped)
        rounds.append(RaceRound(r, n, sorted(running + stopped), stopped, leader))
        if on_round is not None:
            on_round(rounds[-1])
        if n >= n_total:
            break
        r += 1
    return [res if res is not None else EvaluationResult(
        score=0.0, results=[], records=[], devset=devset, wall_time=0.0, eval_id=eval_id)
        for res in results], standings, rounds
