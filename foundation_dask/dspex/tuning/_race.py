"""Client: the measurement race of ``dspex.tune``: candidates measured in rounds, the
ones behind the leader with confidence stopped (the rule is in
:mod:`foundation_dask.dspex.tuning`)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from foundation_dask.dspex.racing import behind_with_confidence
from foundation_dask.dspex.tuning._clusters import Clusters, Shape, applied
from foundation_dask.errors import TuneError
from foundation_dask.tracecontext import SpanScope

if TYPE_CHECKING:
    import distributed

__all__ = ["Candidate", "Run", "behind", "unit"]

#: The spread every comparison starts with, as if one pair of rounds had differed 2x.
PRIOR_LOG_RATIO = math.log(2.0)


@dataclass
class Candidate:
    """One candidate of a race: its stage, settings, throughput of each round, and when
    and why it stopped."""

    stage: str
    settings: dict[str, Any]
    rates: list[float] = field(default_factory=list)
    stopped_after: int | None = None
    why: str | None = None

    @property
    def rate(self) -> float:
        """The geometric mean of its rounds' throughputs (0 before any)."""
        if not self.rates:
            return 0.0
        return math.exp(sum(math.log(r) for r in self.rates) / len(self.rates))


def behind(leader: list[float], other: list[float], z: float) -> bool:
    """Whether ``leader`` is faster than ``other`` with confidence: their throughputs of
    the same rounds (``other``'s are the last of ``leader``'s), at least two."""
    n = len(other)
    d = [math.log(a / b) for a, b in zip(leader[-n:], other, strict=True)]
    return behind_with_confidence(d, z, PRIOR_LOG_RATIO)


def unit(workload: Any) -> str:
    """What the workload counts (its ``unit`` attribute, else ``"units"``)."""
    return str(getattr(workload, "unit", "units"))


class Run:
    """The measurements of one ``tune`` call.

    Parameters
    ----------
    workload
        ``workload(client) -> units done``.
    clusters
        Where candidates are measured.
    cluster_keys
        The settings that make a cluster's shape.
    deadline
        ``time.monotonic()`` after which no new round starts.
    seed
        Seeds the order of the measurements of a round.
    log
        Where progress lines go.
    """

    def __init__(self, workload: Callable[[distributed.Client], float], clusters: Clusters,
                 cluster_keys: set[str], deadline: float, seed: int,
                 log: Callable[[str], None]):
        self.workload, self.clusters, self.cluster_keys = workload, clusters, cluster_keys
        self.deadline, self.rng, self.log = deadline, random.Random(seed), log
        self.measured = 0

    def shape(self, settings: Mapping[str, Any]) -> Shape:
        """The ``cluster.*`` settings of ``settings``: which cluster measures them."""
        return tuple(sorted((k, v) for k, v in settings.items() if k in self.cluster_keys))

    def shapes(self, cands: list[Candidate]) -> list[Shape]:
        """The shapes of the candidates still running."""
        return [self.shape(c.settings) for c in cands if c.stopped_after is None]

    def measure(self, cand: Candidate) -> float:
        """Time one run of the workload under ``cand``'s settings; its throughput."""
        others = {k: v for k, v in cand.settings.items() if k not in self.cluster_keys}
        client = self.clusters.client(self.shape(cand.settings))
        attrs: dict[str, Any] = {"stage": cand.stage, "settings": dict(cand.settings)}
        with SpanScope("tune_measurement", "span", attrs), applied(client, others), \
                client.as_current():
            t0 = time.perf_counter()
            units = self.workload(client)
            seconds = time.perf_counter() - t0
        if (isinstance(units, bool) or not isinstance(units, (int, float))
                or not math.isfinite(units) or units <= 0):
            raise TuneError(f"tune: the workload returned {units!r}; it must return the "
                            "units of work it did (e.g. examples evaluated), a positive "
                            "number")
        rate = float(units) / max(seconds, 1e-9)
        attrs["rate"] = rate
        cand.rates.append(rate)
        self.measured += 1
        shown = ", ".join(f"{k}={v}" for k, v in cand.settings.items())
        self.log(f"tune [{cand.stage}] {shown}: {rate:.1f} {unit(self.workload)}/s")
        return rate

    def race(self, cands: list[Candidate], repeats: int, confidence: float,
             stop: bool = True, first: bool = False) -> Candidate:
        """Race ``cands`` for up to ``repeats`` rounds and return the winner.

        ``stop``: candidates behind the leader with ``confidence`` stop (else every
        candidate runs every round, the first of a round alternating); ``first``: the
        first round runs even past the deadline.
        """
        z = (math.inf if confidence >= 1
             else NormalDist().inv_cdf(1 - (1 - confidence) / max(1, len(cands) - 1)))
        for r in range(repeats):
            running = [c for c in cands if c.stopped_after is None]
            if len(running) < 2 and r > 0:
                break
            if (r > 0 or not first) and time.monotonic() > self.deadline:
                for c in running:
                    c.why = c.why or "budget"
                break
            if stop:
                self.rng.shuffle(running)
            elif r % 2:
                running.reverse()
            for c in running:
                self.measure(c)
            leader = max(running, key=lambda c: c.rate)
            for c in running:
                if stop and c is not leader and behind(leader.rates, c.rates, z):
                    c.stopped_after, c.why = r + 1, "behind with confidence"
            self.clusters.close(keep=self.shapes(cands))
        return max((c for c in cands if c.stopped_after is None), key=lambda c: c.rate)
