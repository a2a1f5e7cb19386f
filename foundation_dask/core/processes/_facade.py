"""Client: :class:`ProcessManager`, starting, finding and stopping supervised processes.

Every method acts through ``client=`` when given, else through the current client
(``foundation_dask.connect()`` is called if there is none). On a synchronous client
the methods block and return their result; on an asynchronous one they return an
awaitable of it.

Every process has an owner, decided by the scheduler (from the caller's identity token,
as for registry entries): the client that started it, the worker for a process started
from a task, or ``"cluster"`` (``owner="cluster"``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

from distributed.protocol import pickle

from foundation_dask import config
from foundation_dask.core._client import current_client
from foundation_dask.core.processes._handle import SingletonHandle, handle_from_info
from foundation_dask.core.processes._names import class_interface, name_from_key, name_key
from foundation_dask.core.registry import (
    CLUSTER_OWNER,
    calling_worker,
    owned_request,
    raise_if_error,
)

if TYPE_CHECKING:
    import distributed
    import pandas as pd

#: The columns of :meth:`ProcessManager.list_processes`.
LIST_COLUMNS = ["name", "kind", "class_name", "worker", "state", "incarnation", "restarts",
                "checkpoints", "checkpoint_age", "error", "owner"]


def _start_args(cls: type, name: Hashable, args: tuple[Any, ...],
                kwargs: dict[str, Any], owner: str | None) -> dict[str, Any]:
    if owner is not None and owner != CLUSTER_OWNER:
        raise ValueError(
            f"owner must be None (the caller owns the process) or {CLUSTER_OWNER!r} (a "
            f"process that any client may stop), got {owner!r}; the scheduler, not the "
            "caller, decides who the caller is."
        )
    if not isinstance(cls, type):
        raise TypeError(
            f"start_singleton/start_replicated take a class, not {type(cls).__name__}; pass "
            "the class itself and its constructor arguments."
        )
    mode, interval = _options(cls)
    class_name, methods, coroutines = class_interface(cls)
    return {
        "name_key": name_key(name), "display": repr(name), "spec": _spec(cls, args, kwargs),
        "class_name": class_name, "mode": mode, "interval": interval,
        "methods": sorted(methods), "coroutines": sorted(coroutines),
        "cluster": owner == CLUSTER_OWNER,
    }


def _options(cls: type) -> tuple[str, float]:
    mode = getattr(cls, "foundation_checkpoint", None) or config.get("processes.checkpoint")
    if mode not in ("call", "interval", "never"):
        raise ValueError(
            f"checkpoint mode {mode!r} of {cls.__qualname__} is not one of 'call', 'interval', "
            "'never' (class attribute foundation_checkpoint or foundation.processes.checkpoint)."
        )
    try:
        interval = config.get_seconds("processes.checkpoint-interval")
    except (TypeError, ValueError):
        interval = -1.0
    if not interval > 0:
        raise ValueError(
            f"foundation.processes.checkpoint-interval is "
            f"{config.get('processes.checkpoint-interval')!r}: it must be a positive "
            "duration, e.g. '1s' or '200ms'."
        )
    return mode, interval


def _spec(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        spec: bytes = pickle.dumps((cls, args, kwargs))
    except Exception as exc:
        raise TypeError(
            f"{cls.__qualname__} or its arguments cannot be pickled ({exc}); pass picklable "
            "arguments (open files, locks and clients must be created inside __init__)."
        ) from exc
    return spec


def _replicas(infos: dict[str, dict[str, Any]], name: Hashable,
              bound: distributed.Client | None) -> dict[str, SingletonHandle]:
    return {w: handle_from_info(i, (name, w), replica_of=w, client=bound)
            for w, i in infos.items()}


class ProcessManager:
    """Supervised processes (the Elixir ``Foundation.ProcessManager``).

    A namespace class, as Foundation's ProcessManager module: its static methods are
    the public entry points, ``fd.ProcessManager.start_singleton(...)`` as in Elixir.

    Every method takes ``client=``: the Dask client to act through, by default the
    current client (:func:`foundation_dask.connect` is called if there is none). The
    handles a method returns make their calls through the ``client=`` given, else
    through the current client. On an asynchronous client the methods return
    awaitables.
    """

    @staticmethod
    def start_singleton(cls: type, *args: Any, name: Hashable, owner: str | None = None,
                        client: distributed.Client | None = None,
                        **kwargs: Any) -> SingletonHandle:
        """Start ``cls(*args, **kwargs)`` as the one live instance named ``name``.

        Parameters
        ----------
        cls
            The class. Define ``checkpoint(self) -> state`` and ``restore(self, state)`` to
            keep state across restarts; the class attribute ``foundation_checkpoint``
            (``"call"``, ``"interval"`` or ``"never"``) overrides the config default.
        *args, **kwargs
            Constructor arguments (``name``, ``owner`` and ``client`` are this method's
            own).
        name
            Cluster-wide name: a string or a tuple such as ``("trace_coordinator", tid)``.
        owner
            ``None``: the caller owns the process (the client, or the worker running
            the calling task); only it stops it without ``force=True``. ``"cluster"``:
            any client may stop it (for processes meant to outlive their client).
        client
            The Dask client to act through; by default the current client.

        Returns
        -------
        SingletonHandle
            A handle on the instance; a second call with the same name returns a handle
            on the same instance (the arguments of that call are ignored, the owner
            stays the first caller).

        Raises
        ------
        ProcessStartError
            When ``cls`` could not be instantiated on a worker (``name``, ``worker``).
        ValueError
            When ``name`` runs as another class, or ``owner`` is neither ``None`` nor
            ``"cluster"``.
        """
        msg = _start_args(cls, name, args, kwargs, owner)
        bound = client
        client = current_client() if client is None else client
        worker = calling_worker()

        async def start() -> SingletonHandle:
            info = await owned_request(client, worker, "foundation_process_start", **msg)
            raise_if_error(info if info.get("identify") else {}, name)
            return handle_from_info(info, name, client=bound)

        return client.sync(start)

    @staticmethod
    def start_replicated(cls: type, *args: Any, name: Hashable, owner: str | None = None,
                         client: distributed.Client | None = None,
                         **kwargs: Any) -> dict[str, SingletonHandle]:
        """Start one instance of ``cls`` on every worker, and on every worker that joins.

        Parameters
        ----------
        cls, *args, **kwargs, name, owner
            As for :meth:`start_singleton`.
        client
            The Dask client to act through; by default the current client.

        Returns
        -------
        dict
            ``{worker address: handle}`` of the instances running now; each handle is
            named ``(name, worker)``. Instances are not moved when their worker leaves
            (see :meth:`lookup_replicated`).
        """
        msg = _start_args(cls, name, args, kwargs, owner)
        bound = client
        client = current_client() if client is None else client
        worker = calling_worker()

        async def start() -> dict[str, SingletonHandle]:
            infos = await owned_request(client, worker, "foundation_replicated_start", **msg)
            raise_if_error(infos if infos.get("identify") else {}, name)
            return _replicas(infos, name, bound)

        return client.sync(start)

    @staticmethod
    def lookup_replicated(name: Hashable, client: distributed.Client | None = None,
                          ) -> dict[str, SingletonHandle]:
        """``{worker: handle}`` of the live instances of the replicated process ``name``.

        Raises
        ------
        ProcessNotFoundError
            When no replicated process has that name.
        """
        bound = client
        client = current_client() if client is None else client

        async def look() -> dict[str, SingletonHandle]:
            infos = await client.scheduler.foundation_replicated_lookup(name_key=name_key(name))
            return _replicas(infos, name, bound)

        return client.sync(look)

    @staticmethod
    def lookup(name: Hashable, client: distributed.Client | None = None,
               ) -> SingletonHandle | dict[str, SingletonHandle] | None:
        """The process named ``name``.

        Returns
        -------
        SingletonHandle, dict or None
            A handle on the singleton ``name``; for a replicated process, the
            ``{worker: handle}`` of its live instances (as :meth:`lookup_replicated`);
            ``None`` if no process has that name.
        """
        bound = client
        client = current_client() if client is None else client
        key = name_key(name)

        async def look() -> SingletonHandle | dict[str, SingletonHandle] | None:
            found = await client.scheduler.foundation_process_lookup(name_key=key)
            if "singleton" in found:
                return handle_from_info(found["singleton"], name, client=bound)
            if "replicated" in found:
                return _replicas(found["replicated"], name, bound)
            return None

        return client.sync(look)

    @staticmethod
    def find(prefix: str, client: distributed.Client | None = None,
             ) -> list[tuple[tuple[Any, ...], SingletonHandle]]:
        """``(name, handle)`` of every singleton whose name is a tuple starting with
        ``prefix``, e.g. ``find("trace_coordinator")``."""
        bound = client
        client = current_client() if client is None else client

        async def look() -> list[tuple[tuple[Any, ...], SingletonHandle]]:
            found = []
            for info in await client.scheduler.foundation_process_named(first=prefix):
                name = cast("tuple[Any, ...]", name_from_key(info["name_key"]))
                found.append((name, handle_from_info(info, name, client=bound)))
            return found

        return client.sync(look)

    @staticmethod
    def stop(name: Hashable, client: distributed.Client | None = None, *,
             force: bool = False) -> bool:
        """Stop the singleton (or every instance of the replicated process) ``name``.

        Its owner (see :meth:`start_singleton`) stops it; so does any client for a
        ``"cluster"`` process or one whose owner has left the cluster. Stopping a
        singleton also removes its checkpoint file (``foundation.processes.checkpoint-dir``).

        Parameters
        ----------
        name
            The process's name.
        client
            The Dask client to act through; by default the current client.
        force
            Stop it even though another client or worker owns it.

        Returns
        -------
        bool
            ``True`` if something was stopped.

        Raises
        ------
        NotOwnerError
            (a ``PermissionError``) another live client or worker owns ``name`` and
            ``force`` is false; the message names the owner (its ``owner`` attribute),
            and the process keeps running.
        """
        key = name_key(name)
        client = current_client() if client is None else client
        worker = calling_worker()

        async def run() -> bool:
            reply = await owned_request(client, worker, "foundation_process_stop",
                                        name_key=key, force=bool(force))
            raise_if_error(reply, name)
            return bool(reply["stopped"])

        return client.sync(run)

    @staticmethod
    def list_processes(client: distributed.Client | None = None) -> pd.DataFrame:
        """A DataFrame of every supervised process: name, class, worker, state, owner...

        One row per singleton and per replica, with the columns :data:`LIST_COLUMNS`.
        """
        import pandas as pd

        client = current_client() if client is None else client

        def frame(infos: list[dict[str, Any]]) -> pd.DataFrame:
            return pd.DataFrame([{c: r.get(c) for c in LIST_COLUMNS} for r in infos],
                                columns=LIST_COLUMNS)

        if client.asynchronous:
            async def rows() -> pd.DataFrame:
                return frame(await client.scheduler.foundation_process_list())

            return client.sync(rows)  # an awaitable, as the other methods return
        return frame(client.sync(client.scheduler.foundation_process_list))
