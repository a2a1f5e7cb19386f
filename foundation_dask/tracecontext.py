"""Any process: trace context and the per-process span recorder, the hot path of ElixirScope.

A layer below both :mod:`foundation_dask.core` (supervised processes and channels carry
the context and record their spans) and :mod:`foundation_dask.scope` (which starts,
collects and exports traces); it imports neither.

A :class:`TraceContext` (trace id, current span id) lives in a ``ContextVar`` in the
process that opened it. It crosses process boundaries three ways:

* **tasks**: :func:`foundation_dask.scope.trace` and :func:`span` on a client enter a
  :func:`distributed.span` whose tag encodes the context (``fd:<trace>:<span>:<name>``).
  Dask itself carries that annotation into every task of the block, into tasks those
  tasks submit, and into ``compute()`` of collections; :func:`current` decodes it
  inside a task (``dask.get_annotations()["span"]``).
* **supervised processes**: a :class:`~foundation_dask.SingletonHandle` call sends the
  caller's context with the call and the method runs inside it.
* **channels**: a broadcast carries the publisher's context in the message.

Spans are recorded where they happen as plain tuples in a bounded per-trace buffer
of the process (:class:`Recorder`), at a cost of 1.5-2 microseconds each; they are
only gathered when a trace is collected.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
import traceback
from collections import deque
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, NamedTuple

from foundation_dask._compat import annotations_var as _annotations
from foundation_dask._compat import task_annotations
from foundation_dask._compat import worker_thread_state as thread_state

#: Prefix of the :func:`distributed.span` tags that carry a trace context.
TAG_PREFIX = "fd:"

_getrandbits = random.getrandbits
_time_ns = time.time_ns
_get_ident = threading.get_ident


class TraceContext(NamedTuple):
    """Where new spans attach: the trace and the span that is their parent."""

    trace_id: str
    span_id: int


# The value is (trace id, span id, owner): the owner is the task key of the thread that
# set it (None outside tasks). Dask hops from task threads to its event loop with
# call_soon_threadsafe, which copies the thread's context into loop callbacks; a value
# whose owner is not the running task leaked that way and is ignored. A plain tuple, not
# a TraceContext: building a NamedTuple costs a seventh of a span.
_current: ContextVar[tuple[str, int, Any] | None] = ContextVar("foundation_trace", default=None)
_tag_cache: dict[str, TraceContext | None] = {}


def new_trace_id() -> str:
    """A random 128-bit trace id as 32 hex digits (the OpenTelemetry form)."""
    return f"{_getrandbits(128):032x}"


def new_span_id() -> int:
    """A random non-zero 63-bit span id (exported as 16 hex digits)."""
    return _getrandbits(63) or 1


def encode_tag(ctx: TraceContext, name: str = "") -> str:
    """The :func:`distributed.span` tag that carries ``ctx`` into tasks."""
    return f"{TAG_PREFIX}{ctx.trace_id}:{ctx.span_id:x}:{name}"


def decode_tag(tag: str) -> TraceContext | None:
    """Inverse of :func:`encode_tag`; ``None`` for tags that are not ours."""
    try:
        return _tag_cache[tag]
    except KeyError:
        pass
    ctx = None
    if tag.startswith(TAG_PREFIX):
        parts = tag[len(TAG_PREFIX):].split(":", 2)
        if len(parts) >= 2:
            try:
                ctx = TraceContext(parts[0], int(parts[1], 16))
            except ValueError:
                ctx = None
    if len(_tag_cache) > 10_000:
        _tag_cache.clear()
    _tag_cache[tag] = ctx
    return ctx


#: The task annotation that carries a task's exact trace context (``"<trace>:<span hex>"``).
ANNOTATION = "fd_trace"


def context_from_annotations(annotations: dict[str, Any] | None) -> TraceContext | None:
    """The trace context of a task from its annotations.

    The ``fd_trace`` annotation is exact. Dask's ``span`` annotation is the fallback
    (it is what Dask carries into tasks submitted from tasks, but the scheduler moves
    every task of a task group onto the span of the group's first task).
    """
    if not annotations:
        return None
    exact = annotations.get(ANNOTATION)
    if exact:
        return decode_tag(TAG_PREFIX + exact)
    span = annotations.get("span")
    if not span:
        return None
    for tag in reversed(span["name"]):
        ctx = decode_tag(tag)
        if ctx is not None:
            return ctx
    return None


_task_ids: dict[tuple[str, Any], int] = {}


def task_span_id(trace_id: str, key: Any) -> int:
    """Deterministic span id of the task ``key`` within a trace (same on every node)."""
    try:
        return _task_ids[(trace_id, key)]
    except KeyError:
        pass
    digest = hashlib.blake2b(f"{trace_id}/{key}".encode(), digest_size=8).digest()
    sid = (int.from_bytes(digest, "big") >> 1) or 1
    if len(_task_ids) > 100_000:
        _task_ids.clear()
    _task_ids[(trace_id, key)] = sid
    return sid


def current() -> TraceContext | None:
    """The trace context of the running code, or ``None`` outside any trace.

    Inside a traced task that opened no span of its own, the current span is the
    task itself.
    """
    local = thread_state.__dict__  # cheaper than getattr with a default on a threading.local
    key = local.get("key")
    value = _current.get()
    if value is not None and value[2] == key:
        return TraceContext(value[0], value[1])
    if key is not None and not local.get("actor", False):
        ctx = context_from_annotations(_task_annotations(key))
        if ctx is None:
            return None
        return TraceContext(ctx.trace_id, task_span_id(ctx.trace_id, key))
    return context_from_annotations(_annotations.get())


def _task_annotations(key: Any) -> dict[str, Any] | None:
    """Annotations of the running task as the worker received them."""
    found = task_annotations(key)
    return _annotations.get() if found is None else found


def attach(ctx: TraceContext | None) -> Token[tuple[str, int, Any] | None]:
    """Make ``ctx`` current; returns a token for :func:`detach`."""
    if ctx is None:
        return _current.set(None)
    return _current.set((ctx[0], ctx[1], thread_state.__dict__.get("key")))


def detach(token: Token[tuple[str, int, Any] | None]) -> None:
    """Make current again what was before the :func:`attach` that returned ``token``."""
    _current.reset(token)


# --------------------------------------------------------------------------------------
# recording

#: Field order of a recorded span tuple.
SPAN_FIELDS = (
    "trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns",
    "thread_id", "thread", "status", "error", "attrs",
)


class Recorder:
    """Bounded per-trace span buffers of one process.

    Parameters
    ----------
    max_spans
        Spans kept per trace; older ones are dropped and counted in :attr:`dropped`.
    """

    def __init__(self, max_spans: int = 200_000):
        self.max_spans = max_spans
        self.buffers: dict[str, deque[tuple]] = {}
        self.dropped: dict[str, int] = {}
        self.node = "client"
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self._thread_names: dict[int, str] = {}

    def buffer(self, trace_id: str) -> deque[tuple]:
        """The span buffer of ``trace_id`` (created on first use)."""
        buf = self.buffers.get(trace_id)
        if buf is None:
            buf = self.buffers[trace_id] = deque(maxlen=self.max_spans)
        return buf

    def record(self, row: tuple) -> None:
        """Append one span tuple (fields :data:`SPAN_FIELDS`)."""
        buf = self.buffers.get(row[0])
        if buf is None:
            buf = self.buffer(row[0])
        if len(buf) == self.max_spans:
            self.dropped[row[0]] = self.dropped.get(row[0], 0) + 1
        buf.append(row)

    def thread_name(self, ident: int) -> str:
        """The name of the thread ``ident`` of this process (its ident if unknown)."""
        name = self._thread_names.get(ident)
        if name is None:
            for t in threading.enumerate():
                if t.ident is not None:
                    self._thread_names[t.ident] = t.name
            name = self._thread_names.get(ident, str(ident))
        return name

    def take(self, trace_id: str, clear: bool = False) -> dict[str, Any]:
        """The spans of ``trace_id`` recorded here, with this process's identity."""
        buf = self.buffers.pop(trace_id, None) if clear else self.buffers.get(trace_id)
        rows = list(buf) if buf is not None else []
        threads = {r[7] for r in rows}
        return {
            "node": self.node,
            "pid": self.pid,
            "host": self.host,
            "spans": rows,
            "threads": {t: self.thread_name(t) for t in threads},
            "dropped": self.dropped.get(trace_id, 0),
            "now_ns": _time_ns(),
        }

    def forget(self, trace_id: str) -> None:
        """Drop the spans of ``trace_id``."""
        self.buffers.pop(trace_id, None)
        self.dropped.pop(trace_id, None)


#: The span recorder of this process.
recorder = Recorder()
_buffers = recorder.buffers


def error_info(exc: BaseException) -> dict[str, str]:
    """Type, message and formatted traceback of an exception, for a span."""
    return {
        "type": type(exc).__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


class SpanScope:
    """Context manager recording one span; see :func:`foundation_dask.scope.span`."""

    # ``cur`` is the value of the context variable inside the span, (trace id, span id,
    # owner): kept whole, it serves both the variable and the recorded row
    __slots__ = ("name", "kind", "attrs", "ctx", "cur", "parent_id", "start", "token",
                 "propagate", "ann_token")

    name: str
    kind: str
    attrs: dict[str, Any] | None
    ctx: TraceContext | None
    cur: tuple[str, int, Any]
    parent_id: int
    start: int
    token: Token[tuple[str, int, Any] | None] | None
    propagate: bool
    ann_token: Token[Any]

    def __init__(self, name: str, kind: str = "span", attrs: dict[str, Any] | None = None,
                 ctx: TraceContext | None = None, propagate: bool = False):
        self.name = name
        self.kind = kind
        self.attrs = attrs
        self.ctx = ctx
        self.propagate = propagate

    def __enter__(self) -> SpanScope:
        key = thread_state.__dict__.get("key")
        ctx = self.ctx
        if ctx is None:
            value = _current.get()
            if value is not None and value[2] == key:
                trace_id, self.parent_id = value[0], value[1]
            else:
                ctx = current()
                if ctx is None:
                    self.token = None
                    return self
                trace_id, self.parent_id = ctx
        else:
            trace_id, self.parent_id = ctx
        self.cur = cur = (trace_id, _getrandbits(63) or 1, key)
        self.token = _current.set(cur)
        if self.propagate:
            self.ann_token = _propagate(trace_id, cur[1], self.name)
        self.start = _time_ns()
        return self

    @property
    def trace_id(self) -> str:
        """The trace of this span (after it was entered inside a trace)."""
        return self.cur[0]

    @property
    def span_id(self) -> int:
        """This span's id (after it was entered inside a trace)."""
        return self.cur[1]

    @property
    def context(self) -> TraceContext | None:
        """The context inside this span (``None`` outside any trace)."""
        if self.token is None:
            return None
        return TraceContext(self.cur[0], self.cur[1])

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.token is None:
            return
        end = _time_ns()
        _current.reset(self.token)
        if self.propagate:
            _annotations.reset(self.ann_token)
        trace_id, span_id, _ = self.cur
        row = (trace_id, span_id, self.parent_id, self.name, self.kind, self.start, end,
               _get_ident(), None, "ok" if exc is None else "error",
               None if exc is None else error_info(exc), self.attrs)
        # Recorder.record, inlined: this is the hot path
        buf = _buffers.get(trace_id)
        if buf is None or len(buf) == buf.maxlen:
            recorder.record(row)
        else:
            buf.append(row)


def _propagate(trace_id: str, span_id: int, name: str) -> Token[Any]:
    """Make work submitted from here on carry the span ``span_id`` (what
    :func:`distributed.span` does, minus its overhead; also from inside a task).

    Returns the token to reset Dask's annotations with.
    """
    ann = _annotations.get() or {}
    prev = ann.get("span")
    return _annotations.set({
        **ann,
        ANNOTATION: f"{trace_id}:{span_id:x}",
        "span": {
            "name": (prev["name"] if prev else ())
            + (encode_tag(TraceContext(trace_id, span_id), name),),
            "ids": (prev["ids"] if prev else ()) + (f"{trace_id}-{span_id:x}",),
        },
    })


def record_event(name: str, kind: str = "event", attrs: dict[str, Any] | None = None,
                 ctx: TraceContext | None = None) -> None:
    """Record an instant event (zero duration) under the current context, if any."""
    ctx = ctx or current()
    if ctx is None:
        return
    now = _time_ns()
    recorder.record((ctx.trace_id, new_span_id(), ctx.span_id, name, kind, now, now,
                     _get_ident(), None, "ok", None, attrs))
