"""Scheduler and worker: the plugins that host every Foundation subsystem.

Each subsystem (processes, registry, channels, health) contributes a
:class:`SchedulerExtension` and, where it needs one, a :class:`WorkerExtension`.
The two plugins below load them, register their RPC and stream handlers under
``foundation_*`` names and forward the scheduler's and worker's lifecycle hooks.
Subsystems above the core (ElixirScope) add theirs through the dask config
``foundation.extensions.scheduler`` / ``.worker`` (``"module:Class"`` paths), so
that this layer names none of them. :func:`extension` is the one way to reach a
running extension.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from foundation_dask import config

if TYPE_CHECKING:
    from distributed import Scheduler, Worker

logger = logging.getLogger(__name__)

PLUGIN_NAME = "foundation"

#: The core's scheduler-side parts, in start order (later ones may look up earlier
#: ones); those of ``foundation.extensions.scheduler`` follow.
SCHEDULER_EXTENSIONS = [
    "foundation_dask.core.registry:RegistryExtension",
    "foundation_dask.core.channels:ChannelHub",
    "foundation_dask.core.health:HealthExtension",
    "foundation_dask.core.processes:Supervisor",
    "foundation_dask.core.secrets:SecretStore",
]

#: The core's worker-side parts; those of ``foundation.extensions.worker`` follow.
WORKER_EXTENSIONS = [
    "foundation_dask.core.registry:RegistryWorker",
    "foundation_dask.core.channels:WorkerChannels",
    "foundation_dask.core.health:WorkerHealth",
    "foundation_dask.core.processes:WorkerProcesses",
]


def extension_paths(side: str) -> list[str]:
    """``"module:Class"`` paths of the extensions of ``side`` (``"scheduler"`` or
    ``"worker"``): the core's, then those of the dask config ``foundation.extensions``."""
    core = SCHEDULER_EXTENSIONS if side == "scheduler" else WORKER_EXTENSIONS
    extra = [p for p in config.get(f"extensions.{side}") or [] if p not in core]
    return [*core, *extra]


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"Foundation extension {path!r} is not a 'module:Class' path "
                         "(dask config foundation.extensions)")
    return getattr(importlib.import_module(module), attr)


class SchedulerExtension:
    """Base class of the scheduler-side part of a subsystem.

    This class is not meant to be used by library users: it is the contract between
    :class:`FoundationSchedulerPlugin` and the subsystems it hosts (the core's, listed
    in :data:`SCHEDULER_EXTENSIONS`, and those of the dask config
    ``foundation.extensions.scheduler``). The plugin creates one instance of each
    per scheduler, as ``cls(scheduler, plugin)``, in the order listed.

    Where each hook runs
        Everything runs in the scheduler process, on the scheduler's event loop
        (its one thread): no hook needs a lock against another, and none may block
        (no ``time.sleep``, no blocking I/O, no waiting on a ``concurrent.futures``
        future); long work goes to a thread with ``loop.run_in_executor`` and is
        awaited. The scheduler does nothing else while a hook runs.

    Handlers
        :meth:`handlers` gives RPC handlers (``await client.scheduler.<name>(...)``),
        called with the message's keyword arguments; they may be coroutine
        functions. What one raises goes back to the caller and is raised there,
        and the scheduler logs it with its traceback: return expected failures as
        data instead (as the registry's ``{"error": ...}`` replies). :meth:`stream_handlers`
        (messages from workers, called with ``worker=``) and :meth:`client_handlers`
        (messages on clients' batched streams, called with ``client=``) are called
        in the order the messages arrive; one that raises closes that stream, and
        the scheduler then removes the worker or client: they must not raise. A
        coroutine stream handler is awaited before the next message of its stream.
        Names are registered as given; by convention they start with
        ``foundation_``.

    Lifecycle hooks
        :meth:`start` (awaited once every extension exists, when the plugin is
        installed) and :meth:`close` (awaited when the scheduler closes, in reverse
        order). :meth:`add_worker`, :meth:`remove_worker`, :meth:`add_client`,
        :meth:`remove_client` and :meth:`log_event` are plain functions; what one
        raises is logged and does not reach the scheduler or the other extensions.
        :attr:`transition`, when set, is called for every task transition, inside
        the scheduler's transition loop: it must be cheap and must not raise.

    Reaching an extension
        ``extension(scheduler, name)`` (:func:`extension`) returns the running
        instance (or ``None``), from another extension or any code of the scheduler
        process; an extension that needs another looks it up in :meth:`start` or
        later, when every extension exists.
    """

    #: Name of the extension (``extension(scheduler, name)``); unique per scheduler.
    name: str = ""

    def __init__(self, scheduler: Scheduler, plugin: FoundationSchedulerPlugin) -> None:
        self.scheduler = scheduler
        self.plugin = plugin

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """RPC handlers by name (called once, when the plugin starts)."""
        return {}

    def stream_handlers(self) -> dict[str, Callable[..., Any]]:
        """Handlers of messages on workers' batched streams, by ``op``."""
        return {}

    def client_handlers(self) -> dict[str, Callable[..., Any]]:
        """Handlers of messages on clients' batched streams, by ``op``."""
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

    Installed by :func:`foundation_dask.connect` (:func:`install_plugins
    <foundation_dask.core.cluster.install_plugins>`); its extensions are reached with
    :func:`extension`.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.extensions: dict[str, SchedulerExtension] = {}
        self.scheduler: Scheduler | None = None
        self._transition_hooks: list[Callable[..., None]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._reset()

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.extensions[PLUGIN_NAME] = self
        for path in extension_paths("scheduler"):
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
    """Base class of the worker-side part of a subsystem.

    This class is not meant to be used by library users: it is the contract between
    :class:`FoundationWorkerPlugin` and the subsystems it hosts (the core's, listed
    in :data:`WORKER_EXTENSIONS`, and those of the dask config
    ``foundation.extensions.worker``). The plugin creates one instance of each per
    worker, as ``cls(worker, plugin)``, when it is set up there: when
    ``foundation_dask.connect()`` installs it, and on every worker that joins later.

    Where each hook runs
        In the worker process. :meth:`setup`, :meth:`teardown` and the handlers run
        on the worker's event loop and must not block it (heartbeats and data
        transfers wait meanwhile). Tasks and actor methods run in other threads
        (the worker's executors): what an extension offers to task code must be
        safe to call from those threads, or hand the work to the event loop
        (``worker.loop.add_callback``).

    Handlers
        :meth:`handlers` gives RPC handlers (``rpc(worker.address).<name>(...)``,
        or the scheduler's ``broadcast``); what one raises goes back to the caller,
        and the worker logs it. :meth:`stream_handlers` are called for messages the
        scheduler sends on its batched stream to the worker, in order; one that
        raises closes that stream, and the worker then closes: they must not raise.

    Lifecycle hooks
        :meth:`setup` (awaited once every worker extension exists) and
        :meth:`teardown` (awaited when the worker closes or the plugin is removed,
        in reverse order). What :meth:`setup` raises fails the plugin's setup on
        that worker, reported to the client that installed it.

    Reaching an extension
        ``extension(worker, name)`` (:func:`extension`) returns the running instance
        (or ``None``), from another extension or from task code
        (``extension(distributed.get_worker(), name)``).
    """

    #: Name of the extension (``extension(worker, name)``); unique per worker.
    name: str = ""

    def __init__(self, worker: Worker, plugin: FoundationWorkerPlugin) -> None:
        self.worker = worker
        self.plugin = plugin

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """RPC handlers by name (called once, at setup)."""
        return {}

    def stream_handlers(self) -> dict[str, Callable[..., Any]]:
        """Handlers of messages on the scheduler's batched stream, by ``op``."""
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
        self._reset()

    def _reset(self) -> None:
        self.extensions: dict[str, WorkerExtension] = {}
        self.worker: Worker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._reset()

    async def setup(self, worker: Worker) -> None:
        self.worker = worker
        worker.extensions[PLUGIN_NAME] = self
        for path in extension_paths("worker"):
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


def extension(host: Scheduler | Worker, name: str) -> Any:
    """The Foundation extension ``name`` (``"health"``, ``"processes"``...) running in
    ``host`` (a scheduler or a worker), or ``None`` when the Foundation plugin, or that
    extension, is not installed there.

    The one way to reach an extension; callers that cannot do without it raise their
    own error saying how to install the plugins (``foundation_dask.connect``).
    """
    plugin = host.extensions.get(PLUGIN_NAME)
    return None if plugin is None else plugin.extensions.get(name)
