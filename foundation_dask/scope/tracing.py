"""Client and worker: cluster traces, ``trace()``, ``span()`` and ``@traced``.

A trace is started from a client (or from a task, through its worker's client):
:func:`start_cluster_trace` and :class:`trace` start its :class:`TraceCoordinator`, a
supervised process on a worker, and announce it on the ``control`` channel;
:func:`stop_trace`, :func:`forget_trace` and :func:`active_traces` act on it. Spans
(:func:`span`, :func:`traced`, :func:`continue_trace`) are recorded wherever the code
runs: in a notebook, in tasks and in methods of supervised processes. Functions that
act on the cluster take ``client`` and otherwise use the current client (which
connects with :func:`foundation_dask.connect` when there is none).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from contextvars import Token
from inspect import iscoroutinefunction
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from foundation_dask.core._client import current_client
from foundation_dask.core.channels import Channels
from foundation_dask.core.processes import ProcessManager
from foundation_dask.errors import TraceNotFoundError
from foundation_dask.scope._coordinators import coordinator, trace_infos
from foundation_dask.scope._names import coordinator_name
from foundation_dask.tracecontext import (
    SpanScope,
    TraceContext,
    attach,
    current,
    detach,
    new_span_id,
    new_trace_id,
    recorder,
)

if TYPE_CHECKING:
    import distributed
    import pandas as pd

    from foundation_dask.core.processes import SingletonHandle
    from foundation_dask.scope.collect import TraceData

F = TypeVar("F", bound=Callable[..., Any])

_TRACE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


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
        """The trace's record: trace_id, scope, options, status, started_at and
        completed_at (epoch ms), results."""
        return dict(self.state)

    def complete(self, status: str = "completed", results: Any = None) -> dict[str, Any]:
        """End the trace with ``status`` and ``results`` (once: later calls change
        nothing); returns the record."""
        if self.state["status"] == "active":
            self.state["status"] = status
            self.state["completed_at"] = int(time.time() * 1000)
            self.state["results"] = results
        return dict(self.state)

    def checkpoint(self) -> dict[str, Any]:
        """The state the supervisor keeps (after every call) to restart it with."""
        return self.state

    def restore(self, state: dict[str, Any]) -> None:
        """Come back from :meth:`checkpoint` after a restart."""
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


class ClusterTrace:
    """A started cluster trace: its id, scope and coordinator handle."""

    def __init__(self, trace_id: str, scope: str, coordinator: SingletonHandle):
        self.trace_id = trace_id
        self.scope = scope
        self.coordinator = coordinator

    def info(self) -> dict[str, Any]:
        """The coordinator's record: status, started_at, completed_at, options, results."""
        return self.coordinator.get_trace_info().result()

    def stop(self, results: Any = None, *,
             client: distributed.Client | None = None) -> dict[str, Any]:
        """Complete the trace (see :func:`stop_trace`)."""
        return stop_trace(self.trace_id, results=results, client=client)

    def collect(self, timeout: float = 10.0, *,
                client: distributed.Client | None = None) -> TraceData:
        """Gather the trace from the cluster (see :func:`collect_trace_data`)."""
        from foundation_dask.scope.collect import collect_trace_data

        return collect_trace_data(self.trace_id, timeout=timeout, client=client)

    def __repr__(self) -> str:
        return f"<ClusterTrace {self.trace_id} scope={self.scope!r}>"


def start_cluster_trace(scope: str = "default", trace_id: str | None = None,
                        options: dict[str, Any] | str | None = None, *,
                        client: distributed.Client | None = None) -> ClusterTrace:
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
    client
        The client to act through; default: the current client, else the one
        :func:`foundation_dask.connect` starts.

    Returns
    -------
    ClusterTrace
    """
    if not isinstance(scope, str) or not scope:
        raise ValueError(f"scope must be a non-empty string, not {scope!r}")
    trace_id = trace_id or new_trace_id()
    if not isinstance(trace_id, str) or not _TRACE_ID.match(trace_id):
        raise ValueError(
            f"trace id {trace_id!r} is not valid: use 1-64 letters, digits, '_', '.' or '-' "
            "(or leave it out for a random one)."
        )
    opts = parse_trace_options(options)
    client = client or current_client()
    handle = ProcessManager.start_singleton(
        TraceCoordinator, trace_id, scope, opts, name=coordinator_name(trace_id),
        owner="cluster", client=client,  # stop_trace may come from another client
    )
    Channels.broadcast("control", ("start_trace", trace_id, scope), client=client)
    return ClusterTrace(trace_id, scope, handle)


def stop_trace(trace_id: str, results: Any = None, status: str = "completed", *,
               client: distributed.Client | None = None) -> dict[str, Any]:
    """Complete a trace: its status becomes ``status`` (``completed`` by default) and a
    ``trace_completed`` message goes out on ``control``. Spans stay collectable until
    :func:`forget_trace`.

    Parameters
    ----------
    trace_id
        The trace.
    results
        Kept in the coordinator's record.
    status
        The trace's final status.
    client
        The client to act through; default: the current client, else the one
        :func:`foundation_dask.connect` starts.

    Returns
    -------
    dict
        The coordinator's record.

    Raises
    ------
    TraceNotFoundError
        If no trace has that id.
    """
    client = client or current_client()
    info = coordinator(trace_id, client).complete(status, results).result()
    Channels.broadcast("control", ("stop_trace", trace_id), client=client)
    Channels.broadcast("control", ("trace_completed", trace_id, results), client=client)
    return info


def forget_trace(trace_id: str, *, client: distributed.Client | None = None) -> None:
    """Stop the trace's coordinator and drop its spans from the cluster's buffers.

    Every worker and this process drop the spans they recorded for the trace; the
    scheduler drops its record of the trace's tasks and the spans its process recorded.
    Tasks of the trace that finish afterwards are recorded again (forget a trace once
    its work is done).

    Parameters
    ----------
    trace_id
        The trace.
    client
        The client to act through; default: the current client, else the one
        :func:`foundation_dask.connect` starts.

    Raises
    ------
    TraceNotFoundError
        If no trace has that id.
    """
    client = client or current_client()
    coordinator(trace_id, client)
    client.run(_forget_local, trace_id)
    client.sync(client.scheduler.foundation_scope_forget, trace_id=trace_id)
    recorder.forget(trace_id)
    ProcessManager.stop(coordinator_name(trace_id), client=client)


def _forget_local(trace_id: str) -> None:
    recorder.forget(trace_id)


def active_traces(include_completed: bool = False, *,
                  client: distributed.Client | None = None) -> pd.DataFrame:
    """The cluster's traces as a DataFrame (trace_id, scope, status, started_at...).

    Parameters
    ----------
    include_completed
        Also list traces that were stopped but not forgotten.
    client
        The client to act through; default: the current client, else the one
        :func:`foundation_dask.connect` starts.
    """
    import pandas as pd

    rows = [
        info for info in trace_infos(client or current_client())
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
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with SpanScope(label, "span"):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
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

    Parameters
    ----------
    name
        The trace's scope and the name of its root span.
    trace_id, options
        As for :func:`start_cluster_trace`.
    client
        The client to act through; default: the current client, else the one
        :func:`foundation_dask.connect` starts.
    **attrs
        Attributes of the root span.
    """

    trace_id: str
    root_span_id: int

    def __init__(self, name: str = "trace", *, trace_id: str | None = None,
                 options: dict[str, Any] | str | None = None,
                 client: distributed.Client | None = None, **attrs: Any):
        self.name = name
        self.trace_id = trace_id  # type: ignore[assignment]  # a str once entered
        self.options = options
        self.client = client
        self.attrs = attrs or None
        self.cluster_trace: ClusterTrace | None = None
        self._root: SpanScope | None = None
        self._token: Token[Any] | None = None

    def __enter__(self) -> trace:
        self.cluster_trace = start_cluster_trace(self.name, self.trace_id, self.options,
                                                 client=self.client)
        self.trace_id = self.cluster_trace.trace_id
        # the root span's parent is 0: nothing above it
        self._token = attach(TraceContext(self.trace_id, 0))
        self._root = SpanScope(self.name, "trace", self.attrs, propagate=True)
        self._root.__enter__()
        self.root_span_id = self._root.span_id
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._root is not None and self._token is not None
        self._root.__exit__(typ, exc, tb)
        detach(self._token)
        stop_trace(self.trace_id, status="completed" if exc is None else "error",
                   client=self.client)

    @property
    def context(self) -> TraceContext:
        """The context inside the block: the trace and its root span."""
        return TraceContext(self.trace_id, self.root_span_id)

    def collect(self, timeout: float = 10.0, *,
                client: distributed.Client | None = None) -> TraceData:
        """Gather this trace from the cluster (see :func:`collect_trace_data`)."""
        from foundation_dask.scope.collect import collect_trace_data

        return collect_trace_data(self.trace_id, timeout=timeout,
                                  client=client or self.client)

    def __repr__(self) -> str:
        return f"<trace {self.name!r} {self.trace_id}>"


class _Continue:
    """The context manager of :func:`continue_trace`."""

    def __init__(self, ctx: TraceContext | tuple | None) -> None:
        self.ctx = ctx

    def __enter__(self) -> TraceContext | None:
        self.token = attach(TraceContext(*self.ctx) if self.ctx else None)
        return current()

    def __exit__(self, *exc: object) -> None:
        detach(self.token)


def continue_trace(ctx: TraceContext | tuple | None) -> _Continue:
    """Attach a context received from elsewhere (e.g. ``Message.trace``) for a block.

    >>> with scope.continue_trace(message.trace):   # doctest: +SKIP
    ...     handle(message)
    """
    return _Continue(ctx)


__all__ = [
    "ClusterTrace", "TraceCoordinator", "TraceNotFoundError", "active_traces",
    "continue_trace", "forget_trace", "new_span_id", "parse_trace_options", "span",
    "start_cluster_trace", "stop_trace", "trace", "traced",
]
