"""Any process: the LM clients of DSPEx (an LM runs in the client's process or on a worker).

:mod:`~.base` (:class:`BaseLM`, :class:`LMResponse`, :func:`lm_from_state`),
:mod:`~.budget` (:class:`Budget`, :class:`RateLimit`: what calls may spend, cluster-wide),
:mod:`~.cache` (the disk cache of calls, and the cluster's), :mod:`~.dummy`
(:class:`DummyLM`, for tests),
:mod:`~.http` (:class:`OpenAICompatibleLM`, :class:`LM`) and :mod:`~.local`
(:class:`LocalLM`, a GGUF model through llama.cpp).
"""

from __future__ import annotations

from foundation_dask.dspex.lm.base import HISTORY_SIZE, BaseLM, LMResponse, lm_from_state
from foundation_dask.dspex.lm.budget import Budget, RateLimit, budget_info, estimate
from foundation_dask.dspex.lm.cache import (
    DEFAULT_CACHE_DIR,
    DiskCache,
    cache_dir,
    clear_cache,
    cluster_cache_info,
    get_cache,
)
from foundation_dask.dspex.lm.dummy import DummyLM
from foundation_dask.dspex.lm.http import LM, OpenAICompatibleLM
from foundation_dask.dspex.lm.http import _parse_retry_after as _parse_retry_after
from foundation_dask.dspex.lm.local import DEFAULT_LOCAL_MODEL, LocalLM, default_model_path
from foundation_dask.errors import BudgetExhaustedError, LMError, LMTimeoutError

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_LOCAL_MODEL",
    "HISTORY_SIZE",
    "LM",
    "BaseLM",
    "Budget",
    "BudgetExhaustedError",
    "DiskCache",
    "DummyLM",
    "LMError",
    "LMResponse",
    "LMTimeoutError",
    "LocalLM",
    "OpenAICompatibleLM",
    "RateLimit",
    "budget_info",
    "cache_dir",
    "clear_cache",
    "cluster_cache_info",
    "default_model_path",
    "estimate",
    "get_cache",
    "lm_from_state",
]
