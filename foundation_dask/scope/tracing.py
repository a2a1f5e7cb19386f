"""Cluster traces: coordinators, ``trace()``, ``span()`` and ``@traced``."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any, TypeVar

from foundation_dask.scope.context import (
    SpanScope,
    TraceContext,
    attach,
    current,
    detach,
    new_span_id,
    new_trace_id,
    recorder,
)

F = TypeVar("F", bound=Callable[..., Any])

_TRACE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class TraceNotFoundError(KeyError):
    """No trace with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TraceCoordinator:
    """Singleton that owns one cluster trace: its scope, options, status and results.

    Started by :func:`start_cluster_trace` under the name ``("trace_coordinator", id)``;
    restarted with its state if its worker dies.
    """

    def __init__(self, trace_id: str, scope: str, options: dict[str, Any]):
        self.state: dict[str, Any] = {
            "trace_id": trace_id,
            "scope": scope,
            "options": options,
            "status": "active",
            "started_at": int(time.time() * 1000),
            "completed_at": None,
            "results": None,
        }

    def get_trace_info(self) -> dict[str, Any]:
        return dict(self.state)

    def complete(self, status: str = "completed", results: Any = None) -> dict[str, Any]:
        if self.state["status"] == "active":
            self.state["status"] = status
            self.state["completed_at"] = int(time.time() * 1000)
            self.state["results"] = results
        return dict(self.state)

    def checkpoint(self) -> dict[str, Any]:
        return self.state

    def restore(self, state: dict[str, Any]) -> None:
        self.state = state


def parse_trace_options(options: dict[str, Any] | str | None) -> dict[str, Any]:
    """Trace options from a dict, a JSON object string or ``"key=value, flag"`` text.

    Raises
    ------
    ValueError
        For text that is neither a JSON object nor ``key=value`` pairs.
    TypeError
        For anything else than a dict, a string or ``None``.
    """
    if options is None:
        return {}
    if isinstance(options, dict):
        parsed = options
    elif isinstance(options, str):
        text = options.strip()
        if not text:
            return {}
        if text.startswith("{") or text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"trace options {options!r} look like JSON but do not parse ({exc}); "
                    'write a JSON object such as \'{"sample": 0.5}\' or "key=value, flag".'
                ) from None
            if not isinstance(parsed, dict):
                raise ValueError(
                    f"trace options {options!r} must be a JSON object, not "
                    f"{type(parsed).__name__}."
                )
        else:
            parsed = {}
            for item in text.split(","):
                key, sep, value = item.partition("=")
                key = key.strip()
                if not key:
                    raise ValueError(
                        f"trace options {options!r}: {item.strip()!r} has no key; write "
                        '"key=value, flag" or a JSON object.'
                    )
                parsed[key] = value.strip() if sep else True
    else:
        raise TypeError(
            f"trace options must be a dict, a JSON string or 'key=value' text, not "
            f"{type(options).__name__}."
        )
    for key, value in parsed.items():
        if not isinstance(key, str):
            raise TypeError(f"trace option names must be strings, not {key!r}")
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise TypeError(
                f"trace option {key!r} has a {type(value).__name__} value; options hold "
                "strings, numbers, booleans or None."
            )
    return dict(parsed)


def _coordinator_name(trace_id: str) -> tuple[str, str]:
    return ("trace_coordinator", trace_id)


class ClusterTrace:
    """A started cluster trace: its id, scope and coordinator handle."""

    def __init__(self, trace_id: str, scope: str, coordinator: Any):
        self.trace_id = trace_id
        self.scope = scope
        self.coordinator = coordinator

    def info(self) -> dict[str, Any]:
        """The coordinator's record: status, started_at, completed_at, options, results."""
        return self.coordinator.get_trace_info().result()

    def stop(self, results: Any = None) -> dict[str, Any]:
        """Complete the trace (see :func:`stop_trace`)."""
        return stop_trace(self.trace_id, results=results)

    def collect(self, timeout: float = 10.0):
        """Gather the trace from the cluster (see :func:`collect_trace_data`)."""
        from foundation_dask.scope.collect import collect_trace_data

        return collect_trace_data(self.trace_id, timeout=timeout)

    def __repr__(self) -> str:
        return f"<ClusterTrace {self.trace_id} scope={self.scope!r}>"


def start_cluster_trace(scope: str = "default", trace_id: str | None = None,
                        options: dict[str, Any] | str | None = None) -> ClusterTrace:
    """Start a cluster trace: a supervised coordinator plus a ``start_trace`` broadcast.

    Parameters
    ----------
    scope
        What is traced (free text, shown in dashboards).
    trace_id
        Reuse an id (letters, digits, ``_.-``, at most 64); a new random one by default.
        Starting an id that is already active returns that trace.
    options
        A dict, a JSON object string or ``"key=value, flag"`` text.

    Returns
    -------
    ClusterTrace
    """
    import foundation_dask as fd

    if not isinstance(scope, str) or not scope:
        raise ValueError(f"scope must be a non-empty string, not {scope!r}")
    trace_id = trace_id or new_trace_id()
    if not isinstance(trace_id, str) or not _TRACE_ID.match(trace_id):
        raise ValueError(
            f"trace id {trace_id!r} is not valid: use 1-64 letters, digits, '_', '.' or '-' "
            "(or leave it out for a random one)."
        )
    opts = parse_trace_options(options)
    handle = fd.ProcessManager.start_singleton(
        TraceCoordinator, trace_id, scope, opts, name=_coordinator_name(trace_id)
    )
    fd.Channels.broadcast("control", ("start_trace", trace_id, scope))
    return ClusterTrace(trace_id, scope, handle)


def _coordinator(trace_id: str) -> Any:
    import foundation_dask as fd

    handle = fd.ProcessManager.lookup(_coordinator_name(trace_id))
    if handle is None:
        known = [t["trace_id"] for t in _trace_infos()]
        raise TraceNotFoundError(
            f"No trace {trace_id!r}. Known traces: {known or 'none'}; start one with "
            "scope.start_cluster_trace() or scope.trace()."
        )
    return handle


def stop_trace(trace_id: str, results: Any = None, status: str = "completed") -> dict[str, Any]:
    """Complete a trace: its status becomes ``completed`` and a ``trace_completed``
    message goes out on ``control``. Spans stay collectable until :func:`forget_trace`.

    Raises
    ------
    TraceNotFoundError
        If no trace has that id.
    """
    import foundation_dask as fd

    info = _coordinator(trace_id).complete(status, results).result()
    fd.Channels.broadcast("control", ("stop_trace", trace_id))
    fd.Channels.broadcast("control", ("trace_completed", trace_id, results))
    return info


def forget_trace(trace_id: str) -> None:
    """Stop the trace's coordinator and drop its spans from the cluster's buffers."""
    import foundation_dask as fd
    from foundation_dask.core._client import current_client

    _coordinator(trace_id)
    current_client().run(_forget_local, trace_id)
    recorder.forget(trace_id)
    fd.ProcessManager.stop(_coordinator_name(trace_id))


def _forget_local(trace_id: str) -> None:
    recorder.forget(trace_id)


def _trace_infos() -> list[dict[str, Any]]:
    import foundation_dask as fd

    infos = []
    for _, handle in fd.ProcessManager.find("trace_coordinator"):
        try:
            infos.append(handle.get_trace_info().result())
        except Exception:  # a coordinator being restarted or stopped meanwhile
            continue
    return infos


def active_traces(include_completed: bool = False):
    """The cluster's traces as a DataFrame (trace_id, scope, status, started_at...).

    Parameters
    ----------
    include_completed
        Also list traces that were stopped but not forgotten.
    """
    import pandas as pd

    rows = [
        info for info in _trace_infos()
        if include_completed or info["status"] == "active"
    ]
    cols = ["trace_id", "scope", "status", "started_at", "completed_at", "options"]
    frame = pd.DataFrame(rows, columns=cols)
    for col in ("started_at", "completed_at"):
        frame[col] = pd.to_datetime(frame[col], unit="ms")
    return frame


def span(name: str, **attrs: Any) -> SpanScope:
    """Record a span around a block, nested under the current span.

    Works in a notebook, inside tasks and inside methods of supervised processes.
    Outside any trace it records nothing and costs almost nothing. Work submitted
    inside the block (from a notebook or from inside a task) becomes its child.
    :func:`traced` records without that propagation, which makes it cheaper.

    >>> with scope.span("load", rows=1000):   # doctest: +SKIP
    ...     df = load()
    """
    return SpanScope(name, "span", attrs or None, propagate=True)


def traced(fn: F | None = None, *, name: str | None = None) -> F:
    """Decorator: record a span for every call of a function (sync or async)."""

    def wrap(func: F) -> F:
        label = name or func.__qualname__
        if iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                with SpanScope(label, "span"):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with SpanScope(label, "span"):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap  # type: ignore[return-value]


class trace:  # noqa: N801 - used as a context manager, like distributed.span
    """Trace a block: every future, nested task, supervised-process call and channel
    message inside carries the trace context.

    >>> with scope.trace("optimize") as t:          # doctest: +SKIP
    ...     client.gather(client.map(evaluate, examples))
    >>> data = t.collect()                          # doctest: +SKIP

    On exit the trace is completed (status ``completed``, or ``error`` when the block
    raised, with the exception recorded on the root span).
    """

    def __init__(self, name: str = "trace", *, trace_id: str | None = None,
                 options: dict[str, Any] | str | None = None, **attrs: Any):
        self.name = name
        self.trace_id = trace_id
        self.options = options
        self.attrs = attrs or None
        self.cluster_trace: ClusterTrace | None = None
        self._root: SpanScope | None = None
        self._token = None

    def __enter__(self) -> trace:
        self.cluster_trace = start_cluster_trace(self.name, self.trace_id, self.options)
        self.trace_id = self.cluster_trace.trace_id
        # the root span's parent is 0: nothing above it
        self._token = attach(TraceContext(self.trace_id, 0))
        self._root = SpanScope(self.name, "trace", self.attrs, propagate=True)
        self._root.__enter__()
        self.root_span_id = self._root.span_id
        return self

    def __exit__(self, typ, exc, tb) -> None:
        assert self._root is not None
        self._root.__exit__(typ, exc, tb)
        detach(self._token)
        stop_trace(self.trace_id, status="completed" if exc is None else "error")

    @property
    def context(self) -> TraceContext:
        return TraceContext(self.trace_id, self.root_span_id)

    def collect(self, timeout: float = 10.0):
        """Gather this trace from the cluster (see :func:`collect_trace_data`)."""
        from foundation_dask.scope.collect import collect_trace_data

        return collect_trace_data(self.trace_id, timeout=timeout)

    def __repr__(self) -> str:
        return f"<trace {self.name!r} {self.trace_id}>"


def continue_trace(ctx: TraceContext | tuple | None):
    """Attach a context received from elsewhere (e.g. ``Message.trace``) for a block."""

    class _Continue:
        def __enter__(self_inner):
            self_inner.token = attach(TraceContext(*ctx) if ctx else None)
            return current()

        def __exit__(self_inner, *exc):
            detach(self_inner.token)

    return _Continue()


__all__ = [
    "ClusterTrace", "TraceCoordinator", "TraceNotFoundError", "active_traces",
    "continue_trace", "forget_trace", "new_span_id", "parse_trace_options", "span",
    "start_cluster_trace", "stop_trace", "trace", "traced",
]
