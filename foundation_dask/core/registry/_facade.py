"""Client and worker: :class:`ProcessRegistry` and :class:`ServiceMesh`.

The facades of the registry and the service mesh: each call makes one round trip to
the scheduler's :class:`~foundation_dask.core.registry.RegistryExtension`. They work
from a notebook (blocking), from an asynchronous client (returning an awaitable) and
from tasks and actors on workers (through the worker's client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import distributed
from distributed.protocol import pickle

from foundation_dask.core._client import current_client
from foundation_dask.core.registry._core import (
    RegistryEntry,
    Service,
    canonical_key,
    check_capabilities,
    check_metadata,
    entry_of,
    raise_if_error,
    service_of,
    services_to_frame,
)

if TYPE_CHECKING:
    import pandas as pd


def caller_owner(client: distributed.Client) -> str:
    """Who owns what the caller registers: its worker's address in a task, else ``client.id``."""
    try:
        return distributed.get_worker().address
    except ValueError:
        return client.id


async def _rpc(client: distributed.Client, op: str, *, error_key: Hashable | None = None,
               **kwargs: Any) -> dict[str, Any]:
    """Call the registry handler ``op``; raise its error (with ``error_key`` as the
    error's ``key``)."""
    reply: dict[str, Any] = await getattr(client.scheduler, op)(**kwargs)
    raise_if_error(reply, error_key)
    return reply


def _run(client: distributed.Client | None,
         coro_fn: Callable[[distributed.Client], Awaitable[Any]]) -> Any:
    """Run ``coro_fn(client)`` through ``client`` (by default the current client):
    its result on a synchronous client, an awaitable on an asynchronous one."""
    client = client or current_client()
    return client.sync(coro_fn, client)


def _register_message(
    kind: str,
    key: Hashable,
    value: Any,
    metadata: Mapping[str, Any] | None,
    capabilities: Iterable[str] | None,
    replace: bool,
    owner: str,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "kind": kind,
        "key_id": canonical_key(key),
        "key": pickle.dumps(key),
        "value": pickle.dumps(value),
        "metadata": check_metadata(metadata),
        "owner": owner,
        "replace": bool(replace),
    }
    if kind == "service":
        msg["capabilities"] = check_capabilities(capabilities)
    return msg


class ProcessRegistry:
    """Cluster-wide name registry (the ``Horde.Registry`` of Foundation).

    A namespace class, as Foundation's ``ProcessRegistry`` module: its functions are
    static methods (``fd.ProcessRegistry.register(...)``) and it has no instances.

    All methods block on a synchronous client and return an awaitable on an
    asynchronous one. They work from a notebook and from tasks and actors on
    workers. Every method takes ``client=``, the client to act through; by default
    the default client (the worker's inside a task), else the one
    :func:`foundation_dask.connect` opens.
    """

    @staticmethod
    def register(
        key: Hashable,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        owner: str | None = None,
        client: distributed.Client | None = None,
    ) -> RegistryEntry | Awaitable[RegistryEntry]:
        """Register ``value`` under ``key``.

        Parameters
        ----------
        key
            Any hashable; see :func:`canonical_key` for how keys are compared.
        value
            Any picklable object.
        metadata
            Simple values (``str``, ``int``, ``float``, ``bool``, ``None``) by ``str``
            key, matched by :meth:`select`.
        replace
            Take over ``key`` if it is registered already (the owner changes to the caller).
        owner
            A connected client id or worker address owning the entry; by default the
            worker running the calling task or actor, else the client.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        RegistryEntry
            The new entry.

        Raises
        ------
        AlreadyRegisteredError
            (a ``ValueError``) ``key`` is registered and ``replace`` is false; the
            message names the current owner, its ``key`` attribute is ``key``.
        TypeError
            ``key`` is not hashable or ``metadata`` is not a dict of simple values.
        """
        client = client or current_client()
        owner = owner or caller_owner(client)
        msg = _register_message("entry", key, value, metadata, None, replace, owner)

        async def run(client: distributed.Client) -> RegistryEntry:
            reply = await _rpc(client, "foundation_registry_register", error_key=key, **msg)
            return RegistryEntry(key, value, msg["metadata"], reply["owner"],
                                 reply["registered_at"])

        return _run(client, run)

    @staticmethod
    def lookup(
        key: Hashable, *, client: distributed.Client | None = None
    ) -> RegistryEntry | None | Awaitable[RegistryEntry | None]:
        """The entry registered under ``key``, or ``None``.

        Parameters
        ----------
        key
            The key, compared as :func:`canonical_key` says.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        RegistryEntry or None
        """
        key_id = canonical_key(key)

        async def run(client: distributed.Client) -> RegistryEntry | None:
            reply = await _rpc(client, "foundation_registry_lookup", kind="entry", key_id=key_id)
            record = reply["record"]
            return None if record is None else entry_of(record)

        return _run(client, run)

    @staticmethod
    def unregister(key: Hashable, *, client: distributed.Client | None = None) -> Any:
        """Remove the entry under ``key``.

        Parameters
        ----------
        key
            The key of the entry.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Raises
        ------
        NotRegisteredError
            (a ``KeyError``) nothing is registered under ``key`` (its ``key``
            attribute).
        """
        key_id = canonical_key(key)

        async def run(client: distributed.Client) -> None:
            await _rpc(client, "foundation_registry_unregister", error_key=key, kind="entry",
                       key_id=key_id)

        return _run(client, run)

    @staticmethod
    def select(
        metadata: Mapping[str, Any] | None = None,
        *,
        owner: str | None = None,
        client: distributed.Client | None = None,
    ) -> list[RegistryEntry] | Awaitable[list[RegistryEntry]]:
        """Entries whose metadata equal ``metadata`` on each of its keys.

        Parameters
        ----------
        metadata
            Required metadata values; ``None`` or ``{}`` selects every entry.
            ``True`` does not match ``1``.
        owner
            Only entries of this client id or worker address.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        list of RegistryEntry
            In registration order.
        """
        wanted = check_metadata(metadata)

        async def run(client: distributed.Client) -> list[RegistryEntry]:
            reply = await _rpc(client, "foundation_registry_select", kind="entry",
                               metadata=wanted, owner=owner)
            return [entry_of(r) for r in reply["records"]]

        return _run(client, run)


class ServiceMesh:
    """Service registration and discovery (``Foundation.ServiceMesh``).

    A namespace class, as Foundation's ``ServiceMesh`` module: its functions are
    static methods (``fd.ServiceMesh.register_service(...)``) and it has no instances.

    A service is a name, a handle to reach it, capabilities and metadata. Like
    registry entries, services belong to the registering client or worker and
    vanish with it. All methods block on a synchronous client and return an
    awaitable on an asynchronous one; those that reach the cluster take ``client=``
    (by default the default client, else the one :func:`foundation_dask.connect`
    opens). :meth:`to_frame` only converts services already fetched.
    """

    @staticmethod
    def register_service(
        name: Hashable,
        handle: Any,
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        owner: str | None = None,
        client: distributed.Client | None = None,
    ) -> Service | Awaitable[Service]:
        """Register a service.

        Parameters
        ----------
        name
            Service name (usually a ``str``; any key accepted by the registry).
        handle
            Any picklable object used to reach the service, such as a singleton
            handle or a :class:`distributed.Actor`; it round-trips unchanged.
        capabilities
            A list of ``str``.
        metadata
            Simple values by ``str`` key.
        replace
            Take over ``name`` if it is registered already.
        owner
            Client id or worker address owning the service; default the caller.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        Service

        Raises
        ------
        AlreadyRegisteredError
            ``name`` is registered and ``replace`` is false (its ``key`` attribute).
        TypeError
            Bad ``capabilities`` or ``metadata``; nothing is registered.
        """
        client = client or current_client()
        owner = owner or caller_owner(client)
        msg = _register_message("service", name, handle, metadata, capabilities, replace, owner)

        async def run(client: distributed.Client) -> Service:
            reply = await _rpc(client, "foundation_registry_register", error_key=name, **msg)
            return Service(name, handle, list(msg["capabilities"]), msg["metadata"],
                           reply["owner"], reply["registered_at"])

        return _run(client, run)

    @staticmethod
    def discover_services(
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        name: Hashable | None = None,
        *,
        client: distributed.Client | None = None,
    ) -> list[Service] | Awaitable[list[Service]]:
        """Services matching every given filter.

        Parameters
        ----------
        capabilities
            Each of these must be among the service's capabilities.
        metadata
            The service's metadata must equal these on each given key.
        name
            Exact service name.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        list of Service
            In registration order.
        """
        caps = check_capabilities(capabilities)
        wanted = check_metadata(metadata)
        key_id = None if name is None else canonical_key(name)

        async def run(client: distributed.Client) -> list[Service]:
            reply = await _rpc(client, "foundation_registry_select", kind="service",
                               metadata=wanted, capabilities=caps, key_id=key_id)
            return [service_of(r) for r in reply["records"]]

        return _run(client, run)

    @staticmethod
    def deregister_service(name: Hashable, *, client: distributed.Client | None = None) -> Any:
        """Remove the service ``name``.

        Parameters
        ----------
        name
            The service name.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Raises
        ------
        NotRegisteredError
            (a ``KeyError``) no service has that name (its ``key`` attribute).
        """
        key_id = canonical_key(name)

        async def run(client: distributed.Client) -> None:
            await _rpc(client, "foundation_registry_unregister", error_key=name,
                       kind="service", key_id=key_id)

        return _run(client, run)

    @staticmethod
    def services_frame(
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        name: Hashable | None = None,
        *,
        client: distributed.Client | None = None,
    ) -> pd.DataFrame | Awaitable[pd.DataFrame]:
        """:meth:`discover_services` as a :class:`pandas.DataFrame`.

        Parameters
        ----------
        capabilities, metadata, name
            The filters of :meth:`discover_services`.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        pandas.DataFrame
            One row per service; see :func:`services_to_frame` for the columns.
        """
        caps = check_capabilities(capabilities)
        wanted = check_metadata(metadata)
        key_id = None if name is None else canonical_key(name)

        async def run(client: distributed.Client) -> pd.DataFrame:
            reply = await _rpc(client, "foundation_registry_select", kind="service",
                               metadata=wanted, capabilities=caps, key_id=key_id)
            return services_to_frame(service_of(r) for r in reply["records"])

        return _run(client, run)

    to_frame = staticmethod(services_to_frame)
