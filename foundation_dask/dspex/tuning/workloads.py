"""Client and worker: workloads to tune on; :class:`BusyProgram` runs on the workers.

:func:`evaluate_workload` is the ``Evaluate`` workload of
``benchmarks/bench_dspex_throughput.py`` (a CPU-bound program, the kind a thread pool
cannot parallelise), with an optional per-example wait that stands for an LM server's
latency (the kind threads do overlap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foundation_dask.errors import TuneError

if TYPE_CHECKING:
    import distributed

__all__ = ["BusyProgram", "EvaluateWorkload", "evaluate_workload", "parity_metric"]


class BusyProgram:
    """A program that burns ``ms`` of its thread's CPU time per call (so threads sharing
    the GIL cannot overlap it), then waits ``latency_ms`` (as for an LM server's answer,
    which threads do overlap), answering with the input's parity."""

    def __init__(self, ms: float, latency_ms: float = 0.0):
        self.ms = ms
        self.latency_ms = latency_ms

    def __call__(self, x: int) -> Any:
        from foundation_dask.dspex.primitives import Prediction

        deadline = time.thread_time() + self.ms / 1000
        total = 0
        while time.thread_time() < deadline:
            total += 1
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        return Prediction(y=x % 2)


def parity_metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The metric of :class:`BusyProgram`: the parity was answered."""
    return bool(example.y == prediction.y)


@dataclass
class EvaluateWorkload:
    """``dspex.Evaluate`` of a :class:`BusyProgram` on ``n_examples`` examples. Called
    with a client, it evaluates once on that client's cluster and returns the number of
    examples evaluated."""

    n_examples: int = 200
    ms: float = 20.0
    latency_ms: float = 0.0
    unit: str = "examples"

    def __call__(self, client: distributed.Client) -> float:
        from foundation_dask.dspex.evaluate import Evaluate
        from foundation_dask.dspex.primitives import Example

        devset = [Example(x=i, y=i % 2).with_inputs("x") for i in range(self.n_examples)]
        result = Evaluate(devset=devset, metric=parity_metric, client=client)(
            BusyProgram(self.ms, self.latency_ms))
        return float(len(result.records))


def evaluate_workload(n_examples: int = 200, ms: float = 20.0,
                      latency_ms: float = 0.0) -> EvaluateWorkload:
    """The Evaluate workload of ``benchmarks/bench_dspex_throughput.py``.

    Parameters
    ----------
    n_examples
        Examples evaluated per call.
    ms
        CPU-bound Python per example, in milliseconds (holding the GIL).
    latency_ms
        Then a wait per example, in milliseconds (an LM server's latency).

    Raises
    ------
    TuneError
        ``n_examples < 1`` or a negative time.
    """
    if n_examples < 1 or ms < 0 or latency_ms < 0:
        raise TuneError(f"evaluate_workload needs n_examples >= 1 and ms, latency_ms >= 0, "
                        f"not {n_examples}, {ms}, {latency_ms}")
    return EvaluateWorkload(n_examples, ms, latency_ms)
