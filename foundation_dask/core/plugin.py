"""The scheduler and worker plugins that host every Foundation subsystem.

Each subsystem (processes, registry, channels, health) contributes a
:class:`SchedulerExtension` and, where it needs one, a :class:`WorkerExtension`.
The two plugins below load them, register their RPC and stream handlers under
``foundation_*`` names and forward the scheduler's and worker's lifecycle hooks.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

if TYPE_CHECKING:
    from distributed import Scheduler, Worker

logger = logging.getLogger(__name__)

PLUGIN_NAME = "foundation"

#: Scheduler-side parts, in start order (later ones may look up earlier ones).
SCHEDULER_EXTENSIONS = [
    "foundation_dask.core.registry:RegistryExtension",
    "foundation_dask.core.channels:ChannelHub",
    "foundation_dask.core.health:HealthExtension",
    "foundation_dask.core.processes:Supervisor",
    "foundation_dask.scope.extension:ScopeExtension",
]

#: Worker-side parts.
WORKER_EXTENSIONS = [
    "foundation_dask.core.channels:WorkerChannels",
    "foundation_dask.core.health:WorkerHealth",
    "foundation_dask.core.processes:WorkerProcesses",
    "foundation_dask.scope.extension:ScopeWorker",
]


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class SchedulerExtension:
    """Base class of the scheduler-side part of a subsystem.

    Subclasses set :attr:`name` and return their handlers from
    :meth:`handlers`, :meth:`stream_handlers` (messages from workers) and
    :meth:`client_handlers` (messages on clients' batched streams). Handler names
    are registered as given; by convention they start with ``foundation_``.
    """

    name: str = ""

    def __init__(self, scheduler: Scheduler, plugin: FoundationSchedulerPlugin):
        self.scheduler = scheduler
        self.plugin = plugin

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {}

    def stream_handlers(self) -> dict[str, Callable[..., Any]]:
        return {}

    def client_handlers(self) -> dict[str, Callable[..., Any]]:
        return {}

    async def start(self) -> None:
        """Called once all extensions exist."""

    async def close(self) -> None:
        """Called when the scheduler closes."""

    def add_worker(self, worker: str) -> None:
        """A worker joined."""

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        """A worker left or died."""

    def add_client(self, client: str) -> None:
        """A client connected."""

    def remove_client(self, client: str) -> None:
        """A client left."""

    def log_event(self, topic: str, msg: Any) -> None:
        """The scheduler logged a structured event."""

    #: Set to a method ``transition(key, start, finish, *args, **kwargs)`` to see task
    #: transitions (called for every transition of every task: keep it cheap).
    transition: Callable[..., None] | None = None


class FoundationSchedulerPlugin(SchedulerPlugin):
    """Scheduler plugin that hosts the scheduler side of every Foundation subsystem.

    Installed by :func:`foundation_dask.connect`; reachable afterwards as
    ``scheduler.extensions["foundation"]``.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.extensions: dict[str, SchedulerExtension] = {}
        self.scheduler: Scheduler | None = None
        self._transition_hooks: list[Callable[..., None]] = []

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.extensions[PLUGIN_NAME] = self
        for path in SCHEDULER_EXTENSIONS:
            cls = _load(path)
            ext = cls(scheduler, self)
            self.extensions[ext.name] = ext
            scheduler.handlers.update(ext.handlers())
            # Dask merges worker and client stream handlers into one table; messages
            # carry ``worker=`` or ``client=`` to tell them apart.
            scheduler.stream_handlers.update(ext.stream_handlers())
            scheduler.stream_handlers.update(ext.client_handlers())
        scheduler.handlers["foundation_ping"] = self.ping
        self._transition_hooks = [
            ext.transition for ext in self.extensions.values() if ext.transition is not None
        ]
        for ext in self.extensions.values():
            await ext.start()
        scheduler.set_metadata(keys=[PLUGIN_NAME, "scheduler_plugin"], value=True)
        logger.info("Foundation scheduler plugin started: %s", sorted(self.extensions))

    def ping(self) -> dict[str, Any]:
        assert self.scheduler is not None
        return {
            "extensions": sorted(self.extensions),
            "worker_plugin": PLUGIN_NAME in self.scheduler.worker_plugins,
        }

    def __getitem__(self, name: str) -> SchedulerExtension:
        return self.extensions[name]

    async def close(self) -> None:
        for ext in reversed(list(self.extensions.values())):
            try:
                await ext.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                logger.exception("closing %s", ext.name)

    def _each(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for ext in self.extensions.values():
            try:
                getattr(ext, hook)(*args, **kwargs)
            except Exception:
                logger.exception("Foundation %s.%s failed", ext.name, hook)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self._each("add_worker", worker)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self._each("remove_worker", worker, **kwargs)

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        self._each("add_client", client)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        self._each("remove_client", client)

    def log_event(self, topic: str, msg: Any) -> None:
        self._each("log_event", topic, msg)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        for hook in self._transition_hooks:
            hook(key, start, finish, *args, **kwargs)


class WorkerExtension:
    """Base class of the worker-side part of a subsystem."""

    name: str = ""

    def __init__(self, worker: Worker, plugin: FoundationWorkerPlugin):
        self.worker = worker
        self.plugin = plugin

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {}

    def stream_handlers(self) -> dict[str, Callable[..., Any]]:
        return {}

    async def setup(self) -> None:
        """Called once all worker extensions exist."""

    async def teardown(self) -> None:
        """Called when the worker closes."""


class FoundationWorkerPlugin(WorkerPlugin):
    """Worker plugin hosting the worker side of every Foundation subsystem.

    ``WorkerPlugin.setup`` also runs on workers that join later, which is how
    replicated processes reach new workers.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.extensions: dict[str, WorkerExtension] = {}
        self.worker: Worker | None = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    async def setup(self, worker: Worker) -> None:
        self.worker = worker
        worker.extensions[PLUGIN_NAME] = self
        for path in WORKER_EXTENSIONS:
            ext = _load(path)(worker, self)
            self.extensions[ext.name] = ext
            worker.handlers.update(ext.handlers())
            worker.stream_handlers.update(ext.stream_handlers())
        for ext in self.extensions.values():
            await ext.setup()

    def __getitem__(self, name: str) -> WorkerExtension:
        return self.extensions[name]

    async def teardown(self, worker: Worker) -> None:
        for ext in reversed(list(self.extensions.values())):
            try:
                await ext.teardown()
            except Exception:  # pragma: no cover - best effort at shutdown
                logger.exception("tearing down %s", ext.name)


def scheduler_extension(scheduler: Scheduler, name: str) -> Any:
    """The Foundation extension ``name`` of a running scheduler."""
    return scheduler.extensions[PLUGIN_NAME].extensions[name]


def worker_extension(worker: Worker, name: str) -> Any:
    """The Foundation extension ``name`` of a running worker."""
    return worker.extensions[PLUGIN_NAME].extensions[name]
