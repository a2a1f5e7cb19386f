"""Worker: the task that runs a chunk of the items DSPy handed its executor.

``run_items(payload, items, carried)`` unpickles the function DSPy's ``ParallelExecutor``
was given (once per worker process for the same bytes), and calls it on each
``(index, item)`` under the DSPy settings carried from the client. Like DSPy's
executor, an item whose function raises gives its exception as its result (an
``EvaluationError`` with its text if it does not pickle), so one failing example never
fails the chunk.
"""

from __future__ import annotations

import contextlib
import pickle
import traceback
from typing import Any

from foundation_dask.dspex.interop._pickling import loads
from foundation_dask.dspex.interop._settings import DSPySettingsSnapshot
from foundation_dask.errors import EvaluationError
from foundation_dask.tracecontext import SpanScope

__all__ = ["run_items"]


def _portable(exc: Exception) -> Exception:
    """``exc`` if it travels back to the client, else an :class:`EvaluationError` with its
    text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return EvaluationError(text, label="item", failed=1, max_errors=None)
    return exc


def run_items(payload: bytes, items: list[tuple[int, Any]],
              carried: DSPySettingsSnapshot | None) -> list[tuple[int, Any]]:
    """Runs on a worker: ``function(item)`` for each ``(index, item)``; ``[(index,
    result or exception), ...]``."""
    function = loads(payload, reuse=True)
    out: list[tuple[int, Any]] = []
    with carried.applied() if carried is not None else contextlib.nullcontext():
        for index, item in items:
            attrs: dict[str, Any] = {"index": index}
            with SpanScope("evaluate_example", "span", attrs):
                try:
                    result: Any = function(item)
                except Exception as exc:
                    result = _portable(exc)
                    attrs["error"] = f"{type(exc).__name__}: {exc}"
                else:
                    if isinstance(result, tuple) and result:
                        with contextlib.suppress(TypeError, ValueError):
                            attrs["score"] = float(result[-1])
            out.append((index, result))
    return out
