"""Scheduler: what the sessions of one scheduler's dashboard pages share.

The last reports, so that several open pages cost one read and a new page opens with
data; the health history, so that a new page opens with the recent past. Asynchronous
reads (profiles, trace timelines) run as tasks of their own, which finish even when
the session that asked is closed first.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import distributed


class Shared:
    """What the sessions of one scheduler's pages share (see the module's docs)."""

    #: Samples of the health history kept.
    HISTORY = 600
    #: Collected trace timelines kept.
    TIMELINES = 4

    def __init__(self) -> None:
        self.health: tuple[float, dict[str, Any]] | None = None
        self.health_history: deque[tuple[float, list[tuple[Any, ...]]]] = deque(
            maxlen=self.HISTORY)
        self.values: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self.tasks: dict[tuple[Any, ...], asyncio.Task[Any]] = {}

    def cached(self, key: tuple[Any, ...], max_age: float = math.inf) -> Any:
        """The value of ``key`` if it is younger than ``max_age`` seconds, else ``None``."""
        entry = self.values.get(key)
        if entry is None or time.monotonic() - entry[0] >= max_age:
            return None
        return entry[1]

    def start(self, key: tuple[Any, ...], factory: Callable[[], Coroutine[Any, Any, Any]],
              max_age: float = math.inf) -> asyncio.Task[Any] | None:
        """Start reading ``key`` unless its value is fresh or a read is under way."""
        if self.cached(key, max_age) is not None:
            return None
        task = self.tasks.get(key)
        if task is not None and not task.done():
            return task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the scheduler's event loop: the pages read later
            return None
        task = loop.create_task(factory())
        self.tasks[key] = task

        def done(t: asyncio.Task[Any]) -> None:
            if self.tasks.get(key) is t:
                del self.tasks[key]
            if t.cancelled():
                return
            if t.exception() is not None:  # the sessions waiting for it report it
                return
            self.values[key] = (time.monotonic(), t.result())
            if key[0] == "timeline":
                timelines = [k for k in self.values if k[0] == "timeline"]
                for old in timelines[: max(0, len(timelines) - self.TIMELINES)]:
                    del self.values[old]

        task.add_done_callback(done)
        return task

    async def get(self, key: tuple[Any, ...], factory: Callable[[], Coroutine[Any, Any, Any]],
                  max_age: float = math.inf) -> Any:
        """The value of ``key``, read if it is missing or older than ``max_age``."""
        task = self.start(key, factory, max_age)
        if task is not None:
            return await asyncio.shield(task)
        return self.values[key][1]  # start() found it fresh


_shared: weakref.WeakKeyDictionary[distributed.Scheduler, Shared] = weakref.WeakKeyDictionary()


def shared_of(scheduler: distributed.Scheduler) -> Shared:
    """The :class:`Shared` state of ``scheduler``'s pages."""
    shared = _shared.get(scheduler)
    if shared is None:
        shared = _shared[scheduler] = Shared()
    return shared


def fresh(entry: tuple[float, Any] | None, seconds: float) -> bool:
    """Whether ``entry`` (``(monotonic time, value)``) is younger than ``seconds``."""
    return entry is not None and time.monotonic() - entry[0] < seconds
