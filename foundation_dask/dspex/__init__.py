"""DSPEx: declarative LM programs (signatures, predictors, modules), DSPy-style, on Dask.

>>> from foundation_dask import dspex
>>> class Classify(dspex.Signature):
...     \"\"\"Classify the sentiment of a movie review.\"\"\"
...     review: str = dspex.InputField(desc="a short movie review")
...     sentiment: str = dspex.OutputField(desc="positive or negative")
>>> classify = dspex.Predict(Classify)
>>> dspex.configure(lm=dspex.LocalLM())                      # doctest: +SKIP
>>> classify(review="A delight from start to finish.").sentiment   # doctest: +SKIP
'positive'

Programs, examples and LMs pickle, so they can run in Dask tasks; a local model is
loaded once per worker process. ``Evaluate`` and the optimizers are imported on first
use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from foundation_dask.dspex.adapters import (
    Adapter,
    AdapterParseError,
    ChatAdapter,
    CompletionAdapter,
)
from foundation_dask.dspex.lm import (
    LM,
    BaseLM,
    DummyLM,
    LMError,
    LMResponse,
    LMTimeoutError,
    LocalLM,
    OpenAICompatibleLM,
    clear_cache,
)
from foundation_dask.dspex.predict import ChainOfThought, Predict
from foundation_dask.dspex.primitives import (
    Completions,
    Example,
    Module,
    Prediction,
    load_program,
)
from foundation_dask.dspex.settings import configure, context, settings
from foundation_dask.dspex.signatures import (
    Field,
    InputField,
    OutputField,
    Signature,
    ensure_signature,
    make_signature,
)

_LAZY = {
    "Evaluate": "foundation_dask.dspex.evaluate",
    "LabeledFewShot": "foundation_dask.dspex.optimizers",
    "BootstrapFewShot": "foundation_dask.dspex.optimizers",
    "BootstrapFewShotWithRandomSearch": "foundation_dask.dspex.optimizers",
    "DistributedOptimizer": "foundation_dask.dspex.distributed",
    "AdaptiveOptimizer": "foundation_dask.dspex.distributed",
    "list_optimizations": "foundation_dask.dspex.distributed",
    "optimization_history": "foundation_dask.dspex.distributed",
    "EvaluationResult": "foundation_dask.dspex.evaluate",
    "OptimizationResult": "foundation_dask.dspex.distributed",
}

_SUBMODULES = ("datasets", "evaluate", "optimizers", "distributed")

__all__ = [
    "LM",
    "Adapter",
    "AdapterParseError",
    "BaseLM",
    "ChainOfThought",
    "ChatAdapter",
    "CompletionAdapter",
    "Completions",
    "DummyLM",
    "Example",
    "Field",
    "InputField",
    "LMError",
    "LMResponse",
    "LMTimeoutError",
    "LocalLM",
    "Module",
    "OpenAICompatibleLM",
    "OutputField",
    "Predict",
    "Prediction",
    "Signature",
    "clear_cache",
    "configure",
    "context",
    "ensure_signature",
    "load_program",
    "make_signature",
    "settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_LAZY))
