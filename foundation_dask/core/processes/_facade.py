"""Client: :class:`ProcessManager`, starting, finding and stopping supervised processes.

Every method acts through ``client=`` when given, else through the current client
(``foundation_dask.connect()`` is called if there is none). On a synchronous client
the methods block and return their result; on an asynchronous one they return an
awaitable of it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

from distributed.protocol import pickle

from foundation_dask import config
from foundation_dask.core._client import current_client, scheduler_call
from foundation_dask.core.processes._handle import SingletonHandle, handle_from_info
from foundation_dask.core.processes._names import class_interface, name_from_key, name_key

if TYPE_CHECKING:
    import distributed
    import pandas as pd

#: The columns of :meth:`ProcessManager.list_processes`.
LIST_COLUMNS = ["name", "kind", "class_name", "worker", "state", "incarnation", "restarts",
                "checkpoints", "checkpoint_age", "error"]


def _start_args(cls: type, name: Hashable, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> dict[str, Any]:
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
    def start_singleton(cls: type, *args: Any, name: Hashable,
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
            Constructor arguments (``name`` and ``client`` are this method's own).
        name
            Cluster-wide name: a string or a tuple such as ``("trace_coordinator", tid)``.
        client
            The Dask client to act through; by default the current client.

        Returns
        -------
        SingletonHandle
            A handle on the instance; a second call with the same name returns a handle
            on the same instance (the arguments of that call are ignored).

        Raises
        ------
        ProcessStartError
            When ``cls`` could not be instantiated on a worker (``name``, ``worker``).
        ValueError
            When ``name`` runs as another class.
        """
        msg = _start_args(cls, name, args, kwargs)
        bound = client
        client = current_client() if client is None else client

        async def start() -> SingletonHandle:
            info = await client.scheduler.foundation_process_start(**msg)
            return handle_from_info(info, name, client=bound)

        return client.sync(start)

    @staticmethod
    def start_replicated(cls: type, *args: Any, name: Hashable,
                         client: distributed.Client | None = None,
                         **kwargs: Any) -> dict[str, SingletonHandle]:
        """Start one instance of ``cls`` on every worker, and on every worker that joins.

        Parameters
        ----------
        cls, *args, **kwargs, name
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
        msg = _start_args(cls, name, args, kwargs)
        bound = client
        client = current_client() if client is None else client

        async def start() -> dict[str, SingletonHandle]:
            infos = await client.scheduler.foundation_replicated_start(**msg)
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
    def stop(name: Hashable, client: distributed.Client | None = None) -> bool:
        """Stop the singleton (or every instance of the replicated process) ``name``.

        Returns ``True`` if something was stopped. Stopping a singleton also removes
        its checkpoint file (``foundation.processes.checkpoint-dir``).
        """
        return scheduler_call("foundation_process_stop", client=client, name_key=name_key(name))

    @staticmethod
    def list_processes(client: distributed.Client | None = None) -> pd.DataFrame:
        """A DataFrame of every supervised process: name, class, worker, state, restarts...

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
