"""LM budgets: what a reservation on the scheduler costs, against the call it guards.

Run: ``python benchmarks/bench_budget.py [--calls 200] [--latency 0.05]``

On an embedded cluster of two worker processes, one worker calls an OpenAI-compatible
test server that answers after ``--latency`` seconds (a fake model), ``--calls`` times
each way, in the same run:

* unbudgeted: ``lm(prompt=...)`` without budget nor rate limit (the baseline);
* budgeted: the same calls under ``dspex.Budget(max_calls=...)`` (one reservation round
  trip to the scheduler before each call, its usage sent after on the batched stream);
* budget and rate limit: also under a rate limit too high to make anyone wait;
* the reservation alone (``budget.reserve()`` and ``record``, no model call), from the
  worker, and in a process without a cluster (this process's ledger).

Printed: median and p95 latency per call, and the ratios budgeted / unbudgeted and
reservation / unbudgeted call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

import foundation_dask as fd
from foundation_dask import dspex
from tests.support import ScriptedLMServer


def _calls(lm: dspex.BaseLM, n: int, settings: dict) -> list[float]:
    out = []
    with dspex.context(**settings):
        for i in range(n):
            t0 = time.perf_counter()
            lm(prompt=f"question {i}")
            out.append(time.perf_counter() - t0)
    return out


def _reservations(n: int, settings: dict) -> list[float]:
    from foundation_dask.dspex.lm import budget

    out = []
    with dspex.context(**settings):
        for _ in range(n):
            t0 = time.perf_counter()
            budget.reserve().record({"prompt_tokens": 11, "completion_tokens": 3})
            out.append(time.perf_counter() - t0)
    return out


def _summary(label: str, times: list[float]) -> float:
    times = sorted(times)
    med = statistics.median(times)
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"{label:<40} median {med * 1e3:8.3f} ms  p95 {p95 * 1e3:8.3f} ms")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    n = args.calls
    local = _reservations(n, {"budget": dspex.Budget(max_calls=10 * n)})  # no cluster yet
    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2, timeout=60)
        worker = sorted(client.scheduler_info()["workers"])[0]
        with ScriptedLMServer.running() as srv:
            srv.script = [("slow", args.latency)] * (4 * n + 10)
            lm = dspex.OpenAICompatibleLM("bench", api_base=srv.api_base, cache=False,
                                          timeout=30)

            def run(fn, *a):
                return client.submit(fn, *a, workers=[worker], pure=False).result()

            budget = {"budget": dspex.Budget(max_calls=10 * n)}
            rated = {**budget, "rate_limit": f"{100 * n}/s"}
            run(_calls, lm, 5, {})  # warm up: connections, imports
            plain = run(_calls, lm, n, {})
            budgeted = run(_calls, lm, n, budget)
            both = run(_calls, lm, n, rated)
            alone = run(_reservations, n, {"budget": dspex.Budget(max_calls=10 * n)})
            requests = len(srv.requests)
        print(f"LM calls to a server answering in {args.latency * 1e3:.0f} ms, {n} calls each, "
              f"one worker process ({requests} requests served)")
        p = _summary("unbudgeted call (baseline)", plain)
        b = _summary("budgeted call", budgeted)
        r = _summary("budgeted + rate-limited call", both)
        a = _summary("reservation + record, on a worker", alone)
        loc = _summary("reservation + record, no cluster", local)
        print(f"ratio budgeted / unbudgeted call:          {b / p:.3f}x")
        print(f"ratio budgeted+rate / unbudgeted call:     {r / p:.3f}x")
        print(f"ratio reservation (worker) / unbudgeted:   {a / p:.4f}x")
        print(f"ratio reservation (no cluster) / unbudgeted: {loc / p:.5f}x")
    finally:
        fd.close()


if __name__ == "__main__":
    main()
