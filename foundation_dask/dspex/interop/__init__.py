"""Client and worker: real DSPy programs (``dspy.Module``) evaluated and optimized on Dask.

``pip install "foundation-dask[dspy]"``. Two ways in:

* DSPEx's ``Evaluate``, optimizers and ``DistributedOptimizer`` take a ``dspy.Module``
  as they take a DSPEx program: it is pickled once per call (a part that does not pickle
  is named, :mod:`._pickling`), the DSPy settings in effect on the client
  (``dspy.configure(lm=...)``, ``dspy.context``) travel with every task
  (:mod:`._settings`), and the optimized program is a DSPy program
  (:mod:`._programs`).
* DSPy's own optimizers keep their algorithms and send their evaluation batches to the
  cluster: ``with dspex.on_cluster(): optimizer.compile(...)`` (:mod:`._on_cluster`,
  tasks in :mod:`._worker`).

Inside an ElixirScope trace every DSPy LM call is an ``lm`` span with its tokens
(:mod:`._spans`). :class:`CompletionAdapter` and :class:`DSPyLM` (:mod:`._classes`,
imported on first use: they import DSPy) give small models DSPEx's completion prompt
and a DSPEx LM (the local model, any OpenAI-compatible server's completions) in DSPy.
Nothing here imports DSPy until a DSPy object or ``on_cluster`` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from foundation_dask.dspex.interop._dspy import (
    PIP_COMMAND,
    dspy_loaded,
    is_dspy_lm,
    is_dspy_module,
    require_dspy,
)
from foundation_dask.dspex.interop._pickling import ShippedProgram, dumps, ship
from foundation_dask.dspex.interop._programs import as_dspy_demos, capture_calls
from foundation_dask.dspex.interop._settings import (
    DSPySettingsSnapshot,
    snapshot_dspy_settings,
)
from foundation_dask.dspex.interop._spans import LMSpanCallback

if TYPE_CHECKING:  # what the lazy names below resolve to
    from foundation_dask.dspex.interop._classes import CompletionAdapter as CompletionAdapter
    from foundation_dask.dspex.interop._classes import DSPyLM as DSPyLM
    from foundation_dask.dspex.interop._on_cluster import ClusterExecution as ClusterExecution
    from foundation_dask.dspex.interop._on_cluster import on_cluster as on_cluster

__all__ = [
    "PIP_COMMAND",
    "ClusterExecution",
    "CompletionAdapter",
    "DSPyLM",
    "DSPySettingsSnapshot",
    "LMSpanCallback",
    "ShippedProgram",
    "as_dspy_demos",
    "capture_calls",
    "dspy_loaded",
    "dumps",
    "is_dspy_lm",
    "is_dspy_module",
    "on_cluster",
    "require_dspy",
    "ship",
    "snapshot_dspy_settings",
]


def __getattr__(name: str) -> Any:
    # on_cluster builds on dspex.evaluate, which imports this package: imported on use
    if name in ("on_cluster", "ClusterExecution"):
        from foundation_dask.dspex.interop import _on_cluster

        return getattr(_on_cluster, name)
    if name in ("CompletionAdapter", "DSPyLM"):
        require_dspy(f"dspex.interop.{name}")
        from foundation_dask.dspex.interop import _classes

        return getattr(_classes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
