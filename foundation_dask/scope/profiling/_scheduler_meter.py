"""Scheduler: the time Foundation's scheduler extensions take on the scheduler's event loop.

ElixirScope's profile of Foundation itself: :func:`~foundation_dask.scope.start_cluster_profiling`
installs this meter on the scheduler for the session's window (and
:func:`~foundation_dask.dspex.tune` on each cluster it measures on);
:attr:`PerformanceReport.scheduler_extensions
<foundation_dask.scope.profiling.PerformanceReport.scheduler_extensions>` gives its figures.

:func:`install_meter` (run on the scheduler with ``Client.run_on_scheduler``) wraps, on
that scheduler, everything through which Foundation code gets the event loop: the
comm and stream handlers of the Foundation extensions, their lifecycle and transition
hooks, their periodic callbacks, and every method of the extensions and of the
Foundation scheduler plugin (so that internal calls and coroutines started after the
install are seen). A wrapped call adds the seconds it held the loop thread to its
subsystem: for a coroutine, the sum of its steps between awaits, not the time spent
waiting. Time is exclusive: a wrapped call inside another counts for its own
subsystem and is taken off its caller's (the plugin's transition hook dispatches to
the scope extension's: each gets its part). Coroutines already running at the install
(a channel writer of a process linked before) are not seen. A wrapper costs about a
microsecond a call, counted in the figures. Given a duration, the meter ends by itself
(its figures kept, every wrapped object put back); :func:`read_meter` gives the figures
and, with ``uninstall=True``, ends it now.

Dask's own profile of the scheduler's event loop (``Client.profile(scheduler=True)``)
would give the same kind of figure by sampling, but Dask does not sample the event loop
on Python 3.11; this meter counts instead, on every version.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from tornado.ioloop import PeriodicCallback

from foundation_dask.core.plugin import PLUGIN_NAME

if TYPE_CHECKING:
    import distributed

__all__ = ["install_meter", "read_meter", "subsystem"]

#: The meters installed in this process, by scheduler address.
_METERS: dict[str, _Meter] = {}
#: The figures of the meter that ended last, by scheduler address.
_ENDED: dict[str, dict[str, Any]] = {}


def subsystem(filename: str) -> str | None:
    """The Foundation subsystem of a source file (``channels``, ``scope``, ``dspex.lm``...),
    None for code outside foundation_dask."""
    path = filename.replace(os.sep, "/")
    if "foundation_dask/" not in path:
        return None
    rel = path.rsplit("foundation_dask/", 1)[1]
    parts = rel.split("/")
    if parts[0] == "core" and len(parts) > 2:
        return parts[1]
    if rel == "core/plugin.py":
        return "plugin"
    if parts[0] == "dspex" and len(parts) > 2 and parts[1] == "lm":
        return "dspex.lm"
    if parts[0] in ("views", "widgets") or rel in ("dashboard.py", "_pages.py"):
        return "dashboard"
    return parts[0].removesuffix(".py")


def _source(fn: Any) -> str:
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    return code.co_filename if code is not None else ""


class _Steps:
    """Awaits ``coro``, timing each of its steps on the loop thread."""

    def __init__(self, meter: _Meter, coro: Any, name: str):
        self.meter, self.coro, self.name = meter, coro, name

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.coro.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            start = self.meter.enter()
            try:
                out = it.throw(error) if error is not None else it.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                self.meter.exit(self.name, start)
            try:
                value, error = (yield out), None
            except BaseException as exc:  # cancellation and errors go to the coroutine
                value, error = None, exc


class _Meter:
    def __init__(self, scheduler: distributed.Scheduler):
        self.scheduler = scheduler
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.children: list[float] = []  # time of wrapped calls inside each open call
        self.undo: list[Callable[[], None]] = []
        self.started = time.perf_counter()
        self.timer: asyncio.TimerHandle | None = None

    def enter(self) -> float:
        self.children.append(0.0)
        return time.perf_counter()

    def exit(self, name: str, start: float) -> None:
        elapsed = time.perf_counter() - start
        self.seconds[name] += elapsed - self.children.pop()
        if self.children:
            self.children[-1] += elapsed

    def wrap(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return await _Steps(self, fn(*args, **kwargs), name)
            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            start = self.enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit(name, start)
        return timed

    def install(self) -> None:
        plugin = self.scheduler.extensions.get(PLUGIN_NAME)
        if plugin is None:
            return
        objects = [plugin, *plugin.extensions.values()]
        for obj in objects:
            self._wrap_methods(obj)
            for value in list(vars(obj).values()):
                if isinstance(value, PeriodicCallback):
                    self._wrap_attr(value, "callback", value.callback)
        owned = {id(o) for o in objects}
        for table in (self.scheduler.handlers, self.scheduler.stream_handlers):
            for op, fn in list(table.items()):
                if id(getattr(fn, "__self__", None)) in owned:
                    name = subsystem(_source(fn)) or "plugin"
                    table[op] = self.wrap(fn, name)
                    self.undo.append(functools.partial(table.__setitem__, op, fn))
        hooks = list(plugin._transition_hooks)
        plugin._transition_hooks = [self.wrap(h, subsystem(_source(h)) or "plugin")
                                    for h in hooks]
        self.undo.append(functools.partial(setattr, plugin, "_transition_hooks", hooks))

    def _wrap_methods(self, obj: Any) -> None:
        seen: set[str] = set()
        for cls in type(obj).__mro__:
            if not cls.__module__.startswith("foundation_dask"):
                continue
            for attr, fn in vars(cls).items():
                if (attr in seen or attr.startswith("__") or not inspect.isfunction(fn)
                        or attr in vars(obj)):
                    continue
                seen.add(attr)
                name = subsystem(_source(fn)) or "plugin"
                setattr(obj, attr, self.wrap(getattr(obj, attr), name))
                self.undo.append(functools.partial(delattr, obj, attr))

    def _wrap_attr(self, obj: Any, attr: str, fn: Callable[..., Any]) -> None:
        name = subsystem(_source(fn))
        if name is not None:
            setattr(obj, attr, self.wrap(fn, name))
            self.undo.append(functools.partial(setattr, obj, attr, fn))

    def figures(self) -> dict[str, Any]:
        return {"window_s": time.perf_counter() - self.started,
                "seconds": dict(self.seconds), "calls": dict(self.calls)}

    def uninstall(self) -> None:
        while self.undo:
            self.undo.pop()()


def install_meter(dask_scheduler: distributed.Scheduler, duration_s: float | None = None,
                  fresh: bool = False) -> bool:
    """Start metering Foundation's extensions on this scheduler (no-op if it is).

    Parameters
    ----------
    dask_scheduler
        The scheduler (``Client.run_on_scheduler`` passes it).
    duration_s
        End the meter after this many seconds (default: when :func:`read_meter` is
        told to).
    fresh
        End a meter running already (its figures dropped) and start a new one.

    Returns
    -------
    bool
        False when the Foundation plugin is not there (nothing to meter).
    """
    address = dask_scheduler.address
    if fresh:
        _end(address)
        _ENDED.pop(address, None)
    if address not in _METERS:
        meter = _Meter(dask_scheduler)
        meter.install()
        _METERS[address] = meter
        if duration_s is not None:
            meter.timer = asyncio.get_running_loop().call_later(
                max(0.0, float(duration_s)), _end, address)
    return PLUGIN_NAME in dask_scheduler.extensions


def _end(address: str) -> None:
    meter = _METERS.pop(address, None)
    if meter is not None:
        if meter.timer is not None:
            meter.timer.cancel()
        _ENDED[address] = meter.figures()
        meter.uninstall()


def read_meter(dask_scheduler: distributed.Scheduler, uninstall: bool = False) -> dict[str, Any]:
    """The meter's figures: ``window_s`` (seconds metered), ``seconds`` and ``calls`` by
    subsystem, ``running`` (still metering); those of the meter that ended last when
    none runs. ``uninstall``: end the meter now."""
    address = dask_scheduler.address
    if uninstall:
        _end(address)
    meter = _METERS.get(address)
    if meter is not None:
        return {**meter.figures(), "running": True}
    return {**_ENDED.get(address, {"window_s": 0.0, "seconds": {}, "calls": {}}),
            "running": False}
