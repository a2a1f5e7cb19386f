"""Quality and speed of optimization with the local model on the demo task, against DSPy.

Run: ``python benchmarks/bench_dspex_quality.py [--train 30] [--dev 30] [--test 60]
[--repeat 1]`` (the DSPy baseline needs DSPy, a benchmark-only dependency: ``pip install
dspy``). ``--repeat N`` measures DSPEx's searches and DSPy's N times, taking turns, and
prints the median of each run's ratios: on a shared machine whose speed drifts over
minutes, one run's ratio can be off by a tenth.

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

Then (``--dspy-program`` runs only this part) a DSPy program, ``dspy.Predict``, optimized
three ways in the same run against one OpenAI-compatible server (``llama_cpp.server``
serving the same model, started here on 127.0.0.1) with DSPEx's completion prompt
(``dspex.interop.CompletionAdapter`` and ``DSPyLM``, no LM cache): DSPy's
``BootstrapFewShotWithRandomSearch`` on 2 threads, the same optimizer with its
evaluations on 2 Dask workers (``with dspex.on_cluster():``), and DSPEx's
``BootstrapFewShotWithRandomSearch`` on the same program. Printed per row: the wall time
of ``compile``, the LM calls it made (the server's request log) and the held-out
accuracy of the program it returns (not timed). One server answers one request at a
time, so these rows compare the optimizers' work and overheads, not parallel speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.dspex.datasets import (
    SENTIMENT_INSTRUCTIONS,
    load_sentiment,
    load_sentiment_split,
    sentiment_metric,
)
from foundation_dask.dspex.lm.local import default_model_path

try:  # the same-run DSPy baseline, next to this script
    import dspy_baseline
except ImportError as exc:
    if exc.name != "dspy" and not (exc.name or "").startswith("dspy."):
        raise
    dspy_baseline = None  # DSPy is not installed


#: The searches compared: exhaustive (DSPy's), the race (the default: only candidates
#: that cannot win stop, so exhaustive's result for sure), and the race that also stops
#: candidates behind with 95 % confidence.
VARIANTS: dict[str, dict[str, Any]] = {
    "exhaustive": {"racing": False},
    "racing": {"racing": True},
    "racing, confidence 0.95": {"racing": True, "racing_confidence": 0.95},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--dev", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure DSPEx's searches and DSPy's this many times, taking "
                             "turns (the machine's speed drifts), then print the medians")
    parser.add_argument("--dspy-program", action="store_true",
                        help="only the rows of the DSPy program against an LM server")
    args = parser.parse_args()
    if args.dspy_program:
        dspy_program_rows(args)
        return
    splits = load_sentiment(n_train=args.train, n_dev=args.dev, n_test=args.test)
    ratios: dict[str, list[float]] = {}
    for run in range(args.repeat):
        if args.repeat > 1:
            print(f"run {run + 1} of {args.repeat}")
        rows, ref = measure(args, *splits)
        for name, row in rows.items():
            if ref is not None:
                ratios.setdefault(f"{name} / DSPy", []).append(row["wall"] / ref["wall"])
            ratios.setdefault(f"{name} / exhaustive", []).append(
                row["wall"] / rows["exhaustive"]["wall"])
    if args.repeat > 1:
        print(f"median wall-time ratios over {args.repeat} runs (each measured in one run):")
        for name, values in ratios.items():
            if not name.startswith("exhaustive / exhaustive"):
                print(f"  {name}: {statistics.median(values):.2f} "
                      f"({', '.join(f'{v:.2f}' for v in values)})")
    if dspy_baseline is not None:
        dspy_program_rows(args)


def measure(args: argparse.Namespace, train: list, dev: list, test: list
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """One run of DSPEx's searches on a fresh embedded cluster, then DSPy's (None when
    DSPy is not installed): the rows printed, by search."""
    signature = "review -> sentiment"
    client = fd.connect(n_workers=2, threads_per_worker=1)
    rows = {}
    try:
        client.wait_for_workers(2)
        program = dspex.Predict(dspex.Signature(signature, SENTIMENT_INSTRUCTIONS))
        lm = dspex.LocalLM(cache=False)
        dspex.configure(lm=lm)
        evaluate = dspex.Evaluate(devset=test, metric=sentiment_metric)
        zero = evaluate(program)  # also loads the model on both workers
        print(f"sentiment, {len(train)} train / {len(dev)} validation / {len(test)} test, "
              f"local model {lm.model}, 2 worker processes")
        print(f"  zero-shot held-out accuracy {zero.score:.1f}%")
        for name, search in VARIANTS.items():
            # each search starts without the model states an earlier one left
            client.run(dspex.LocalLM.forget_states)
            before = _model_stats(client)
            t0 = time.perf_counter()
            optimizer = dspex.BootstrapFewShotWithRandomSearch(
                sentiment_metric, num_candidate_programs=args.candidates,
                max_bootstrapped_demos=4, max_labeled_demos=4, seed=0, **search)
            result = dspex.DistributedOptimizer.optimize_program_distributed(
                program, train, sentiment_metric, valset=dev, optimizer=optimizer,
                display_progress=False, timeout=None)
            wall = time.perf_counter() - t0
            after = _model_stats(client)
            best = evaluate(result.best_program)
            calls = after["calls"] - before["calls"]
            busy = after["call_seconds"] - before["call_seconds"]
            prompt = after["prompt_tokens"] - before["prompt_tokens"]
            cached = after["cached_tokens"] - before["cached_tokens"]
            rows[name] = {"wall": wall, "calls": calls, "held_out": best.score,
                          "validation": result.best_score}
            print(f"  DSPEx random search, {name}: "
                  f"{wall:5.1f} s, {calls} LM calls ({len(result.history)} validation "
                  f"evaluations), workers in model calls {100 * busy / (2 * wall):.0f}% of "
                  f"the time, {100 * cached / max(1, prompt):.0f}% of prompt tokens "
                  f"from llama.cpp's KV cache; validation {result.best_score:.1f}%, held-out "
                  f"{best.score:.1f}% ({len(result.best_program.demos)} demos)")
    finally:
        dspex.configure(lm=None)
        fd.close()
    ex = rows["exhaustive"]
    for name, rc in rows.items():
        if name != "exhaustive":
            print(f"  {name} / exhaustive: LM calls {rc['calls'] / max(1, ex['calls']):.2f} "
                  f"(target <= 0.60), wall time {rc['wall'] / ex['wall']:.2f}, held-out "
                  f"{rc['held_out'] - ex['held_out']:+.1f} points (target within 1.7), best "
                  f"validation {rc['validation'] - ex['validation']:+.1f} points (target 0)")

    if dspy_baseline is None:
        print("DSPy baseline skipped: DSPy is not installed (pip install dspy)")
        return rows, None
    ref = dspy_baseline.run_dspy_baseline(
        train, dev, test, signature=signature, instructions=SENTIMENT_INSTRUCTIONS,
        metric=sentiment_metric, model_path=lm.resolved_path,
        candidates=args.candidates, max_bootstrapped_demos=4, max_labeled_demos=4,
        num_threads=2,
    )
    print(f"DSPy {ref['version']} BootstrapFewShotWithRandomSearch, same splits, model, "
          f"prompt and candidates, 2 threads: {ref['wall']:5.1f} s, {ref['calls']} LM calls "
          f"({ref['evaluations']} validation evaluations); validation "
          f"{ref['validation']:.1f}%, held-out {ref['optimized']:.1f}% (zero-shot "
          f"{ref['zero_shot']:.1f}%)")
    for name, row in rows.items():
        print(f"  DSPEx {name} / DSPy: wall time "
              f"{row['wall'] / ref['wall']:.2f} (target <= 0.35 for racing), LM calls "
              f"{row['calls'] / max(1, ref['calls']):.2f}, held-out "
              f"{row['held_out'] - ref['optimized']:+.1f} points")
    return rows, ref


def _model_stats(client: Any) -> dict[str, float]:
    """Model calls, their seconds, prompt tokens and KV-cached prompt tokens, summed over
    the workers."""
    stats = client.run(dspex.LocalLM.process_stats)
    return {k: sum(s[k] for s in stats.values())
            for k in ("calls", "call_seconds", "prompt_tokens", "cached_tokens")}


def _start_server() -> tuple[subprocess.Popen, str, Path]:
    """``llama_cpp.server`` with the local model on a free port; (process, api_base, log)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Path(tempfile.mkdtemp()) / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(),
             "--model_alias", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    api_base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{api_base}/models", timeout=2):
                return proc, api_base, log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the LM server did not start: {log.read_text()[-2000:]}"
                                   ) from None
            time.sleep(0.2)


def _calls(log: Path) -> int:
    return log.read_text(errors="replace").count("POST /v1/completions")


def dspy_program_rows(args: argparse.Namespace) -> None:
    """DSPy's optimizer on threads, on 2 Dask workers, and DSPEx's, on a DSPy program."""
    try:
        import dspy
    except ImportError:
        print("DSPy program rows skipped: DSPy is not installed (pip install dspy)")
        return
    to_dspy = [
        [dspy.Example(review=r["review"], sentiment=r["sentiment"]).with_inputs("review")
         for r in load_sentiment_split(split, n, as_examples=False)]
        for split, n in (("train", args.train), ("dev", args.dev), ("test", args.test))]
    train, dev, test = to_dspy
    proc, api_base, log = _start_server()
    rows = []
    try:
        client = fd.connect(n_workers=2, threads_per_worker=1)
        client.wait_for_workers(2)
        lm = dspex.interop.DSPyLM(dspex.OpenAICompatibleLM(
            "openai/smollm2-135m", api_base, api_key="none", model_type="text",
            max_tokens=4, cache=False))
        dspy.configure(lm=lm, adapter=dspex.interop.CompletionAdapter())
        program = dspy.Predict(dspy.Signature("review -> sentiment", SENTIMENT_INSTRUCTIONS))
        evaluate = dspex.Evaluate(devset=test, metric=sentiment_metric)
        zero = evaluate(program).score

        def dspy_search() -> Any:
            return dspy.BootstrapFewShotWithRandomSearch(
                sentiment_metric, num_candidate_programs=args.candidates,
                max_bootstrapped_demos=4, max_labeled_demos=4, num_threads=2,
            ).compile(program, trainset=train, valset=dev)

        def on_dask() -> Any:
            with dspex.on_cluster():
                return dspy_search()

        def ours() -> Any:
            return dspex.BootstrapFewShotWithRandomSearch(
                sentiment_metric, num_candidate_programs=args.candidates,
                max_bootstrapped_demos=4, max_labeled_demos=4, seed=0,
            ).compile(program, trainset=train, valset=dev)

        quiet = logging.getLogger("dspy")
        level, quiet.level = quiet.level, logging.WARNING
        for name, run in (("DSPy random search, 2 threads", dspy_search),
                          ("DSPy random search, 2 Dask workers", on_dask),
                          ("DSPEx random search, 2 Dask workers", ours)):
            before = _calls(log)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                best = run()
            wall = time.perf_counter() - t0
            calls = _calls(log) - before
            rows.append((name, wall, calls, evaluate(best).score))
        quiet.setLevel(level)
    finally:
        fd.close()
        proc.terminate()
        proc.wait(timeout=30)
    print(f"DSPy program (dspy.Predict), {len(train)} train / {len(dev)} validation / "
          f"{len(test)} test, {args.candidates} shuffled candidates, one llama.cpp server; "
          f"zero-shot held-out {zero:.1f}%")
    print(f"  {'optimizer':38s} {'wall s':>7s} {'LM calls':>9s} {'held-out':>9s}")
    for name, wall, calls, acc in rows:
        print(f"  {name:38s} {wall:7.1f} {calls:9d} {acc:8.1f}%")


if __name__ == "__main__":
    main()
