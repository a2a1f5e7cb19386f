"""Quality and speed of optimization with the local model on the demo task, in one run.

Run: ``python benchmarks/bench_dspex_quality.py [--train 30] [--dev 30] [--test 60]``

Prints the zero-shot accuracy of a ``Predict`` sentiment classifier with the local
model (SmolLM2-135M-Instruct) on the held-out test split, the accuracy of the program
that ``DistributedOptimizer`` (random search over bootstrapped demos, 4 candidates) finds,
and the optimization's wall time on 2 worker processes. Targets: optimized >= 95% where
zero-shot is <= 75%; reference measured on these machines with DSPy 3.4.1 (4 candidates,
completion-style adapter, same model): 97% held-out in 32 s on a 30/30 split.
"""

from __future__ import annotations

import argparse
import time

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.datasets import (
    SENTIMENT_INSTRUCTIONS,
    load_sentiment,
    sentiment_metric,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--dev", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()
    train, dev, test = load_sentiment(n_train=args.train, n_dev=args.dev, n_test=args.test)
    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2)
        program = dspex.Predict(dspex.Signature("review -> sentiment", SENTIMENT_INSTRUCTIONS))
        program.lm = dspex.LocalLM(cache=False)
        evaluate = dspex.Evaluate(devset=test, metric=sentiment_metric)
        zero = evaluate(program)
        t0 = time.perf_counter()
        result = dspex.DistributedOptimizer.optimize_program_distributed(
            program, train, sentiment_metric, valset=dev,
            num_candidate_programs=args.candidates, max_bootstrapped_demos=4,
            max_labeled_demos=4, seed=0, display_progress=False, timeout=None,
        )
        wall = time.perf_counter() - t0
        best = evaluate(result.best_program)
        print(f"sentiment, {len(train)} train / {len(dev)} validation / {len(test)} test, "
              f"local model {program.lm.model}")
        print(f"  zero-shot held-out accuracy   {zero.score:6.1f}%")
        print(f"  optimized held-out accuracy   {best.score:6.1f}%  "
              f"(validation {result.best_score:.1f}%, {len(result.best_program.demos)} demos)")
        print(f"  optimization wall time        {wall:6.1f} s on 2 worker processes "
              f"({len(result.history)} candidate evaluations)")
        met = best.score >= 95 and zero.score <= 75
        print(f"  target optimized >= 95% where zero-shot <= 75%: {'met' if met else 'NOT met'}")
        print(f"  reference DSPy 3.4.1: 32 s for 97%; ratio of wall times {wall / 32:.2f}")
    finally:
        fd.close()


if __name__ == "__main__":
    main()
