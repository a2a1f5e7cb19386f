"""Same-run DSPy baseline for ``bench_dspex_quality.py``: DSPy on the same model and prompt.

Importing this module needs DSPy (a benchmark-only dependency: ``pip install dspy``);
written against DSPy 3.4.1. :func:`run_dspy_baseline` optimizes a ``dspy.Predict``
sentiment classifier with DSPy's own ``BootstrapFewShotWithRandomSearch`` on the splits
it is given and measures the zero-shot and optimized accuracies on the held-out split
with ``dspy.Evaluate``, so that the benchmark can print ratios against DSPy measured in
the same run rather than a remembered figure.

For the comparison to be about the optimizers and not about the model or the prompt, DSPy
runs with

* :class:`LlamaCppCompletionLM`, a ``dspy.BaseLM`` that sends the prompt to
  ``llama_cpp.Llama.create_completion`` with the model file of
  ``foundation_dask.dspex.LocalLM`` (SmolLM2-135M-Instruct), greedy, ``n_ctx=2048``,
  one llama.cpp thread for generation and for prompt processing, as ``LocalLM`` does;
  one ``Llama`` per DSPy thread (a ``Llama`` object must not be called from two threads
  at once): the models are loaded up front and lent to one call at a time;
* :class:`CompletionAdapter`, a ``dspy.Adapter`` that writes the plain-text prompt of
  ``foundation_dask.dspex.CompletionAdapter`` (instructions, each demo as ``Field: value``
  lines, the inputs, then the output field's prefix) and reads the first line of the
  completion, generation stopping at the newline;
* DSPy's response cache switched off, and 2 threads for evaluation, the same 2 cores as
  the 2 Dask worker processes of foundation_dask.

DSPy's random search has no seed of its own: its candidates are always seed -3
(zero-shot), -2 (labelled demos only), -1 (bootstrapped demos in train order) and
0 .. ``candidates - 1`` (shuffled train set, random number of demos).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import dspy

from foundation_dask.dspex import interop as _interop

__all__ = ["CompletionAdapter", "LlamaCppCompletionLM", "run_dspy_baseline", "to_dspy_examples"]

# DSPy 3.4 deprecates custom LMs written as ``BaseLM.forward`` (still supported through
# 3.4, to be replaced by engines in 3.5) and warns on every call.
warnings.filterwarnings("ignore", message="Implementing custom LMs through BaseLM.forward",
                        category=DeprecationWarning)


class LlamaCppCompletionLM(dspy.BaseLM):
    """A GGUF model run in-process through llama-cpp-python's completion API.

    Parameters
    ----------
    model_path : str
        The ``.gguf`` file.
    n_models : int, default 2
        ``llama_cpp.Llama`` objects to load, one per thread that calls the LM at once;
        a call waits for a free one.
    n_ctx : int, default 2048
        Context window in tokens.
    n_threads : int, default 1
        llama.cpp threads for generation and for prompt processing (``n_threads_batch``;
        llama.cpp's default, every core, makes concurrent models spin against each other).
    seed : int, default 0
        Sampling seed (the output is deterministic at temperature 0 regardless).
    temperature, max_tokens
        Default generation arguments.
    """

    def __init__(self, model_path: str, *, n_models: int = 2, n_ctx: int = 2048,
                 n_threads: int = 1, seed: int = 0, temperature: float = 0.0,
                 max_tokens: int = 256):
        import llama_cpp

        super().__init__(f"llama.cpp/{os.path.basename(model_path)}", model_type="text",
                         temperature=temperature, max_tokens=max_tokens, cache=False)
        self.model_path = model_path
        self.seed = seed
        self.calls = 0  # model calls made (DSPy's cache is off: every call reaches a model)
        self._count_lock = threading.Lock()
        self._models: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(n_models):
            self._models.put(llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx,
                                             n_threads=n_threads, n_threads_batch=n_threads,
                                             seed=seed, verbose=False))

    def forward(self, prompt: str | None = None, messages: list[dict] | None = None,
                **kwargs: Any) -> dict[str, Any]:
        """Complete ``prompt``; returns llama.cpp's OpenAI-style text completion response."""
        if prompt is None:
            raise ValueError(f"{type(self).__name__} takes a completion prompt, not chat "
                             "messages: use it with this module's CompletionAdapter")
        options = {**self.kwargs, **kwargs}
        if (options.get("n") or 1) != 1:
            raise ValueError(f"{type(self).__name__} generates one completion per call")
        llm = self._models.get()  # blocks while every model is in use
        with self._count_lock:
            self.calls += 1
        try:
            return llm.create_completion(prompt=prompt, temperature=options["temperature"],
                                         max_tokens=options["max_tokens"],
                                         stop=options.get("stop"), seed=self.seed)
        finally:
            self._models.put(llm)

    def __deepcopy__(self, memo: dict) -> LlamaCppCompletionLM:
        return self  # the loaded models are shared, never copied


#: The completion prompt of ``foundation_dask.dspex.CompletionAdapter`` as a
#: ``dspy.Adapter`` (the one ``dspex.interop`` gives DSPy programs), so that both
#: optimizers send the model the same text.
CompletionAdapter = _interop.CompletionAdapter


def to_dspy_examples(examples: Sequence[Any]) -> list[dspy.Example]:
    """``foundation_dask.dspex`` examples (or dicts) as ``dspy.Example`` objects.

    Every field is kept; the inputs are those of the original example.
    """
    out = []
    for ex in examples:
        if hasattr(ex, "inputs"):
            values, inputs = ex.toDict(), list(ex.inputs().keys())
        else:
            values, inputs = dict(ex), ["review"]
        out.append(dspy.Example(**values).with_inputs(*inputs))
    return out


def run_dspy_baseline(train: Sequence[Any], dev: Sequence[Any], test: Sequence[Any], *,
                      signature: str, instructions: str, metric: Any, model_path: str,
                      candidates: int = 4, max_bootstrapped_demos: int = 4,
                      max_labeled_demos: int = 4, num_threads: int = 2) -> dict[str, Any]:
    """Optimize and evaluate a ``dspy.Predict`` with DSPy, as the benchmark does with DSPEx.

    Parameters
    ----------
    train, dev, test : sequence of Example
        Training set, validation set of the random search, held-out set; DSPEx
        examples are converted with :func:`to_dspy_examples`.
    signature, instructions : str
        The ``dspy.Signature`` of the predictor (one output field).
    metric : callable
        ``metric(example, prediction, trace=None) -> float``.
    model_path : str
        The GGUF model file.
    candidates, max_bootstrapped_demos, max_labeled_demos : int
        Arguments of ``BootstrapFewShotWithRandomSearch`` (``num_candidate_programs``...).
    num_threads : int, default 2
        DSPy threads for evaluation, and llama.cpp models loaded.

    Returns
    -------
    dict
        ``version`` (of DSPy), ``zero_shot`` and ``optimized`` (held-out accuracy, %),
        ``validation`` (the best candidate's score, %), ``demos`` (of the best
        program), ``candidates`` (programs evaluated on the validation set),
        ``evaluations`` (of a candidate on an example), ``wall`` (seconds of
        ``compile``; loading the models and the held-out evaluations are not timed) and
        ``calls`` (model calls of ``compile``).
    """
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    trainset, valset, testset = (to_dspy_examples(s) for s in (train, dev, test))
    lm = LlamaCppCompletionLM(model_path, n_models=num_threads)
    program = dspy.Predict(dspy.Signature(signature, instructions))
    evaluate = dspy.Evaluate(devset=testset, metric=metric, num_threads=num_threads,
                             display_progress=False, max_errors=len(testset))
    optimizer_log = io.StringIO()  # DSPy's random search prints its progress
    dspy_logger = logging.getLogger("dspy")  # and Evaluate logs every score at INFO
    level = dspy_logger.level
    dspy_logger.setLevel(logging.WARNING)
    try:
        with dspy.context(lm=lm, adapter=CompletionAdapter()):
            zero = evaluate(program)
            with contextlib.redirect_stdout(optimizer_log), \
                    contextlib.redirect_stderr(optimizer_log):
                t0, calls = time.perf_counter(), lm.calls
                optimizer = dspy.BootstrapFewShotWithRandomSearch(
                    metric, max_bootstrapped_demos=max_bootstrapped_demos,
                    max_labeled_demos=max_labeled_demos, num_candidate_programs=candidates,
                    num_threads=num_threads, max_errors=len(train) + len(dev))
                best = optimizer.compile(program, trainset=trainset, valset=valset)
                wall, calls = time.perf_counter() - t0, lm.calls - calls
            optimized = evaluate(best)
    except Exception:
        print(optimizer_log.getvalue(), end="")
        raise
    finally:
        dspy_logger.setLevel(level)
    history = getattr(best, "candidate_programs", [])
    return {"version": dspy.__version__, "zero_shot": zero.score, "optimized": optimized.score,
            "validation": max((c["score"] for c in history), default=float("nan")),
            "demos": len(best.demos), "candidates": len(history),
            "evaluations": sum(len(c["subscores"]) for c in history), "wall": wall,
            "calls": calls}
