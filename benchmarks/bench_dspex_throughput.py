"""Throughput of distributed ``Evaluate`` against thread-pool evaluation, in one run.

Run: ``python benchmarks/bench_dspex_throughput.py [--examples 200] [--ms 20]``

The program is CPU-bound Python (about ``--ms`` milliseconds per example, holding the
GIL), the kind of work that a thread pool cannot parallelise. Printed, all measured
here and now:

* single process, serial: the baseline rate;
* a thread pool of 2 over the same program (what DSPy's ``Evaluate(num_threads=2)``
  does), and DSPy's own ``Evaluate`` when DSPy is installed;
* ``dspex.Evaluate`` on 2 worker processes, and its parallel efficiency against
  2x the serial rate. Targets: >= 1.8x the threads, >= 90% efficiency.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.tuning.workloads import BusyProgram
from foundation_dask.dspex.tuning.workloads import parity_metric as metric


def serial(program, devset) -> float:
    t0 = time.perf_counter()
    for ex in devset:
        metric(ex, program(**ex.inputs().toDict()))
    return time.perf_counter() - t0


def threaded(program, devset, threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ex: metric(ex, program(**ex.inputs().toDict())), devset))
    return time.perf_counter() - t0


def dspy_threads(ms: float, devset_n: int, threads: int) -> float | None:
    try:
        import dspy
    except ImportError:
        return None

    class Busy(dspy.Module):
        def forward(self, x):
            deadline = time.thread_time() + ms / 1000
            while time.thread_time() < deadline:
                pass
            return dspy.Prediction(y=x % 2)

    devset = [dspy.Example(x=i, y=i % 2).with_inputs("x") for i in range(devset_n)]
    evaluate = dspy.Evaluate(devset=devset, metric=lambda e, p, t=None: e.y == p.y,
                             num_threads=threads, display_progress=False)
    t0 = time.perf_counter()
    evaluate(Busy())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--ms", type=float, default=20.0)
    args = parser.parse_args()
    devset = [dspex.Example(x=i, y=i % 2).with_inputs("x") for i in range(args.examples)]
    program = BusyProgram(args.ms)
    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2)
        evaluate = dspex.Evaluate(devset=devset, metric=metric)
        evaluate(program)  # warm up: workers import the program's modules
        t_serial = serial(program, devset)
        t_threads = threaded(program, devset, 2)
        t_dspy = dspy_threads(args.ms, args.examples, 2)
        t0 = time.perf_counter()
        result = evaluate(program)
        t_dist = time.perf_counter() - t0
        assert result.score == 100.0
        n = args.examples
        rate = {k: n / v for k, v in [("serial", t_serial), ("threads", t_threads),
                                      ("dist", t_dist)]}
        print(f"{n} examples of {args.ms:.0f} ms CPU-bound Python")
        print(f"  serial, 1 process           {rate['serial']:7.1f} examples/s")
        print(f"  thread pool of 2            {rate['threads']:7.1f} examples/s")
        if t_dspy is not None:
            print(f"  DSPy Evaluate(num_threads=2) {n / t_dspy:6.1f} examples/s")
        print(f"  dspex.Evaluate, 2 workers   {rate['dist']:7.1f} examples/s")
        vs_threads = rate["dist"] / rate["threads"]
        efficiency = rate["dist"] / (2 * rate["serial"])
        print(f"  ratio to threads: {vs_threads:.2f}x (target >= 1.8x: "
              f"{'met' if vs_threads >= 1.8 else 'NOT met'}); parallel efficiency "
              f"{100 * efficiency:.0f}% (target >= 90%: "
              f"{'met' if efficiency >= 0.9 else 'NOT met'})")
    finally:
        fd.close()


if __name__ == "__main__":
    main()
