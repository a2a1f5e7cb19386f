"""Optimization against a remote-API-shaped LM: DSPEx on Dask against DSPy on threads.

Run: ``python benchmarks/bench_dspex_remote.py [--latency 0.2] [--slots 16]
[--candidates 4] [--workers 2] [--adapter completion|chat] [--chunk-size auto]`` (the
DSPy baseline needs DSPy, a benchmark-only dependency: ``pip install dspy``; without it
only the DSPEx rows are measured). About a minute with the defaults.

The LM is ``remote_lm_server.py`` beside this script, started here in a process of its
own: an OpenAI-compatible HTTP server on 127.0.0.1 that sleeps ``--latency`` seconds
per request, however many are in flight (a remote API that is not the bottleneck), and
answers as a few-shot classifier of the packaged sentiment task would, deterministically:
the true label of the review to classify unless a hash of (review, demos) says
otherwise, with a probability that falls as the demos grow (45% wrong with no demo, 10%
with two, 5% with four; see ``SentimentOracle``). Optimizing the demos is therefore
worth something, and every run sees the same answers to the same prompts.

Both optimizers run ``BootstrapFewShotWithRandomSearch`` (``--candidates`` shuffled
candidates beyond the zero-shot, labelled and bootstrapped ones; 4 bootstrapped and 4
labelled demos at most) on a ``Predict("review -> sentiment")`` with the task's
instructions and metric, on the same balanced splits (``--train 30 --dev 30 --test
60``, seed 0), with ``--slots`` LM calls in flight at most and every cache off, so each
call reaches the server:

* DSPEx: ``dspex.configure(lm=dspex.LM("openai/remote-sim", api_base=..., cache=False))``
  (the chat endpoint; the default ``CompletionAdapter`` prompt, or ``--adapter chat``),
  on an embedded cluster of ``--workers`` worker processes with ``slots / workers``
  threads each, a fresh LM cache directory and the cluster cache off; once exhaustive
  (``racing=False``), once racing (``racing=True``), seed 0; examples per Dask task
  as DSPEx chooses them (``--chunk-size N`` sets them through the optimizer's
  ``runtime=``);
* DSPy: ``dspy.configure(lm=dspy.LM("openai/remote-sim", api_base=..., cache=False))``
  with its ``ChatAdapter``, ``num_threads=slots``, memory and disk caches off. The Dask
  cluster is closed before DSPy starts.

Before the timed runs each side evaluates the zero-shot program on the held-out split
(untimed: it starts the workers' imports and connections, and DSPy's). Printed: the
latency and slots, then one row each for DSPEx exhaustive, DSPEx racing and DSPy, with
the wall time of ``compile``, the LM calls it made (the server's request count over the
run), the floor those calls set (``calls * latency / slots``: the wall time with every
slot always busy), the best candidate's validation score and the held-out accuracy of
the program returned (not timed); then the ratios DSPEx / DSPy of the wall times and of
the LM calls (lower is better).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import dask.config
from remote_lm_server import MODEL, ServerProcess

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.bootstrap import Runtime
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

SIGNATURE = "review -> sentiment"
MAX_DEMOS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2,
                        help="seconds the server sleeps per request")
    parser.add_argument("--slots", type=int, default=16,
                        help="LM calls in flight at most (Dask worker threads, DSPy threads)")
    parser.add_argument("--candidates", type=int, default=4,
                        help="shuffled candidate programs of the random search")
    parser.add_argument("--workers", type=int, default=2,
                        help="Dask worker processes sharing the slots")
    parser.add_argument("--adapter", choices=("completion", "chat"), default="completion",
                        help="DSPEx's adapter (DSPy always uses its ChatAdapter)")
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--dev", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--chunk-size", default="auto",
                        help="DSPEx examples per Dask task: 'auto' (the default chunking) or "
                             "an integer, given through the optimizer's runtime=")
    args = parser.parse_args()
    if args.chunk_size != "auto" and not (args.chunk_size.isdigit() and int(args.chunk_size)):
        parser.error(f"--chunk-size must be 'auto' or a positive integer, not "
                     f"{args.chunk_size!r}")
    # DSPy's model metadata: the snapshot packaged with it, not a download
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.slots < 1 or args.workers < 1 or args.slots % args.workers:
        parser.error(f"--slots ({args.slots}) must be a positive multiple of --workers "
                     f"({args.workers}): each worker gets slots / workers threads")
    train, dev, test = load_sentiment(n_train=args.train, n_dev=args.dev, n_test=args.test)
    rows: dict[str, dict[str, Any]] = {}
    with ServerProcess(args.latency) as server:
        zero = dspex_rows(args, server, train, dev, test, rows)
        dspy_zero = None
        if dspy_baseline is not None:
            dspy_zero = dspy_row(args, server, train, dev, test, rows)

    print(f"Optimization against a simulated remote LM: {args.latency * 1000:.0f} ms per "
          f"request (HTTP server on 127.0.0.1), {args.slots} evaluation slots "
          f"(DSPEx: {args.workers} Dask workers x {args.slots // args.workers} threads; "
          f"DSPy: num_threads={args.slots})")
    print(f"sentiment, {len(train)} train / {len(dev)} validation / {len(test)} test; "
          f"BootstrapFewShotWithRandomSearch, {args.candidates} shuffled candidates (+3), "
          f"{MAX_DEMOS} demos at most; every LM cache off")
    zeros = f"zero-shot held-out: DSPEx {zero:.1f}%"
    if dspy_zero is not None:
        zeros += f", DSPy {dspy_zero:.1f}%"
    print(f"{zeros} (DSPEx adapter: {args.adapter}, chunk size: {args.chunk_size})")
    print(f"  {'optimizer':24s} {'wall s':>7s} {'LM calls':>9s} {'floor s':>8s} "
          f"{'best val':>9s} {'held-out':>9s}")
    for name, r in rows.items():
        floor = r["calls"] * args.latency / args.slots
        print(f"  {name:24s} {r['wall']:7.2f} {r['calls']:9d} {floor:8.2f} "
              f"{r['validation']:8.1f}% {r['held_out']:8.1f}%")
    ref = rows.get(_dspy_name())
    if ref is None:
        print("DSPy baseline skipped: DSPy is not installed (pip install dspy)")
        return
    for name, r in rows.items():
        if name == _dspy_name():
            continue
        print(f"  {name} / DSPy: wall time {r['wall'] / ref['wall']:.2f}, LM calls "
              f"{r['calls'] / max(1, ref['calls']):.2f}")


def _dspy_name() -> str:
    import dspy

    return f"DSPy {dspy.__version__}"


def dspex_rows(args: argparse.Namespace, server: ServerProcess, train: Sequence[Any],
               dev: Sequence[Any], test: Sequence[Any], rows: dict[str, dict[str, Any]]
               ) -> float:
    """The DSPEx rows (exhaustive, racing) into ``rows``; returns the zero-shot held-out."""
    # inherited by the worker processes: nothing answers from a cache
    dask.config.set({"foundation.dspex.cache-dir": tempfile.mkdtemp(prefix="lm-cache-"),
                     "foundation.dspex.cluster-cache": False})
    client = fd.connect(n_workers=args.workers, threads_per_worker=args.slots // args.workers)
    try:
        client.wait_for_workers(args.workers)
        lm = dspex.LM(f"openai/{MODEL}", api_base=server.api_base, api_key="x", cache=False)
        if args.adapter == "chat":
            dspex.configure(lm=lm, adapter=dspex.ChatAdapter())
        else:
            dspex.configure(lm=lm)
        program = dspex.Predict(dspex.Signature(SIGNATURE, SENTIMENT_INSTRUCTIONS))
        evaluate = dspex.Evaluate(devset=test, metric=sentiment_metric)
        zero = evaluate(program).score
        for racing in (False, True):
            extra = ({} if args.chunk_size == "auto"
                     else {"runtime": Runtime(chunk_size=int(args.chunk_size))})
            optimizer = dspex.BootstrapFewShotWithRandomSearch(
                sentiment_metric, num_candidate_programs=args.candidates,
                max_bootstrapped_demos=MAX_DEMOS, max_labeled_demos=MAX_DEMOS, seed=0,
                racing=racing, **extra)
            before = server.requests
            t0 = time.perf_counter()
            best = optimizer.compile(program, trainset=train, valset=dev, client=client)
            wall = time.perf_counter() - t0
            calls = server.requests - before
            rows[f"DSPEx {'racing' if racing else 'exhaustive'}"] = {
                "wall": wall, "calls": calls, "validation": float(best.score),
                "held_out": evaluate(best).score}
    finally:
        dspex.configure(lm=None, adapter=None)
        fd.close()
    return zero


def dspy_row(args: argparse.Namespace, server: ServerProcess, train: Sequence[Any],
             dev: Sequence[Any], test: Sequence[Any], rows: dict[str, dict[str, Any]]
             ) -> float:
    """The DSPy row into ``rows``; returns DSPy's zero-shot held-out accuracy."""
    import dspy

    assert dspy_baseline is not None
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    trainset, valset, testset = (dspy_baseline.to_dspy_examples(s) for s in (train, dev, test))
    lm = dspy.LM(f"openai/{MODEL}", api_base=server.api_base, api_key="x", cache=False)
    dspy.configure(lm=lm, adapter=dspy.ChatAdapter())
    program = dspy.Predict(dspy.Signature(SIGNATURE, SENTIMENT_INSTRUCTIONS))
    evaluate = dspy.Evaluate(devset=testset, metric=sentiment_metric, num_threads=args.slots,
                             display_progress=False, max_errors=len(testset))
    log = io.StringIO()  # DSPy's random search prints its progress
    dspy_logger = logging.getLogger("dspy")  # and Evaluate logs every score at INFO
    level = dspy_logger.level
    dspy_logger.setLevel(logging.WARNING)
    try:
        zero = evaluate(program).score
        before = server.requests
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            t0 = time.perf_counter()
            optimizer = dspy.BootstrapFewShotWithRandomSearch(
                metric=sentiment_metric, max_bootstrapped_demos=MAX_DEMOS,
                max_labeled_demos=MAX_DEMOS, num_candidate_programs=args.candidates,
                num_threads=args.slots, max_errors=len(trainset) + len(valset))
            best = optimizer.compile(program, trainset=trainset, valset=valset)
            wall = time.perf_counter() - t0
        calls = server.requests - before
        held_out = evaluate(best).score
    except Exception:
        print(log.getvalue(), end="")
        raise
    finally:
        dspy_logger.setLevel(level)
        dspy.configure(lm=None)
    history = getattr(best, "candidate_programs", [])
    rows[_dspy_name()] = {
        "wall": wall, "calls": calls, "held_out": held_out,
        "validation": max((c["score"] for c in history), default=float("nan"))}
    return zero


if __name__ == "__main__":
    main()
