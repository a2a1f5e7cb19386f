"""Any process: DSPEx, declarative LM programs (signatures, predictors, modules),
DSPy-style, on Dask.

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
loaded once per worker process. ``Evaluate``, the optimizers and the distributed
optimization (:mod:`~foundation_dask.dspex.orchestration`, client side) are imported on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation_dask._lazy import attach
from foundation_dask.dspex.adapters import (
    Adapter,
    AdapterParseError,
    ChatAdapter,
    CompletionAdapter,
)
from foundation_dask.dspex.callbacks import ACTIVE_CALL_ID, BaseCallback, with_callbacks
from foundation_dask.dspex.lm import (
    LM,
    BaseLM,
    Budget,
    BudgetExhaustedError,
    DummyLM,
    LMError,
    LMResponse,
    LMTimeoutError,
    LocalLM,
    OpenAICompatibleLM,
    budget_info,
    clear_cache,
)
from foundation_dask.dspex.metrics import (
    EM,
    F1,
    answer_exact_match,
    answer_passage_match,
    normalize_text,
)
from foundation_dask.dspex.predict import ChainOfThought, Predict
from foundation_dask.dspex.primitives import (
    Completions,
    Example,
    History,
    Module,
    Prediction,
    load,
    load_program,
)
from foundation_dask.dspex.settings import configure, context, load_settings, settings
from foundation_dask.dspex.signatures import (
    Field,
    InputField,
    OutputField,
    Signature,
    ensure_signature,
    infer_prefix,
    make_signature,
)

if TYPE_CHECKING:  # what the lazy names below resolve to, for editors and type checkers
    from foundation_dask.dspex.evaluate import Evaluate as Evaluate
    from foundation_dask.dspex.evaluate import EvaluationResult as EvaluationResult
    from foundation_dask.dspex.interop import on_cluster as on_cluster
    from foundation_dask.dspex.optimizers import BootstrapFewShot as BootstrapFewShot
    from foundation_dask.dspex.optimizers import (
        BootstrapFewShotWithRandomSearch as BootstrapFewShotWithRandomSearch,
    )
    from foundation_dask.dspex.optimizers import LabeledFewShot as LabeledFewShot
    from foundation_dask.dspex.optimizers import Teleprompter as Teleprompter
    from foundation_dask.dspex.orchestration import AdaptiveOptimizer as AdaptiveOptimizer
    from foundation_dask.dspex.orchestration import DistributedOptimizer as DistributedOptimizer
    from foundation_dask.dspex.orchestration import OptimizationResult as OptimizationResult
    from foundation_dask.dspex.orchestration import list_optimizations as list_optimizations
    from foundation_dask.dspex.orchestration import (
        optimization_history as optimization_history,
    )
    from foundation_dask.dspex.tuning import TuneResult as TuneResult
    from foundation_dask.dspex.tuning import tune as tune

_LAZY = {
    "Evaluate": "foundation_dask.dspex.evaluate",
    "on_cluster": "foundation_dask.dspex.interop._on_cluster",
    "LabeledFewShot": "foundation_dask.dspex.optimizers",
    "Teleprompter": "foundation_dask.dspex.optimizers",
    "BootstrapFewShot": "foundation_dask.dspex.optimizers",
    "BootstrapFewShotWithRandomSearch": "foundation_dask.dspex.optimizers",
    "DistributedOptimizer": "foundation_dask.dspex.orchestration",
    "AdaptiveOptimizer": "foundation_dask.dspex.orchestration",
    "list_optimizations": "foundation_dask.dspex.orchestration",
    "optimization_history": "foundation_dask.dspex.orchestration",
    "EvaluationResult": "foundation_dask.dspex.evaluate",
    "OptimizationResult": "foundation_dask.dspex.orchestration",
    "tune": "foundation_dask.dspex.tuning",
    "TuneResult": "foundation_dask.dspex.tuning",
}

_SUBMODULES = ("datasets", "evaluate", "optimizers", "orchestration", "distributed",
               "interop")

__all__ = [
    "ACTIVE_CALL_ID",
    "EM",
    "F1",
    "LM",
    "Adapter",
    "BaseCallback",
    "History",
    "answer_exact_match",
    "answer_passage_match",
    "infer_prefix",
    "load",
    "load_settings",
    "normalize_text",
    "with_callbacks",
    "AdapterParseError",
    "BaseLM",
    "Budget",
    "BudgetExhaustedError",
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
    "budget_info",
    "clear_cache",
    "configure",
    "context",
    "ensure_signature",
    "load_program",
    "make_signature",
    "settings",
]


__getattr__, __dir__ = attach(__name__, _LAZY, _SUBMODULES)
