"""Quality and speed of optimization with the local model on the demo task, against DSPy.

Run: ``python benchmarks/bench_dspex_quality.py [--train 30] [--dev 30] [--test 60]``
(the DSPy baseline needs DSPy, a benchmark-only dependency: ``pip install dspy``).

Prints the zero-shot accuracy of a ``Predict`` sentiment classifier with the local
model (SmolLM2-135M-Instruct) on the held-out test split, the accuracy of the program
that ``DistributedOptimizer`` (random search over bootstrapped demos, 4 candidates) finds,
and the optimization's wall time on 2 worker processes. Target: optimized >= 95% where
zero-shot is <= 75%.

When DSPy can be imported, the same run then measures the baseline
(``dspy_baseline.py``): DSPy's ``BootstrapFewShotWithRandomSearch`` with the same
arguments, on the same train and validation splits, optimizing a ``dspy.Predict`` with
the same signature, instructions and metric, the same model file through llama-cpp-python
(greedy, one llama.cpp thread per model) and the same completion prompt, with DSPy's
cache off and 2 threads (one model each) on the same 2 cores. The Dask cluster is closed
before DSPy starts. Printed: DSPy's zero-shot and optimized held-out accuracies and its
optimization wall time, and the ratios foundation_dask / DSPy of the wall times (lower
is better) and of the optimized accuracies (higher is better). The wall times are of
the optimizations alone: the held-out evaluations are not timed, and the models are
loaded before (by the zero-shot evaluation on the Dask workers, up front for DSPy).
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

try:  # the same-run DSPy baseline, next to this script
    import dspy_baseline
except ImportError as exc:
    if exc.name != "dspy" and not (exc.name or "").startswith("dspy."):
        raise
    dspy_baseline = None  # DSPy is not installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--dev", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()
    train, dev, test = load_sentiment(n_train=args.train, n_dev=args.dev, n_test=args.test)
    signature = "review -> sentiment"
    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2)
        program = dspex.Predict(dspex.Signature(signature, SENTIMENT_INSTRUCTIONS))
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
              f"({len(result.history) // len(dev)} candidates, {len(result.history)} "
              "validation evaluations)")
        met = best.score >= 95 and zero.score <= 75
        print(f"  target optimized >= 95% where zero-shot <= 75%: {'met' if met else 'NOT met'}")
    finally:
        fd.close()

    if dspy_baseline is None:
        print("DSPy baseline skipped: DSPy is not installed (pip install dspy)")
        return
    ref = dspy_baseline.run_dspy_baseline(
        train, dev, test, signature=signature, instructions=SENTIMENT_INSTRUCTIONS,
        metric=sentiment_metric, model_path=program.lm.resolved_path,
        candidates=args.candidates, max_bootstrapped_demos=4, max_labeled_demos=4,
        num_threads=2,
    )
    print(f"DSPy {ref['version']} baseline, same splits, model, prompt and random search")
    print(f"  zero-shot held-out accuracy   {ref['zero_shot']:6.1f}%")
    print(f"  optimized held-out accuracy   {ref['optimized']:6.1f}%  "
          f"(validation {ref['validation']:.1f}%, {ref['demos']} demos)")
    print(f"  optimization wall time        {ref['wall']:6.1f} s on 2 threads "
          f"({ref['candidates']} candidates, {ref['evaluations']} validation evaluations)")
    accuracy = (f"{best.score / ref['optimized']:.2f}" if ref["optimized"] else "n/a")
    print(f"  foundation_dask / DSPy: wall time {wall / ref['wall']:.2f} (lower is better), "
          f"optimized accuracy {accuracy} (higher is better)")


if __name__ == "__main__":
    main()
