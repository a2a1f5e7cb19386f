"""Client: :func:`tune` and its :class:`TuneResult` (see :mod:`foundation_dask.dspex.tuning`)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foundation_dask import config
from foundation_dask._html import html_repr
from foundation_dask.dspex.tuning._clusters import Clusters, connection_kept
from foundation_dask.dspex.tuning._race import Candidate, Run, unit
from foundation_dask.dspex.tuning._space import check_space, default_space, write_config
from foundation_dask.dspex.tuning.workloads import evaluate_workload
from foundation_dask.errors import TuneError
from foundation_dask.scope.profiling._analysis import ALL_EXTENSIONS, extensions_frame

if TYPE_CHECKING:
    import distributed
    import pandas as pd

__all__ = ["TuneResult", "tune"]


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes
    ----------
    best
        The best settings, by dask-config key under ``foundation.`` (``cluster.n-workers``).
    defaults
        The values in effect when ``tune`` was called, for the same keys.
    baseline, best_rate
        Throughput (units of the workload per second, geometric mean of the final
        alternating rounds) of the defaults and of the best settings.
    gain
        ``best_rate / baseline``. When the race's winner is slower than the defaults
        in the final rounds, the defaults are kept: ``best`` is ``defaults`` and the
        gain 1 (a note says so).
    frame
        One row per candidate: its stage (the axis raced, or ``final`` for the last
        comparison of defaults and best), settings, rounds measured, throughput
        (geometric mean), slowest and fastest round, after which round it stopped and
        why, whether it won its stage.
    overhead
        Foundation's scheduler extensions on the scheduler's event loop during the run,
        by subsystem: seconds, calls, and share of the seconds metered (see
        :mod:`foundation_dask.dspex.tuning` for what is measured), as
        :attr:`foundation_dask.scope.PerformanceReport.scheduler_extensions`.
    path
        The dask-config YAML file written (None: none).
    unit
        What the workload counts.
    notes
        What the run could not do (the budget ran out...).
    wall_time
        Seconds the run took.
    """

    best: dict[str, Any]
    defaults: dict[str, Any]
    baseline: float
    best_rate: float
    frame: pd.DataFrame = field(repr=False)
    overhead: pd.DataFrame = field(repr=False)
    path: str | None = None
    unit: str = "units"
    notes: list[str] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def gain(self) -> float:
        return self.best_rate / self.baseline if self.baseline > 0 else math.nan

    @property
    def config(self) -> dict[str, Any]:
        """The best settings by full dask-config key (``foundation.cluster.n-workers``),
        for ``dask.config.set(result.config)``."""
        return {f"foundation.{k}": v for k, v in self.best.items()}

    def _changes(self) -> list[tuple[str, str]]:
        out = []
        for key, value in self.best.items():
            was = self.defaults.get(key)
            out.append((key, f"{value!r}" + ("" if value == was else f"  (was {was!r})")))
        return out

    def _shares(self) -> str:
        rows = [r for r in self.overhead.itertuples() if r.subsystem != ALL_EXTENSIONS]
        return ", ".join(f"{r.subsystem} {100 * r.share:.2f}%" for r in rows) or "none"

    def __repr__(self) -> str:
        lines = [f"TuneResult(gain={self.gain:.2f}x: {self.best_rate:.1f} {self.unit}/s tuned "
                 f"vs {self.baseline:.1f} {self.unit}/s defaults, in {self.wall_time:.0f} s)"]
        lines += [f"  {key}: {text}" for key, text in self._changes()]
        lines.append(f"  scheduler loop time in Foundation's extensions: {self._shares()}")
        if self.path:
            lines.append(f"  written to {self.path}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        fields = [*self._changes(),
                  ("scheduler loop time in Foundation's extensions", self._shares()),
                  ("written to", self.path or "-"), *(("note", n) for n in self.notes)]
        rows = [["" if v is None or (isinstance(v, float) and math.isnan(v))
                 else f"{v:.1f}" if isinstance(v, float) else v for v in row]
                for row in self.frame.itertuples(index=False)]
        return html_repr(repr(self), "Tuning",
                         summary=(f"{self.gain:.2f}x: {self.best_rate:.1f} vs "
                                  f"{self.baseline:.1f} {self.unit}/s with the defaults"),
                         fields=fields, header=list(self.frame.columns), rows=rows)


def _shown(settings: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    changed = [f"{k}={v!r}" for k, v in settings.items() if defaults.get(k) != v]
    return ", ".join(changed) or "the defaults"


def _frame(cands: list[Candidate], winners: list[Candidate], keys: list[str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame([
        {"stage": c.stage, **{k: c.settings[k] for k in keys}, "repeats": len(c.rates),
         "throughput": c.rate, "min": min(c.rates, default=math.nan),
         "max": max(c.rates, default=math.nan), "stopped_after": c.stopped_after,
         "why": c.why or "", "winner": any(c is w for w in winners)}
        for c in cands])
    frame["stopped_after"] = frame["stopped_after"].astype("Int64")
    return frame


def tune(workload: Callable[[distributed.Client], float] | None = None, *,
         space: Mapping[str, Sequence[Any]] | None = None, budget_s: float = 300.0,
         repeats: int = 3, confidence: float = 0.95,
         write: str | os.PathLike[str] | None = "foundation-tuned.yaml", seed: int = 0,
         display_progress: bool = True,
         client: distributed.Client | None = None) -> TuneResult:
    """Search Foundation's settings for the fastest run of ``workload``.

    Parameters
    ----------
    workload
        ``workload(client) -> float``: does some work on the cluster of ``client`` and
        returns the units of work done (examples evaluated...); it is timed. Its
        ``unit`` attribute, if any, names the units. Default: :func:`evaluate_workload`
        (``dspex.Evaluate`` of a CPU-bound program on 200 examples, the workload of
        ``benchmarks/bench_dspex_throughput.py``).
    space
        Setting (a dask-config key under ``foundation.``; ``-`` or ``_``) -> candidate
        values. Default: :func:`default_space`.
    budget_s
        No new round starts after this many seconds (see the module docstring).
    repeats
        Rounds of each race (a candidate behind with confidence stops earlier), and of
        the final comparison of the defaults with the best settings.
    confidence
        How sure a stop must be (0.5-1; 1 stops nothing early).
    write
        Where to write the best settings as a dask-config YAML file (put it in
        ``~/.config/dask/``, or name its folder in ``DASK_CONFIG``); None: nowhere.
    seed
        Seeds the order of the measurements of a round.
    display_progress
        Print each measurement on stderr.
    client
        Measure on this client's cluster instead of embedded clusters of tune's own;
        the space then has no ``cluster.*`` keys.

    Returns
    -------
    TuneResult

    Raises
    ------
    TuneError
        A workload that is not callable or returns no positive number; a space that
        names something other than a setting, has an empty or repeating list of values
        or a value of the wrong type; bad ``repeats``, ``confidence`` or ``budget_s``.

    Examples
    --------
    >>> from foundation_dask import dspex
    >>> result = dspex.tune(space={"cluster.threads-per-worker": [1, 2, 4]})  # doctest: +SKIP
    >>> result.gain, result.best                                              # doctest: +SKIP
    """
    workload = evaluate_workload() if workload is None else workload
    if not callable(workload):
        raise TuneError(f"tune: the workload must be a callable workload(client) -> units "
                        f"done, not {type(workload).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise TuneError(f"tune: repeats must be a positive integer, not {repeats!r}")
    if not 0.5 <= confidence <= 1:
        raise TuneError(f"tune: confidence must be between 0.5 and 1, not {confidence!r}")
    if not budget_s > 0:
        raise TuneError(f"tune: budget_s must be a positive number of seconds, not "
                        f"{budget_s!r}")
    axes = check_space(default_space() if space is None else space,
                       own_cluster=client is None)
    keys = sorted(axes, key=lambda k: not k.startswith("cluster."))  # cluster axes first
    defaults = {k: config.get(k) for k in keys}
    log: Callable[[str], None] = (
        (lambda text: print(text, file=sys.stderr, flush=True)) if display_progress
        else (lambda text: None))
    t0 = time.monotonic()
    clusters = Clusters(workload, client, log)
    run = Run(workload, clusters, {k for k in keys if k.startswith("cluster.")},
              t0 + budget_s, seed, log)
    cands: list[Candidate] = []
    winners: list[Candidate] = []
    notes: list[str] = []
    best = dict(defaults)
    clusters.keep_always = run.shape(defaults)
    with connection_kept():
        try:
            for key in keys:
                if len(axes[key]) == 1:
                    best[key] = axes[key][0]
                    continue
                if run.measured and time.monotonic() > run.deadline:
                    notes.append(f"the budget ran out before {key} was raced: kept "
                                 f"{best[key]!r}")
                    continue
                stage = [Candidate(key, {**best, key: v}) for v in axes[key]]
                cands += stage
                winner = run.race(stage, repeats, confidence, first=not run.measured)
                winners.append(winner)
                best = dict(winner.settings)
                clusters.close(keep=run.shapes([winner]))
            final = [Candidate("final", dict(defaults)), Candidate("final", dict(best))]
            if best == defaults:
                final = final[:1]
            cands += final
            run.race(final, repeats, 1.0, stop=False, first=True)
            if final[-1].rate < final[0].rate:  # the race's winner lost the final rounds
                notes.append(f"the race's best ({_shown(best, defaults)}) ran at "
                             f"{final[-1].rate / final[0].rate:.2f}x the defaults in the "
                             "final rounds: kept the defaults")
                best, final = dict(defaults), final[:1]
            winners.append(final[-1])
        finally:
            clusters.close(keep=None)
    if any(c.why == "budget" for c in cands if c.stage != "final"):
        notes.append("the budget ran out during a race: its candidates were compared on "
                     "the rounds measured")
    result = TuneResult(
        best=best, defaults=defaults, baseline=final[0].rate, best_rate=final[-1].rate,
        frame=_frame(cands, winners, keys),
        overhead=extensions_frame(clusters.metered),
        unit=unit(workload), notes=notes, wall_time=time.monotonic() - t0)
    if write is not None:
        result.path = write_config(best, write, comment=(
            f"Foundation settings tuned by dspex.tune on {time.strftime('%Y-%m-%d %H:%M')}:\n"
            f"{result.best_rate:.1f} {result.unit}/s vs {result.baseline:.1f} with the "
            f"defaults ({result.gain:.2f}x), workload {workload!r}"))
    return result
