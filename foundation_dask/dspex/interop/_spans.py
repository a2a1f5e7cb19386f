"""Worker and client: every DSPy LM call as an ElixirScope ``lm`` span, with its tokens.

:class:`LMSpanCallback` is a DSPy callback (``dspy.settings.callbacks``): a span opens
when an LM call starts and closes when it ends, with the model, latency, prompt and
completion tokens (from the LM's history entry of that call) and the error if it
failed. Outside a trace it records nothing, at the cost of a context lookup.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from foundation_dask.tracecontext import SpanScope

__all__ = ["LMSpanCallback", "without_span_callbacks"]


class LMSpanCallback:
    """DSPy callback recording LM calls as spans (duck-typed to ``dspy.BaseCallback``:
    DSPy calls ``on_lm_start`` / ``on_lm_end`` and ignores the hooks a callback lacks)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()

    def _open(self) -> dict[str, Any]:
        found = getattr(self._local, "open", None)
        if found is None:
            found = self._local.open = {}
        return found

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if getattr(instance, "records_spans", False):  # a DSPEx LM inside records its own
            return
        attrs: dict[str, Any] = {"model": getattr(instance, "model", "?"), "client": "dspy"}
        scope = SpanScope("lm.call", "lm", attrs)
        scope.__enter__()
        history = getattr(instance, "history", None)
        last = history[-1] if history else None
        self._open()[call_id] = (scope, attrs, instance, last, time.perf_counter())

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        found = self._open().pop(call_id, None)
        if found is None:
            return
        scope, attrs, instance, last, t0 = found
        attrs["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        history = getattr(instance, "history", None)
        entry = history[-1] if history else None
        if entry is not None and entry is not last and isinstance(entry, dict):
            usage = entry.get("usage") or {}
            attrs["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
            attrs["completion_tokens"] = int(usage.get("completion_tokens") or 0)
        if exception is not None:
            scope.__exit__(type(exception), exception, exception.__traceback__)
        else:
            scope.__exit__(None, None, None)

    def __getattr__(self, name: str) -> Any:
        # the other hooks of dspy.BaseCallback (modules, adapters, tools, evaluations)
        if name.startswith("on_"):
            return _ignore
        raise AttributeError(name)

    def __repr__(self) -> str:
        return "LMSpanCallback()"


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


def without_span_callbacks(callbacks: Any) -> list[Any]:
    """``callbacks`` without :class:`LMSpanCallback` instances."""
    return [c for c in (callbacks or []) if not isinstance(c, LMSpanCallback)]
