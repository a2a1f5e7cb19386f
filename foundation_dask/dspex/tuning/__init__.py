"""Client: ``dspex.tune``, Foundation tuning its own settings on a measured workload.

>>> from foundation_dask import dspex
>>> result = dspex.tune(budget_s=120)        # doctest: +SKIP
>>> result.gain, result.best, result.path    # doctest: +SKIP

``tune(workload, space=...)`` measures a workload (a callable ``workload(client) ->
units of work done``, timed: throughput = units / seconds) under candidate values of
Foundation's dask-config settings, keeps the fastest and writes them as a dask-config
YAML file:

* **Which settings.** Any setting of ``foundation.yaml`` but those that choose the
  cluster or its plugins (``scheduler-address``, ``extensions``). ``cluster.*`` settings
  (``n-workers``, ``threads-per-worker``...) shape the embedded cluster: each shape gets
  its own :class:`distributed.LocalCluster`, made as :func:`foundation_dask.connect`
  makes the embedded one, with the Foundation plugins. The other settings
  (``dspex.evaluate-chunk-size``, ``channels.*``, ``processes.checkpoint``...) are set
  for each measurement with ``dask.config.set`` in this process, on the scheduler and on
  every worker (worker processes keep the config they started with, so it is sent to
  them), and put back afterwards.
* **How the space is searched.** One axis at a time (coordinate descent): the cluster
  axes first, then the others, in the order of ``space``. Each axis is a race between
  the current best settings with each value of that axis, so axes of 3, 3 and 4 values
  cost 10 candidates instead of the 36 of their product. Settings interact (the best
  chunk size depends on the number of workers); one pass along the axes, each raced
  with the best values found so far, follows the strongest of those interactions, not
  all of them.
* **The race.** A round measures every candidate still running once, in a seeded random
  order. Candidates are compared on paired rounds: for a candidate ``c`` and the leader
  ``L`` (the best geometric mean), ``d = log(T_L / T_c)`` of each round (throughputs
  measured seconds apart, so a machine that slows down for everyone cancels out).
  After two rounds or more, ``c`` stops when the mean of ``d`` minus ``z`` standard
  errors is above 0 (``z``: the normal quantile of ``confidence``, Bonferroni's for the
  comparisons of the axis; the variance is given one pseudo-observation of a 2x
  difference, so two lucky rounds alone stop nothing). The others run ``repeats``
  rounds; the winner is the best geometric mean among them.
* **The gain, same run.** Once the axes are raced, the defaults (the values in effect
  when ``tune`` is called) and the best settings are measured again, alternately, for
  ``repeats`` rounds: :attr:`TuneResult.gain` is the ratio of their throughputs.
* **The budget.** No new round starts after ``budget_s`` seconds (the first round of
  the first axis always runs); axes not raced keep their values, as
  :attr:`TuneResult.notes` says, and the final comparison gets one round.

Each new cluster runs the workload once, untimed, before its first measurement (the
workers import the program, LMs load). Each measurement is an ElixirScope span
(``tune_measurement``, with the settings and the throughput).

**Overhead of Foundation's scheduler extensions.** On the scheduler of every cluster it
measures on, ``tune`` installs ElixirScope's scheduler meter
(:mod:`foundation_dask.scope.profiling._scheduler_meter`, the one a profiling session
installs for its window) that times everything
through which Foundation code gets the scheduler's event loop (handlers, hooks,
periodic callbacks, the extensions' methods), exclusive of nested calls, each coroutine
counted for its steps, not its waits. :attr:`TuneResult.overhead` gives, by subsystem
(``channels``, ``processes``, ``health``, ``registry``, ``secrets``, ``plugin``,
``scope``, ``dspex.lm``), the seconds, the calls, and the share of the seconds metered.
It measures the event-loop time of that code only (not the CPU of tasks on workers, nor
Dask's own scheduling), including the wrappers' own cost of about a microsecond a call;
coroutines already running when the meter is installed are not seen.

Where each part runs: :mod:`._space` (the space and the YAML file), :mod:`._race`
(measurements and the race), :mod:`._clusters` (clusters; settings pushed to the
scheduler and workers), :mod:`.workloads`
(the programs run on the workers), :mod:`._tune` (:func:`tune`, :class:`TuneResult`).
"""

from __future__ import annotations

from foundation_dask.dspex.tuning._space import check_space, default_space, write_config
from foundation_dask.dspex.tuning._tune import TuneResult, tune
from foundation_dask.dspex.tuning.workloads import (
    BusyProgram,
    EvaluateWorkload,
    evaluate_workload,
    parity_metric,
)

__all__ = ["BusyProgram", "EvaluateWorkload", "TuneResult", "check_space", "default_space",
           "evaluate_workload", "parity_metric", "tune", "write_config"]
